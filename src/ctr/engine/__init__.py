"""Use cases. Each returns plain data; none imports typer or rich."""
