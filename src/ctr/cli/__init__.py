"""Command-line layer: parses, calls the engine, renders. No business logic."""
