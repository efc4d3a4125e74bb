"""Commands: filled in by the analysis work."""

import typer

app = typer.Typer()
