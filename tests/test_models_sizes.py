"""Every released size builds the released GPTNeoConfig and has the published parameter count."""

import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from tinystories.core import ConfigError
from tinystories.models.sizes import (
    RELEASED_MAX_POSITIONS,
    SIZES,
    build_config,
    count_non_embedding_params,
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
