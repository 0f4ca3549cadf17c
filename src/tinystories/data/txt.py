"""The official release format: a `.txt` with `<|endoftext|>` between stories, read as bytes story by story.

A story with bytes that are not UTF-8 fails with the file, the story and the byte offset, is left out, or gets
U+FFFD for the bad bytes (`--on_decode_error fail|skip|replace`); a file of white space only names itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset
from datasets.exceptions import DatasetGenerationError

from tinystories.core import ConfigError

logger = logging.getLogger(__name__)

STORY_SEPARATOR = "<|endoftext|>"
TEXT_SUFFIXES = (".txt",)
DATA_FIX = (
    "pass DATA=<path> with a .txt (<|endoftext|> between stories), .jsonl/.json or .parquet file "
    "(a 'text' column), a save_to_disk directory, or a reachable Hub dataset id"
)
_SEPARATOR_BYTES = STORY_SEPARATOR.encode()


def _raw_stories(f) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) of every story of a binary `.txt` stream, split at `<|endoftext|>`."""
    buffer: list[bytes] = []
    start = 0
    for line in f:
        if _SEPARATOR_BYTES not in line:
            buffer.append(line)
            continue
        *done, rest = line.split(_SEPARATOR_BYTES)
        for part in done:
            chunk = b"".join([*buffer, part])
            yield start, chunk
            start += len(chunk) + len(_SEPARATOR_BYTES)
            buffer = []
        buffer = [rest]
    tail = b"".join(buffer)
    if tail.strip():  # whitespace after the last separator is not a story
        yield start, tail


def _decode(chunk: bytes, path, index: int, start: int, on_decode_error: str) -> tuple[str | None, bool]:
    """(the story, or None when skipped; whether it held bytes that are not UTF-8)."""
    try:
        text, bad = chunk.decode("utf-8"), False
    except UnicodeDecodeError as err:
        if on_decode_error == "fail":
            raise ConfigError(
                f"data file {str(path)!r}: story {index + 1} (from byte {start}) is not valid UTF-8 at byte "
                f"{start + err.start} of the file ({err.reason}): fix the file, or pass --on_decode_error skip "
                "(leave such stories out) or --on_decode_error replace (bad bytes become U+FFFD)"
            ) from None
        if on_decode_error == "skip":
            return None, True
        text, bad = chunk.decode("utf-8", errors="replace"), True
    return text.replace("\r\n", "\n").replace("\r", "\n"), bad  # as text mode reads it


def iter_txt_stories(path: str | os.PathLike, on_decode_error: str = "fail") -> Iterator[str]:
    """Stream stories from an official-format `.txt` (stories separated by `<|endoftext|>`).

    Bytes that are not UTF-8 fail with the file, story and byte offset (`on_decode_error="fail"`), leave
    their story out (`"skip"`) or become U+FFFD (`"replace"`); skipped and replaced stories are counted in a
    warning. A file without a non-blank story is an error that names it.
    """
    stories = bad = 0
    with open(path, "rb") as f:
        for index, (start, chunk) in enumerate(_raw_stories(f)):
            text, undecodable = _decode(chunk, path, index, start, on_decode_error)
            bad += undecodable
            if text is None:
                continue
            stories += bool(text.strip())
            yield text
    if bad:
        done = "left out" if on_decode_error == "skip" else "read with U+FFFD for the bad bytes"
        logger.warning("%s: %d stories with bytes that are not UTF-8 %s", path, bad, done)
    if not stories:
        raise ConfigError(
            f"data file {str(path)!r} holds no non-empty stories: only white space (and {STORY_SEPARATOR} "
            f"separators). {DATA_FIX}"
        )


def _txt_generator(paths: list[str], stamps: list[tuple[int, float]], on_decode_error: str = "fail"):
    # stamps (size, mtime) and the decode mode are part of the cache key
    for path in paths:
        n = 0
        for story in iter_txt_stories(path, on_decode_error):
            n += 1
            yield {"text": story.strip()}
        if n == 1 and os.path.getsize(path) > 1000:
            logger.warning(
                "%s holds no %s separator: it is read as one story. Put %s between stories (the release "
                "format), or use .jsonl with a 'text' column",
                path,
                STORY_SEPARATOR,
                STORY_SEPARATOR,
            )


def load_txt(paths: list[Path], on_decode_error: str = "fail") -> Dataset:
    files = [str(p) for p in paths]
    stamps = [(p.stat().st_size, p.stat().st_mtime) for p in paths]
    kwargs = {"paths": files, "stamps": stamps, "on_decode_error": on_decode_error}
    try:
        return Dataset.from_generator(_txt_generator, gen_kwargs=kwargs)
    except DatasetGenerationError as err:  # our own ConfigError, raised inside the generator
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise
