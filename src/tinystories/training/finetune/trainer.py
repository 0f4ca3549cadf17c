"""The base model (fast attention, fused loss, 4-bit for QLoRA), the `SFTTrainer` on the fast path, label checks, PEFT bookkeeping."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import Trainer
from trl import SFTConfig, SFTTrainer, get_quantization_config

from tinystories.core import ConfigError
from tinystories.core.paths import resolve_hub_id
from tinystories.core.runtime import resolve_precision
from tinystories.data.packing import num_utf8_bytes
from tinystories.data.tokenizer import load_tokenizer
from tinystories.models.loading import load_model
from tinystories.models.losses import IGNORE_INDEX, use_fused_cross_entropy
from tinystories.training.finetune.arguments import (
    FinetuneArguments,
    FinetuneModelConfig,
    validate_training_args,
)
from tinystories.training.trainer import BitsPerByteTrainer, TimeLimitCallback, TokensPerSecondCallback

logger = logging.getLogger(__name__)


def load_base_tokenizer(args: FinetuneArguments):
    """The base model's tokenizer (or `--tokenizer`); it must have an EOS token, where stories end."""
    tokenizer = load_tokenizer(args.tokenizer or args.base_model, revision=args.base_revision)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token: stories could not end; use the GPT-Neo tokenizer")
    return tokenizer


def load_base(args: FinetuneArguments, model_config: FinetuneModelConfig, tokenizer=None):
    """(model, tokenizer) for the base model: safetensors only, fast attention, pad = eos; 4-bit for QLoRA.
    `tokenizer`: one `load_base_tokenizer` already returned (the pipeline needs it for the data first)."""
    tokenizer = tokenizer if tokenizer is not None else load_base_tokenizer(args)
    kwargs = {}
    quantization = get_quantization_config(model_config)
    if quantization is not None:
        kwargs = {
            "quantization_config": quantization,
            "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))},
        }
    model = load_model(
        args.base_model,
        attn_implementation=model_config.attn_implementation or "sdpa",
        revision=args.base_revision,
        **kwargs,
    )
    if args.fused_cross_entropy:
        use_fused_cross_entropy(
            model, chunk_size=args.loss_chunk_size
        )  # before PEFT wraps it: the adapter's forward calls this one
    if model.config.vocab_size < len(tokenizer):
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size}: "
            "pass the tokenizer the base model was trained with (--tokenizer)"
        )
    return model, tokenizer


def qlora_compute_dtype(model_config: FinetuneModelConfig) -> None:
    """QLoRA computes in bf16 where the GPU has it, else fp16 (the 4-bit weights are dequantized to it)."""
    if model_config.load_in_4bit and model_config.dtype in (None, "auto", "float32"):
        bf16, _ = resolve_precision("auto")  # the one precision rule: bf16 where the GPU has it, else fp16
        model_config.dtype = "bfloat16" if bf16 else "float16"


# --------------------------------------------------------------------------------------------- trainer
class TinyStoriesSFTTrainer(BitsPerByteTrainer, SFTTrainer):
    """`SFTTrainer` on pretraining's fast path, with the pretraining Trainer's bits-per-byte eval logs.

    When the model computes its own fused cross-entropy (`tinystories.models.losses.use_fused_cross_entropy`, installed
    by `load_base`), the training loss is the model's: TRL's labels (prompt tokens -100, story and EOS trained)
    go through the chunked LM-head + cross-entropy inside the forward, the plain `Trainer.compute_loss` way.
    TRL's own loss path (log-probs, entropy and top-1 metrics over the vocabulary) is used otherwise.
    A right-padded training batch goes in without its attention mask (`without_right_padding_mask`).
    """

    def __init__(self, *args, fused_loss: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused_loss = fused_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not (self.fused_loss and model.training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = without_right_padding_mask(inputs)
        return Trainer.compute_loss(
            self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch
        )


def without_right_padding_mask(inputs: dict) -> dict:
    """`inputs` without `attention_mask` when the mask only pads rows on the right and no padding has a label.

    Under causal attention a token never sees the positions after it, so the padding at the end of a row
    changes nothing for the real tokens (their positions count from 0 either way), and the loss, which has no
    label on padding, is the same. Without a mask the model takes the unmasked causal kernels (`is_causal`
    SDPA: no (B, 1, T, T) mask to build, and the flash path); with a mask that pads on the left or inside a
    row, or with position ids (packed rows), the inputs are returned as they are.
    """
    mask, labels = inputs.get("attention_mask"), inputs.get("labels")
    if mask is None or labels is None or mask.dim() != 2 or "position_ids" in inputs:
        return inputs
    pads_right_only = not bool((mask[:, 1:] > mask[:, :-1]).any())
    if not pads_right_only or bool((labels[mask == 0] != IGNORE_INDEX).any()):
        return inputs
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def eval_text_stats(dataset, tokenizer) -> tuple[int, int] | None:
    """(loss tokens, UTF-8 bytes) of the eval stories: story tokens + one EOS each, for bits per byte."""
    if dataset is None or len(dataset) == 0:
        return None
    texts = list(dataset["completion" if "completion" in dataset.column_names else "text"])
    tokens = sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return tokens, num_utf8_bytes(texts)


def build_trainer(
    training_args: SFTConfig, model, tokenizer, data, fused_loss: bool = True, **kwargs
) -> TinyStoriesSFTTrainer:
    """An `SFTTrainer` on `data` (prompt/completion or text columns); `peft_config=` makes it LoRA.

    `fused_loss`: the model computes its training loss (`load_base` installed the fused cross-entropy).
    """
    validate_training_args(training_args, getattr(model.config, "max_position_embeddings", None))
    eval_set = data["validation"] if "validation" in data and len(data["validation"]) > 0 else None
    if eval_set is None and training_args.eval_strategy != "no":
        logger.warning("no validation data: evaluation is skipped")
        training_args.eval_strategy = "no"
    return TinyStoriesSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[TokensPerSecondCallback()]
        + ([TimeLimitCallback(training_args.max_minutes)] if training_args.max_minutes else []),
        eval_text_stats=eval_text_stats(eval_set, tokenizer),
        fused_loss=fused_loss,
        **kwargs,
    )


def check_labels(trainer, n: int = 8) -> dict[str, int]:
    """Sanity check on the first prepared examples: some tokens are trained, sequences end in EOS."""
    ds = trainer.train_dataset
    eos = trainer.processing_class.eos_token_id
    masked = trained = ends_with_eos = 0
    for row in ds.select(range(min(n, len(ds)))):
        labels = row["labels"]
        masked += sum(1 for t in labels if t == -100)
        trained += sum(1 for t in labels if t != -100)
        ends_with_eos += int(labels[-1] == eos)
    if trained == 0:
        raise ConfigError("every label is masked: the prompts fill max_length; raise --max_length")
    return {"masked": masked, "trained": trained, "ends_with_eos": ends_with_eos}


def adapter_base_name(args: FinetuneArguments) -> str:
    """What `adapter_config.json` records as the base: a Hub id, else the base folder's absolute path.

    The absolute path makes the adapter reload from any directory of this machine; it never leaves it:
    `tinystories push` rewrites it to the base's Hub id, and refuses an adapter whose base is not on the Hub.
    """
    if args.adapter_base_name:
        return args.adapter_base_name
    hub_id = resolve_hub_id(args.base_model)
    if hub_id:
        return hub_id
    logger.info(
        "the base model is a local folder: adapter_config.json records its path; pass --adapter_base_name "
        "<hub id> once the base is on the Hub, so the adapter can be pushed"
    )
    return str(Path(args.base_model).expanduser().resolve())


def attach_peft(trainer, args: FinetuneArguments) -> dict[str, int]:
    """Name the adapter's base (Hub id or absolute path) and count its parameters."""
    trainer.model.peft_config["default"].base_model_name_or_path = adapter_base_name(args)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    logger.info("LoRA: %d trainable of %d parameters (%.3f%%)", trainable, total, 100 * trainable / total)
    return {"trainable_parameters": trainable, "num_parameters": total}


def peft_hparams(model_config: FinetuneModelConfig) -> dict:
    targets = model_config.lora_target_modules
    return {
        "lora_r": model_config.lora_r,
        "lora_alpha": model_config.lora_alpha,
        "lora_dropout": model_config.lora_dropout,
        "lora_target_modules": targets if isinstance(targets, str) else " ".join(targets),
        "use_dora": model_config.use_dora,
        "use_rslora": model_config.use_rslora,
        "quantization": f"4-bit {model_config.bnb_4bit_quant_type}" if model_config.load_in_4bit else None,
    }
