"""The yardstick for ctr's start-up: a minimal two-command typer app on the same typer version.

    python bench/typer_app.py --version
    python bench/typer_app.py ps -a

It does what a typer CLI cannot avoid (import typer, build the click command, parse) and
nothing else, so `ctr --version` and `ctr ps -a` are measured against it (issue 7: at most
1.2 times this).
"""

import typer

app = typer.Typer(add_completion=False)


def _version(value: bool) -> None:
    if value:
        print("app version 0")
        raise typer.Exit(0)


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True)) -> None:
    """A minimal app."""


@app.command()
def ps(all: bool = typer.Option(False, "--all", "-a", help="all")) -> None:
    """List nothing."""
    print("CONTAINER ID   IMAGE   COMMAND   CREATED   STATUS   NAMES")


@app.command()
def hello(name: str = typer.Argument("world")) -> None:
    """Greet."""
    print(f"hello {name}")


if __name__ == "__main__":
    app()
