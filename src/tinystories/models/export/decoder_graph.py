"""The generation graph: one batch-1 decoding step written for ONNX Runtime's CPU kernels, from the model's weights.

`onnx/model.onnx` (`graph`) is the transformers.js graph: traced from PyTorch, a few hundred small ops, a cache
that grows by a concatenation every step. `onnx/generation.onnx` is built here node by node with
`onnx.helper` and ONNX Runtime's `com.microsoft` operators, so that a step is a few dozen kernels:

* `GroupQueryAttention` per layer over a packed QKV projection, with a key/value cache preallocated at the
  model's context length: the same buffer is fed as `past_key_values.{i}.*` and bound as `present.{i}.*`, so
  the kernel writes the new position in place (`session.OnnxGenerator` binds them). `seqlens_k` (tokens in the
  cache after the step, minus one) and `total_sequence_length` say where the step is. GPT-Neo: no 1/sqrt(d)
  scaling (`scale` 1), local layers see the last `window_size` keys, the query's own included
  (`local_window_size` = `window_size` in ONNX Runtime 1.32; the tests check it past the window). Llama: rotary
  positions from the model's own rotary module (cos/sin tables), `num_key_value_heads` key/value heads; the
  kernel's `do_rotary` when heads have a multiple of 16 dims, else `RotaryEmbedding` on q and k first.
* `SkipLayerNormalization` (GPT-Neo) / `SkipSimplifiedLayerNormalization` (Llama) add the residual, the
  previous projection's bias and normalise in one kernel; `FastGelu` with the fc bias is GPT-Neo's `gelu_new`
  (the same tanh formula); `QuickGelu` with alpha 1 is SiLU over the gate of one fused gate/up projection.
* Only the last position reaches the LM head; outputs `logits` (batch, vocab) and `next_token`, their argmax.

Inputs: `input_ids` (batch, sequence) int64, `position_ids` (same shape; GPT-Neo's learned positions, rotary),
`seqlens_k` (batch,) int32, `total_sequence_length` () int32 and the caches (batch, kv heads, context, head dim).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tinystories.core import ConfigError
from tinystories.models.export.graph import PAST_PREFIX, PRESENT_PREFIX, kv_names
from tinystories.models.loading import context_limit

logger = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
OPSET = 21
GENERATION_FAMILIES = ("gpt_neo", "llama")


class _Graph:
    """Nodes and initializers with unique names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def weight(self, name: str, array) -> str:
        if isinstance(array, torch.Tensor):
            array = array.detach().to(torch.float32).cpu().numpy()
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> list[str]:
        self._count += 1
        if isinstance(outputs, int):
            outputs = [f"{op_type}_{self._count}_{k}" for k in range(outputs)]
        domain = MS_DOMAIN if op_type in _CONTRIB else ""
        self.nodes.append(
            helper.make_node(
                op_type, inputs, outputs, name=f"{op_type}_{self._count}", domain=domain, **attrs
            )
        )
        return outputs


_CONTRIB = {
    "GroupQueryAttention",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "FastGelu",
    "QuickGelu",
    "RotaryEmbedding",
}


def _linear(g: _Graph, name: str, *modules) -> str:
    """The (in, out) weight of one or several `nn.Linear` side by side (a fused projection)."""
    return g.weight(name, torch.cat([m.weight for m in modules], dim=0).T)


def _kernel_head_dim(head_dim: int) -> int:
    """GroupQueryAttention's CPU kernel takes heads of a multiple of 8 dims: smaller ones get zero dims (the 1M
    size's heads have 4)."""
    return -(-head_dim // 8) * 8


def _head_index(heads: int, head_dim: int, padded: int) -> list[int]:
    """Where the dims of `heads` heads go in heads of `padded` dims: each half at the start of a padded half, so
    that rotary's pairs (j, j + head_dim / 2) stay pairs (j, j + padded / 2)."""
    half = head_dim // 2
    return [
        h * padded + (j if j < half else padded // 2 + j - half)
        for h in range(heads)
        for j in range(head_dim)
    ]


def _qkv_weight(projections, heads: tuple[int, ...], head_dim: int) -> torch.Tensor:
    """The (in, out) weight of the q, k, v projections side by side, heads zero-padded for the kernel."""
    padded = _kernel_head_dim(head_dim)
    blocks = []
    for module, n in zip(projections, heads, strict=True):
        block = module.weight.new_zeros(n * padded, module.weight.shape[1])
        block[_head_index(n, head_dim, padded)] = module.weight
        blocks.append(block)
    return torch.cat(blocks).T


def _out_weight(module, heads: int, head_dim: int) -> torch.Tensor:
    """The (in, out) weight of the output projection, reading the padded heads (their zero dims add nothing)."""
    padded = _kernel_head_dim(head_dim)
    weight = module.weight.new_zeros(heads * padded, module.weight.shape[0])
    weight[_head_index(heads, head_dim, padded)] = module.weight.T
    return weight


def _skip_norm(g: _Graph, op: str, inputs: list[str], eps: float, keep_sum: bool = True) -> tuple[str, str]:
    """(normalised, residual sum) of `input + skip (+ bias)`: one kernel; the sum only when a later layer reads it."""
    n = g._count + 1
    outputs = [f"norm_{n}", "", "", f"residual_{n}" if keep_sum else ""]
    g.op(op, inputs, outputs[: 4 if keep_sum else 1], epsilon=eps)
    return outputs[0], outputs[3]


def _attention(g: _Graph, x: str, layer: int, qkv: str, heads: int, kv_heads: int, **attrs) -> str:
    past = [f"{PAST_PREFIX}.{layer}.key", f"{PAST_PREFIX}.{layer}.value"]
    present = [f"{PRESENT_PREFIX}.{layer}.key", f"{PRESENT_PREFIX}.{layer}.value"]
    packed = g.op("MatMul", [x, qkv])[0]
    inputs = [packed, "", "", *past, "seqlens_k", "total_sequence_length"]
    if attrs.get("do_rotary"):
        inputs += ["cos_cache", "sin_cache"]
    out = g.op(
        "GroupQueryAttention",
        inputs,
        [f"attn_{layer}", *present],
        num_heads=heads,
        kv_num_heads=kv_heads,
        **attrs,
    )
    return out[0]


def _gpt_neo_layers(g: _Graph, model) -> str:
    """GPT-Neo's blocks; returns the final LayerNorm's output (batch, sequence, hidden)."""
    config, body = model.config, model.transformer
    eps = float(config.layer_norm_epsilon)
    tokens = g.op("Gather", [g.weight("wte", body.wte.weight), "input_ids"])[0]
    positions = g.op("Gather", [g.weight("wpe", body.wpe.weight), "position_ids"])[0]
    blocks = list(body.h)
    ln = body.ln_f if not blocks else blocks[0].ln_1
    norm = [g.weight("ln_1.0.w", ln.weight), g.weight("ln_1.0.b", ln.bias)]
    x, residual = _skip_norm(g, "SkipLayerNormalization", [tokens, positions, *norm], eps)
    for i, block in enumerate(blocks):
        att = block.attn.attention
        local = att.attention_type == "local"
        window = int(config.window_size) if local else -1
        heads = int(config.num_heads)
        head_dim = config.hidden_size // heads
        qkv = g.weight(f"qkv.{i}", _qkv_weight((att.q_proj, att.k_proj, att.v_proj), (heads,) * 3, head_dim))
        attn = _attention(g, x, i, qkv, heads, heads, scale=1.0, local_window_size=window)
        out = g.op("MatMul", [attn, g.weight(f"out_proj.{i}", _out_weight(att.out_proj, heads, head_dim))])[0]
        norm2 = [g.weight(f"ln_2.{i}.w", block.ln_2.weight), g.weight(f"ln_2.{i}.b", block.ln_2.bias)]
        bias = g.weight(f"out_proj.{i}.b", att.out_proj.bias)
        x, residual = _skip_norm(g, "SkipLayerNormalization", [out, residual, *norm2, bias], eps)
        fc = g.op("MatMul", [x, _linear(g, f"c_fc.{i}", block.mlp.c_fc)])[0]
        act = g.op("FastGelu", [fc, g.weight(f"c_fc.{i}.b", block.mlp.c_fc.bias)])[0]
        proj = g.op("MatMul", [act, _linear(g, f"c_proj.{i}", block.mlp.c_proj)])[0]
        ln = body.ln_f if i == len(blocks) - 1 else blocks[i + 1].ln_1
        norm = [g.weight(f"ln_1.{i + 1}.w", ln.weight), g.weight(f"ln_1.{i + 1}.b", ln.bias)]
        bias = g.weight(f"c_proj.{i}.b", block.mlp.c_proj.bias)
        last = i == len(blocks) - 1
        x, residual = _skip_norm(g, "SkipLayerNormalization", [proj, residual, *norm, bias], eps, not last)
    return x


def _llama_layers(g: _Graph, model, length: int) -> str:
    """Llama's blocks (RMSNorm, rotary GQA, SwiGLU); returns the final RMSNorm's output."""
    config, body = model.config, model.model
    if (
        config.hidden_act != "silu"
        or getattr(config, "mlp_bias", False)
        or getattr(config, "attention_bias", False)
    ):
        raise ConfigError(
            f"the generation graph covers Llama with SiLU and no biases (this one: hidden_act {config.hidden_act}, "
            "biases): export with --verify false and use onnx/model.onnx"
        )
    eps = float(config.rms_norm_eps)
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    _rotary_tables(g, model, length, head_dim)
    residual = g.op("Gather", [g.weight("embed", body.embed_tokens.weight), "input_ids"])[0]
    layers = list(body.layers)
    first = layers[0].input_layernorm if layers else body.norm
    x = g.op(
        "SimplifiedLayerNormalization", [residual, g.weight("norm.0", first.weight)], epsilon=eps, axis=-1
    )[0]
    for i, layer in enumerate(layers):
        att, mlp = layer.self_attn, layer.mlp
        if head_dim % 16 == 0:  # GroupQueryAttention rotates heads of a multiple of 16 dims itself
            qkv = _linear(g, f"qkv.{i}", att.q_proj, att.k_proj, att.v_proj)
            attn = _attention(g, x, i, qkv, heads, kv_heads, scale=head_dim**-0.5, do_rotary=1)
        else:
            attn = _rotated_attention(g, x, i, att, heads, kv_heads, head_dim)
        out = g.op("MatMul", [attn, g.weight(f"o_proj.{i}", _out_weight(att.o_proj, heads, head_dim))])[0]
        norm = g.weight(f"post_norm.{i}", layer.post_attention_layernorm.weight)
        x, residual = _skip_norm(g, "SkipSimplifiedLayerNormalization", [out, residual, norm], eps)
        gate_up = g.op("MatMul", [x, _linear(g, f"gate_up.{i}", mlp.gate_proj, mlp.up_proj)])[0]
        gate, up = g.op("Split", [gate_up], 2, axis=-1, num_outputs=2)
        hidden = g.op("Mul", [g.op("QuickGelu", [gate], alpha=1.0)[0], up])[0]
        down = g.op("MatMul", [hidden, _linear(g, f"down.{i}", mlp.down_proj)])[0]
        last = i == len(layers) - 1
        norm = g.weight(f"norm.{i + 1}", body.norm.weight if last else layers[i + 1].input_layernorm.weight)
        x, residual = _skip_norm(g, "SkipSimplifiedLayerNormalization", [down, residual, norm], eps, not last)
    return x


def _rotated_attention(g: _Graph, x: str, layer: int, att, heads: int, kv_heads: int, head_dim: int) -> str:
    """Rotary by `RotaryEmbedding` on q and k, then GroupQueryAttention without it: the kernel's own rotary wants
    heads of a multiple of 16 dims (stories260K's are 8; zero-padding them to 16 measured slower)."""
    counts = (heads, kv_heads, kv_heads)
    weight = _qkv_weight((att.q_proj, att.k_proj, att.v_proj), counts, head_dim)
    qkv = g.op("MatMul", [x, g.weight(f"qkv.{layer}", weight)])[0]
    padded = _kernel_head_dim(head_dim)
    sizes = g.weight(f"qkv_sizes.{layer}", np.array([n * padded for n in counts]))
    q, k, v = g.op("Split", [qkv, sizes], 3, axis=-1)
    tables = ["position_ids", "cos_cache", "sin_cache"]
    q = g.op("RotaryEmbedding", [q, *tables], num_heads=heads, rotary_embedding_dim=padded)[0]
    k = g.op("RotaryEmbedding", [k, *tables], num_heads=kv_heads, rotary_embedding_dim=padded)[0]
    past = [f"{PAST_PREFIX}.{layer}.key", f"{PAST_PREFIX}.{layer}.value"]
    present = [f"{PRESENT_PREFIX}.{layer}.key", f"{PRESENT_PREFIX}.{layer}.value"]
    inputs = [q, k, v, *past, "seqlens_k", "total_sequence_length"]
    return g.op(
        "GroupQueryAttention",
        inputs,
        [f"attn_{layer}", *present],
        num_heads=heads,
        kv_num_heads=kv_heads,
        scale=head_dim**-0.5,
    )[0]


@torch.no_grad()
def _rotary_tables(g: _Graph, model, length: int, head_dim: int) -> None:
    """cos/sin (length, padded head dim / 2) of positions 0.. from the model's own rotary module (its theta, its
    scaling); a padding column rotates by 0 (it only ever holds zeros)."""
    positions = torch.arange(length)[None]
    cos, sin = model.model.rotary_emb(torch.zeros(1, length, head_dim), positions)
    half, columns = head_dim // 2, _kernel_head_dim(head_dim) // 2
    tables = {"cos_cache": torch.ones(length, columns), "sin_cache": torch.zeros(length, columns)}
    tables["cos_cache"][:, :half], tables["sin_cache"][:, :half] = cos[0, :, :half], sin[0, :, :half]
    for name, table in tables.items():
        g.weight(name, table)


def build_generation_graph(model) -> tuple[onnx.ModelProto, int]:
    """The graph of the module docstring for a GPT-Neo or Llama `model` (fp32, CPU); and its cache length."""
    config = model.config
    family = config.model_type
    if family not in GENERATION_FAMILIES:
        raise ConfigError(
            f"the generation graph covers {', '.join(GENERATION_FAMILIES)}, not {family!r}: "
            "use onnx/model.onnx (OnnxCausalLM) for this model"
        )
    model = model.to(device="cpu", dtype=torch.float32).eval()
    length = context_limit(model)
    g = _Graph()
    with torch.no_grad():
        x = _gpt_neo_layers(g, model) if family == "gpt_neo" else _llama_layers(g, model, length)
        last = g.op("Gather", [x, g.weight("last_index", np.array(-1, dtype=np.int64))], axis=1)[0]
        head = g.weight("lm_head", model.get_output_embeddings().weight.T)
        g.op("MatMul", [last, head], ["logits"])
        g.op("ArgMax", ["logits"], ["next_token"], axis=-1, keepdims=1)
    graph = helper.make_graph(
        g.nodes,
        "tinystories_generation",
        _inputs(config, family, length),
        _outputs(config, family, length),
        g.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="tinystories")
    return proto, length


def _cache_shape(config, family: str, length: int) -> list:
    if family == "gpt_neo":
        heads = kv = int(config.num_heads)
    else:
        heads, kv = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return ["batch_size", kv, length, _kernel_head_dim(head_dim)]


def _inputs(config, family: str, length: int) -> list[onnx.ValueInfoProto]:
    seq = ["batch_size", "sequence_length"]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, seq)]
    inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, seq))
    inputs += [
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch_size"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    shape = _cache_shape(config, family, length)
    names = kv_names(int(config.num_hidden_layers), PAST_PREFIX)
    return inputs + [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names]


def _outputs(config, family: str, length: int) -> list[onnx.ValueInfoProto]:
    shape = _cache_shape(config, family, length)
    names = kv_names(int(config.num_hidden_layers), PRESENT_PREFIX)
    return [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", int(config.vocab_size)]),
        helper.make_tensor_value_info("next_token", TensorProto.INT64, ["batch_size", 1]),
        *[helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names],
    ]


def export_generation_graph(model, path: str | Path) -> Path:
    """Write the generation graph of `model` to `path` (one file, weights inside)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proto, length = build_generation_graph(model)
    onnx.save_model(proto, str(path))
    logger.info("wrote %s (%.1f MB, cache of %d positions)", path, path.stat().st_size / 1e6, length)
    return path
