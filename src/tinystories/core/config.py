"""Recipe parsing shared by every stage: `--config recipe.yaml` plus CLI overrides.

A recipe YAML is one reproducible run. Keys map onto dataclass fields (TRL's `TrlParser` over
`HfArgumentParser`); a key that no dataclass knows is an error that names the closest valid keys.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import transformers
import yaml
from trl import TrlParser

from tinystories.core import ConfigError
from tinystories.core.arguments import check_inputs

__all__ = [
    "ALIASES",
    "ConfigError",
    "build_parser",
    "check_keys",
    "load_recipe",
    "parse_args",
    "setup_logging",
]

logger = logging.getLogger(__name__)

# One name per concept in every stage: an older name still works, warns once and names the new one. An alias
# applies in a stage whose parser knows the new name (`model_name_or_path`, TRL's field, is routed to
# `base_model` in fine-tuning and in continued pretraining).
ALIASES: dict[str, str] = {
    "dataset_name": "data",
    "source_data": "data",
    "input": "data",
    "source_split": "split",
    "source_text_column": "text_column",
    "eval_dataset_name": "eval_data",
    "dataset_revision": "data_revision",
    "dataset_config_name": "data_config",
    "tokenizer_name": "tokenizer",
    "dtype": "precision",
    "model_name_or_path": "base_model",
    "local_dir": "output_dir",
}
_warned: set[str] = set()


def setup_logging() -> None:
    """Logging of an entry point: timestamps for ours, warnings only from transformers."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()


def _known_keys(parser: TrlParser) -> set[str]:
    return {a.dest for a in parser._actions if a.dest != "help"}


def build_parser(dataclass_types: Sequence[type], defaults: dict[str, Any] | None = None) -> TrlParser:
    """The parser of a stage: its dataclasses' fields as flags, with the stage's own `defaults` (shown by
    --help); an aliased old field is hidden from --help."""
    parser = TrlParser(dataclass_types=list(dataclass_types))
    if defaults:
        parser.set_defaults_with_config(**defaults)
    known = _known_keys(parser)
    for action in parser._actions:
        if action.help:  # argparse %-formats help: a literal "3.5% of" would crash --help
            action.help = re.sub(r"%%|%\(|%", lambda m: "%%" if m.group() == "%" else m.group(), action.help)
        if ALIASES.get(action.dest) in known:
            action.help = argparse.SUPPRESS
    return parser


def _rename(key: str, known: set[str], where: str) -> str:
    new = ALIASES.get(key)
    if new is None or new not in known:
        return key
    if key not in _warned:
        _warned.add(key)
        logger.warning("%s: --%s is an old name of --%s; use --%s", where, key, new, new)
    return new


def _rename_argv(argv: list[str], known: set[str]) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--") and arg != "--config":
            name, eq, value = arg[2:].partition("=")
            arg = "--" + _rename(name.replace("-", "_"), known, "command line") + eq + value
        out.append(arg)
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found: pass --config with an existing YAML file")
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:  # a tag (!!python/...), bad indentation, a tab: one line, not a traceback
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(
            f"recipe {str(path)!r}{where}: {problem}. A recipe holds plain `key: value` lines (no YAML tags "
            "such as !!python/...): fix that line"
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"recipe {str(path)!r} is not UTF-8 text (byte {err.start}): save it as UTF-8"
        ) from None
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


def parse_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    check_paths: bool = True,
) -> tuple[Any, ...]:
    """Parse `--config recipe.yaml` + CLI overrides into instances of `dataclass_types`.

    Unknown YAML keys and unknown CLI flags, numbers out of range (each group's `check`) and, with
    `check_paths`, local inputs that do not exist (`check_inputs`) raise `ConfigError` before any work starts.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(dataclass_types, defaults)
    known = _known_keys(parser)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a path to a recipe YAML")
        path = argv.pop(i + 1)
        argv.pop(i)
        recipe = load_recipe(path)
        for key, value in (recipe.pop("env", None) or {}).items():
            os.environ[key] = str(value)
        recipe = {_rename(k, known, f"recipe {path!r}"): v for k, v in recipe.items()}
        check_keys(list(recipe), known, f"recipe {path!r}")
        parser.set_defaults_with_config(**recipe)
    argv = _rename_argv(argv, known)
    flags = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--")]
    check_keys([f.replace("-", "_") for f in flags if f not in ("help",)], known, "command line")
    parsed = tuple(parser.parse_args_into_dataclasses(args=argv))
    if check_paths:
        check_inputs(*parsed)
    return parsed
