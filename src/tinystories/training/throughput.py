"""Throughput arithmetic: training FLOPs per token, the GPUs' dense bf16 peaks, and model FLOPs utilisation.

MFU = tokens/s per GPU × FLOPs per token / the GPU's dense bf16 peak. FLOPs per token are 6 × the matmul
parameters (12·h² per GPT-Neo layer, the Llama block's own count + the LM head's V·h) plus the attention scores (QKᵀ and AV, causal: half the
context on average; a sliding-window layer sees at most `window_size` keys). The same numbers are in the
training logs, the run record, `make bench` and `make gpu-check`.
"""

from __future__ import annotations

# dense bf16 peak FLOP/s by GPU name fragment (longest fragment wins: "GH200" before "H200")
PEAK_BF16_FLOPS = {
    "GH200": 989e12,
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}


def _block_matmul_params(config) -> int:
    """Matmul weights of one block: GPT-Neo 12·h²; Llama q, o h² each, k, v h·kv_dim each, SwiGLU 3·h·I."""
    h = config.hidden_size
    if getattr(config, "model_type", None) == "llama":
        kv_dim = config.head_dim * config.num_key_value_heads
        return 2 * h * h + 2 * h * kv_dim + 3 * h * config.intermediate_size
    return 12 * h * h


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (6 × matmul params incl. the LM head + attention scores, window-aware)."""
    h, n_layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    matmul_params = n_layers * _block_matmul_params(config) + vocab * h
    attn = 0.0
    for kind in getattr(config, "attention_layers", None) or ["global"] * n_layers:
        ctx = min(seq_len, config.window_size) if kind == "local" else seq_len
        attn += 6 * 2 * h * ctx / 2  # QK^T and AV, causal: half the context on average
    return 6 * matmul_params + attn


def peak_flops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by its `torch.cuda.get_device_name()`; None when unknown (or a CPU)."""
    if not device_name:
        return None
    matches = [k for k in PEAK_BF16_FLOPS if k in device_name]
    return PEAK_BF16_FLOPS[max(matches, key=len)] if matches else None


def mfu(tokens_per_second_per_gpu: float, config, seq_len: int, device_name: str | None) -> float | None:
    """Model FLOPs utilisation of one GPU (None when its peak is unknown)."""
    peak = peak_flops(device_name)
    if not peak or not tokens_per_second_per_gpu:
        return None
    return tokens_per_second_per_gpu * flops_per_token(config, seq_len) / peak
