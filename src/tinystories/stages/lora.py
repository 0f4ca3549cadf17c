"""`tinystories lora`: LoRA / DoRA / QLoRA fine-tuning of a TinyStories checkpoint with PEFT, laptop-sized.

    tinystories lora --config recipes/lora/33M.yaml --base_model roneneldan/TinyStories-33M --data my_stories.txt

recipe → data (Instruct examples → prompt/completion, or plain stories → text) → base model (4-bit with
`--load_in_4bit`) → `SFTTrainer` with the `LoraConfig` TRL builds from `ModelConfig` (`get_peft_config`:
`--use_dora`, `--use_rslora`, `--lora_modules_to_save` ... come for free) → shared tail on the adapter in
`output_dir` → merged export in `output_dir/merged`. The steps are the fine-tuning pipeline
`tinystories.training.finetune.run`, shared with `tinystories sft`; this module holds LoRA's defaults.

LoRA adapters sit on every Linear of a block (`lora_target_modules: auto`): GPT-Neo's attention (`q_proj
k_proj v_proj out_proj`) and MLP (`c_fc c_proj`), a Llama block's `q_proj k_proj v_proj o_proj` and SwiGLU
`gate_proj up_proj down_proj`; each adds `r × (in + out)` parameters, i.e. `18·r·hidden` per GPT-Neo layer. QLoRA loads
the frozen base in 4-bit NF4 with bitsandbytes and needs a CUDA GPU.

`adapter_config.json` records the base model the adapter is loaded onto: a Hub id as is; for a local base
(e.g. the quickstart's `outputs/quickstart/pretrain`) its absolute path, so the adapter reloads from any
directory of this machine. `tinystories push` publishes the base's Hub id instead (pass `--adapter_base_name
<hub id>` once the base is on the Hub) and refuses an adapter whose base is not on the Hub. The merged export
in `merged/` is a plain `transformers` model that needs neither PEFT nor the base.
"""

from __future__ import annotations

from tinystories.core.config import parse_args, setup_logging
from tinystories.models.sizes import block_linear_shapes
from tinystories.training.finetune.arguments import (
    DEFAULT_INSTRUCT_DATA,
    GPT_NEO_TARGET_MODULES,
    LoraModelConfig,
    LoraScriptArguments,
    TinyStoriesLoraConfig,
)
from tinystories.training.finetune.pipeline import run
from tinystories.training.finetune.trainer import adapter_base_name

__all__ = [
    "GPT_NEO_TARGET_MODULES",
    "LoraModelConfig",
    "LoraScriptArguments",
    "TinyStoriesLoraConfig",
    "adapter_base_name",
    "expected_trainable_parameters",
    "main",
]


def expected_trainable_parameters(config, r: int, target_modules: list[str] | str | None = None) -> int:
    """LoRA parameters: r × (in + out) per adapted Linear (GPT-Neo with all six: 18·r·hidden per layer)."""
    shapes = block_linear_shapes(config)
    targets = target_modules
    if targets in (None, ["all-linear"], "all-linear", ["auto"], "auto"):
        targets = list(shapes)
    return config.num_hidden_layers * sum(r * sum(shapes[t]) for t in targets)


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (LoraScriptArguments, TinyStoriesLoraConfig, LoraModelConfig)
DEFAULTS = {"data": DEFAULT_INSTRUCT_DATA, "output_dir": "outputs/lora"}


def main(argv: list[str] | None = None) -> int:
    args, training_args, model_config = parse_args(ARGUMENTS, argv, DEFAULTS)
    setup_logging()
    run(args, training_args, model_config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
