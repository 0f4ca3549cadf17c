"""What every training stage shares: start-up checks, the Trainer additions, the run record and the tail.

Pretraining, SFT and LoRA all start with `prepare_run` (push token and resume decided before any data is
read), train a `BitsPerByteTrainer` with `TokensPerSecondCallback`, describe themselves with `run_record`,
and end in `finish_run`: the one place where a run is saved (safetensors, tokenizer, generation config),
its metrics and loss curve are written, card samples are generated, its model card is rendered, a LoRA
adapter is optionally merged into a plain model, and the folder is pushed. They cannot drift apart.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from deepspeed.runtime.zero.partition_parameters import GatheredParameters
from peft import PeftModel
from transformers import GenerationConfig, Trainer, TrainingArguments
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint

from tinystories.core import TRAINED_CONTEXT, ConfigError, RunDone
from tinystories.core.paths import check_output_dir, output_lock
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


RUN_SETTINGS_FILE = "run_settings.json"  # what a run was started with: compared when the command runs again
# settings that change where a run logs, reports or pushes, or how fast it loads, not what it trains
EXECUTION_KEYS = frozenset(
    {
        "output_dir", "logging_dir", "overwrite_output_dir", "resume_from_checkpoint", "push_to_hub",
        "hub_model_id", "hub_private_repo", "hub_strategy", "hub_token", "hub_always_push", "hub_revision",
        "report_to", "run_name", "disable_tqdm", "local_rank", "dataloader_num_workers",
        "preprocessing_num_workers", "prepare_only", "data_cache_shared", "ddp_timeout",
    }
)  # fmt: skip
RESUME_GROUPS = (
    "model",
    "data",
)  # a checkpoint resumes only under the model and data settings it was trained with


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_settings(args: TrainingArguments, **groups: Any) -> dict[str, dict[str, Any]]:
    """{"model": ..., "data": ..., "training": ...}: a run's settings as JSON, without the execution-only keys.

    `groups` are the stage's other argument dataclasses by role (`model=`, `data=`)."""
    values = {name: asdict(obj) for name, obj in groups.items() if obj is not None}
    values["training"] = args.to_dict()
    return {
        name: {k: v for k, v in _plain(group).items() if k not in EXECUTION_KEYS}
        for name, group in values.items()
    }


def read_run_settings(folder: str | Path) -> dict[str, dict[str, Any]] | None:
    path = Path(folder) / RUN_SETTINGS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def write_run_settings(folder: str | Path, settings: dict[str, dict[str, Any]]) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / RUN_SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def settings_diff(old: dict, new: dict, groups: tuple[str, ...] | None = None) -> list[str]:
    """`key old -> new` for every setting of `groups` (default: all) that differs between two runs."""
    changes = []
    for group in groups or sorted(set(old) | set(new)):
        before, after = old.get(group) or {}, new.get(group) or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes.append(f"--{key} {before.get(key)!r} -> {after.get(key)!r}")
    return changes


def _finished_step(output_dir: Path) -> str:
    try:
        return f" (step {json.loads((output_dir / 'trainer_state.json').read_text())['global_step']})"
    except (OSError, ValueError, KeyError):
        return ""


def _check_resumable(checkpoint: str | Path, settings: dict | None, recorded: dict | None) -> None:
    """A checkpoint resumes only under the model and data settings it was trained with: refuse before any data."""
    changes = settings_diff(recorded, settings, RESUME_GROUPS) if settings and recorded else []
    if changes:
        raise ConfigError(
            f"checkpoint {str(checkpoint)!r} was trained with other model/data settings: {'; '.join(changes)}. "
            "Resume it with its own settings, or start a new run: another --output_dir, or "
            "--overwrite_output_dir true to replace it"
        )


def _refuse_finished(output_dir: Path, settings: dict | None, recorded: dict | None) -> None:
    """A finished run in `output_dir`: the same command again is done (`RunDone`); any other is refused."""
    changes = settings_diff(recorded, settings) if settings and recorded else None
    where, step = str(output_dir), _finished_step(output_dir)
    if changes == []:
        raise RunDone(f"{where!r} already holds this finished run{step}: nothing to do")
    # going on from the checkpoint is offered only when its model and data settings are the ones asked for
    model_or_data = settings_diff(recorded, settings, RESUME_GROUPS) if changes else []
    last = None if model_or_data else get_last_checkpoint(where)
    differs = f" with other settings ({'; '.join(changes)})" if changes else ""
    go_on = (
        f"to train it on on purpose, pass --resume_from_checkpoint {last} (and a larger --max_steps); "
        if last
        else ""
    )
    raise ConfigError(
        f"{where!r} already holds a finished model{step}{differs}; a rerun never replaces it silently: {go_on}"
        "to start over, pass --overwrite_output_dir true; or choose another OUTPUT_DIR (--output_dir)"
    )


def resolve_resume(
    output_dir: str | Path,
    resume_from_checkpoint: str | None,
    overwrite: bool,
    settings: dict[str, dict[str, Any]] | None = None,
) -> str | None:
    """The checkpoint to resume from: the given one, else the newest in `output_dir`, else None.

    A finished run in `output_dir` (final weights) is never overwritten silently: the same settings again
    raise `RunDone`, others a `ConfigError` saying how to go on or start over. A checkpoint is resumed only
    under the model and data settings recorded when its run started (`run_settings.json`).
    """
    if resume_from_checkpoint:
        checkpoint = Path(resume_from_checkpoint)
        if not checkpoint.is_dir():
            raise ConfigError(
                f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a checkpoint directory"
            )
        recorded = read_run_settings(checkpoint) or read_run_settings(checkpoint.parent)
        _check_resumable(checkpoint, settings, recorded)
        return resume_from_checkpoint
    output_dir = Path(output_dir)
    if not output_dir.is_dir() or overwrite:
        return None
    recorded = read_run_settings(output_dir)
    if any((output_dir / f).is_file() for f in WEIGHT_FILES):
        _refuse_finished(output_dir, settings, recorded)
    last = get_last_checkpoint(str(output_dir))
    if last is not None:
        _check_resumable(last, settings, recorded)
        logger.warning("resuming from the newest checkpoint in %s: %s", output_dir, last)
    return last


@contextmanager
def output_guard(args: TrainingArguments, inputs: Mapping[str, Any]) -> Iterator[None]:
    """A run's --output_dir: never on one of its local `inputs` (flag -> value), and one writer at a time (the
    main process holds `core.paths.output_lock` while the run writes; a second run there is refused at once)."""
    check_output_dir(args.output_dir, inputs)
    if args.process_index != 0:  # the other ranks write into the folder rank 0 holds
        yield
        return
    with output_lock(args.output_dir):
        yield


def prepare_run(
    args: TrainingArguments, settings: dict[str, Any] | None = None, **tail_fields: Any
) -> tuple[str | None, Tail]:
    """(checkpoint to resume from, the tail's settings), decided before any data is read.

    `settings`: the stage's other argument dataclasses by role (`{"model": ..., "data": ...}`); with the
    training arguments they are recorded in `run_settings.json` and checked when the run is started again.

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
    recorded = run_settings(args, **(settings or {}))
    args.push_to_hub = False
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir, recorded)
    if args.process_index == 0:
        write_run_settings(args.output_dir, recorded)
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


def final_metrics(trainer: Trainer) -> dict[str, Any]:
    """The final weights' evaluation: the run's last one when it scored them (`eval_steps` divides the steps),
    else a new `trainer.evaluate()`. With `load_best_model_at_end` the weights may have changed: always new."""
    if trainer.eval_dataset is None:
        return {}
    last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
    if last is None or last.get("step") != trainer.state.global_step or trainer.args.load_best_model_at_end:
        return trainer.evaluate()
    logger.info("final evaluation: step %d was just evaluated, its metrics are reused", last["step"])
    return {key: value for key, value in last.items() if key != "step"}


def finish_run(trainer: Trainer, tokenizer, run_info: dict[str, Any], tail: Tail) -> dict[str, Any]:
    """Save, evaluate, write metrics/plot/samples/card, merge a LoRA adapter, push. Returns the final metrics."""
    output_dir = Path(trainer.args.output_dir)
    _save_weights(trainer, output_dir)
    metrics = final_metrics(trainer)
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
        # free DDP's reducer while every rank is still here: freeing it joins its gloo threads, which wait on the
        # peers (freed at interpreter exit instead, after a peer left, it hung one rank for ever)
        trainer.model_wrapped = trainer.model
        trainer.accelerator._models.clear()
        gc.collect()
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()
