"""The ONNX graph of a GPT-Neo (or Llama) decoder with past key values, by `torch.onnx.export(dynamo=True)`.

Inputs and outputs are named as optimum's `GPTNeoOnnxConfig` (`TextDecoderWithPositionIdsOnnxConfig`) names
them, which is what transformers.js (`getCacheNames`, `decoder_forward`) and ONNX Runtime generation loops feed:

* inputs `input_ids` (batch_size, sequence_length), `attention_mask` (batch_size, past_sequence_length +
  sequence_length), `position_ids` (batch_size, sequence_length), `past_key_values.{i}.key` / `.value`
  (batch_size, num_heads, past_sequence_length, head_dim), all int64 / float32;
* outputs `logits` (batch_size, sequence_length, vocab) and `present.{i}.key` / `.value` (batch_size,
  num_heads, past_sequence_length + sequence_length, head_dim).

One graph serves the prompt (past_sequence_length 0: transformers.js feeds empty `(B, H, 0, D)` tensors,
resolving the symbolic `batch_size` from its input) and every decoding step. The KV cache of every layer
grows with the sequence, as `DynamicCache` grows in PyTorch; what keeps GPT-Neo's local layers local is the
mask. The stock eager attention slices a `(max_positions, max_positions)` boolean buffer per layer (2048² for
the released configs: 4 MB of constants per layer in the graph); `ExportAttention` computes the very same band
from positions instead (`key <= query` and, in a local layer, `query - key < window_size`), with the eager
math otherwise unchanged (fp32 scores without 1/sqrt(d) scaling, additive padding mask, softmax). So a key
older than `window_size` positions stays masked in the local layers however long the cache grows.

A Llama-architecture model (`--architecture llama`) is traced with the library's eager attention (scaled,
rotary positions from `position_ids`, grouped-query heads): its cache tensors have `num_key_value_heads`
heads of `head_dim`, which is what transformers.js reads from a llama config.json.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.export import Dim
from transformers import DynamicCache
from transformers.activations import GELUTanh
from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention

from tinystories.core import ConfigError
from tinystories.models.attention import attention_backend, use_fast_attention, use_fast_gelu

logger = logging.getLogger(__name__)

PAST_PREFIX = "past_key_values"
PRESENT_PREFIX = "present"
BASE_INPUTS = ("input_ids", "attention_mask", "position_ids")
TOTAL_LENGTH = "past_sequence_length + sequence_length"
DEFAULT_OPSET = 20
MAX_SINGLE_FILE_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with room: transformers.js reads one file


def kv_names(num_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def input_names(num_layers: int) -> list[str]:
    return [*BASE_INPUTS, *kv_names(num_layers, PAST_PREFIX)]


def output_names(num_layers: int) -> list[str]:
    return ["logits", *kv_names(num_layers, PRESENT_PREFIX)]


class ExportAttention(GPTNeoSelfAttention):
    """Eager GPT-Neo attention whose causal / sliding-window band comes from positions, not a constant buffer."""

    def _attn(self, query, key, value, attention_mask=None):
        query, key = query.to(torch.float32), key.to(torch.float32)
        scores = torch.matmul(query, key.transpose(-1, -2))  # GPT-Neo: no 1/sqrt(head_dim)
        q_len, kv_len = query.shape[-2], key.shape[-2]
        key_pos = torch.arange(kv_len, device=query.device)
        query_pos = key_pos[kv_len - q_len :]  # the queries are the last q_len positions of the cache
        visible = key_pos[None, :] <= query_pos[:, None]
        if self.attention_type == "local":
            visible = visible & (query_pos[:, None] - key_pos[None, :] < self.config.window_size)
        scores = torch.where(visible, scores, torch.finfo(scores.dtype).min)
        if attention_mask is not None:  # the additive padding mask of the eager path
            scores = scores + attention_mask
        weights = self.attn_dropout(nn.functional.softmax(scores, dim=-1).to(value.dtype))
        return torch.matmul(weights, value), weights


class DecoderWithPast(nn.Module):
    """Flat tensors in and out: `(input_ids, attention_mask, position_ids, past...)` -> `(logits, present...)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, past):
        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)])
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            return_dict=True,
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


EXPORTABLE = ("gpt_neo", "llama")


def check_exportable(model: nn.Module) -> None:
    if getattr(model.config, "model_type", None) not in EXPORTABLE:
        raise ConfigError(
            f"export supports GPT-Neo and Llama models (model_type gpt_neo, llama), got "
            f"{model.config.model_type!r}: pass MODEL=<a tinystories run dir, a roneneldan/TinyStories-* id or "
            "a LoRA adapter dir of one>"
        )
    size = sum(p.numel() * 4 for p in model.parameters())
    if size > MAX_SINGLE_FILE_BYTES:
        raise ConfigError(f"{size / 1e9:.1f} GB of fp32 weights do not fit one .onnx file (2 GB limit)")


@contextlib.contextmanager
def export_attention(model: nn.Module):
    """The portable attention for the trace, the model's own afterwards: GPT-Neo gets stock GELU and
    `ExportAttention` on every layer; Llama the library's eager attention."""
    if model.config.model_type == "llama":
        backend = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            yield model
        finally:
            model.set_attn_implementation(backend)
        return
    with _gpt_neo_export_attention(model):
        yield model


@contextlib.contextmanager
def _gpt_neo_export_attention(model: nn.Module):
    backend = attention_backend(model) or "eager"
    fast_gelu = any(isinstance(m, GELUTanh) for m in model.modules())
    use_fast_attention(model, backend="eager")  # the stock classes, config attention "eager"
    use_fast_gelu(model, enable=False)  # gelu_new as written: portable ops (Tanh, Pow) for every runtime
    modules = [m for m in model.modules() if isinstance(m, GPTNeoSelfAttention)]
    for module in modules:
        module.__class__ = ExportAttention
    try:
        yield model
    finally:
        for module in modules:
            module.__class__ = GPTNeoSelfAttention
        use_fast_gelu(model, enable=fast_gelu)
        use_fast_attention(model, backend=backend)


def cache_shape(config) -> tuple[int, int]:
    """(heads, head_dim) of one layer's key/value cache: GPT-Neo's heads, Llama's key/value heads."""
    if getattr(config, "model_type", None) == "llama":
        return config.num_key_value_heads, config.head_dim
    return config.num_heads, config.hidden_size // config.num_heads


def sample_inputs(config, batch: int = 2, seq: int = 3, past: int = 5):
    """Trace inputs: sizes > 1 (torch.export specialises 0 and 1) and distinct, so no axis is tied to another."""
    heads, head_dim = cache_shape(config)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.long)
    position_ids = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    cache = tuple(
        torch.randn(batch, heads, past, head_dim, generator=generator)
        for _ in range(2 * config.num_hidden_layers)
    )
    return input_ids, attention_mask, position_ids, cache


def _dynamic_shapes(num_layers: int) -> dict:
    batch, seq = Dim("batch_size"), Dim("sequence_length")
    past = Dim("past_sequence_length", min=0)
    return {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: Dim.AUTO},  # = past + seq, inferred by torch.export
        "position_ids": {0: batch, 1: seq},
        "past": tuple({0: batch, 2: past} for _ in range(2 * num_layers)),
    }


def _strip_trace_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node debugging metadata (FX node, stack trace, ...): ~0.7 MB a model, unused."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _name_total_length(model: onnx.ModelProto) -> None:
    """The attention mask's length axis gets optimum's name (torch.export calls it `s<n>`)."""
    mask = next(v for v in model.graph.input if v.name == "attention_mask")
    symbol = mask.type.tensor_type.shape.dim[1].dim_param
    if not symbol or symbol == TOTAL_LENGTH:
        return
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == symbol:
                dim.dim_param = TOTAL_LENGTH


@torch.no_grad()
def export_decoder(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """`model` (GPT-Neo or Llama, fp32 on the CPU) as one ONNX decoder with past key values at `path` (weights inside)."""
    check_exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.to(device="cpu", dtype=torch.float32).eval()
    layers = model.config.num_hidden_layers
    for name in ("onnxscript", "onnx_ir"):  # a line per folded constant and per rewrite rule at INFO
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
    with export_attention(model), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # our names are kept
        program = torch.onnx.export(
            DecoderWithPast(model).eval(),
            sample_inputs(model.config),
            dynamo=True,
            dynamic_shapes=_dynamic_shapes(layers),
            input_names=input_names(layers),
            output_names=output_names(layers),
            opset_version=opset,
            external_data=False,
            optimize=True,
        )
    proto = program.model_proto
    _strip_trace_metadata(proto)
    _name_total_length(proto)
    onnx.save_model(proto, str(path))
    logger.info("wrote %s (%.1f MB, opset %d)", path, path.stat().st_size / 1e6, opset)
    return path
