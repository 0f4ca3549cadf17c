"""Loading causal LMs from a Hub id or a local dir: safetensors only, no remote code, fast attention."""

from __future__ import annotations

import logging
from pathlib import Path

from tinystories.core import ConfigError, offline_hint
from tinystories.paths import looks_like_path

logger = logging.getLogger(__name__)

MODEL_FIX = (
    "pass MODEL=<local model dir> (a folder with config.json and model.safetensors) or a reachable Hub id"
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
    from tinystories.attention import use_fast_attention, use_fast_gelu

    use_fast_gelu(model)  # one-kernel tanh GELU: the same function as gelu_new
    return use_fast_attention(model, backend=attn_implementation)


def load_model(
    name_or_path: str,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    dtype=None,
    **kwargs,
):
    """`AutoModelForCausalLM` from a Hub id or dir with `use_safetensors=True` and no remote code."""
    from transformers import AutoModelForCausalLM

    check_attn_implementation(attn_implementation)
    path = Path(name_or_path).expanduser()
    if looks_like_path(name_or_path) and not path.exists():
        raise ConfigError(f"model path {name_or_path!r} does not exist: {MODEL_FIX}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(f"{name_or_path!r} has no config.json: {MODEL_FIX}")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            revision=revision,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=False,
            attn_implementation="eager" if attn_implementation in ("sdpa", "flex") else attn_implementation,
            **kwargs,
        )
    except Exception as err:
        raise ConfigError(
            f"could not load model {name_or_path!r}{offline_hint()}: {type(err).__name__}: {err}. {MODEL_FIX}. "
            "Only safetensors weights are loaded (no pickle); `tinystories pull` explains repos without them."
        ) from err
    return install_attention(model, attn_implementation)
