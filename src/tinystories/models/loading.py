"""The one model resolver: a Hub id, a local model dir or a LoRA adapter dir becomes a ready causal LM.

Weights are loaded as safetensors and no repository code runs; GPT-Neo models get the project's exact
SDPA/flex attention and fused GELU. A Hub id is resolved by `checkpoints.fetch_checkpoint` to its HF-cache
snapshot (a repo with only `pytorch_model.bin`, like the released TinyStories models, is read with
`torch.load(weights_only=True)` and converted once to `model.safetensors` there); a local dir with only
`pytorch_model.bin` is converted the same way, beside it. A LoRA adapter folder (`tinystories lora` output: an
`adapter_config.json` and no `config.json`) is loaded onto the base its config names, resolved the same way,
and merged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from peft import PeftConfig, PeftModel
from transformers import AutoModelForCausalLM

from tinystories.core import TRAINED_CONTEXT, ConfigError, offline_hint
from tinystories.core.arguments import ATTENTION_KERNELS
from tinystories.core.paths import is_hub_id, looks_like_path
from tinystories.models.attention import use_fast_attention, use_fast_gelu
from tinystories.models.checkpoints import ensure_safetensors, fetch_checkpoint

logger = logging.getLogger(__name__)

MODEL_FIX = (
    "pass MODEL=<local model dir> (a folder with config.json and model.safetensors or pytorch_model.bin, or a "
    "LoRA adapter folder) or a reachable Hub id"
)
ATTENTION_BACKENDS = ATTENTION_KERNELS  # the one list: core.arguments
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_attn_implementation(name: str) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ConfigError(f"unknown attn_implementation {name!r}: use one of {', '.join(ATTENTION_BACKENDS)}")
    return name


# Models with a `transformers` attention that is already exact (Llama: scaled SDPA, no local layers) get the
# library's own kernel by name; GPT-Neo gets the project's (its unscaled, banded attention has none).
LIBRARY_ATTENTION = {"sdpa": "sdpa", "flex": "flex_attention", "eager": "eager"}


def install_attention(model, attn_implementation: str = "sdpa"):
    """GPT-Neo gets the project's exact SDPA/flex attention (and fused GELU); Llama the library's SDPA/flex."""
    check_attn_implementation(attn_implementation)
    model_type = getattr(model.config, "model_type", None)
    if model_type == "llama":
        model.set_attn_implementation(LIBRARY_ATTENTION[attn_implementation])
        return model
    if model_type != "gpt_neo" or attn_implementation == "eager":
        return model
    use_fast_gelu(model)  # one-kernel tanh GELU: the same function as gelu_new
    return use_fast_attention(model, backend=attn_implementation)


def is_adapter_dir(name_or_path: str) -> bool:
    """A LoRA adapter folder: `adapter_config.json` without a full model's `config.json`."""
    path = Path(name_or_path).expanduser()
    return path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def check_model_source(name_or_path: str) -> None:
    """A local --model that cannot be a model is refused before any work: missing, or a folder that is neither a
    model (config.json) nor a LoRA adapter (adapter_config.json)."""
    path = Path(name_or_path).expanduser()
    if looks_like_path(name_or_path) and not path.exists():
        raise ConfigError(f"model path {name_or_path!r} does not exist: {MODEL_FIX}")
    if path.is_dir() and not (path / "config.json").is_file() and not is_adapter_dir(name_or_path):
        raise ConfigError(
            f"model folder {name_or_path!r} has no config.json (nor a LoRA adapter's adapter_config.json): {MODEL_FIX}"
        )


def _load_full(name_or_path: str, revision: str | None, load_attn: str, dtype, **kwargs):
    """The plain model (stock attention) from a local model dir or a Hub id, safetensors only."""
    path = Path(name_or_path).expanduser()
    check_model_source(name_or_path)
    if path.is_dir():
        folder = ensure_safetensors(path, name_or_path)  # only pytorch_model.bin: converted once, beside it
    else:
        folder = fetch_checkpoint(name_or_path, revision)  # the HF-cache snapshot of that revision
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder),
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=False,
            attn_implementation=load_attn,
            **kwargs,
        )
    except Exception as err:
        raise ConfigError(
            f"could not load model {name_or_path!r}{offline_hint()}: {type(err).__name__}: {err}. {MODEL_FIX}"
        ) from err
    if is_hub_id(name_or_path):  # records (configs, adapters) name the Hub id, not a cache path
        model.config.name_or_path = model.name_or_path = name_or_path
    return model


def _load_adapter(path: Path, load_attn: str, dtype, **kwargs):
    """A LoRA adapter merged onto the base its `adapter_config.json` names (a Hub id, or a path from here)."""
    if not (path / ADAPTER_WEIGHTS).is_file():
        raise ConfigError(f"{path} has no {ADAPTER_WEIGHTS} (pickled adapters are not loaded): {MODEL_FIX}")
    try:
        config = PeftConfig.from_pretrained(str(path))
    except Exception as err:
        raise ConfigError(f"could not read the adapter config in {path}: {err}. {MODEL_FIX}") from err
    if not config.base_model_name_or_path:
        raise ConfigError(f"{path}/adapter_config.json names no base_model_name_or_path: {MODEL_FIX}")
    base = _load_full(config.base_model_name_or_path, config.revision, load_attn, dtype, **kwargs)
    try:
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    except Exception as err:
        raise ConfigError(f"could not load the adapter {str(path)!r}: {type(err).__name__}: {err}") from err


def load_model(
    name_or_path: str,
    attn_implementation: str = "sdpa",
    revision: str | None = None,
    dtype=None,
    **kwargs,
):
    """A causal LM from a Hub id, a local model dir or a LoRA adapter dir (merged onto its base)."""
    check_attn_implementation(attn_implementation)
    # the stock classes load eager attention; ours is installed afterwards (same weights, exact same math)
    load_attn = "eager" if attn_implementation in ("sdpa", "flex") else attn_implementation
    if is_adapter_dir(name_or_path):
        model = _load_adapter(Path(name_or_path).expanduser(), load_attn, dtype, **kwargs)
    else:
        model = _load_full(name_or_path, revision, load_attn, dtype, **kwargs)
    return install_attention(model, attn_implementation)


def context_limit(model_or_config) -> int:
    """Tokens a model may see at once: the context it was trained at.

    GPT-Neo: 512, or less if its config says so (the released checkpoints store 2048 positions but were trained at
    512 and degrade past it). Other families store the context they were trained at (a converted llama2.c model:
    its `seq_len`, 256 for stories15M, 1024 for stories110M; SimpleStories: 512).
    """
    config = getattr(model_or_config, "config", model_or_config)
    stored = int(getattr(config, "max_position_embeddings", None) or TRAINED_CONTEXT)
    return min(TRAINED_CONTEXT, stored) if getattr(config, "model_type", "gpt_neo") == "gpt_neo" else stored
