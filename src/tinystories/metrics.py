"""Tokenizer-independent language-modelling metrics.

Held-out loss (mean NLL per token) only compares models that share a tokenizer. Bits per byte
normalises the *total* negative log-likelihood of a text by its length in UTF-8 bytes, so a model
with a trimmed 10K vocabulary and one with the full 50K GPT-Neo vocabulary are comparable:

    bpb = sum_t NLL_t [nats] / (ln 2 * number of UTF-8 bytes of the text)

The sum runs over every predicted token of the text, including the EOS appended after each story
when the model was trained to predict it; the byte count is that of the raw text (the EOS token
adds no bytes). Everything here is pure Python so the training loop, `tinystories eval` and the
`metrics/bits_per_byte` evaluate module share one definition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

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


def num_utf8_bytes(texts: str | Iterable[str]) -> int:
    """Total UTF-8 byte length of a text or an iterable of texts."""
    if isinstance(texts, str):
        return len(texts.encode("utf-8"))
    return sum(len(t.encode("utf-8")) for t in texts)


def bits_per_token(total_nll_nats: float, num_tokens: int) -> float:
    """Mean NLL in bits per token (loss / ln 2)."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    return float(total_nll_nats) / (LN2 * num_tokens)
