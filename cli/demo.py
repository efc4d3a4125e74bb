"""Commands: filled in by the demo work."""

import typer

app = typer.Typer()
