"""What every training recipe shares: resume logic, bits-per-byte logging and the common tail.

The tail (`finish_run`) is the one place where a run is saved (safetensors + tokenizer + generation
config), its metrics and loss curve are written, its model card is generated and it is pushed.
Pretraining, SFT and LoRA all end here, so they cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from transformers import GenerationConfig, Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from tinystories.core import TRAINED_CONTEXT, ConfigError

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


# ------------------------------------------------------------------------------------------- resume
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


# ------------------------------------------------------------------------------------ bits per byte
class BitsPerByteTrainer(Trainer):
    """A Trainer whose eval logs also carry perplexity and bits per byte.

    `eval_bytes_per_token` is the UTF-8 bytes per token of the eval stories (`PackStats`); bits per
    byte = loss / ln 2 / bytes_per_token, so runs with different tokenizers compare.
    """

    def __init__(self, *args, eval_bytes_per_token: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_bytes_per_token = eval_bytes_per_token

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "eval_loss" in logs:
            from tinystories.metrics import perplexity

            logs["eval_perplexity"] = perplexity(logs["eval_loss"])
            if self.eval_bytes_per_token:
                logs["eval_bits_per_byte"] = logs["eval_loss"] / math.log(2) / self.eval_bytes_per_token
        super().log(logs, *args, **kwargs)


class TokensPerSecondCallback(TrainerCallback):
    """Logs `tokens_per_second` (real tokens, from `num_input_tokens_seen`) with each training log."""

    def __init__(self):
        self._last: tuple[float, int] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        import time

        if logs is None or "loss" not in logs:
            return
        now, seen = time.perf_counter(), int(state.num_input_tokens_seen or 0)
        if self._last is not None and seen > self._last[1]:
            logs["tokens_per_second"] = round((seen - self._last[1]) / (now - self._last[0]), 1)
        self._last = (now, seen)


# --------------------------------------------------------------------------------------------- plots
def save_loss_curve(log_history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Train and eval loss against step, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


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


def sample_generations(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 120, seed: int = 0
) -> list[dict]:
    try:
        from tinystories.generate import generate_story
    except ImportError:  # generation module not installed in this build
        return []
    samples = []
    for prompt in prompts:
        try:
            completion = generate_story(model, tokenizer, prompt, max_new_tokens=max_new_tokens, seed=seed)
        except Exception as err:  # a card without samples beats a lost run
            logger.warning("sample generation failed: %s", err)
            return samples
        samples.append({"prompt": prompt, "completion": completion})
    return samples


def finish_run(
    trainer: Trainer,
    tokenizer,
    output_dir: str | Path,
    run_info: dict[str, Any],
    push: bool = False,
    hub_model_id: str | None = None,
    hub_private: bool = False,
    sample_prompts: list[str] | None = None,
    context: int = TRAINED_CONTEXT,
    save_model: bool = True,
) -> dict[str, Any]:
    """Save, write metrics/plot/card, and optionally push. Returns the final metrics."""
    output_dir = Path(output_dir)
    if save_model:
        trainer.save_model(str(output_dir))  # safetensors (transformers 5 writes no pickle)
    metrics: dict[str, Any] = {}
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
    if not trainer.is_world_process_zero():
        shutdown_distributed(trainer)  # wait for rank 0's writes, then leave the process group cleanly
        return metrics
    tokenizer.save_pretrained(output_dir)
    generation_config_for(tokenizer, context).save_pretrained(output_dir)
    trainer.save_state()
    history = trainer.state.log_history
    train_summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    results = {
        **{k: v for k, v in train_summary.items() if k.startswith("train_")},
        **metrics,
        "num_input_tokens_seen": trainer.state.num_input_tokens_seen,
        "global_step": trainer.state.global_step,
    }
    if train_summary.get("train_runtime") and trainer.state.num_input_tokens_seen:
        results["train_tokens_per_second"] = (
            trainer.state.num_input_tokens_seen / train_summary["train_runtime"]
        )
    (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
    save_loss_curve(history, output_dir / "loss_curve.png", title=run_info.get("model_name", output_dir.name))

    info = dict(run_info)
    if metrics:
        info.setdefault(
            "eval_results",
            {
                "loss": metrics.get("eval_loss"),
                "perplexity": metrics.get("eval_perplexity"),
                "bits_per_byte": metrics.get("eval_bits_per_byte"),
                "dataset": info.get("datasets", [None])[0] if info.get("datasets") else None,
                "split": "validation",
            },
        )
    model = trainer.model
    if sample_prompts:
        info.setdefault("samples", sample_generations(model, tokenizer, sample_prompts))
    from tinystories.cards import write_model_card

    write_model_card(output_dir, info)
    if push:
        from tinystories.hub import push_folder

        push_folder(
            output_dir, hub_model_id, private=hub_private, commit_message=f"Upload {info.get('stage')} run"
        )
    logger.info("run saved to %s", output_dir)
    shutdown_distributed(trainer)
    return results


def print_summary(
    results: dict[str, Any], output_dir: str | Path, trainer: Trainer, label: str = "eval loss"
) -> None:
    """One stderr line at the end of a training run: final eval loss, perplexity, bits per byte, where it went."""
    import sys

    if trainer.is_world_process_zero() and "eval_loss" in results:
        print(
            f"{label} {results['eval_loss']:.4f} | perplexity {math.exp(min(results['eval_loss'], 50)):.2f}"
            f" | bits/byte {results.get('eval_bits_per_byte', float('nan')):.4f} | saved to {output_dir}",
            file=sys.stderr,
        )


def shutdown_distributed(trainer: Trainer) -> None:
    """Barrier, then destroy the process group: a rank that exits while another still holds the group
    (gloo / DeepSpeed's shared-memory comm threads) can abort at interpreter shutdown."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()
