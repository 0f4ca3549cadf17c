"""Tokenizer-independent language-modelling metrics.

Held-out loss (mean NLL per token) only compares models that share a tokenizer. Bits per byte
normalises the *total* negative log-likelihood of a text by its length in UTF-8 bytes, so a model
with a trimmed 10K vocabulary and one with the full 50K GPT-Neo vocabulary are comparable:

    bpb = sum_t NLL_t [nats] / (ln 2 * number of UTF-8 bytes of the text)

The sum runs over every predicted token of the text, including the token that ends each story as the
model's family was trained to predict it (`data.tokenizer.story_boundary_ids`: EOS for GPT-Neo and
SimpleStories, BOS for llama2.c, whose stories each start with BOS and have no EOS); the byte count is
that of the raw UTF-8 text, the same whatever the tokenizer (no dummy-prefix space, no special token
adds bytes). The training loop, `tinystories eval` and the `metrics/bits_per_byte` evaluate module share
these definitions: `bits_per_byte` is the only place the formula is written, `num_utf8_bytes` the only byte
counter, and `score_texts` the one held-out scorer (per story, the family's story-start token before it as
context and its end-of-story token after it as a target, within the trained context; long stories in
overlapping windows).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm.auto import tqdm

from tinystories.core import ConfigError
from tinystories.data.packing import num_utf8_bytes
from tinystories.data.tokenizer import story_boundary_ids

LN2 = math.log(2.0)


def bits_per_byte(total_nll_nats: float, num_bytes: int) -> float:
    """Bits per UTF-8 byte from a summed NLL in nats (natural log) over a text of `num_bytes` bytes."""
    if num_bytes <= 0:
        raise ValueError(f"num_bytes must be positive, got {num_bytes}")
    if total_nll_nats < 0 or math.isnan(total_nll_nats):
        raise ValueError(f"total_nll_nats must be a non-negative sum of NLLs in nats, got {total_nll_nats}")
    return float(total_nll_nats) / (LN2 * num_bytes)


def perplexity(loss: float) -> float:
    """Perplexity exp(loss) from a mean per-token NLL in nats; inf if it overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def bits_per_token(total_nll_nats: float, num_tokens: int) -> float:
    """Mean NLL in bits per token (loss / ln 2)."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    return float(total_nll_nats) / (LN2 * num_tokens)


# ------------------------------------------------------------------------------------- scoring
def _windows(seq: list[int], max_length: int, stride: int) -> list[tuple[list[int], int]]:
    """Split `seq` into (window, first scored position) so that every target seq[1:] is scored exactly once.

    A target at window position k is predicted from the window's tokens before k; a window after the first
    keeps `max_length - stride` tokens of context from the previous one.
    """
    if len(seq) <= max_length:
        return [(seq, 1)]
    out, start, scored_to = [], 0, 1  # targets [1, scored_to) are done
    while scored_to < len(seq):
        end = min(start + max_length, len(seq))
        out.append((seq[start:end], scored_to - start))
        scored_to = end
        start = end - (max_length - stride)
    return out


Window = tuple[int, list[int], int]  # (text index, token ids, first scored position)


def story_windows(
    tokenizer, texts: list[str], max_length: int, stride: int, vocab: int, generation_config=None
) -> list[Window]:
    """Every text as `[start, *story, end]` (`story_boundary_ids`: `[EOS, *story, EOS]` for GPT-Neo, `[BOS,
    *story, BOS]` for llama2.c), cut into windows of at most `max_length` tokens."""
    start, end = story_boundary_ids(tokenizer, generation_config)
    windows: list[Window] = []
    for i, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
        seq = [start, *ids, end]
        if max(seq) >= vocab:
            raise ConfigError(
                f"token id {max(seq)} >= the model's vocabulary {vocab}: pass the model's own --tokenizer"
            )
        windows += [(i, w, first) for w, first in _windows(seq, max_length, stride)]
    return windows


def cap_tokens(tokenizer, texts: list[str], max_tokens: int | None) -> tuple[list[str], dict[str, int]]:
    """The stories in order up to `max_tokens` of their tokens (`--max_eval_tokens`): the story that crosses the cap
    is cut there (decoded from its first tokens), the ones after it are left out; with what was left out."""
    if not max_tokens:
        return texts, {}
    kept, used, capped_tokens, capped_stories = [], 0, 0, 0
    for text, ids in zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True):
        room = max(max_tokens - used, 0)
        if len(ids) > room:
            capped_tokens, capped_stories = capped_tokens + len(ids) - room, capped_stories + 1
            text = tokenizer.decode(ids[:room]) if room else ""
        used += min(len(ids), room)
        if text:
            kept.append(text)
    stats = {"max_eval_tokens": max_tokens, "capped_tokens": capped_tokens, "capped_stories": capped_stories}
    return kept, stats


def _window_nll(model, windows: list[Window], device) -> tuple[list[float], list[int]]:
    """Summed NLL and number of scored targets of each window of one padded batch."""
    width = max(len(w) for _, w, _ in windows)
    ids = torch.zeros(len(windows), width, dtype=torch.long)
    attn = torch.zeros(len(windows), width, dtype=torch.long)
    scored = torch.zeros(len(windows), width - 1, dtype=torch.bool)  # scored[b, k-1]: target at k
    for b, (_, w, first) in enumerate(windows):
        ids[b, : len(w)] = torch.tensor(w)
        attn[b, : len(w)] = 1
        scored[b, first - 1 : len(w) - 1] = True
    ids, attn, scored = ids.to(device), attn.to(device), scored.to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    token_nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none"
    ).view(len(windows), -1)
    return (token_nll * scored).sum(dim=1, dtype=torch.float64).tolist(), scored.sum(dim=1).tolist()


def score_texts(
    model,
    tokenizer,
    texts: list[str],
    max_length: int,
    batch_size: int = 16,
    stride: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Summed NLL (nats) of every text, each scored on its own with EOS as context before it and target after.

    Returns totals plus per-text `nll` and `tokens` lists (used by the `bits_per_byte` metric module).
    """
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}")
    stride = stride or max(1, max_length // 2)
    if not 0 < stride <= max_length - 1:
        raise ConfigError(f"stride must be in [1, max_length - 1 = {max_length - 1}], got {stride}")
    vocab = model.get_input_embeddings().num_embeddings
    windows = story_windows(
        tokenizer, texts, max_length, stride, vocab, getattr(model, "generation_config", None)
    )
    order = sorted(range(len(windows)), key=lambda j: -len(windows[j][1]))  # similar lengths share a batch
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = next(model.parameters()).device
    nll, ntok = [0.0] * len(texts), [0] * len(texts)
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(batches, desc="scoring", unit="batch", disable=not progress, mininterval=2):
            sums, counts = _window_nll(model, [windows[j] for j in batch], device)
            for j, total, count in zip(batch, sums, counts, strict=True):
                nll[windows[j][0]] += total
                ntok[windows[j][0]] += count
    total_nll, num_tokens, num_bytes = math.fsum(nll), sum(ntok), num_utf8_bytes(texts)
    loss = total_nll / num_tokens
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "bits_per_byte": bits_per_byte(total_nll, num_bytes),
        "total_nll": total_nll,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
        "num_stories": len(texts),
        "num_windows": len(windows),
        "nll": nll,
        "tokens": ntok,
    }
