"""`tinystories export`: a model as ONNX for ONNX Runtime and transformers.js (fp32, optionally int8).

    tinystories export --model outputs/tinystories-8M                       # -> outputs/tinystories-8M/onnx-export
    tinystories export --model roneneldan/TinyStories-33M --quantize int8   # -> outputs/export/roneneldan__TinyStories-33M
    tinystories export --model outputs/lora-33M --output_dir web/model      # a LoRA adapter: merged first

The model comes through the one resolver (`models.loading.load_model`: a run dir, a Hub id or its HF-cache
snapshot, a LoRA adapter dir merged onto its base). The folder holds `onnx/model.onnx` (fp32 decoder with past key
values, inputs `input_ids`, `attention_mask`, `position_ids`, `past_key_values.{i}.key/value`; outputs `logits`,
`present.{i}.key/value`), with `--quantize int8` also `onnx/model_quantized.onnx` (ONNX Runtime dynamic int8),
`config.json` (with `transformers.js_config`), `generation_config.json` and the tokenizer: what
`AutoModelForCausalLM.from_pretrained(dir, {dtype: 'fp32' | 'q8'})` of transformers.js loads
(`tinystories.models.export.layout`). Right after writing, the fp32 graph's logits are compared with PyTorch's on a
sequence longer than the local attention window (refused above 1e-3) and `export_info.json` records the numbers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tinystories.core import ConfigError
from tinystories.core.arguments import ModelSource, OutputArguments, check_choice, check_range
from tinystories.core.config import parse_args, setup_logging
from tinystories.core.paths import check_output_dir, output_lock, public_name
from tinystories.data.tokenizer import load_tokenizer
from tinystories.models.export.gguf import GGUF_INFO_FILE, GGUF_TYPES, export_gguf, find_converter
from tinystories.models.export.graph import DEFAULT_OPSET
from tinystories.models.export.layout import EXPORT_INFO_FILE, export_model
from tinystories.models.export.quantize import QUANTIZATIONS
from tinystories.models.loading import is_adapter_dir, load_model

logger = logging.getLogger(__name__)

DEFAULT_SUBDIR = "onnx-export"


@dataclass
class ExportArguments(ModelSource, OutputArguments):
    """--model (run dir, Hub id or LoRA adapter dir, merged first), --tokenizer, --output_dir (default:
    <model dir>/onnx-export, or outputs/export/<org>__<name> for a Hub id)."""

    quantize: str = field(default="none", metadata={"help": "none, or int8: also onnx/model_quantized.onnx"})
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": "ONNX opset of the graph"})
    verify: bool = field(
        default=True, metadata={"help": "compare ONNX and PyTorch logits after the export (export_info.json)"}
    )
    format: str = field(
        default="onnx",
        metadata={"help": "onnx, or gguf (llama.cpp; Llama-architecture runs, `make gguf-tools`)"},
    )
    gguf_type: str = field(default="f32", metadata={"help": "--format gguf: f32, f16, bf16 or q8_0"})

    def check(self):
        check_choice("quantize", self.quantize, QUANTIZATIONS)
        check_choice("format", self.format, ("onnx", "gguf"))
        check_choice("gguf_type", self.gguf_type, GGUF_TYPES)
        # the decoder graph needs opset 14 (trilu, scaled attention pieces); torch exports up to 23
        check_range("opset", self.opset, 14, 23, f"pass an --opset from 14 to 23 (default {DEFAULT_OPSET})")


def default_output_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if path.is_dir():
        return path / DEFAULT_SUBDIR
    return Path("outputs") / "export" / model.strip("/").replace("/", "__")


def _tokenizer_source(args: ExportArguments) -> tuple[str, str | None]:
    """The tokenizer's name: --tokenizer, else the model's own (an adapter without one: its base's)."""
    if args.tokenizer:
        return args.tokenizer, None
    path = Path(args.model).expanduser()
    if is_adapter_dir(args.model) and not (path / "tokenizer_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base:
            return base, None
    return args.model, args.revision


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (ExportArguments,)


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args(ARGUMENTS, argv)
    setup_logging()
    if not args.model:
        raise ConfigError("no --model given: pass MODEL=<run dir | Hub id | LoRA adapter dir>")
    if args.format == "gguf":
        find_converter()  # missing tools fail before the model is loaded
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.model)
    # the default <model dir>/onnx-export is a subfolder the model's loading never reads
    check_output_dir(output_dir, {"--model": args.model, "--tokenizer": args.tokenizer}, inside_ok=True)
    with output_lock(output_dir):
        return _export(args, output_dir)


def _export(args: ExportArguments, output_dir: Path) -> int:
    print(f"[export] loading {public_name(args.model)} ...", flush=True)
    model = load_model(args.model, attn_implementation="eager", revision=args.revision)  # a bad --model first
    tokenizer_name, tokenizer_revision = _tokenizer_source(args)
    tokenizer = load_tokenizer(tokenizer_name, revision=tokenizer_revision)
    if tokenizer.eos_token_id is None or len(tokenizer) > model.config.vocab_size:
        raise ConfigError(
            f"the tokenizer {public_name(tokenizer_name)!r} ({len(tokenizer)} tokens) does not fit the model "
            f"(vocabulary {model.config.vocab_size}): pass the model's own --tokenizer"
        )
    if args.format == "gguf":
        print(f"[export] converting with llama.cpp's convert_hf_to_gguf.py into {output_dir} ...", flush=True)
        info = export_gguf(model, tokenizer, output_dir, args.gguf_type, source=public_name(args.model))
        parity = info["parity"]
        print(
            f"  {info['file']}: {info['bytes'] / 1e6:.1f} MB; llama.cpp greedy tokens equal PyTorch's "
            f"{parity['greedy_prefix_equal_pytorch']}/{parity['greedy_tokens']}"
        )
        print(f"wrote {output_dir} ({GGUF_INFO_FILE})")
        return 0
    print(f"[export] tracing the ONNX graph into {output_dir / 'onnx'} ...", flush=True)
    info = export_model(
        model,
        tokenizer,
        output_dir,
        quantize=args.quantize,
        opset=args.opset,
        verify=args.verify,
        source=public_name(args.model),
    )

    for name, size in info["files"].items():
        if name.endswith(".onnx"):
            print(f"  {name}: {size / 1e6:.1f} MB")
    for kind, numbers in info.get("parity", {}).items():
        if isinstance(numbers, dict):
            print(
                f"  {kind} vs PyTorch on {info['parity']['tokens']} tokens: max |logit diff| "
                f"{numbers['max_abs_logit_diff']:.2e}, next token as PyTorch's "
                f"{numbers['argmax_agreement_pytorch']:.1%}, greedy tokens equal "
                f"{numbers['greedy_prefix_equal_pytorch']}/{info['parity']['greedy_tokens']}"
            )
    print(f"wrote {output_dir} ({EXPORT_INFO_FILE}: what was exported and the parity measured)")
    return 0
