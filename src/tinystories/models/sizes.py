"""The released TinyStories model sizes as `GPTNeoConfig`s (the README's size table).

All released checkpoints are `GPTNeoForCausalLM` with 16 heads, alternating global/local attention
(window 256; a 1-layer model is global only), 4×hidden MLP, `gelu_new`, no dropout, layer-norm eps
1e-5 and bos = eos = 50256. They were trained at context 512 although their config stores
`max_position_embeddings` 2048. `build_config` uses the *trained* context (512) by default, so a
model trained here declares honestly how far it can read; pass 2048 to get the stored value.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GPTNeoConfig

from tinystories.core import TRAINED_CONTEXT, ConfigError

RELEASED_MAX_POSITIONS = 2048  # what the released config.json files store
GPT_NEO_VOCAB = 50257
GPT_NEO_EOS = 50256


@dataclass(frozen=True)
class SizeSpec:
    hidden_size: int
    num_layers: int
    non_embedding_millions: float  # as published (README size table), rounded
    hub_id: str

    @property
    def non_embedding_params(self) -> int:
        return non_embedding_params(self.hidden_size, self.num_layers)


SIZES: dict[str, SizeSpec] = {
    "1M": SizeSpec(64, 8, 0.40, "roneneldan/TinyStories-1M"),
    "3M": SizeSpec(128, 8, 1.58, "roneneldan/TinyStories-3M"),
    "8M": SizeSpec(256, 8, 6.31, "roneneldan/TinyStories-8M"),
    "28M": SizeSpec(512, 8, 25.2, "roneneldan/TinyStories-28M"),
    "33M": SizeSpec(768, 4, 28.3, "roneneldan/TinyStories-33M"),
    "1L-21M": SizeSpec(1024, 1, 12.6, "roneneldan/TinyStories-1Layer-21M"),
    "2L-33M": SizeSpec(1024, 2, 25.2, "roneneldan/TinyStories-2Layers-33M"),
}
NUM_HEADS = 16
WINDOW_SIZE = 256


def non_embedding_params(hidden_size: int, num_layers: int) -> int:
    """Per block: q/k/v (no bias) 3h², out_proj h²+h, MLP 8h²+5h, two layer norms 4h; plus the final norm."""
    h = hidden_size
    return num_layers * (12 * h * h + 10 * h) + 2 * h


def size_names() -> str:
    return ", ".join(SIZES)


def attention_types(num_layers: int) -> list:
    """`[[["global","local"], L/2]]` as released; a single layer is global only."""
    if num_layers == 1:
        return [[["global"], 1]]
    if num_layers % 2:
        # odd depth (custom grid): alternate and end on a global layer
        return [[["global", "local"], num_layers // 2], [["global"], 1]]
    return [[["global", "local"], num_layers // 2]]


def build_config(
    size: str | None = None,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    vocab_size: int = GPT_NEO_VOCAB,
    max_position_embeddings: int = TRAINED_CONTEXT,
    eos_token_id: int = GPT_NEO_EOS,
    bos_token_id: int | None = None,
    num_heads: int = NUM_HEADS,
    window_size: int = WINDOW_SIZE,
) -> GPTNeoConfig:
    """A released size by name, optionally with width/depth overridden (the paper's grid)."""
    if size is not None and size not in SIZES:
        raise ConfigError(
            f"unknown size {size!r}: valid sizes are {size_names()} (or pass --hidden_size/--num_layers)"
        )
    spec = SIZES[size] if size is not None else None
    hidden = hidden_size or (spec.hidden_size if spec else None)
    layers = num_layers or (spec.num_layers if spec else None)
    if hidden is None or layers is None:
        raise ConfigError(f"pass --size ({size_names()}) or both --hidden_size and --num_layers")
    if hidden % num_heads:
        raise ConfigError(f"hidden_size {hidden} is not divisible by num_heads {num_heads}")
    bos = eos_token_id if bos_token_id is None else bos_token_id
    return GPTNeoConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        hidden_size=hidden,
        num_layers=layers,
        attention_types=attention_types(layers),
        num_heads=num_heads,
        intermediate_size=None,
        window_size=window_size,
        activation_function="gelu_new",
        resid_dropout=0.0,
        embed_dropout=0.0,
        attention_dropout=0.0,
        classifier_dropout=0.1,
        layer_norm_epsilon=1e-5,
        initializer_range=0.02,
        use_cache=True,
        bos_token_id=bos,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
        architectures=["GPTNeoForCausalLM"],
    )


def count_non_embedding_params(model) -> int:
    """Parameters outside the token and position embeddings (the LM head is tied to the token embedding);
    whole parameters under ZeRO-3 too (`ds_numel`)."""
    embedding_ids = set()
    for name in ("wte", "wpe"):
        module = getattr(getattr(model, "transformer", model), name, None)
        if module is not None:
            embedding_ids.add(id(module.weight))
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in embedding_ids:
            continue
        seen.add(id(p))
        total += int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 keeps a shard; ds_numel is the whole
    return total
