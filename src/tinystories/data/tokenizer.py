"""Tokenizers for the recipes: the GPT-Neo tokenizer, its top-K trimmed form, or an own byte-level BPE.

**Trimming (`--vocab_size K`)**, as in the paper, keeps the K most frequent GPT-Neo tokens of the
training data. To stay lossless it keeps, in this order: the 256 byte tokens (so *every* text still
encodes and decodes exactly), EOS, then tokens by descending frequency *together with the merge
ancestors they are built from* (so a kept token stays reachable by BPE), until K tokens are kept.
Merges whose parts or result were dropped are removed. A word whose own token was trimmed is therefore
spelled with the longest kept pieces, in the worst case byte by byte: e.g. a rare name becomes several
common sub-word tokens. Such words cost the model more tokens, but nothing maps to an unknown token.
New ids follow the original id order, so the 256 byte tokens keep ids 0-255 and EOS is the last id
(K-1). `trimmed_vocab.json` next to the tokenizer maps new ids to GPT-Neo ids.

**Own BPE (`--train_tokenizer`)**: a byte-level BPE with `<|endoftext|>` trained with `tokenizers`
on the training stories, as llama2.c trains its own small-vocabulary tokenizer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import ByteLevelBPETokenizer, Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tinystories.core import TRAINED_CONTEXT, ConfigError, offline_hint
from tinystories.core.paths import looks_like_path
from tinystories.data.packing import tokenize_stories

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "EleutherAI/gpt-neo-125M"


EOS_TOKEN = "<|endoftext|>"


TOKENIZER_FIX = "pass TOKENIZER=<local tokenizer dir> (or --tokenizer) or a reachable Hub id"


def load_tokenizer(name_or_path: str = DEFAULT_TOKENIZER, revision: str | None = None, **kwargs):
    """AutoTokenizer (fast) from a Hub id or dir, with pad = eos when the tokenizer has no pad token."""
    path = Path(name_or_path).expanduser()
    if looks_like_path(name_or_path) and not path.exists():
        raise ConfigError(f"tokenizer path {name_or_path!r} does not exist: {TOKENIZER_FIX}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, use_fast=True, **kwargs)
    except Exception as err:
        raise ConfigError(
            f"could not load tokenizer {name_or_path!r}{offline_hint()}: {type(err).__name__}: {err}. {TOKENIZER_FIX}"
        ) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def story_boundary_ids(tokenizer, generation_config=None) -> tuple[int, int]:
    """(start, end): the token each story follows and the token that ends it, as the model's family was trained.

    GPT-Neo (bos = eos = <|endoftext|>) and SimpleStories (EOS only) put EOS between stories: (EOS, EOS). Llama 2
    style models start a story with BOS and end it with EOS: (BOS, EOS). llama2.c's data starts every story with
    BOS and never has EOS, so a story ends where the next one's BOS is: (BOS, BOS). A converted llama2.c model
    says so by listing BOS among its generation config's `eos_token_id` (`tinystories pull` writes [1, 2]).
    """
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no eos_token: pass a --tokenizer that marks the end of a story")
    start = bos if bos is not None else eos
    stops = getattr(generation_config, "eos_token_id", None)
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    end = bos if bos is not None and bos != eos and bos in stops else eos
    return start, end


# ------------------------------------------------------------------------------------------- trimming
def token_counts(token_id_batches: Iterable[Iterable[int]], vocab_size: int) -> np.ndarray:
    counts = np.zeros(vocab_size, dtype=np.int64)
    for ids in token_id_batches:
        arr = np.fromiter(ids, dtype=np.int64)
        if arr.size:
            counts += np.bincount(arr, minlength=vocab_size)[:vocab_size]
    return counts


@dataclass
class TrimResult:
    kept_ids: list[int]  # original ids, in new-id order
    vocab_size: int
    eos_id: int
    coverage: float  # fraction of training tokens whose token was kept as is
    stats: dict = field(default_factory=dict)


def _merge_parents(model: dict) -> dict[str, tuple[str, str]]:
    parents = {}
    for merge in model["merges"]:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        parents.setdefault(a + b, (a, b))
    return parents


def select_trimmed_vocab(
    tokenizer_json: dict, counts: np.ndarray, k: int, eos_token: str = EOS_TOKEN
) -> TrimResult:
    vocab: dict[str, int] = dict(tokenizer_json["model"]["vocab"])
    for added in tokenizer_json.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    id_to_token = {i: t for t, i in vocab.items()}
    parents = _merge_parents(tokenizer_json["model"])
    base = [t for t in vocab if t not in parents and t != eos_token]  # the byte alphabet
    if k < len(base) + 1:
        raise ConfigError(
            f"--vocab_size {k} is too small: a byte-level tokenizer needs at least {len(base) + 1}"
        )
    kept: set[str] = set(base) | {eos_token}

    def closure(token: str) -> list[str]:
        out, stack = [], [token]
        while stack:
            t = stack.pop()
            if t in kept or t in out:
                continue
            out.append(t)
            if t in parents:
                stack.extend(parents[t])
        return out

    for token_id in np.argsort(-counts, kind="stable"):
        if len(kept) >= k or counts[token_id] == 0:
            break
        token = id_to_token.get(int(token_id))
        if token is None or token in kept:
            continue
        needed = closure(token)
        if len(kept) + len(needed) <= k:
            kept.update(needed)
    kept_ids = sorted(vocab[t] for t in kept)
    eos_new = kept_ids.index(vocab[eos_token])
    total = counts.sum()
    coverage = float(counts[kept_ids].sum() / total) if total else 1.0
    return TrimResult(kept_ids, len(kept_ids), eos_new, coverage, {"requested": k, "kept": len(kept_ids)})


def build_trimmed_tokenizer_json(
    tokenizer_json: dict, result: TrimResult, eos_token: str = EOS_TOKEN
) -> dict:
    vocab: dict[str, int] = dict(tokenizer_json["model"]["vocab"])
    id_to_token = {i: t for t, i in vocab.items()}
    id_to_token[vocab.get(eos_token, -1)] = eos_token
    for added in tokenizer_json.get("added_tokens", []):
        id_to_token[added["id"]] = added["content"]
    new_vocab = {id_to_token[old]: new for new, old in enumerate(result.kept_ids)}
    merges = []
    for merge in tokenizer_json["model"]["merges"]:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        if a in new_vocab and b in new_vocab and a + b in new_vocab:
            merges.append(merge)
    out = json.loads(json.dumps(tokenizer_json))
    out["model"]["vocab"] = new_vocab
    out["model"]["merges"] = merges
    for added in out.get("added_tokens", []):
        if added["content"] in new_vocab:
            added["id"] = new_vocab[added["content"]]
    out["added_tokens"] = [a for a in out.get("added_tokens", []) if a["content"] in new_vocab]
    return out


def trim_tokenizer(base_tokenizer, token_id_batches: Iterable[Iterable[int]], k: int, output_dir: str | Path):
    """Save a top-K trimmed copy of `base_tokenizer` to `output_dir` and return it (AutoTokenizer-loadable)."""
    base_json = json.loads(base_tokenizer.backend_tokenizer.to_str())
    counts = token_counts(token_id_batches, len(base_tokenizer))
    result = select_trimmed_vocab(base_json, counts, k, base_tokenizer.eos_token or EOS_TOKEN)
    trimmed_json = build_trimmed_tokenizer_json(base_json, result, base_tokenizer.eos_token or EOS_TOKEN)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer.from_str(json.dumps(trimmed_json))
    eos = base_tokenizer.eos_token or EOS_TOKEN
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        bos_token=eos,
        unk_token=eos,
        pad_token=eos,
        model_max_length=TRAINED_CONTEXT,
    )
    tokenizer.save_pretrained(output_dir)
    (output_dir / "trimmed_vocab.json").write_text(
        json.dumps(
            {
                "base_vocab_size": len(base_tokenizer),
                "vocab_size": result.vocab_size,
                "eos_token_id": result.eos_id,
                "coverage_of_training_tokens": result.coverage,
                "new_to_base_id": result.kept_ids,
            }
        )
    )
    logger.info(
        "trimmed tokenizer: %d tokens cover %.4f of the training tokens; saved to %s",
        result.vocab_size,
        result.coverage,
        output_dir,
    )
    return tokenizer


# ------------------------------------------------------------------------------------------- own BPE
def train_bpe_tokenizer(texts: Iterator[str] | Iterable[str], vocab_size: int, output_dir: str | Path):
    """Train a byte-level BPE (GPT-2 style pre-tokenization) with `<|endoftext|>` as EOS/BOS/pad."""
    if vocab_size < 257 + 1:
        raise ConfigError(f"--vocab_size {vocab_size} is too small for a byte-level BPE (needs at least 258)")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN], show_progress=True
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=TRAINED_CONTEXT,
    )
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def _batched_texts(ds, text_column: str = "text", batch_size: int = 1000) -> Iterator[list[str]]:
    for i in range(0, len(ds), batch_size):
        yield ds[i : i + batch_size][text_column]


def prepare_tokenizer(
    tokenizer_name: str,
    train_dataset,
    output_dir: str | Path,
    vocab_size: int | None = None,
    train_tokenizer: bool = False,
    text_column: str = "text",
    num_proc: int | None = None,
    revision: str | None = None,
):
    """The tokenizer a pretraining run uses: base, trimmed to `vocab_size`, or trained from scratch.

    A trimmed/trained tokenizer is written to `output_dir` and reused when the run is resumed.
    """
    output_dir = Path(output_dir)
    if train_tokenizer:
        if not vocab_size:
            raise ConfigError("--train_tokenizer needs --vocab_size (e.g. 4096 or 10000)")
        if (output_dir / "tokenizer.json").is_file():
            return load_tokenizer(str(output_dir))
        texts = (t for batch in _batched_texts(train_dataset, text_column) for t in batch)
        return train_bpe_tokenizer(texts, vocab_size, output_dir)
    base = load_tokenizer(tokenizer_name, revision=revision)
    if not vocab_size or vocab_size >= len(base):
        return base
    if (output_dir / "trimmed_vocab.json").is_file():
        meta = json.loads((output_dir / "trimmed_vocab.json").read_text())
        if meta["vocab_size"] == vocab_size:
            return load_tokenizer(str(output_dir))
    tokenized = tokenize_stories(train_dataset, base, text_column=text_column, num_proc=num_proc)
    ids = (row for batch in _batched_texts(tokenized, "input_ids") for row in batch)
    return trim_tokenizer(base, ids, vocab_size, output_dir)
