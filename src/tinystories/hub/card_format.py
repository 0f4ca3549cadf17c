"""What model and dataset cards share: the templates folder, sanitizing, and how values are written.

The prose of both cards lives in `templates/*.md.j2`; `cards` (model cards) and `dataset_card` only compute
the data they render, with the helpers below.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tinystories.core.paths import looks_like_path, public_name

TEMPLATES = Path(__file__).parent / "templates"

_SECRET_KEY = re.compile(r"(^|_)(token|secret|api_?key|password|credentials?)($|_)", re.IGNORECASE)
_ENUM_STR = re.compile(r"^[A-Z]\w*\.([A-Z][A-Z0-9_]*)$")  # str(SchedulerType.CONSTANT) -> "constant"
# What a local path looks like inside text we are about to publish.
_ABS_PATH = re.compile(
    r"(?<![\w:/.])(/(?:home|root|tmp|work|Users|mnt|data|scratch|var|private)/[^\s\"'`|)]+)"
)
_WIN_PATH = re.compile(r"\b[A-Za-z]:\\[^\s\"'`|]+")


def sanitize(value: Any) -> Any:
    """`value` with secret-looking keys dropped, local paths reduced to basenames, NaN/inf as strings."""
    if isinstance(value, Mapping):
        return {str(k): sanitize(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list | tuple):
        return [sanitize(v) for v in value]
    if isinstance(value, str) and (
        looks_like_path(value) or _ABS_PATH.search(value) or _WIN_PATH.search(value)
    ):
        return public_name(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return value.name
    return value


def find_local_paths(text: str) -> list[str]:
    """Absolute local paths found in `text` (used to refuse publishing them)."""
    return sorted(set(_ABS_PATH.findall(text)) | set(_WIN_PATH.findall(text)))


def fmt(value: Any) -> str:
    """`value` as it reads in a Markdown table cell."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or (1e-6 <= abs(value) < 1):
            return f"{value:.4g}"
        if 1 <= abs(value) < 1e6:
            return f"{value:,.4f}".rstrip("0").rstrip(".")
        return f"{value:.3e}"
    if isinstance(value, list | tuple | dict):
        return f"`{json.dumps(value)}`"
    text = str(getattr(value, "value", value))
    match = _ENUM_STR.match(text)
    if match:
        text = match.group(1).lower()
    return text.replace("|", "\\|").replace("\n", " ")


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def value_rows(source: Mapping[str, Any], labels: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """`(label, formatted value)` for each `(key, label)` whose value in `source` is set."""
    return [(label, fmt(source[key])) for key, label in labels if source.get(key) is not None]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing, unreadable or not an object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
