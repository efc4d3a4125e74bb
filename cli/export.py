"""Commands: filled in by the export work."""

import typer

app = typer.Typer()
