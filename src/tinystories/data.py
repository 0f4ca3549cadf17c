"""Loading stories from any source the recipes accept, and packing them into training blocks.

Sources (README: the data formats): a Hub dataset id (default `roneneldan/TinyStories`, whose `validation` split is
the eval set), or a local `.txt` with `<|endoftext|>` between stories (the official release format),
`.jsonl`/`.json` or `.parquet` with a text column, a `datasets.save_to_disk` directory, or a directory
of such files. Local sources without a validation split get a seeded held-out fraction.

Packing: every story is tokenized, followed by EOS, and the token stream is cut into `block_size`
blocks with no padding (run_clm style). Blocks are formed per `map` batch of `PACK_BATCH_SIZE`
stories; the tail of each batch that does not fill a block is dropped and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict
from huggingface_hub import hf_hub_download, list_repo_files, snapshot_download
from huggingface_hub.errors import OfflineModeIsEnabled

from tinystories.core import LOCAL_SUFFIXES, ConfigError, offline_hint
from tinystories.metrics import num_utf8_bytes
from tinystories.paths import looks_like_path
from tinystories.shards import is_synthesis_output, load_generated

logger = logging.getLogger(__name__)

STORY_SEPARATOR = "<|endoftext|>"
TEXT_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
PACK_BATCH_SIZE = 2000
DATA_FIX = (
    "pass DATA=<path> with a .txt (<|endoftext|> between stories), .jsonl/.json or .parquet file "
    "(a 'text' column), a save_to_disk directory, or a reachable Hub dataset id"
)


@dataclass
class LoadStats:
    source: str
    train: int
    validation: int
    dropped_empty: int
    validation_from: str  # "split" (the source's own) or "held_out_fraction"

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- loading
def iter_txt_stories(path: str | os.PathLike) -> Iterator[str]:
    """Stream stories from an official-format `.txt` (stories separated by `<|endoftext|>`)."""
    buffer: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if STORY_SEPARATOR in line:
                parts = line.split(STORY_SEPARATOR)
                buffer.append(parts[0])
                yield "".join(buffer)
                yield from parts[1:-1]
                buffer = [parts[-1]]
            else:
                buffer.append(line)
    tail = "".join(buffer)
    if tail.strip():  # whitespace after the last separator is not a story
        yield tail


def _txt_generator(paths: list[str], stamps: list[tuple[int, float]]):  # stamps invalidate the cache
    for path in paths:
        for story in iter_txt_stories(path):
            yield {"text": story.strip()}


def _load_txt(paths: list[Path]) -> Dataset:
    files = [str(p) for p in paths]
    stamps = [(p.stat().st_size, p.stat().st_mtime) for p in paths]
    return Dataset.from_generator(_txt_generator, gen_kwargs={"paths": files, "stamps": stamps})


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    if not files:
        raise ConfigError(f"directory {str(path)!r} holds no dataset: {DATA_FIX}")
    return files


def _load_local(path: Path) -> Dataset | DatasetDict:
    if path.is_dir() and is_synthesis_output(path):  # a `tinystories data` job: its merged records
        return load_generated(path)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    if path.is_dir() and (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    files = _local_files(path)
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1:
        raise ConfigError(f"{str(path)!r} mixes file types {sorted(suffixes)}: keep one format per dataset")
    suffix = suffixes.pop()
    if suffix not in LOCAL_SUFFIXES:
        raise ConfigError(f"unsupported data file {str(path)!r}: {DATA_FIX}")
    for f in files:
        if f.stat().st_size == 0:
            raise ConfigError(f"data file {str(f)!r} is empty: {DATA_FIX}")
    if suffix in TEXT_SUFFIXES:
        return _load_txt(files)
    builder = "json" if suffix in JSON_SUFFIXES else "parquet"
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as err:  # unreadable / malformed file
        raise ConfigError(f"could not read {str(path)!r} as {builder}: {err}. {DATA_FIX}") from err


def hub_txt_splits(repo_id: str, revision: str | None) -> tuple[str, str | None] | None:
    """(train .txt, validation .txt) of a Hub dataset that only holds official-format `.txt` files.

    `datasets.load_dataset` reads such files line by line (the Instruct release becomes ~22M one-line
    rows), which cuts every example apart; they are downloaded and split at `<|endoftext|>` instead.
    Returns None for a repo with a structured format (parquet/json/arrow), which `load_stories` reads.
    """
    try:
        files = list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except OfflineModeIsEnabled:
        try:
            folder = snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True)
        except Exception:
            return None  # not cached: let load_stories raise its clear error
        files = [str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file()]
    except Exception:
        return None
    structured = (".parquet", ".arrow", ".json", ".jsonl", ".csv")
    if any(f.endswith(structured) for f in files):
        return None
    txt = [f for f in files if f.endswith(".txt")]
    train = [f for f in txt if "train" in Path(f).name.lower()]
    valid = [f for f in txt if any(k in Path(f).name.lower() for k in ("valid", "val.", "test"))]
    if not train:
        return None
    if len(train) > 1 or len(valid) > 1:
        raise ConfigError(
            f"dataset {repo_id!r} has several .txt files per split ({train + valid}): download the one you "
            "want and pass it as DATA=<file> (and EVAL_DATA/--eval_data for validation)"
        )

    def fetch(name: str) -> str:
        return hf_hub_download(repo_id, name, repo_type="dataset", revision=revision)

    return fetch(train[0]), (fetch(valid[0]) if valid else None)


def _load_hub(name: str, revision: str | None, config_name: str | None) -> DatasetDict:
    try:
        return datasets.load_dataset(name, config_name, revision=revision)
    except Exception as err:
        hint = offline_hint()
        raise ConfigError(
            f"could not load dataset {name!r} from the Hugging Face Hub{hint}: {type(err).__name__}: {err}. "
            f"Without Hub access, {DATA_FIX}."
        ) from err


def load_raw(data: str, revision: str | None = None, config_name: str | None = None) -> Dataset | DatasetDict:
    """A Dataset (local files) or DatasetDict (Hub / save_to_disk dict) from any accepted source."""
    if not data:
        raise ConfigError(f"no data given: {DATA_FIX}")
    path = Path(data).expanduser()
    if path.exists():
        return _load_local(path)
    if looks_like_path(data):
        raise ConfigError(f"data path {data!r} does not exist: {DATA_FIX}")
    return _load_hub(data, revision, config_name)


def _clean(ds: Dataset, text_column: str, num_proc: int | None) -> tuple[Dataset, int]:
    if text_column not in ds.column_names:
        raise ConfigError(
            f"dataset has no {text_column!r} column (columns: {ds.column_names}); pass --text_column <name>"
        )
    before = len(ds)
    ds = ds.filter(
        lambda batch: [isinstance(t, str) and bool(t.strip()) for t in batch[text_column]],
        batched=True,
        num_proc=_num_proc(num_proc, before),
        desc="dropping empty stories",
    )
    return ds, before - len(ds)


def _num_proc(num_proc: int | None, n: int) -> int | None:
    if num_proc is None or num_proc <= 1 or n < 20_000:
        return None  # process start-up costs more than it saves on small data
    return num_proc


def hold_out(train: Dataset, validation_fraction: float, seed: int, name: str) -> tuple[Dataset, Dataset]:
    """(train, validation): a seeded `validation_fraction` of the stories held out, as training does it."""
    if not 0 < validation_fraction < 1:
        raise ConfigError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if len(train) < 2:
        raise ConfigError(f"dataset {name!r} has {len(train)} story: too few to hold out a validation split")
    split = train.train_test_split(test_size=validation_fraction, seed=seed, shuffle=True)
    return split["train"], split["test"]


def load_stories(
    data: str,
    validation_fraction: float = 0.1,
    seed: int = 42,
    text_column: str = "text",
    eval_data: str | None = None,
    revision: str | None = None,
    config_name: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    num_proc: int | None = None,
    return_stats: bool = False,
) -> DatasetDict | tuple[DatasetDict, LoadStats]:
    """`DatasetDict(train=..., validation=...)` with non-empty stories in `text_column`."""
    if config_name is None and not Path(data).expanduser().exists() and not looks_like_path(data):
        txt = hub_txt_splits(data, revision)  # an official-format .txt release on the Hub
        if txt is not None:
            data, hub_eval = txt
            eval_data = eval_data or hub_eval
    raw = load_raw(data, revision, config_name)
    dropped = 0
    if isinstance(raw, DatasetDict):
        if "train" not in raw:
            raise ConfigError(f"dataset {data!r} has no 'train' split (splits: {list(raw)})")
        train, dropped_train = _clean(raw["train"], text_column, num_proc)
        dropped += dropped_train
        validation = raw.get("validation", raw.get("test"))
    else:
        train, dropped = _clean(raw, text_column, num_proc)
        validation = None
    if len(train) == 0:
        raise ConfigError(f"dataset {data!r} holds no non-empty stories: {DATA_FIX}")

    if eval_data:
        extra = load_raw(eval_data, None, None)
        validation = extra.get("validation", extra.get("train")) if isinstance(extra, DatasetDict) else extra
    if validation is not None:
        validation, dropped_val = _clean(validation, text_column, num_proc)
        dropped += dropped_val
        validation_from = "split"
    else:
        train, validation = hold_out(train, validation_fraction, seed, data)
        validation_from = "held_out_fraction"

    if max_train_samples is not None:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        validation = validation.select(range(min(max_eval_samples, len(validation))))
    result = DatasetDict(train=train, validation=validation)
    stats = LoadStats(data, len(train), len(validation), dropped, validation_from)
    if dropped:
        logger.warning("dropped %d empty or whitespace-only stories from %s", dropped, data)
    logger.info("loaded %s", stats)
    return (result, stats) if return_stats else result


def load_eval_texts(
    data: str,
    split: str = "validation",
    validation_fraction: float = 0.1,
    seed: int = 42,
    text_column: str = "text",
    max_samples: int | None = None,
) -> list[str]:
    """The held-out stories: the Hub split as published, or the same held-out fraction training used."""
    if not looks_like_path(data):
        try:
            ds = datasets.load_dataset(data, split=split)
        except Exception as err:
            raise ConfigError(
                f"could not load split {split!r} of dataset {data!r}{offline_hint()}: {type(err).__name__}: {err}. "
                "Pass DATA=<local .txt/.jsonl/.parquet> or a reachable Hub dataset id."
            ) from err
        if text_column not in ds.column_names:
            raise ConfigError(
                f"dataset has no {text_column!r} column ({ds.column_names}); pass --text_column"
            )
        if max_samples:
            ds = ds.select(range(min(max_samples, len(ds))))
        texts = ds[text_column]
    else:
        splits = load_stories(
            data,
            validation_fraction=validation_fraction,
            seed=seed,
            text_column=text_column,
            max_eval_samples=max_samples,
            max_train_samples=max_samples,
        )
        if split not in splits:
            raise ConfigError(f"split {split!r} not available: use one of {list(splits)}")
        texts = splits[split][text_column]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ConfigError(f"no non-empty stories in split {split!r} of {data!r}")
    return texts


# --------------------------------------------------------------------------------------------- packing
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
    )
    return packed, stats


class PackedCollator:
    """Stack equal-length packed blocks; labels are the inputs (the model shifts them)."""

    def __call__(self, features: list[dict]) -> dict:
        input_ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        return {"input_ids": input_ids, "labels": input_ids.clone()}
