"""The CLI reference page of the docs, generated from the stages' own parsers (`tinystories.cli.stage_parser`),
so every flag, default and help text is the one `tinystories <stage> --help` prints. `docs/hooks.py` renders it
when `make docs` builds the site; `python scripts/cli_reference.py` prints it."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from tinystories.cli import STAGES, stage_parser


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is dataclasses.MISSING or value == argparse.SUPPRESS:
        return ""
    if hasattr(value, "value"):  # an enum
        value = value.value
    text = repr(value) if isinstance(value, str) and not value else str(value)
    return f"`{text}`".replace("|", "\\|")


def _help(action: argparse.Action) -> str:
    text = " ".join((action.help or "").split()).replace("%%", "%")
    if action.choices:
        text += (" " if text else "") + "One of: " + ", ".join(f"`{c}`" for c in action.choices) + "."
    return text.replace("|", "\\|")


def flags(stage: str) -> list[argparse.Action]:
    """The documented options of a stage: every flag its parser shows in --help."""
    parser = stage_parser(stage)
    return [
        a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"
    ]


def stage_section(stage: str) -> str:
    spec = STAGES[stage]
    recipes = f", recipes in `recipes/{spec.recipes}/`" if spec.recipes else ""
    lines = [
        f"## `tinystories {stage}`",
        "",
        f"{spec.help[0].upper()}{spec.help[1:]}. Make target: `make {spec.make}`{recipes}.",
        "",
        "| flag | default | help |",
        "|---|---|---|",
    ]
    for action in flags(stage):
        name = max(action.option_strings, key=len)
        lines.append(f"| `{name}` | {_default(action)} | {_help(action)} |")
    return "\n".join(lines)


def render() -> str:
    head = [
        "# CLI reference",
        "",
        "Every stage is `tinystories <stage> [--config recipe.yaml] [--flag value ...]`; a recipe key is the same",
        "name as its flag, and a flag given on the command line overrides the recipe. This page is generated from the",
        "stages' parsers when the site is built, so it is what `tinystories <stage> --help` prints.",
        "",
    ]
    return "\n".join(head + [stage_section(stage) + "\n" for stage in STAGES])


if __name__ == "__main__":
    sys.stdout.write(render())
