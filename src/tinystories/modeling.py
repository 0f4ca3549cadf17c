"""The one model resolver: a Hub id, a local model dir or a LoRA adapter dir becomes a ready causal LM.

Weights are read as safetensors only (no pickle) and no repository code runs; GPT-Neo models get the
project's exact SDPA/flex attention and fused GELU. A LoRA adapter folder (`tinystories lora` output: an
`adapter_config.json` and no `config.json`) is loaded onto the base its config names and merged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM

from tinystories.attention import use_fast_attention, use_fast_gelu
from tinystories.core import TRAINED_CONTEXT, ConfigError, offline_hint
from tinystories.paths import looks_like_path

logger = logging.getLogger(__name__)

MODEL_FIX = (
    "pass MODEL=<local model dir> (a folder with config.json and model.safetensors, or a LoRA adapter folder) "
    "or a reachable Hub id"
)
ATTENTION_BACKENDS = ("sdpa", "flex", "eager")


def check_attn_implementation(name: str) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"unknown attn_implementation {name!r}: use one of {', '.join(ATTENTION_BACKENDS)}")
    return name


def install_attention(model, attn_implementation: str = "sdpa"):
    """GPT-Neo gets the project's exact SDPA/flex attention (and fused GELU); other models keep theirs."""
    check_attn_implementation(attn_implementation)
    if getattr(model.config, "model_type", None) != "gpt_neo" or attn_implementation == "eager":
        return model
    use_fast_gelu(model)  # one-kernel tanh GELU: the same function as gelu_new
    return use_fast_attention(model, backend=attn_implementation)


def is_adapter_dir(name_or_path: str) -> bool:
    """A LoRA adapter folder: `adapter_config.json` without a full model's `config.json`."""
    path = Path(name_or_path).expanduser()
    return path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def load_model(
    name_or_path: str,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    dtype=None,
    **kwargs,
):
    """A causal LM from a Hub id, a local model dir or a LoRA adapter dir (merged onto its base)."""
    check_attn_implementation(attn_implementation)
    path = Path(name_or_path).expanduser()
    if looks_like_path(name_or_path) and not path.exists():
        raise ConfigError(f"model path {name_or_path!r} does not exist: {MODEL_FIX}")
    adapter = is_adapter_dir(name_or_path)
    if path.is_dir() and not adapter and not (path / "config.json").is_file():
        raise ConfigError(f"{name_or_path!r} has no config.json: {MODEL_FIX}")
    # the stock classes load eager attention; ours is installed afterwards (same weights, exact same math)
    load_attn = "eager" if attn_implementation in ("sdpa", "flex") else attn_implementation
    try:
        if adapter:  # the base named in adapter_config.json: a Hub id, or a path relative to here
            model = AutoPeftModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False, **kwargs
            ).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path,
                revision=revision,
                dtype=dtype,
                use_safetensors=True,
                trust_remote_code=False,
                attn_implementation=load_attn,
                **kwargs,
            )
    except Exception as err:
        raise ConfigError(
            f"could not load model {name_or_path!r}{offline_hint()}: {type(err).__name__}: {err}. {MODEL_FIX}. "
            "Only safetensors weights are loaded (no pickle); `tinystories pull` explains repos without them."
        ) from err
    return install_attention(model, attn_implementation)


def context_limit(model_or_config) -> int:
    """Tokens a model may see at once: the trained context (512), or less if its config says so.

    The released checkpoints store 2048 positions but were trained at 512 and degrade past it.
    """
    config = getattr(model_or_config, "config", model_or_config)
    stored = getattr(config, "max_position_embeddings", None) or TRAINED_CONTEXT
    return min(TRAINED_CONTEXT, int(stored))
