"""A small ONNX Runtime generation loop over the exported decoder (the tests' and the benchmark's reference).

`OnnxCausalLM` feeds the graph the way transformers.js does: the prompt with empty `(B, H, 0, D)` past tensors,
then one token a step with the previous step's `present.*` as `past_key_values.*`, the attention mask covering
the whole sequence and `position_ids` from its cumulative sum. `generate_greedy` is batch-1 argmax decoding that
stops at `eos_token_id` (when given) like `model.generate(do_sample=False)`, and times the first token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tinystories.core import ConfigError
from tinystories.models.export.graph import BASE_INPUTS, PAST_PREFIX, PRESENT_PREFIX


@dataclass
class Generation:
    tokens: list[int]  # the new tokens only
    first_token_seconds: float  # prompt forward + the first token
    seconds: float  # the whole loop

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0


def session_options(threads: int | None = None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class OnnxCausalLM:
    """An exported decoder (`onnx/model.onnx` or `onnx/model_quantized.onnx`) on ONNX Runtime's CPU provider."""

    def __init__(self, path: str | Path, threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no ONNX model at {path}: run `make export MODEL=<model>` first")
        self.path = path
        self.session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [name for name in BASE_INPUTS if name not in inputs]
        self.past_names = [name for name in inputs if name.startswith(PAST_PREFIX + ".")]
        if missing or not self.past_names:
            raise ConfigError(
                f"{path} is not a decoder with past key values (inputs {sorted(inputs)}): "
                "export it with `tinystories export`"
            )
        _, self.num_heads, _, self.head_dim = inputs[self.past_names[0]].shape
        self.output_names = [o.name for o in self.session.get_outputs()]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        shape = (batch, self.num_heads, 0, self.head_dim)
        return {name: np.zeros(shape, dtype=np.float32) for name in self.past_names}

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        past: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits of `input_ids` (B, S) after `past`, and the cache that includes them (the next step's past)."""
        input_ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = input_ids.shape
        past = self.empty_past(batch) if past is None else past
        past_len = next(iter(past.values())).shape[2]
        if attention_mask is None:
            attention_mask = np.ones((batch, past_len + seq), dtype=np.int64)
        attention_mask = np.asarray(attention_mask, dtype=np.int64)
        position_ids = np.clip(np.cumsum(attention_mask, axis=-1) - 1, 0, None)[:, -seq:]
        feed = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            **past,
        }
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))
        present = {
            name.replace(PRESENT_PREFIX, PAST_PREFIX, 1): value
            for name, value in outputs.items()
            if name.startswith(PRESENT_PREFIX + ".")
        }
        return outputs["logits"], present

    def logits(self, input_ids, attention_mask=None) -> np.ndarray:
        """(B, S, vocab) logits of whole sequences (no cache), as `model(input_ids).logits`."""
        return self.forward(np.asarray(input_ids, dtype=np.int64), attention_mask)[0]

    def generate_greedy(
        self, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None
    ) -> Generation:
        """Batch-1 greedy decoding with the KV cache: `max_new_tokens` tokens, or fewer when EOS comes first."""
        if not prompt_ids:
            raise ConfigError("an empty prompt: start from the end-of-text token, as generate_story does")
        started = time.perf_counter()
        ids = np.asarray([prompt_ids], dtype=np.int64)
        logits, past = self.forward(ids)
        tokens: list[int] = []
        first = 0.0
        for step in range(max_new_tokens):
            token = int(np.argmax(logits[0, -1]))
            tokens.append(token)
            if step == 0:
                first = time.perf_counter() - started
            if token == eos_token_id or step == max_new_tokens - 1:
                break
            logits, past = self.forward(np.asarray([[token]], dtype=np.int64), past=past)
        return Generation(tokens, first, time.perf_counter() - started)
