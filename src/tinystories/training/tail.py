"""What every training stage shares: start-up checks, the Trainer additions, the run record and the tail.

Pretraining, SFT and LoRA all start with `prepare_run` (push token and resume decided before any data is
read), train a `BitsPerByteTrainer` with `TokensPerSecondCallback`, describe themselves with `run_record`,
and end in `finish_run`: the one place where a run is saved (safetensors, tokenizer, generation config),
its metrics and loss curve are written, card samples are generated, its model card is rendered, a LoRA
adapter is optionally merged into a plain model, and the folder is pushed. They cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.runtime.zero.partition_parameters import GatheredParameters
from peft import PeftModel
from transformers import GenerationConfig, Trainer, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint

from tinystories.core import TRAINED_CONTEXT, ConfigError
from tinystories.core.plots import save_loss_curve
from tinystories.core.runtime import DeviceFacts, check_one_process_per_gpu, describe_devices, precision_name
from tinystories.evaluation.generation import sample_generations
from tinystories.evaluation.metrics import perplexity
from tinystories.hub.cards import write_model_card
from tinystories.hub.staging import check_push_ready, push_folder
from tinystories.models.loading import load_model

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


# ------------------------------------------------------------------------------------------- start-up
@dataclass
class Tail:
    """What `finish_run` does after training (besides saving): push, card samples, merged LoRA export."""

    push: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    context: int = TRAINED_CONTEXT  # written as the generation config's max_length
    samples: str | None = "stories"  # the `SAMPLE_PROMPTS` kind of the card samples; None: no samples
    num_samples: int = 3
    sample_max_new_tokens: int = 120
    merge_onto: str | None = None  # LoRA: merge the saved adapter onto this base into <output_dir>/merged
    merge_revision: str | None = None
    attn_implementation: str = "sdpa"


def resolve_resume(output_dir: str | Path, resume_from_checkpoint: str | None, overwrite: bool) -> str | None:
    """The checkpoint to resume from: the given one, else the newest in `output_dir`, else None.

    A finished run in `output_dir` (final weights, no checkpoint) is never overwritten silently.
    """
    if resume_from_checkpoint:
        if not Path(resume_from_checkpoint).is_dir():
            raise ConfigError(
                f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint directory"
            )
        return resume_from_checkpoint
    output_dir = Path(output_dir)
    if not output_dir.is_dir() or overwrite:
        return None
    last = get_last_checkpoint(str(output_dir))
    if last is not None:
        logger.warning("resuming from the newest checkpoint in %s: %s", output_dir, last)
        return last
    if any((output_dir / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(
            f"{str(output_dir)!r} already holds a finished model and no checkpoint to resume: choose another "
            "OUTPUT_DIR (or --output_dir), or pass --overwrite_output_dir true to replace it"
        )
    return None


def prepare_run(args: TrainingArguments, **tail_fields: Any) -> tuple[str | None, Tail]:
    """(checkpoint to resume from, the tail's settings), decided before any data is read.

    A push is checked now (token, namespace), so a missing token fails in seconds, not after training;
    the Trainer's own push is turned off: the tail pushes the finished folder (weights, card, metrics) once.
    Several GPUs in one undistributed process (DataParallel) are refused; the main process logs the devices.
    """
    devices = DeviceFacts.of_run(args)
    check_one_process_per_gpu(devices)
    if args.process_index == 0:
        logger.info(describe_devices(devices, precision_name(args)))
    push = bool(args.push_to_hub)
    if push:
        check_push_ready(args.hub_model_id)
    args.push_to_hub = False
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    tail = Tail(
        push=push, hub_model_id=args.hub_model_id, hub_private=bool(args.hub_private_repo), **tail_fields
    )
    return resume, tail


# ---------------------------------------------------------------------------------------------- tail
def generation_config_for(tokenizer, context: int = TRAINED_CONTEXT) -> GenerationConfig:
    eos = tokenizer.eos_token_id
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        max_length=context,
        do_sample=True,
        temperature=1.0,
        top_k=40,
    )


def _write_results(trainer: Trainer, output_dir: Path, metrics: dict[str, Any], title: str) -> dict[str, Any]:
    """`all_results.json` (train summary + final eval) and `loss_curve.png`."""
    history = trainer.state.log_history
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    results = {
        **{k: v for k, v in summary.items() if k.startswith("train_")},
        **metrics,
        "num_input_tokens_seen": trainer.state.num_input_tokens_seen,
        "global_step": trainer.state.global_step,
    }
    # `train_tokens_per_second` & co: from the summary (`TokensPerSecondCallback`: this call's training steps)
    (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
    save_loss_curve(history, output_dir / "loss_curve.png", title=title)
    return results


def _eval_results(info: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "loss": metrics.get("eval_loss"),
        "perplexity": metrics.get("eval_perplexity"),
        "bits_per_byte": metrics.get("eval_bits_per_byte"),
        "dataset": (info.get("datasets") or [None])[0],
        "split": "validation",
    }


def _is_zero3(trainer: Trainer) -> bool:
    """DeepSpeed ZeRO-3: every rank holds a shard of each parameter, so every rank must take part in a forward."""
    return bool(trainer.is_deepspeed_enabled) and is_deepspeed_zero3_enabled()


def _save_weights(trainer: Trainer, output_dir: Path) -> None:
    """`model.safetensors` (or the adapter) in `output_dir`, whatever the launcher; called on every rank.

    Under ZeRO-3 the Trainer saves full weights only with `zero3_save_16bit_model: true` (the shipped
    configs set it); otherwise it would write a sharded DeepSpeed checkpoint and no model, so the
    parameters are gathered here (all ranks) and rank 0 writes them.
    """
    if not _is_zero3(trainer) or trainer.deepspeed.zero_gather_16bit_weights_on_model_save():
        trainer.save_model(str(output_dir))  # safetensors (transformers 5 writes no pickle)
        return
    logger.warning(
        "ZeRO-3 without stage3_gather_16bit_weights_on_model_save: gathering the parameters to save the model"
    )
    model = trainer.accelerator.unwrap_model(trainer.model)
    with GatheredParameters(list(model.parameters()), modifier_rank=None):
        if trainer.args.should_save:
            model.save_pretrained(output_dir)  # the gathered parameters, tied ones once


def _card_samples(trainer: Trainer, tokenizer, tail: Tail) -> list[dict[str, str]] | None:
    """The card's sample generations: on rank 0, and under ZeRO-3 on every rank (the forward passes of a
    sharded model are collective; `generate` keeps the ranks in step), where only rank 0 uses them."""
    if not (tail.samples and tail.num_samples):
        return None
    if not (trainer.is_world_process_zero() or _is_zero3(trainer)):
        return None
    return sample_generations(
        trainer.model, tokenizer, tail.samples, tail.num_samples, tail.sample_max_new_tokens
    )


def finish_run(trainer: Trainer, tokenizer, run_info: dict[str, Any], tail: Tail) -> dict[str, Any]:
    """Save, evaluate, write metrics/plot/samples/card, merge a LoRA adapter, push. Returns the final metrics."""
    output_dir = Path(trainer.args.output_dir)
    _save_weights(trainer, output_dir)
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    samples = _card_samples(trainer, tokenizer, tail)
    if not trainer.is_world_process_zero():
        shutdown_distributed(trainer)  # wait for rank 0's writes, then leave the process group cleanly
        return metrics
    tokenizer.save_pretrained(output_dir)
    generation_config_for(tokenizer, tail.context).save_pretrained(output_dir)
    trainer.save_state()
    results = _write_results(trainer, output_dir, metrics, run_info.get("model_name", output_dir.name))
    info = dict(run_info)
    if metrics:
        info.setdefault("eval_results", _eval_results(info, metrics))
    if samples is not None:
        info["samples"] = samples
    write_model_card(output_dir, info)
    if tail.merge_onto:
        export_merged(output_dir, tokenizer, info, tail)
    if tail.push:
        push_folder(
            output_dir,
            tail.hub_model_id,
            private=tail.hub_private,
            commit_message=f"Upload {info['stage']} run",
        )
    logger.info("run saved to %s", output_dir)
    shutdown_distributed(trainer)
    return results


def export_merged(adapter_dir: Path, tokenizer, run_info: dict[str, Any], tail: Tail) -> Path:
    """Reload the saved adapter onto a full-precision base, merge it, and save a plain model in `merged/`.

    Reloading from disk (rather than merging the in-memory model) also works after QLoRA, whose in-memory
    base is 4-bit, and proves the saved adapter is complete. The export needs neither PEFT nor the base.
    """
    merged_dir = adapter_dir / "merged"
    base = load_model(
        tail.merge_onto,
        attn_implementation=tail.attn_implementation,
        revision=tail.merge_revision,
        dtype=torch.float32,
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)  # safetensors
    tokenizer.save_pretrained(merged_dir)
    generation_config_for(tokenizer, tail.context).save_pretrained(merged_dir)
    info = {
        **run_info,
        "stage": "lora-merged",
        "model_name": f"{run_info.get('model_name', 'lora')}-merged",
        "num_parameters": merged.num_parameters(),
        "config": merged.config.to_diff_dict(),
        "tags": ["lora", "peft", "merged"],
    }
    write_model_card(merged_dir, info)
    logger.info("merged model saved to %s", merged_dir)
    return merged_dir


def print_summary(results: dict[str, Any], trainer: Trainer, label: str = "eval loss") -> None:
    """One stderr line at the end of a training run: final eval loss, perplexity, bits per byte, where it went."""
    if trainer.is_world_process_zero() and "eval_loss" in results:
        speed = ""
        if results.get("train_tokens_per_second_per_gpu"):
            speed = f" | {results['train_tokens_per_second_per_gpu']:,.0f} tokens/s per GPU"
            speed += f" (MFU {results['train_mfu']:.1%})" if results.get("train_mfu") else ""
        print(
            f"{label} {results['eval_loss']:.4f} | perplexity {perplexity(results['eval_loss']):.2f}"
            f" | bits/byte {results.get('eval_bits_per_byte', float('nan')):.4f}{speed}"
            f" | saved to {trainer.args.output_dir}",
            file=sys.stderr,
        )


def shutdown_distributed(trainer: Trainer) -> None:
    """Barrier, then destroy the process group: a rank that exits while another still holds the group
    (gloo / DeepSpeed's shared-memory comm threads) can abort at interpreter shutdown."""
    if dist.is_available() and dist.is_initialized():
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()
