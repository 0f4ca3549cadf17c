"""Recipe parsing shared by every stage: `--config recipe.yaml` plus CLI overrides.

A recipe YAML is one reproducible run. Keys map onto dataclass fields (TRL's `TrlParser` over
`HfArgumentParser`); a key that no dataclass knows is an error that names the closest valid keys.
"""

from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import transformers
import yaml
from trl import TrlParser

from tinystories.core import ConfigError

__all__ = ["ConfigError", "check_keys", "load_recipe", "parse_args", "setup_logging"]


def setup_logging() -> None:
    """Logging of an entry point: timestamps for ours, warnings only from transformers."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()


def _known_keys(parser: TrlParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest != "help"}


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found: pass --config with an existing YAML file")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping of key: value")
    return data


def check_keys(keys: Sequence[str], known: set[str], where: str) -> None:
    unknown = [k for k in keys if k not in known and k != "env"]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known), n=3)
        hints.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    raise ConfigError(
        f"unknown key(s) in {where}: {'; '.join(hints)}. Remove them or fix the spelling; "
        f"`tinystories <stage> --help` lists the valid keys."
    )


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse `--config recipe.yaml` + CLI overrides into instances of `dataclass_types`.

    Unknown YAML keys and unknown CLI flags raise `ConfigError` before any work starts.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = TrlParser(dataclass_types=list(dataclass_types))
    known = _known_keys(parser)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a path to a recipe YAML")
        recipe = load_recipe(argv[i + 1])
        check_keys(list(recipe), known, f"recipe {argv[i + 1]!r}")
    flags = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--") and a != "--config"]
    check_keys([f.replace("-", "_") for f in flags if f not in ("help",)], known | {"config"}, "command line")
    return tuple(parser.parse_args_and_config(args=argv))
