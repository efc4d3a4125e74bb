"""The README stays true: generated view reference, every command listed with help text."""

from __future__ import annotations

from pathlib import Path

import typer.main
from cogapp import Cog

from filterdb.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def command_paths(group, prefix: str = "filterdb") -> dict[str, object]:
    paths = {}
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            paths |= command_paths(command, path)
        else:
            paths[path] = command
    return paths


COMMANDS = command_paths(typer.main.get_command(app))


def test_view_reference_is_generated_from_the_catalogue():
    assert Cog().main(["cog", "--check", str(ROOT / "README.md")]) == 0


def test_every_command_is_in_the_readme_with_help_text():
    assert len(COMMANDS) >= 15
    for path, command in COMMANDS.items():
        documented = path in README or path.replace("filterdb db ", "db ") in README
        assert documented, f"{path} is not in the README"
        assert command.help and command.help.strip(), f"{path} has no --help text"
        for parameter in command.params:
            # typer vendors click: ask the parameter what it is rather than its class.
            if parameter.param_type_name == "option" and parameter.name != "help":
                assert parameter.help, f"{path} {parameter.opts[0]} has no help text"


def test_readme_gives_the_two_commands():
    assert "filterdb demo" in README
    assert "bash .ci/run" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci and "python -m pytest" in README
