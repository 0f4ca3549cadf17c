"""Fast, exact attention for GPT-Neo: SDPA (any device) and flex_attention (fused sliding window on GPU).

Stock `transformers` runs GPT-Neo with eager attention only: it materialises the full score matrix in fp32,
masks it with a `(max_pos, max_pos)` boolean buffer and a float padding mask, and does the same work for
the 256-token sliding-window ("local") layers as for the global ones. `use_fast_attention` swaps the
attention math of an already built or loaded model for `torch.nn.functional.scaled_dot_product_attention`
(or `flex_attention`) without touching a single parameter:

* parameter names and `state_dict` keys are unchanged (the modules are the same objects, only their class
  is swapped for a subclass that overrides `forward`), so checkpoints stay loadable by stock `transformers`
  and stock checkpoints load into it;
* the math is GPT-Neo's: no `1/sqrt(d)` scaling (`scale=1.0`), local layers see the current token and the
  `window_size - 1` previous ones, padding masks and KV caches (generation) work as in eager;
* in fp32 it matches eager to ~1e-6 (tests/test_models_attention.py checks logits, gradients and greedy
  generation token by token).

Backends:

* `"sdpa"` (default): global layers without padding use `is_causal=True` (the flash / efficient kernels);
  a local layer over a whole sequence longer than the window attends `window_size` queries at a time, each
  chunk only to the keys it can see (`_attention_by_chunks`, CPU and GPU: exact, the first chunk on the flash
  kernel, and less work than one masked T × T call; `local_plan` decides); one-token decoding slices the
  cache to the last `window_size` keys; other local calls use a cached boolean band mask.
* `"flex"`: `torch.nn.attention.flex_attention` with a cached causal / sliding-window `BlockMask` for the
  training hot path (no padding, no cache, lengths a multiple of its 128-token block): on a GPU, under
  `torch.compile` (automatic dynamic shapes: one recompile, not one per shape), the sliding-window layers run
  a fused kernel that skips the blocks outside the window. Other calls (a padding mask, a KV cache, a prefill
  of another length) take the SDPA path (exact either way; `flex_applies` decides).
* `"eager"`: restores the stock `transformers` attention.

The mask that `GPTNeoModel` builds comes from `transformers.masking_utils.create_causal_mask` and depends on
`config._attn_implementation`: with `"eager"` it is a float `(B, 1, Q, KV)` tensor that is always
materialised; with `"sdpa"` it is `None` whenever no token is padded (so SDPA can use `is_causal`) and a
boolean mask otherwise. `use_fast_attention` therefore sets the (never serialised)
`_attn_implementation_internal` of a private copy of the model's config to `"sdpa"`; the saved
`config.json` is byte-identical to the stock one.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from transformers import PreTrainedModel
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.models.gpt_neo.modeling_gpt_neo import GPTNeoSelfAttention

from tinystories.core import ConfigError

BACKENDS = ("sdpa", "flex", "eager")

__all__ = [
    "BACKENDS",
    "GPTNeoFlexAttention",
    "GPTNeoSdpaAttention",
    "attention_backend",
    "sliding_window_mask",
    "use_fast_attention",
    "use_fast_gelu",
]


def _band_mask(
    q_len: int, kv_len: int, window: int, device: torch.device, q_offset: int | None = None
) -> torch.Tensor:
    """Cached eagerly; built inside the graph under torch.compile (dynamo ignores lru_cache)."""
    if torch.compiler.is_compiling():
        return _build_band_mask(q_len, kv_len, window, device, q_offset)
    return _cached_band_mask(q_len, kv_len, window, device, q_offset)


def _build_band_mask(
    q_len: int, kv_len: int, window: int, device: torch.device, q_offset: int | None = None
) -> torch.Tensor:
    """(q_len, kv_len) causal band; queries at q_offset.. (default: bottom-right, the last q_len keys)."""
    start = kv_len - q_len if q_offset is None else q_offset
    q_pos = torch.arange(start, start + q_len, device=device)[:, None]
    kv_pos = torch.arange(kv_len, device=device)[None, :]
    return (kv_pos <= q_pos) & (q_pos - kv_pos < window)


_cached_band_mask = functools.lru_cache(maxsize=32)(_build_band_mask)


def sliding_window_mask(
    q_len: int, kv_len: int, window: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean `(q_len, kv_len)` mask, True where GPT-Neo's local attention may look.

    Queries are the last `q_len` positions of `kv_len` (bottom-right aligned, as with a KV cache); a query
    at position i sees keys j with i - window < j <= i, exactly the `bias` buffer of the eager module.
    """
    return _band_mask(q_len, kv_len, window, torch.device(device))


def _attention_by_chunks(query, key, value, window: int | None, dropout_p: float, chunk: int) -> torch.Tensor:
    """Causal (`window` None) or sliding-window attention over whole sequences, `chunk` queries a call (exact).

    Queries [s, e) attend to keys [k0, e), k0 = 0 for a global layer and max(0, s − window + 1) for a local one,
    under a cached boolean band mask (the first chunk, where no window can bite, is plain `is_causal`). The CPU
    kernels compute every block of a banded T × T problem, so a local layer attended by chunks of its window
    does ~1.7× less work at T = 2W: a default 1M step (3 × 512 tokens) 0.79× as long (`docs/results/training-speed.md`).
    Global layers are left to one `is_causal` call: chunking them measured no steady gain end to end.
    """
    q_len, outs = query.shape[-2], []
    for start in range(0, q_len, chunk):
        end = min(start + chunk, q_len)
        if start == 0 and (window is None or end <= window):
            part = (query[..., :end, :], key[..., :end, :], value[..., :end, :])
            outs.append(F.scaled_dot_product_attention(*part, dropout_p=dropout_p, is_causal=True, scale=1.0))
            continue
        k0 = 0 if window is None else max(0, start - window + 1)
        band = _band_mask(end - start, end - k0, window or end, query.device, start - k0)
        part = (query[..., start:end, :], key[..., k0:end, :], value[..., k0:end, :])
        outs.append(F.scaled_dot_product_attention(*part, attn_mask=band, dropout_p=dropout_p, scale=1.0))
    return torch.cat(outs, dim=-2)


def local_plan(device_type: str, q_len: int, kv_len: int, window: int) -> str:
    """How an unmasked sliding-window layer is attended: `chunks`, `last_window`, `band` or `causal`.

    A whole sequence longer than the window goes by chunks of the window on every device: the first chunk
    is plain `is_causal` (the flash kernel on a GPU), the others see only the keys they can reach, so the
    out-of-band blocks of the T × T problem are never computed (a dense band mask would rule out flash on a
    GPU and compute all T × T pairs). `device_type` is part of the decision for devices that may differ.
    """
    if kv_len <= window:
        return "causal"
    if q_len == 1:
        return "last_window"  # decoding: the window is simply the last `window` keys
    if q_len == kv_len and device_type in ("cpu", "cuda"):
        return "chunks"
    return "band"


class GPTNeoSdpaAttention(GPTNeoSelfAttention):
    """GPT-Neo self-attention computed with `scaled_dot_product_attention`; same parameters as eager."""

    fast_backend = "sdpa"

    def _sdpa(self, query, key, value, attention_mask):
        q_len, kv_len = query.shape[-2], key.shape[-2]
        window = self.config.window_size if self.attention_type == "local" else None
        dropout_p = float(self.config.attention_dropout) if self.training else 0.0

        if attention_mask is not None and attention_mask.dtype != torch.bool:
            # A float (additive) mask from an eager-style caller: 0 where visible, dtype-min where masked.
            attention_mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2

        if attention_mask is None:
            plan = "causal" if window is None else local_plan(query.device.type, q_len, kv_len, window)
            if plan == "chunks":
                return _attention_by_chunks(query, key, value, window, dropout_p, window)
            if plan == "last_window":
                key, value = key[..., -window:, :], value[..., -window:, :]
                return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, scale=1.0)
            if plan == "band":
                band = _band_mask(q_len, kv_len, window, query.device, 0)
                return F.scaled_dot_product_attention(
                    query, key, value, attn_mask=band, dropout_p=dropout_p, scale=1.0
                )
            if q_len == 1:
                return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p, scale=1.0)
            # No mask and q_len > 1: the mask builder skipped it because the queries start at position 0
            # (kv_len == q_len, or a static cache's empty future slots), so top-left `is_causal` is exact.
            return F.scaled_dot_product_attention(
                query, key, value, dropout_p=dropout_p, is_causal=True, scale=1.0
            )

        # A boolean (B, 1, Q, KV) mask: causality and padding are already in it; add the window.
        mask = attention_mask
        if window is not None and kv_len > window:
            mask = mask & _band_mask(q_len, kv_len, window, query.device)
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout_p, scale=1.0
        )

    def _fast_attn(self, query, key, value, attention_mask):
        return self._sdpa(query, key, value, attention_mask)

    def forward(
        self,
        hidden_states,
        attention_mask=None,
        layer_past=None,
        use_cache=False,
        output_attentions=False,
        **kwargs,
    ):
        if output_attentions:  # SDPA cannot return the weights: use the eager math for this call
            return super().forward(
                hidden_states,
                attention_mask=_to_additive(attention_mask, hidden_states),
                layer_past=layer_past,
                use_cache=use_cache,
                output_attentions=output_attentions,
            )
        query = self._split_heads(self.q_proj(hidden_states), self.num_heads, self.head_dim)
        key = self._split_heads(self.k_proj(hidden_states), self.num_heads, self.head_dim)
        value = self._split_heads(self.v_proj(hidden_states), self.num_heads, self.head_dim)

        if layer_past is not None:
            key, value = layer_past.update(key, value, self.layer_id)

        attn_output = self._fast_attn(query, key, value, attention_mask)
        attn_output = self._merge_heads(attn_output, self.num_heads, self.head_dim)
        attn_output = self.resid_dropout(self.out_proj(attn_output))
        return attn_output, None


def _to_additive(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Boolean SDPA mask -> the additive float mask the eager `_attn` expects (for output_attentions)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return out.masked_fill_(~mask, torch.finfo(torch.float32).min)


@functools.lru_cache(maxsize=32)
def _flex_block_mask(seq_len: int, window: int | None, device: torch.device, block: int):
    if window is None:

        def mask_mod(b, h, q, kv):
            return kv <= q

    else:

        def mask_mod(b, h, q, kv):
            return (kv <= q) & (q - kv < window)

    return create_block_mask(mask_mod, None, None, seq_len, seq_len, device=device, BLOCK_SIZE=block)


@functools.cache
def _compiled_flex():
    # dynamic=None (automatic dynamic): a second shape recompiles once with symbolic sizes, then every batch
    # size and length reuses it; dynamic=False recompiled per shape until the recompile limit, then ran unfused
    return torch.compile(flex_attention)


def flex_applies(q_len: int, kv_len: int, block: int, masked: bool, dropout: bool, cpu_grad: bool) -> bool:
    """Whether a call takes flex attention: the training hot path only (whole blocks, no mask, no cache).

    Lengths that are not a multiple of the block size (generation prefills, card samples, eval of odd
    stories) go through the exact SDPA path, so they neither compile new graphs nor build new block masks.
    """
    if masked or dropout or cpu_grad or q_len != kv_len or q_len == 1:
        return False
    return q_len % block == 0


class GPTNeoFlexAttention(GPTNeoSdpaAttention):
    """Training hot path (no padding, no cache) through `flex_attention` with a cached `BlockMask`.

    On CUDA the call is compiled (a fused kernel that skips the masked-out blocks of the sliding window);
    on CPU it runs the unfused reference unless `compile_flex_on_cpu` is set, and only without autograd
    (torch 2.13 has no flex backward on CPU). Anything else (a padding mask, a KV cache, dropout, CPU
    training) goes through the exact SDPA path.
    """

    fast_backend = "flex"
    compile_flex_on_cpu = False
    flex_block_size = 128

    def _fast_attn(self, query, key, value, attention_mask):
        q_len, kv_len = query.shape[-2], key.shape[-2]
        dropout = self.training and float(self.config.attention_dropout) > 0
        # flex_attention has no CPU backward in torch 2.13: CPU training takes the (exact) SDPA path.
        cpu_grad = query.device.type == "cpu" and torch.is_grad_enabled() and query.requires_grad
        if not flex_applies(
            q_len, kv_len, self.flex_block_size, attention_mask is not None, dropout, cpu_grad
        ):
            return self._sdpa(query, key, value, attention_mask)
        window = self.config.window_size if self.attention_type == "local" else None
        if window is not None and q_len <= window:
            window = None  # the window cannot bite: plain causal
        block_mask = _flex_block_mask(q_len, window, query.device, self.flex_block_size)
        compiled = query.device.type == "cuda" or self.compile_flex_on_cpu
        fn = _compiled_flex() if compiled else flex_attention
        return fn(query, key, value, block_mask=block_mask, scale=1.0)


_CLASSES: dict[str, type[GPTNeoSelfAttention]] = {
    "sdpa": GPTNeoSdpaAttention,
    "flex": GPTNeoFlexAttention,
    "eager": GPTNeoSelfAttention,
}


def attention_backend(model: nn.Module) -> str | None:
    """The backend installed on `model` ("sdpa", "flex", "eager"), or None if it has no GPT-Neo attention."""
    for module in model.modules():
        if isinstance(module, GPTNeoSelfAttention):
            return getattr(type(module), "fast_backend", "eager")
    return None


def _set_config_attn(model: nn.Module, implementation: str) -> None:
    """Give every (sub)model a private config copy whose never-serialised attention flag is `implementation`.

    The copy keeps the caller's config object untouched (so `GPTNeoForCausalLM(config)` still works on it).
    """
    replaced: dict[int, object] = {}
    for module in model.modules():
        if not isinstance(module, (PreTrainedModel, GPTNeoSelfAttention)):
            continue
        config = module.config
        if id(config) not in replaced:
            if config._attn_implementation_internal == implementation:
                replaced[id(config)] = config
            else:
                new = copy.copy(config)
                new._attn_implementation_internal = implementation
                replaced[id(config)] = new
        module.config = replaced[id(config)]


def use_fast_attention(model: nn.Module, backend: str = "sdpa") -> nn.Module:
    """Install `backend` ("sdpa", "flex" or "eager") on every GPT-Neo attention of `model`, in place.

    Works on a model that is already built or loaded (also wrapped, e.g. a PEFT model): the attention
    modules keep their parameters, buffers and names, only their class changes. Models without GPT-Neo
    attention are returned unchanged. Returns `model` for chaining.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    cls = _CLASSES[backend]
    found = False
    for module in model.modules():
        if isinstance(module, GPTNeoSelfAttention):
            if type(module) not in _CLASSES.values():
                raise TypeError(
                    f"{type(module).__name__} is not a stock GPT-Neo attention (flash_attention_2?); "
                    "load the model with attn_implementation='eager' before calling use_fast_attention"
                )
            module.__class__ = cls
            found = True
    if found:
        _set_config_attn(model, "eager" if backend == "eager" else "sdpa")
    return model


def use_fast_gelu(model: nn.Module, enable: bool = True) -> nn.Module:
    """Swap `gelu_new` (6 elementwise kernels, each saved for backward) for `F.gelu(approximate="tanh")`.

    Both compute 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), the function GPT-Neo was trained with; the
    fused kernel differs by float rounding only (~1e-7 in fp32). The activation has no parameters and
    the config keeps saying `gelu_new`, so checkpoints are unchanged. `enable=False` restores it.
    """
    old, new = (NewGELUActivation, GELUTanh) if enable else (GELUTanh, NewGELUActivation)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is old:
                setattr(module, name, new())
    return model
