"""Bits per byte: a language-modelling metric that compares models across tokenizers.

    bpb = sum of token NLL in nats over the texts (EOS included) / (ln 2 * UTF-8 bytes of the texts)

Two ways to call it:

* `compute(predictions=texts, model_id="roneneldan/TinyStories-33M")` scores each text with the model (EOS
  prepended as context and appended as a target, within `max_length` tokens, 512 by default for the
  TinyStories checkpoints), exactly as `tinystories eval` does;
* `compute(predictions=texts, nll=[...])` only converts per-text summed NLLs (nats) you computed yourself.
"""

import datasets
import evaluate

from tinystories.data.packing import num_utf8_bytes
from tinystories.data.tokenizer import load_tokenizer
from tinystories.evaluation.metrics import bits_per_byte, perplexity, score_texts
from tinystories.models.loading import context_limit, load_model

_CITATION = """\
@article{eldan2023tinystories,
  title   = {TinyStories: How Small Can Language Models Be and Still Speak Coherent English?},
  author  = {Eldan, Ronen and Li, Yuanzhi},
  journal = {arXiv preprint arXiv:2305.07759},
  year    = {2023}
}
"""

_DESCRIPTION = """\
Bits per UTF-8 byte of held-out text. Unlike loss or perplexity per token, it does not depend on the
tokenizer: the summed negative log-likelihood of the text is divided by ln 2 times its length in bytes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the texts (e.g. held-out stories).
    model_id (`str`, optional): Hub id or local dir of a causal LM to score the texts with.
    nll (`list[float]`, optional): per-text summed NLL in nats, instead of `model_id`.
    num_tokens (`int`, optional): tokens behind `nll` (adds `loss` and `perplexity` to the output).
    revision (`str`, optional): Hub revision of `model_id`.
    max_length (`int`, optional): tokens per window (default min(max_position_embeddings, 512)).
    stride (`int`, optional): new tokens per window for long texts (default max_length // 2).
    batch_size (`int`, defaults to 16), device (`str`, defaults to "cpu").
Returns:
    bits_per_byte, num_bytes, total_nll and, when tokens are known, loss, perplexity, num_tokens.
Examples:
    >>> bpb = evaluate.load("metrics/bits_per_byte")
    >>> bpb.compute(predictions=["ab"], nll=[1.3862943611198906])["bits_per_byte"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BitsPerByte(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2305.07759"],
        )

    def _compute(
        self,
        predictions,
        model_id=None,
        nll=None,
        num_tokens=None,
        revision=None,
        max_length=None,
        stride=None,
        batch_size=16,
        device="cpu",
    ):
        texts = list(predictions)
        num_bytes = num_utf8_bytes(texts)
        if nll is not None:
            if len(nll) != len(texts):
                raise ValueError(f"nll has {len(nll)} values for {len(texts)} texts")
            total = float(sum(nll))
            out = {
                "bits_per_byte": bits_per_byte(total, num_bytes),
                "num_bytes": num_bytes,
                "total_nll": total,
            }
            if num_tokens:
                out.update(
                    loss=total / num_tokens, perplexity=perplexity(total / num_tokens), num_tokens=num_tokens
                )
            return out
        if model_id is None:
            raise ValueError("pass model_id=<Hub id or dir> to score the texts, or nll=[...] to convert")
        model = load_model(model_id, revision=revision).to(device)
        tokenizer = load_tokenizer(model_id, revision=revision)
        scores = score_texts(
            model,
            tokenizer,
            texts,
            max_length or context_limit(model),
            batch_size,
            stride,
            progress=False,
        )
        keys = ("bits_per_byte", "loss", "perplexity", "num_tokens", "num_bytes", "total_nll")
        return {k: scores[k] for k in keys}
