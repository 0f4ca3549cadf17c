"""Stories to training blocks: tokenization with byte counts, packing into `block_size` blocks
(EOS between stories), the collator."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset

from tinystories.core import ConfigError
from tinystories.data.loading import _num_proc

PACK_BATCH_SIZE = 2000


# --------------------------------------------------------------------------------------------- packing
def num_utf8_bytes(texts: str | Iterable[str]) -> int:
    """Total UTF-8 byte length of a text or an iterable of texts."""
    if isinstance(texts, str):
        return len(texts.encode("utf-8"))
    return sum(len(t.encode("utf-8")) for t in texts)


def tokenize_stories(
    ds: Dataset, tokenizer, text_column: str = "text", num_proc: int | None = None, add_eos: bool = True
) -> Dataset:
    """One row per story: `input_ids` (story tokens + EOS), `num_tokens` and `num_bytes` (UTF-8 bytes)."""
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise ConfigError("the tokenizer has no eos_token: set one (GPT-Neo uses <|endoftext|>)")

    def tokenize(batch):
        texts = batch[text_column]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        if add_eos:
            ids = [[*x, eos] for x in ids]
        return {
            "input_ids": ids,
            "num_tokens": [len(x) for x in ids],
            "num_bytes": [num_utf8_bytes(t) for t in texts],
        }

    return ds.map(
        tokenize,
        batched=True,
        num_proc=_num_proc(num_proc, len(ds)),
        remove_columns=ds.column_names,
        desc="tokenizing",
    )


def _pack_batch(batch, block_size: int):
    flat = np.fromiter(
        (t for ids in batch["input_ids"] for t in ids),
        dtype=np.int64,
        count=sum(map(len, batch["input_ids"])),
    )
    n_blocks = len(flat) // block_size
    blocks = flat[: n_blocks * block_size].reshape(n_blocks, block_size)
    return {"input_ids": blocks.tolist()}


def pack_tokenized(tokenized: Dataset, block_size: int, num_proc: int | None = None) -> Dataset:
    if block_size < 2:
        raise ConfigError(f"block_size must be at least 2, got {block_size}")
    return tokenized.map(
        _pack_batch,
        batched=True,
        batch_size=PACK_BATCH_SIZE,
        fn_kwargs={"block_size": block_size},
        num_proc=_num_proc(num_proc, len(tokenized)),
        remove_columns=tokenized.column_names,
        desc=f"packing into {block_size}-token blocks",
    )


@dataclass
class PackStats:
    stories: int
    tokens: int  # story tokens incl. one EOS per story
    bytes: int  # UTF-8 bytes of the stories
    blocks: int
    packed_tokens: int
    dropped_tokens: int
    long_stories: int = 0  # stories longer than one block: windowed over several blocks
    capped_tokens: int = 0  # packed tokens left out by a token cap (`--max_eval_tokens`)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "bytes_per_token": self.bytes_per_token}


def pack_dataset(
    ds: Dataset,
    tokenizer,
    block_size: int,
    num_proc: int | None = None,
    text_column: str = "text",
    return_stats: bool = False,
) -> Dataset | tuple[Dataset, PackStats]:
    """Tokenize, add EOS after each story, and pack into `block_size` blocks (no padding)."""
    tokenized = tokenize_stories(ds, tokenizer, text_column=text_column, num_proc=num_proc)
    packed = pack_tokenized(tokenized, block_size, num_proc=num_proc)
    if not return_stats:
        return packed
    table = tokenized.data  # map output: no indices mapping, the Arrow table is the dataset
    n_tokens, n_bytes = (int(pc.sum(table.column(c)).as_py() or 0) for c in ("num_tokens", "num_bytes"))
    stats = PackStats(
        stories=len(tokenized),
        tokens=n_tokens,
        bytes=n_bytes,
        blocks=len(packed),
        packed_tokens=len(packed) * block_size,
        dropped_tokens=n_tokens - len(packed) * block_size,
        long_stories=int(pc.sum(pc.greater(table.column("num_tokens"), block_size)).as_py() or 0),
    )
    return packed, stats


def cap_blocks(packed: Dataset, stats: PackStats, max_tokens: int | None) -> Dataset:
    """The first blocks holding at most `max_tokens` tokens (at least one block); counted in `stats`."""
    if not max_tokens or len(packed) == 0:
        return packed
    block_size = stats.packed_tokens // max(stats.blocks, 1)
    keep = max(1, max_tokens // block_size)
    if keep >= len(packed):
        return packed
    stats.capped_tokens = (len(packed) - keep) * block_size
    return packed.select(range(keep))


class PackedCollator:
    """Stack equal-length packed blocks; labels are the inputs (the model shifts them)."""

    def __call__(self, features: list[dict]) -> dict:
        input_ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        return {"input_ids": input_ids, "labels": input_ids.clone()}
