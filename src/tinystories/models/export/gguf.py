"""GGUF for llama.cpp: a Llama-architecture run converted by llama.cpp's own `convert_hf_to_gguf.py`.

llama.cpp has no GPT-Neo architecture, so only `--architecture llama` runs convert. The converter is not a
module of any wheel: it ships in the `llama-cpp-python` source distribution (`vendor/llama.cpp/`:
`convert_hf_to_gguf.py`, its `conversion/` package and `gguf-py`). `make gguf-tools` downloads that sdist
from PyPI (the version pinned in `pyproject.toml`'s `gguf` extra), unpacks those three into `tools/llama.cpp/`
(git-ignored) and installs the extra: `llama-cpp-python` (built from source: cmake and a C++ compiler) and
`sentencepiece`, which the converter imports before it falls back to the GPT-2 BPE vocabulary of
`tokenizer.json`. `LLAMA_CPP_CONVERTER` points at another `convert_hf_to_gguf.py`.

`llama_cpp_greedy` runs the GGUF file in llama.cpp (`llama_cpp.Llama`) and returns its greedy continuation
of token ids: the parity check against PyTorch's `generate`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import GenerationConfig

from tinystories.core import REPO_ROOT, ConfigError

logger = logging.getLogger(__name__)

CONVERTER_ENV = "LLAMA_CPP_CONVERTER"
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
TOOLS_FIX = "run `make gguf-tools` (llama.cpp's converter and llama-cpp-python from PyPI)"


def find_converter() -> Path:
    """`$LLAMA_CPP_CONVERTER`, else `tools/llama.cpp/convert_hf_to_gguf.py` of the checkout."""
    given = os.environ.get(CONVERTER_ENV)
    path = (
        Path(given) if given else (REPO_ROOT or Path.cwd()) / "tools" / "llama.cpp" / "convert_hf_to_gguf.py"
    )
    if not path.is_file():
        raise ConfigError(f"llama.cpp's converter is not at {path}: {TOOLS_FIX}, or set {CONVERTER_ENV}")
    return path


def check_convertible(config) -> None:
    if getattr(config, "model_type", None) != "llama":
        raise ConfigError(
            f"GGUF export reads Llama-architecture models; this one is {config.model_type!r} (llama.cpp has no "
            "GPT-Neo architecture): train with ARCH=llama (--architecture llama), or export ONNX instead"
        )


def convert_to_gguf(model_dir: str | Path, out_path: str | Path, outtype: str = "f32") -> Path:
    """`model_dir` (config.json, model.safetensors, tokenizer.json) as one GGUF file, by llama.cpp's converter."""
    if outtype not in GGUF_TYPES:
        raise ConfigError(f"--gguf_type {outtype!r}: use one of {', '.join(GGUF_TYPES)}")
    converter, out_path = find_converter(), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(converter),
        str(model_dir),
        "--outfile",
        str(out_path),
        "--outtype",
        outtype,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out_path.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ConfigError(f"llama.cpp's converter failed on {model_dir}:\n{tail}\n({TOOLS_FIX})")
    logger.info("wrote %s (%.1f MB, %s)", out_path, out_path.stat().st_size / 1e6, outtype)
    return out_path


def llama_cpp_greedy(
    gguf_path: str | Path, prompt_ids: list[int], max_new_tokens: int, n_ctx: int = 512
) -> list[int]:
    """llama.cpp's greedy continuation of `prompt_ids` (token ids, no BOS added), `max_new_tokens` long."""
    try:
        from llama_cpp import Llama  # optional: the `gguf` extra
    except ImportError as err:
        raise ConfigError(f"llama-cpp-python is not installed: {TOOLS_FIX}") from err
    llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=max(1, os.cpu_count() or 1), verbose=False)
    tokens = []
    for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(int(token))
        if len(tokens) == max_new_tokens:
            break
    return tokens


PARITY_PROMPT = "Once upon a time, there was a little girl named Lily. She loved to"
GGUF_INFO_FILE = "gguf_info.json"


@torch.no_grad()
def torch_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return out[0, len(prompt_ids) :].tolist()


def export_gguf(
    model, tokenizer, output_dir: str | Path, outtype: str = "f32", source: str = "", greedy_tokens: int = 32
):
    """The model (fp32 on the CPU) as `<output_dir>/model-<outtype>.gguf`, and llama.cpp's greedy continuation of
    `PARITY_PROMPT` against PyTorch's (`gguf_info.json`). The model is saved as safetensors first, because the
    converter reads a folder."""
    check_convertible(model.config)
    output_dir = Path(output_dir)
    model = model.to(device="cpu", dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        path = convert_to_gguf(tmp, output_dir / f"model-{outtype}.gguf", outtype)
    prompt = tokenizer(PARITY_PROMPT)["input_ids"]
    expected = torch_greedy(model, prompt, greedy_tokens)
    got = llama_cpp_greedy(path, prompt, greedy_tokens)
    equal = next(
        (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
        min(len(got), len(expected)),
    )
    info = {
        "source": source,
        "file": path.name,
        "bytes": path.stat().st_size,
        "outtype": outtype,
        "converter": "llama.cpp convert_hf_to_gguf.py (llama-cpp-python source distribution)",
        "parity": {
            "prompt_tokens": len(prompt),
            "greedy_tokens": greedy_tokens,
            "greedy_prefix_equal_pytorch": equal,
        },
    }
    (output_dir / GGUF_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
