"""ONNX Runtime generation loops: `OnnxGenerator` over `onnx/generation.onnx` (the fast one: `open_generator`,
`tinystories generate --runtime onnx`) and `OnnxCausalLM` over the transformers.js graph (the reference).

`OnnxGenerator` binds every input and output once to numpy buffers (the cache of the model's context length is
both past and present): a step writes the token and its position and runs; greedy decoding reads the graph's
own argmax, sampling (`sample_token`) its last-position logits.

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

GENERATION_FILE = "onnx/generation.onnx"
GENERATION_INT8_FILE = "onnx/generation_quantized.onnx"


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


class OnnxGenerator:
    """Batch-1 decoding over `onnx/generation.onnx` (`decoder_graph`): the cache is preallocated at the model's
    context and bound as both past and present, every input and output is a numpy buffer bound once, so a step
    is four integer writes and one `run_with_iobinding`."""

    def __init__(self, path: str | Path, threads: int | None = 1):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"no generation graph at {path}: run `tinystories export --model <model> --output_dir <dir>`"
            )
        self.path = path
        self.session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "seqlens_k" not in inputs:
            raise ConfigError(
                f"{path} is not a generation graph (inputs {sorted(inputs)}): export the model again with "
                "`tinystories export --model <model> --output_dir <dir>`"
            )
        self.past_names = [name for name in inputs if name.startswith(PAST_PREFIX + ".")]
        _, kv_heads, self.max_length, head_dim = inputs[self.past_names[0]].shape
        vocab = self.session.get_outputs()[0].shape[1]
        self.uses_positions = "position_ids" in inputs
        self.caches = {
            name: ort.OrtValue.ortvalue_from_numpy(
                np.zeros((1, kv_heads, self.max_length, head_dim), np.float32)
            )
            for name in self.past_names
        }
        self.logits = np.zeros((1, vocab), np.float32)
        self.next_token = np.zeros((1, 1), np.int64)
        self.seqlens = np.zeros(1, np.int32)
        self.total = np.zeros((), np.int32)
        self._step_ids = np.zeros((1, 1), np.int64)
        self._step_positions = np.zeros((1, 1), np.int64)
        self._step = self._binding(self._step_ids, self._step_positions)

    def _binding(self, ids: np.ndarray, positions: np.ndarray) -> ort.IOBinding:
        """Inputs `ids`/`positions` (kept alive by the caller) and the shared buffers, bound once."""
        binding = self.session.io_binding()
        feeds = {"input_ids": ids, "seqlens_k": self.seqlens, "total_sequence_length": self.total}
        if self.uses_positions:
            feeds["position_ids"] = positions
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        for name, array in (("logits", self.logits), ("next_token", self.next_token)):
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array))
        for name, cache in self.caches.items():
            binding.bind_ortvalue_input(name, cache)
            binding.bind_ortvalue_output(name.replace(PAST_PREFIX, PRESENT_PREFIX, 1), cache)
        return binding

    def prefill(self, prompt_ids: list[int]) -> np.ndarray:
        """Run the prompt from position 0 (the cache is overwritten); the logits (1, vocab) after its last token."""
        if not prompt_ids:
            raise ConfigError("an empty prompt: start from the end-of-text token, as generate_story does")
        if len(prompt_ids) > self.max_length:
            raise ConfigError(
                f"a prompt of {len(prompt_ids)} tokens does not fit the {self.max_length}-token context: shorten it"
            )
        ids = np.asarray([prompt_ids], dtype=np.int64)
        positions = np.arange(len(prompt_ids), dtype=np.int64)[None]
        self.seqlens[0] = len(prompt_ids) - 1
        self.total[...] = len(prompt_ids)
        self.session.run_with_iobinding(self._binding(ids, positions))
        return self.logits

    def step(self, token: int) -> np.ndarray:
        """Feed `token` after the tokens in the cache; the logits (1, vocab) that follow it."""
        position = int(self.total)
        if position >= self.max_length:
            raise ConfigError(f"the {self.max_length}-token context is full: generate fewer tokens")
        self._step_ids[0, 0] = token
        self._step_positions[0, 0] = position
        self.seqlens[0] = position
        self.total[...] = position + 1
        self.session.run_with_iobinding(self._step)
        return self.logits

    def generate_greedy(
        self, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None
    ) -> Generation:
        """Batch-1 argmax decoding: `max_new_tokens` tokens, or fewer when EOS comes first."""
        return self.generate(prompt_ids, max_new_tokens, eos_token_id=eos_token_id)

    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        eos_token_id: int | list[int] | None = None,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Greedy (`temperature` 0) or sampled decoding; stops after an end token (`eos_token_id`, one or several)."""
        self._check_room(len(prompt_ids), max_new_tokens)
        stops = set(eos_token_id if isinstance(eos_token_id, list | tuple | set) else [eos_token_id])
        rng = np.random.default_rng(seed)
        greedy = not temperature or temperature <= 0
        started = time.perf_counter()
        self.prefill(prompt_ids)
        tokens: list[int] = []
        first = 0.0
        for step in range(max_new_tokens):
            if greedy:
                token = int(self.next_token[0, 0])
            else:
                token = sample_token(self.logits[0], temperature, top_k, top_p, rng)
            tokens.append(token)
            if step == 0:
                first = time.perf_counter() - started
            if token in stops or step == max_new_tokens - 1:
                break
            self.step(token)
        return Generation(tokens, first, time.perf_counter() - started)

    def _check_room(self, prompt_length: int, max_new_tokens: int) -> None:
        """The prompt and every new token but the last are fed: they must fit in the cache."""
        if prompt_length + max_new_tokens - 1 > self.max_length:
            raise ConfigError(
                f"a {prompt_length}-token prompt and {max_new_tokens} new tokens do not fit the model's "
                f"{self.max_length}-token context: pass at most {self.max_length - prompt_length + 1} new tokens"
            )


def open_generator(folder: str | Path, quantized: bool = False, threads: int | None = 1) -> OnnxGenerator:
    """The generation loop of an exported folder (`tinystories export`): `onnx/generation.onnx`, or its int8 twin."""
    folder = Path(folder)
    file = GENERATION_INT8_FILE if quantized else GENERATION_FILE
    if not (folder / file).is_file():
        flags = " --quantize int8" if quantized else ""
        raise ConfigError(
            f"{folder} has no {file} (the folder `tinystories export{flags}` writes): run "
            f"`tinystories export --model <model> --output_dir {folder}{flags}` first"
        )
    return OnnxGenerator(folder / file, threads)


def sample_token(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None, rng) -> int:
    """One token drawn from `sampling_probs`."""
    probs = sampling_probs(logits, temperature, top_k, top_p)
    return int(rng.choice(probs.size, p=probs))


def sampling_probs(
    logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None
) -> np.ndarray:
    """The distribution `generate(do_sample=True)` draws from: logits / temperature, the `top_k` most likely
    (ties at the k-th kept), then the smallest set of most likely tokens whose mass exceeds `top_p`."""
    scores = logits.astype(np.float64) / temperature
    if top_k and top_k < scores.size:
        kth = np.partition(scores, -top_k)[-top_k]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(probs, kind="stable")  # ascending, as transformers' TopPLogitsWarper
        cumulative = np.cumsum(probs[order])
        dropped = min(int(np.searchsorted(cumulative, 1.0 - top_p, side="right")), probs.size - 1)
        probs[order[:dropped]] = (
            0.0  # the least likely tokens whose mass is within 1 - top_p; the top one stays
        )
        probs /= probs.sum()
    return probs
