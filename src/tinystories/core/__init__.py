"""Errors and constants every layer shares. Standard library only: importing it costs nothing.

`ConfigError` is what every stage raises for input it cannot run (the CLI prints its message, which names
the fix, without a traceback). The data files of the recipes (`data_generation/`) are found from here:
they are package data (`tinystories.data_generation`, mapped from the top-level folder in pyproject.toml),
read through `importlib.resources`, so an editable checkout and a plain `pip install .` find the same files.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

TRAINED_CONTEXT = 512  # tokens the TinyStories models were trained at; quality degrades past it
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


def _data_generation_dir() -> Path:
    """`data_generation/` as a real directory: the checkout's folder (editable) or the installed copy."""
    files = resources.files("tinystories.data_generation")
    if not isinstance(files, Path):  # pip always unpacks; only a zipimport has no folder to hand out
        raise ImportError(f"tinystories must be installed unpacked (pip install), not run from {files}")
    return files.resolve()


DATA_GENERATION_DIR = _data_generation_dir()
EVAL_PROMPTS_FILE = DATA_GENERATION_DIR / "eval_prompts.jsonl"
# The source checkout when running from one (editable install), else None: only for showing paths
# relative to it; nothing the package reads is looked up here.
REPO_ROOT: Path | None = (
    DATA_GENERATION_DIR.parent if (DATA_GENERATION_DIR.parent / "pyproject.toml").is_file() else None
)


class ConfigError(ValueError):
    """A recipe or command line that cannot be run; the message names the fix."""


class RunDone(Exception):  # not an error: the CLI prints its message and exits 0
    """The output folder already holds this very run, finished: nothing to do."""


def offline_hint() -> str:
    """Appended to Hub errors: the usual reason a download fails on a configured machine."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    return " (HF_HUB_OFFLINE is set)" if offline else ""
