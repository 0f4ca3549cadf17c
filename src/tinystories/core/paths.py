"""Hub id or local path: the one predicate, and the names that are safe to publish.

Every stage that accepts "a Hub id or a local path" decides with `looks_like_path`; cards, eval results and
adapter configs record names through `resolve_hub_id` / `public_name` / `display_path`, so no absolute local
path reaches a file that may be shared.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tinystories.core import LOCAL_SUFFIXES, ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; outputs are not locked there
    fcntl = None

CARD_INFO_FILE = "card_info.json"
LOCK_FILE = ".tinystories.lock"  # in an output folder while a stage writes it (never uploaded: `*.lock`)
PULL_INFO_FILE = "pull_info.json"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_CACHE_SNAPSHOT = re.compile(r"(?:models|datasets)--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\]")
OUTPUT_ROOTS = ("outputs/", "outputs\\")  # where every stage writes: never a Hub namespace


def _exists(value: str) -> bool:
    try:
        return "\n" not in value and Path(value).expanduser().exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a path here
        return False


def looks_like_path(name: str | os.PathLike) -> bool:
    """True when `name` means a local path: it exists here, or cannot be a Hub id (`name` / `org/name`).

    `./x`, `/x`, `~/x`, `C:\\x`, `a/b/c`, `x.txt` and anything under `outputs/` are paths even before they exist;
    a URL, and text with white space that is not an existing path (a story, a sample), are not.
    """
    value = str(name)
    if "://" in value:  # a URL is neither a Hub id nor a local path
        return False
    if _exists(value):
        return True
    if any(c.isspace() for c in value):
        return False
    return (
        value in (".", "..", "~")
        or value.startswith(("./", "../", ".\\", "..\\", "/", "~/", "\\", *OUTPUT_ROOTS))
        or bool(_WINDOWS_DRIVE.match(value))
        or value.endswith(LOCAL_SUFFIXES)
        or value.count("/") > 1
    )


def is_hub_id(value: Any) -> bool:
    """True for an `org/name` Hub repo id that is not a path on this machine."""
    return isinstance(value, str) and bool(_HUB_ID.match(value)) and not looks_like_path(value)


def resolve_hub_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The Hub repo id behind `name_or_path`, or None if it is only a local folder.

    Understands Hub ids, HF-cache snapshot paths (`models--org--name/snapshots/<sha>`), and folders written by
    `tinystories pull --local_dir` (`pull_info.json`) or by the training tail (`card_info.json` with `repo_id`).
    """
    if name_or_path is None:
        return None
    value = str(name_or_path)
    if is_hub_id(value):
        return value
    match = _CACHE_SNAPSHOT.search(value)
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    if not _exists(value):
        return None
    for name in (PULL_INFO_FILE, CARD_INFO_FILE):
        path = Path(value) / name
        try:
            repo_id = json.loads(path.read_text()).get("repo_id") if path.is_file() else None
        except (OSError, ValueError, AttributeError):
            continue
        if is_hub_id(repo_id):
            return repo_id
    return None


def public_name(value: Any) -> Any:
    """A name safe to publish: Hub ids unchanged (also behind a cache path), local paths reduced to their basename."""
    if not isinstance(value, str) or is_hub_id(value):
        return value
    hub_id = resolve_hub_id(value)
    if hub_id:
        return hub_id
    if looks_like_path(value) or os.sep in value or "/" in value:
        return Path(value.rstrip("/\\")).name or value
    return value


def display_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """`path` relative to `root` (default: the current directory) when inside it, else its basename.

    For files that record where their inputs came from (eval results, dedup stats, adapter configs).
    """
    resolved = Path(path).expanduser().resolve()
    try:
        return resolved.relative_to(Path(root or Path.cwd()).resolve()).as_posix()
    except ValueError:
        return resolved.name


def data_name(data: str) -> str:
    """What result files record as the data: the Hub id as given, else a path relative to here or a basename."""
    return display_path(data) if _exists(data) else data


# ------------------------------------------------------------------------------------------ outputs
def _relation(output: Path, source: Path) -> str | None:
    if output == source:
        return "is"
    if source in output.parents:
        return "lies inside"
    if output in source.parents:
        return "contains"
    return None


def check_output_dir(
    output: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike | list | tuple | None],
    flag: str = "--output_dir",
    inside_ok: bool = False,
) -> None:
    """Refuse an output folder that is, contains or lies inside a local input, before anything is written.

    `inputs` maps each input's flag to its value(s); Hub ids and missing paths are skipped (the loaders say
    what is wrong with those). `inside_ok`: the stage writes a subfolder its input never reads
    (`export`'s default `<model>/onnx-export`).
    """
    out = Path(output).expanduser().resolve()
    for name, values in inputs.items():
        for value in values if isinstance(values, list | tuple) else [values]:
            if not value or not _exists(str(value)):
                continue
            relation = _relation(out, Path(value).expanduser().resolve())
            if relation is None or (relation == "lies inside" and inside_ok):
                continue
            raise ConfigError(
                f"{flag} {str(output)!r} {relation} the input {name} {str(value)!r}: the outputs would mix with "
                f"(or replace) what it reads. Choose an {flag} outside it, e.g. outputs/<new name>"
            )


@contextmanager
def output_lock(
    folder: str | os.PathLike, flag: str = "--output_dir", name: str = LOCK_FILE, beside: bool = False
) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing) while a stage writes it.

    An advisory `flock` on `<folder>/.tinystories.lock` (`beside`: `<parent>/.<folder name>.lock`, for a folder
    that must hold nothing else, such as an upload): a second writer is refused at once with the pid and host
    of the first; the kernel drops the lock when its process ends, so a killed run leaves none behind.
    """
    folder = Path(folder)
    if beside and fcntl is not None:  # the folder itself is left to the stage to create
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _locked(folder.parent / f".{folder.name}.lock", flag, folder):
            yield folder
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield folder
        return
    try:
        with _locked(folder / name, flag, folder):
            yield folder
    finally:
        if created and [p.name for p in folder.iterdir()] == [name]:  # failed before writing: leave no trace
            (folder / name).unlink()
            folder.rmdir()


@contextmanager
def _locked(path: Path, flag: str, folder: Path) -> Iterator[None]:
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(
                f"{flag} {str(folder)!r} is being written by another run ({holder}): wait for it to finish, "
                f"or choose another {flag}"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
