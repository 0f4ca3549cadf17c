"""The exported folder, laid out as transformers.js and ONNX Runtime generation loops load it.

    <output_dir>/
      config.json              the model's config + "transformers.js_config"
      generation_config.json   eos, max_length = the trained context
      tokenizer.json, tokenizer_config.json, ...
      onnx/model.onnx          fp32 decoder with past key values (weights inside, no .onnx.data)
      onnx/model_quantized.onnx   with --quantize int8 (transformers.js dtype "q8")
      onnx/generation.onnx     fp32 batch-1 generation graph for ONNX Runtime's CPU kernels (`decoder_graph`)
      onnx/generation_quantized.onnx   with --quantize int8 (int8 MatMul weights)
      export_info.json         what was exported, file sizes, and the parity measured right after export

transformers.js v4 (`@huggingface/transformers`) `AutoModelForCausalLM.from_pretrained(dir, {dtype})` reads
`onnx/model{suffix}.onnx` (subfolder `onnx`; suffix "" for fp32, "_quantized" for q8: `DEFAULT_DTYPE_SUFFIX_MAPPING`),
maps gpt_neo's `num_heads`/`num_layers`/`hidden_size` from config.json to build the empty cache, and honours
`transformers.js_config`: `use_external_data_format: false` (one file per graph) and, when no q8 file was written,
`dtype: "fp32"` (its WASM default is q8, which would look for a file that is not there).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
import transformers
from transformers import GenerationConfig

from tinystories.models.export.decoder_graph import GENERATION_FAMILIES, export_generation_graph
from tinystories.models.export.graph import DEFAULT_OPSET, export_decoder
from tinystories.models.export.quantize import quantize_generation_int8, quantize_int8
from tinystories.models.export.session import (
    GENERATION_FILE,
    GENERATION_INT8_FILE,
    OnnxCausalLM,
    OnnxGenerator,
)
from tinystories.models.loading import context_limit

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FP32_FILE = f"{ONNX_DIR}/model.onnx"
INT8_FILE = f"{ONNX_DIR}/model_quantized.onnx"
EXPORT_INFO_FILE = "export_info.json"
JS_CONFIG_KEY = "transformers.js_config"
FP32_TOLERANCE = 1e-3  # max |logit difference| fp32 ONNX vs PyTorch above which the export is refused


def transformers_js_config(quantized: bool) -> dict[str, Any]:
    config: dict[str, Any] = {"use_external_data_format": False}
    if not quantized:
        config["dtype"] = "fp32"
    return config


def write_config(model, output_dir: Path, quantized: bool) -> Path:
    model.config.save_pretrained(output_dir)
    path = output_dir / "config.json"
    config = json.loads(path.read_text())
    config[JS_CONFIG_KEY] = transformers_js_config(quantized)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def write_generation_config(model, tokenizer, output_dir: Path) -> Path:
    """The model's generation config, with EOS and a max_length within the trained context."""
    stored = getattr(model, "generation_config", None)
    config = copy.deepcopy(stored) if stored is not None else GenerationConfig.from_model_config(model.config)
    eos = tokenizer.eos_token_id
    if config.eos_token_id is None:
        config.eos_token_id = eos
    if config.bos_token_id is None:
        config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    limit = context_limit(model)
    if config.max_length in (None, 20) or config.max_length > limit:
        config.max_length = limit  # 20 is the library default: no run of ours stores it
    config.save_pretrained(output_dir)
    return output_dir / "generation_config.json"


def parity_ids(model, length: int | None = None) -> list[int]:
    """A fixed token sequence longer than the local window (when the context allows): the window must bite."""
    window = int(getattr(model.config, "window_size", 256))
    length = min(context_limit(model), length or window + 64)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (length,), generator=generator).tolist()


@torch.no_grad()
def measure_parity(model, onnx_paths: dict[str, Path], ids: list[int], greedy_tokens: int = 32) -> dict:
    """Max |logit difference| and argmax agreement vs PyTorch on `ids`; greedy tokens from its first 16 that
    match `generate`'s."""
    model.eval()
    reference = model(torch.tensor([ids])).logits[0].float().numpy()
    prompt = ids[:16]
    expected = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        generation_config=GenerationConfig(
            max_new_tokens=greedy_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        ),
    )[0, len(prompt) :].tolist()
    result: dict[str, Any] = {"tokens": len(ids), "greedy_tokens": greedy_tokens}
    window = getattr(model.config, "window_size", None)  # GPT-Neo's local layers; Llama has none
    for name, path in onnx_paths.items():
        if name.startswith("generation"):
            lm = OnnxGenerator(path)
            logits = stepped_logits(lm, ids, len(prompt))
        else:
            lm = OnnxCausalLM(path)
            logits = lm.logits([ids])[0]
        diff = np.abs(logits - reference)
        got = lm.generate_greedy(prompt, greedy_tokens).tokens
        result[name] = {
            "max_abs_logit_diff": float(diff.max()),
            "max_abs_logit_diff_past_window": float(diff[window:].max())
            if window and len(ids) > window
            else None,
            "greedy_prefix_equal_pytorch": _common_prefix(got, expected),
            # the next token as PyTorch's argmax at every position of `ids` (int8 differs where logits nearly tie)
            "argmax_agreement_pytorch": float((logits.argmax(-1) == reference.argmax(-1)).mean()),
        }
    return result


def stepped_logits(generator: OnnxGenerator, ids: list[int], prompt_length: int) -> np.ndarray:
    """(len(ids), vocab) logits of the generation graph: the first `prompt_length` ids as one prompt (their
    logits one by one, a prompt each, since the graph returns the last position's), then one step per id."""
    rows = [generator.prefill(ids[: n + 1])[0].copy() for n in range(prompt_length)]
    rows += [generator.step(token)[0].copy() for token in ids[prompt_length:]]
    return np.stack(rows)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def file_sizes(output_dir: Path) -> dict[str, int]:
    return {
        p.relative_to(output_dir).as_posix(): p.stat().st_size
        for p in sorted(output_dir.rglob("*"))
        if p.is_file() and p.name != EXPORT_INFO_FILE
    }


def export_model(
    model,
    tokenizer,
    output_dir: str | Path,
    quantize: str = "none",
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Write the folder (module docstring) for `model` + `tokenizer`; returns what `export_info.json` holds."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device="cpu", dtype=torch.float32).eval()
    paths = {"fp32": export_decoder(model, output_dir / FP32_FILE, opset)}
    if model.config.model_type in GENERATION_FAMILIES:
        paths["generation_fp32"] = export_generation_graph(model, output_dir / GENERATION_FILE)
    for name, file in (("int8", INT8_FILE), ("generation_int8", GENERATION_INT8_FILE)):
        fp32, stale = paths.get(name.replace("int8", "fp32")), output_dir / file
        if quantize == "int8" and fp32 is not None:
            paths[name] = (quantize_int8 if name == "int8" else quantize_generation_int8)(fp32, stale)
        elif stale.exists():
            stale.unlink()  # an int8 file from an earlier export would no longer match its fp32 graph
    write_config(model, output_dir, quantized="int8" in paths)
    write_generation_config(model, tokenizer, output_dir)
    tokenizer.save_pretrained(output_dir)
    info: dict[str, Any] = {
        "source": source,
        "model_type": model.config.model_type,
        "num_layers": model.config.num_hidden_layers,
        "window_size": getattr(model.config, "window_size", None),
        "opset": opset,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "generation_graph": "onnx.helper + ONNX Runtime com.microsoft ops (GroupQueryAttention), batch 1"
        if "generation_fp32" in paths
        else None,
        "quantization": "onnxruntime.quantization.quantize_dynamic, int8 weights"
        if "int8" in paths
        else None,
        "versions": {"onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__},
        "files": file_sizes(output_dir),
    }
    if verify:
        info["parity"] = measure_parity(model, paths, parity_ids(model))
        fp32 = max(info["parity"][k]["max_abs_logit_diff"] for k in paths if k.endswith("fp32"))
        if fp32 > FP32_TOLERANCE:
            raise RuntimeError(
                f"the exported graph's logits differ from PyTorch's by {fp32:.2e} (> {FP32_TOLERANCE}): "
                "the export is wrong for this model; please report it (pass --verify false to keep the files)"
            )
    (output_dir / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info
