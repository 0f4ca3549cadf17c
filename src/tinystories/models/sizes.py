"""The released TinyStories model sizes as `GPTNeoConfig`s (the README's size table), and Llama-style twins.

All released checkpoints are `GPTNeoForCausalLM` with 16 heads, alternating global/local attention
(window 256; a 1-layer model is global only), 4×hidden MLP, `gelu_new`, no dropout, layer-norm eps
1e-5 and bos = eos = 50256. They were trained at context 512 although their config stores
`max_position_embeddings` 2048. `build_config` uses the *trained* context (512) by default, so a
model trained here declares honestly how far it can read; pass 2048 to get the stored value.

`architecture="llama"` builds the same size with Llama blocks (`LlamaConfig`: RMSNorm, SwiGLU MLP, rotary
positions, grouped-query attention with a quarter of the heads for keys/values, no biases, tied embeddings),
as SimpleStories and llama2.c train them. Width, depth and heads stay the released ones; the SwiGLU width is
solved so that the non-embedding parameters match the GPT-Neo size (`llama_intermediate_size`, within 5%, the
README's table): GQA saves attention weights, so the MLP gets ~3.2 x hidden instead of the usual 8/3.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GPTNeoConfig, LlamaConfig

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
ARCHITECTURES = ("gpt_neo", "llama")  # model_type of the config each builds
KV_HEAD_RATIO = 4  # Llama: query heads per key/value head (grouped-query attention)
MLP_MULTIPLE = 16  # the SwiGLU width is a multiple of this
# Every Linear of a block, by architecture: what LoRA adapts by default (`lora_target_modules: auto`)
BLOCK_LINEARS = {
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def block_linear_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Linear of one block of a GPT-Neo or Llama config."""
    h = config.hidden_size
    if getattr(config, "model_type", None) == "llama":
        kv, inner = config.head_dim * config.num_key_value_heads, config.intermediate_size
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, inner),
            "up_proj": (h, inner),
            "down_proj": (inner, h),
        }
    inner = config.intermediate_size or 4 * h
    return {
        "q_proj": (h, h),
        "k_proj": (h, h),
        "v_proj": (h, h),
        "out_proj": (h, h),
        "c_fc": (h, inner),
        "c_proj": (inner, h),
    }


def non_embedding_params(hidden_size: int, num_layers: int) -> int:
    """Per block: q/k/v (no bias) 3h², out_proj h²+h, MLP 8h²+5h, two layer norms 4h; plus the final norm."""
    h = hidden_size
    return num_layers * (12 * h * h + 10 * h) + 2 * h


def kv_heads(num_heads: int) -> int:
    """Key/value heads of a Llama twin: a quarter of the query heads (at least one, dividing them)."""
    kv = max(1, num_heads // KV_HEAD_RATIO)
    while num_heads % kv:
        kv -= 1
    return kv


def llama_non_embedding_params(hidden_size: int, num_layers: int, num_heads: int, intermediate: int) -> int:
    """Per block: q and o h² each, k and v h·kv_dim each, SwiGLU 3·h·I, two RMSNorms h each; plus the final norm."""
    h, kv_dim = hidden_size, hidden_size // num_heads * kv_heads(num_heads)
    return num_layers * (2 * h * h + 2 * h * kv_dim + 3 * h * intermediate + 2 * h) + h


def llama_intermediate_size(hidden_size: int, num_layers: int, num_heads: int = NUM_HEADS) -> int:
    """The SwiGLU width whose Llama block has the GPT-Neo block's non-embedding parameters (nearest multiple
    of `MLP_MULTIPLE`)."""
    h = hidden_size
    target = non_embedding_params(h, num_layers)
    rest = llama_non_embedding_params(h, num_layers, num_heads, 0)
    raw = (target - rest) / (3 * h * num_layers)
    return max(MLP_MULTIPLE, round(raw / MLP_MULTIPLE) * MLP_MULTIPLE)


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
    architecture: str = "gpt_neo",
) -> GPTNeoConfig | LlamaConfig:
    """A released size by name, optionally with width/depth overridden (the paper's grid); `architecture`
    "llama": its Llama twin (`build_llama_config`)."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}")
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
    if architecture == "llama":
        return build_llama_config(
            hidden, layers, vocab_size, max_position_embeddings, eos_token_id, bos, num_heads
        )
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


def build_llama_config(
    hidden_size: int,
    num_layers: int,
    vocab_size: int = GPT_NEO_VOCAB,
    max_position_embeddings: int = TRAINED_CONTEXT,
    eos_token_id: int = GPT_NEO_EOS,
    bos_token_id: int = GPT_NEO_EOS,
    num_heads: int = NUM_HEADS,
) -> LlamaConfig:
    """The Llama twin of a GPT-Neo shape: same width, depth, heads, context, vocabulary and token ids."""
    head_dim = hidden_size // num_heads
    if head_dim % 2:
        raise ConfigError(
            f"hidden_size {hidden_size} / {num_heads} heads = head_dim {head_dim}: rotary positions need an even "
            "head_dim; pass --num_heads so that hidden_size / num_heads is even"
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=llama_intermediate_size(hidden_size, num_layers, num_heads),
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads(num_heads),
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        use_cache=True,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        architectures=["LlamaForCausalLM"],
    )


def count_non_embedding_params(model) -> int:
    """Parameters outside the token and position embeddings (the LM head is tied to the token embedding);
    whole parameters under ZeRO-3 too (`ds_numel`)."""
    embedding_ids = set()
    embeddings = [model.get_input_embeddings()] if hasattr(model, "get_input_embeddings") else []
    embeddings.append(getattr(getattr(model, "transformer", model), "wpe", None))  # GPT-Neo's positions
    for module in embeddings:
        if module is not None:
            embedding_ids.add(id(module.weight))
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in embedding_ids:
            continue
        seen.add(id(p))
        total += int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 keeps a shard; ds_numel is the whole
    return total
