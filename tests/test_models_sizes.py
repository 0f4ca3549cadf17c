"""Every released size builds the released GPTNeoConfig and has the published parameter count."""

import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from tinystories.core import ConfigError
from tinystories.models.sizes import (
    BLOCK_LINEARS,
    RELEASED_MAX_POSITIONS,
    SIZES,
    block_linear_shapes,
    build_config,
    count_non_embedding_params,
    kv_heads,
    llama_intermediate_size,
    llama_non_embedding_params,
    non_embedding_params,
)

# The config.json of the released roneneldan/TinyStories-33M (fields that define the model).
RELEASED_33M = {
    "activation_function": "gelu_new",
    "attention_dropout": 0,
    "attention_layers": ["global", "local", "global", "local"],
    "attention_types": [[["global", "local"], 2]],
    "bos_token_id": 50256,
    "embed_dropout": 0,
    "eos_token_id": 50256,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": None,
    "layer_norm_epsilon": 1e-05,
    "max_position_embeddings": 2048,
    "num_heads": 16,
    "num_layers": 4,
    "resid_dropout": 0,
    "vocab_size": 50257,
    "window_size": 256,
}


@pytest.mark.parametrize("name", list(SIZES))
def test_config_matches_released(name):
    spec = SIZES[name]
    config = build_config(name, max_position_embeddings=RELEASED_MAX_POSITIONS)
    expected_types = (
        [[["global"], 1]] if spec.num_layers == 1 else [[["global", "local"], spec.num_layers // 2]]
    )
    fields = {k: v for k, v in RELEASED_33M.items() if k != "attention_layers"}
    released = GPTNeoConfig(
        **{
            **fields,
            "hidden_size": spec.hidden_size,
            "num_layers": spec.num_layers,
            "attention_types": expected_types,
        }
    )
    for key in [*RELEASED_33M, "attention_layers"]:
        if key == "attention_layers":
            continue
        assert getattr(config, key) == getattr(released, key), key
    assert config.attention_layers == released.attention_layers
    assert config.attention_layers[0] == "global"


def test_33m_equals_released_config_json():
    config = build_config("33M", max_position_embeddings=RELEASED_MAX_POSITIONS).to_dict()
    for key, value in RELEASED_33M.items():
        assert config[key] == value, key


@pytest.mark.parametrize("name", list(SIZES))
def test_non_embedding_params_match_table(name):
    spec = SIZES[name]
    with torch.device("meta"):
        model = GPTNeoForCausalLM(build_config(name))
    n = count_non_embedding_params(model)
    assert n == non_embedding_params(spec.hidden_size, spec.num_layers)
    assert round(n / 1e6, 2 if n < 10e6 else 1) == pytest.approx(spec.non_embedding_millions)


def test_default_context_is_the_trained_one():
    assert build_config("1M").max_position_embeddings == 512


def test_custom_grid_and_errors():
    config = build_config(hidden_size=96, num_layers=3)
    assert config.attention_layers == ["global", "local", "global"]
    with pytest.raises(ConfigError, match="valid sizes are 1M, 3M, 8M"):
        build_config("5M")
    with pytest.raises(ConfigError, match="divisible"):
        build_config(hidden_size=100, num_layers=2)


def test_non_embedding_count_of_a_zero3_sharded_model():
    """Under ZeRO-3 a rank holds a shard (`numel()` 0 once partitioned); `ds_numel` is the whole parameter."""
    from tinystories.models.sizes import build_config, count_non_embedding_params

    model = GPTNeoForCausalLM(build_config("1M"))
    assert count_non_embedding_params(model) == 398_464  # the 0.40M of the released 1M
    for p in model.parameters():
        p.ds_numel = p.numel()
        p.data = torch.empty(0)  # what a partitioned parameter looks like on a rank
    assert count_non_embedding_params(model) == 398_464


# ------------------------------------------------------------------------------- Llama twins (issue 22)


@pytest.mark.parametrize("name", list(SIZES))
def test_llama_twin_matches_the_gpt_neo_non_embedding_count(name):
    """Same width, depth, heads and context; GQA with a quarter of the heads; SwiGLU width solved so that the
    non-embedding parameters are within 5% of the GPT-Neo size; the count of the built model is the formula."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    spec = SIZES[name]
    config = build_config(name, architecture="llama")
    assert isinstance(config, LlamaConfig) and config.model_type == "llama"
    assert (config.hidden_size, config.num_hidden_layers) == (spec.hidden_size, spec.num_layers)
    assert config.num_attention_heads == 16 and config.num_key_value_heads == kv_heads(16) == 4
    assert config.head_dim == spec.hidden_size // 16 and config.head_dim % 2 == 0
    assert config.max_position_embeddings == 512 and config.vocab_size == 50257
    assert config.bos_token_id == config.eos_token_id == 50256
    assert config.tie_word_embeddings is True and config.hidden_act == "silu"
    assert not config.attention_bias and not config.mlp_bias
    inner = config.intermediate_size
    assert inner == llama_intermediate_size(spec.hidden_size, spec.num_layers) and inner % 16 == 0
    expected = llama_non_embedding_params(spec.hidden_size, spec.num_layers, 16, inner)
    assert abs(expected - spec.non_embedding_params) / spec.non_embedding_params < 0.05
    # the solved width is the nearest multiple of 16: one step either way is not closer to the target
    for other in (inner - 16, inner + 16):
        off = abs(
            llama_non_embedding_params(spec.hidden_size, spec.num_layers, 16, other)
            - spec.non_embedding_params
        )
        assert off >= abs(expected - spec.non_embedding_params)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert type(model) is LlamaForCausalLM
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: the head is not counted again
    assert count_non_embedding_params(model) == expected
    assert model.num_parameters() == expected + 50257 * spec.hidden_size
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    kv_dim = 4 * config.head_dim
    assert tuple(attn.k_proj.weight.shape) == tuple(attn.v_proj.weight.shape) == (kv_dim, spec.hidden_size)
    assert tuple(mlp.gate_proj.weight.shape) == (inner, spec.hidden_size)
    shapes = block_linear_shapes(config)
    assert list(shapes) == BLOCK_LINEARS["llama"]
    for module_name, (fan_in, fan_out) in shapes.items():
        module = getattr(attn, module_name, None) or getattr(mlp, module_name)
        assert (module.in_features, module.out_features) == (fan_in, fan_out), module_name


def test_llama_non_embedding_count_of_a_tiny_model_by_hand():
    """Hidden 32, 2 layers, 4 heads of 8, one key/value head: every parameter outside the embedding, summed."""
    from transformers import AutoModelForCausalLM

    config = build_config(
        hidden_size=32, num_layers=2, num_heads=4, vocab_size=300, eos_token_id=0, architecture="llama"
    )
    assert config.num_key_value_heads == 1 and config.head_dim == 8
    model = AutoModelForCausalLM.from_config(config)
    by_hand = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n)
    inner = config.intermediate_size
    assert by_hand == 2 * (2 * 32 * 32 + 2 * 32 * 8 + 3 * 32 * inner + 2 * 32) + 32
    assert count_non_embedding_params(model) == by_hand == llama_non_embedding_params(32, 2, 4, inner)
    # at a tiny width the SwiGLU width's multiple of 16 is coarse: within half a step (3·h·L·16 / 2) of GPT-Neo
    assert abs(by_hand - non_embedding_params(32, 2)) <= 3 * 32 * 2 * 16 // 2


def test_kv_heads_divide_the_query_heads():
    assert [kv_heads(n) for n in (1, 2, 4, 6, 8, 12, 16, 32)] == [1, 1, 1, 1, 2, 3, 4, 8]
    for n in range(1, 65):
        assert n % kv_heads(n) == 0 and 1 <= kv_heads(n) <= max(1, n // 4)


def test_llama_refuses_an_odd_head_dim_and_an_unknown_architecture():
    with pytest.raises(ConfigError, match="head_dim 3.*even"):
        build_config(hidden_size=48, num_layers=2, architecture="llama")  # 48 / 16 heads = 3
    assert build_config(hidden_size=48, num_layers=2, num_heads=8, architecture="llama").head_dim == 6
    build_config(hidden_size=48, num_layers=2)  # GPT-Neo has no rotary positions: an odd head_dim is fine
    with pytest.raises(ConfigError, match="unknown architecture 'mamba'.*gpt_neo, llama"):
        build_config("1M", architecture="mamba")


def test_gpt_neo_configs_are_unchanged_by_the_architecture_axis():
    for name in SIZES:
        default, explicit = build_config(name), build_config(name, architecture="gpt_neo")
        assert isinstance(default, GPTNeoConfig) and default.to_dict() == explicit.to_dict()
        assert default.intermediate_size is None and not hasattr(default, "num_key_value_heads")
    config = build_config("33M")
    assert list(block_linear_shapes(config)) == BLOCK_LINEARS["gpt_neo"]
    assert block_linear_shapes(config)["c_fc"] == (768, 3072) and block_linear_shapes(config)["c_proj"] == (
        3072,
        768,
    )
