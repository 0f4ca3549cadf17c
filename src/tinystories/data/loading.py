"""Loading stories from any source the recipes accept, and packing them into training blocks.

Sources (README: the data formats): a Hub dataset id (default `roneneldan/TinyStories`, whose `validation` split is
the eval set), or a local `.txt` with `<|endoftext|>` between stories (the official release format),
`.jsonl`/`.json` or `.parquet` with a text column, a `datasets.save_to_disk` directory, or a directory
of such files. Sources without a validation split get a seeded held-out fraction.

One loader for every stage (training and the benchmark: `load_stories`; eval: `load_eval_texts`; dedup:
`load_split`): a Hub dataset is read by its files (`hub_data_files`), only the splits asked for, through the HF
cache (so offline from it): parquet shards, or a `.txt` release split at `<|endoftext|>` (TinyStoriesInstruct).

Packing: every story is tokenized, followed by EOS, and the token stream is cut into `block_size`
blocks with no padding (run_clm style). Blocks are formed per `map` batch of `PACK_BATCH_SIZE`
stories; the tail of each batch that does not fill a block is dropped and counted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from huggingface_hub import hf_hub_download, list_repo_files, snapshot_download

from tinystories.core import LOCAL_SUFFIXES, ConfigError, offline_hint
from tinystories.core.arguments import DECODE_ERROR_MODES, check_choice
from tinystories.core.paths import looks_like_path
from tinystories.data.shards import is_synthesis_output, load_generated
from tinystories.data.txt import DATA_FIX, STORY_SEPARATOR, TEXT_SUFFIXES, load_txt
from tinystories.data.txt import iter_txt_stories as iter_txt_stories  # the stream reader, where it was

logger = logging.getLogger(__name__)

JSON_SUFFIXES = (".jsonl", ".json")


PARQUET_SUFFIXES = (".parquet",)


SPLIT_WORDS = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}


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
def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_SUFFIXES)
    if not files:
        raise ConfigError(f"directory {str(path)!r} holds no dataset: {DATA_FIX}")
    return files


def _load_local(path: Path, on_decode_error: str = "fail") -> Dataset | DatasetDict:
    if path.is_dir() and is_synthesis_output(path):  # a `tinystories data` job: its merged records
        return load_generated(path)
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    if path.is_dir() and (path / "state.json").is_file():
        return datasets.load_from_disk(str(path))
    return _load_files(_local_files(path), str(path), on_decode_error)


def _load_files(files: list[Path], name: str, on_decode_error: str = "fail") -> Dataset:
    """Data files of one format (a local dataset, or one split's files downloaded from the Hub) as one Dataset."""
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1:
        raise ConfigError(f"{name!r} mixes file types {sorted(suffixes)}: keep one format per dataset")
    suffix = suffixes.pop()
    if suffix not in LOCAL_SUFFIXES:
        raise ConfigError(f"unsupported data file {name!r}: {DATA_FIX}")
    for f in files:
        if f.stat().st_size == 0:
            raise ConfigError(f"data file {str(f)!r} is empty: {DATA_FIX}")
    if suffix in TEXT_SUFFIXES:
        return load_txt(files, on_decode_error)
    builder = "json" if suffix in JSON_SUFFIXES else "parquet"
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except Exception as err:  # unreadable / malformed file
        raise ConfigError(f"could not read {name!r} as {builder}: {err}. {DATA_FIX}") from err


def _split_of(name: str) -> str | None:
    """The split a Hub data file belongs to, from the words of its name, then of its folders."""
    parts = Path(name).parts
    for part in (parts[-1], *reversed(parts[:-1])):
        words = set(re.split(r"[^a-z0-9]+", part.lower()))
        for split, names in SPLIT_WORDS.items():
            if words.intersection(names):
                return split
    return None


def _repo_files(repo_id: str, revision: str | None) -> list[str] | None:
    """The files of a Hub dataset repo: listed on the Hub, else those of its cached snapshot, else None."""
    try:
        return list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except Exception:  # offline, unreachable or unknown: what the local cache holds, if anything
        pass
    try:
        folder = Path(
            snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True)
        )
    except Exception:
        return None
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


def hub_data_files(repo_id: str, revision: str | None = None) -> dict[str, list[str]] | None:
    """Split -> data files of a Hub dataset repo, from the file names (`data/train-00000-of-00004-<hash>.parquet`).

    The first format with a train split wins: parquet, JSON lines, then `.txt` releases (which `load_dataset`
    would cut apart line by line). None when the repo is neither reachable nor cached, has no train split in
    these formats, or spreads it over several folders (configs): `datasets.load_dataset` reads it then.
    """
    files = _repo_files(repo_id, revision)
    for suffixes in (PARQUET_SUFFIXES, JSON_SUFFIXES, TEXT_SUFFIXES):
        splits: dict[str, list[str]] = {}
        for name in sorted(files or []):
            split = _split_of(name) if name.endswith(suffixes) else None
            if split:
                splits.setdefault(split, []).append(name)
        if "train" in splits:
            break
    else:
        return None
    if len({Path(f).parent for f in splits["train"]}) > 1:
        return None
    if suffixes == TEXT_SUFFIXES and any(len(names) > 1 for names in splits.values()):
        raise ConfigError(
            f"dataset {repo_id!r} has several .txt files per split ({splits}): download the one you want and "
            "pass it as DATA=<file> (and EVAL_DATA/--eval_data for validation)"
        )
    return splits


def _load_hub(
    name: str,
    revision: str | None,
    config_name: str | None,
    splits: Sequence[str] | None = None,
    on_decode_error: str = "fail",
) -> DatasetDict:
    """The `splits` of a Hub dataset (all when None): only their files are downloaded, read like local files."""
    files = hub_data_files(name, revision) if config_name is None else None
    wanted = [s for s in (splits or sorted(files or {})) if s in (files or {})]
    if files is not None and not wanted:
        raise ConfigError(
            f"dataset {name!r} has no {' / '.join(splits or [])} split (splits: {sorted(files)}): "
            "pass --split <one of them>"
        )
    try:
        if files is None:
            return datasets.load_dataset(name, config_name, revision=revision)
        fetched = {
            s: [Path(hf_hub_download(name, f, repo_type="dataset", revision=revision)) for f in files[s]]
            for s in wanted
        }
    except Exception as err:
        raise ConfigError(
            f"could not load dataset {name!r} from the Hugging Face Hub{offline_hint()}: "
            f"{type(err).__name__}: {err}. Without Hub access, {DATA_FIX}."
        ) from err
    return DatasetDict({s: _load_files(paths, name, on_decode_error) for s, paths in fetched.items()})


def load_raw(
    data: str,
    revision: str | None = None,
    config_name: str | None = None,
    splits: Sequence[str] | None = None,
    on_decode_error: str = "fail",
) -> Dataset | DatasetDict:
    """A Dataset (local files) or DatasetDict (Hub / save_to_disk dict) from any accepted source.

    `splits` limits what is read of a Hub dataset (those it has of them; default all); `on_decode_error`
    (fail, skip, replace) is what a `.txt` story with bytes that are not UTF-8 does.
    """
    if not data:
        raise ConfigError(f"no data given: {DATA_FIX}")
    check_choice("on_decode_error", on_decode_error, DECODE_ERROR_MODES)
    path = Path(data).expanduser()
    if path.exists():
        return _load_local(path, on_decode_error)
    if looks_like_path(data):
        raise ConfigError(f"data path {data!r} does not exist: {DATA_FIX}")
    return _load_hub(data, revision, config_name, splits, on_decode_error)


def _split_or_whole(
    data: str, split: str, revision: str | None, config_name: str | None, on_decode_error: str = "fail"
) -> tuple[Dataset, bool]:
    raw = load_raw(data, revision, config_name, splits=(split,), on_decode_error=on_decode_error)
    if isinstance(raw, Dataset):
        return raw, True
    if split not in raw:
        raise ConfigError(
            f"{data!r} has no split {split!r} (splits: {list(raw)}): pass --split <one of them>"
        )
    return raw[split], False


def load_split(
    data: str,
    split: str = "train",
    revision: str | None = None,
    config_name: str | None = None,
    on_decode_error: str = "fail",
) -> Dataset:
    """One split of any source with every column: the named split of a Hub dataset (only its files are
    downloaded; `.txt` releases split at `<|endoftext|>`) or of a saved DatasetDict; a source without splits
    (a file, a folder of files, a `tinystories data` output) whole."""
    return _split_or_whole(data, split, revision, config_name, on_decode_error)[0]


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
        hint = (
            f": a .txt file needs {STORY_SEPARATOR} between stories, and without one it is read as one story"
            if str(name).endswith(TEXT_SUFFIXES)
            else ""
        )
        raise ConfigError(
            f"dataset {name!r} has {len(train)} story: too few to hold out a validation split{hint}; add "
            "stories, or pass a separate --eval_dataset_name"
        )
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
    on_decode_error: str = "fail",
) -> DatasetDict | tuple[DatasetDict, LoadStats]:
    """`DatasetDict(train=..., validation=...)` with non-empty stories in `text_column`."""
    raw = load_raw(data, revision, config_name, ("train", "validation", "test"), on_decode_error)
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
        extra = load_raw(eval_data, splits=("validation", "train"), on_decode_error=on_decode_error)
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


@dataclass
class EvalTexts:
    """The stories `tinystories eval` scores, and how they were selected (recorded in `eval_results.json`)."""

    texts: list[str]
    split: str  # the split scored; "all" for a source without splits
    selected: str  # "whole_file", "split" (the source's own) or "held_out_fraction" (as training held out)
    held_out_fraction: float | None = None
    seed: int | None = None

    def record(self) -> dict:
        out = {"split": self.split, "selected": self.selected}
        if self.selected == "held_out_fraction":
            out.update(held_out_fraction=self.held_out_fraction, held_out_seed=self.seed)
        return out


def load_eval_texts(
    data: str,
    split: str = "validation",
    validation_fraction: float | None = None,
    seed: int = 42,
    text_column: str = "text",
    max_samples: int | None = None,
    on_decode_error: str = "fail",
) -> EvalTexts:
    """The stories to score, read by the loader training uses (`.txt` Hub releases split at `<|endoftext|>`).

    Without `validation_fraction`: the `split` of a Hub dataset or saved DatasetDict (only its files are
    downloaded), the whole of a file or folder. With it: what a training run with that fraction and `seed`
    held out (the source's own validation split when it has one, as in training); `split="train"` gives the rest.
    """
    if validation_fraction is None:
        ds, whole = _split_or_whole(data, split, None, None, on_decode_error)
        ds, _ = _clean(ds, text_column, None)
        selected, fraction = ("whole_file" if whole else "split"), None
        split = "all" if whole else split
    else:
        if split not in ("train", "validation") or not 0 < validation_fraction < 1:
            raise ConfigError(
                f"--validation_fraction {validation_fraction} --split {split}: the fraction must be in (0, 1) "
                "and the split validation (what training held out) or train (the rest)"
            )
        splits, stats = load_stories(
            data,
            validation_fraction=validation_fraction,
            seed=seed,
            text_column=text_column,
            max_train_samples=max_samples,
            max_eval_samples=max_samples,
            return_stats=True,
            on_decode_error=on_decode_error,
        )
        ds, selected, fraction = splits[split], stats.validation_from, validation_fraction
    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    texts = list(ds[text_column])
    if not texts:
        raise ConfigError(f"no non-empty stories in {data!r}: {DATA_FIX}")
    return EvalTexts(texts, split, selected, fraction, seed)


def held_out_texts(args) -> EvalTexts:
    """`load_eval_texts` for a stage's `core.arguments.HeldOutArguments` (eval, analyze, leaderboard): one reading
    of --data, --split, --validation_fraction, --seed, --text_column, --max_samples, --on_decode_error."""
    return load_eval_texts(
        args.data,
        args.split,
        args.validation_fraction,
        args.seed,
        args.text_column,
        args.max_samples,
        args.on_decode_error,
    )
