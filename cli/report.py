"""Commands: filled in by the report work."""

import typer

app = typer.Typer()
