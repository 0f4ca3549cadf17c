"""The Trainer additions every training stage uses: bits per byte in the logs, throughput, the time box, Muon."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback

from tinystories.evaluation.metrics import bits_per_byte, perplexity
from tinystories.training.optimizers import build_muon_optimizer
from tinystories.training.throughput import mfu

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ Trainer additions
class BitsPerByteTrainer(Trainer):
    """A Trainer whose eval logs also carry perplexity and bits per byte, and its training logs throughput.

    `eval_text_stats` = (tokens, UTF-8 bytes) of the eval texts, so that bits per byte = eval loss × tokens /
    (ln 2 × bytes) (`tinystories.evaluation.metrics.bits_per_byte`) and runs with different tokenizers compare.
    The figures of a `TokensPerSecondCallback` are added here, before the Trainer stores and reports a log, so
    they are in `log_history` (and every reporter), not only on the console.
    """

    def __init__(self, *args, eval_text_stats: tuple[int, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_text_stats = eval_text_stats

    def create_optimizer(self, model=None):
        """`--optim muon`: Muon on the hidden matrices + AdamW on the rest (`training.optimizers`)."""
        if self.optimizer is None and getattr(self.args, "muon", False):
            opt_model = self.model if model is None else model
            decay = self.get_decay_parameter_names(opt_model)
            self.optimizer = build_muon_optimizer(opt_model, self.args, decay)
        return super().create_optimizer(model)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = perplexity(logs["eval_loss"])
            if self.eval_text_stats and self.eval_text_stats[0] and self.eval_text_stats[1]:
                tokens, num_bytes = self.eval_text_stats
                logs["eval_bits_per_byte"] = bits_per_byte(logs["eval_loss"] * tokens, num_bytes)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TokensPerSecondCallback):
                logs.update(callback.figures_for(logs))
        super().log(logs, *args, **kwargs)


class TokensPerSecondCallback(TrainerCallback):
    """Throughput over training steps only: the time from each `on_step_begin` to its `on_step_end`, summed,
    and the tokens (`num_input_tokens_seen`, global) those steps added. Evaluations, saves and the data
    loading between steps are not in it, and neither are the tokens of the steps before a resume.

    Each training log gets `tokens_per_second` (all processes), `tokens_per_second_per_gpu` (÷ world size)
    and, on a CUDA GPU of known peak, `mfu` (`tinystories.training.throughput.mfu`), over the steps since the
    previous log; the end-of-training summary gets the same over the whole `train()` call, as
    `train_tokens_per_second`, `train_tokens_per_second_per_gpu`, `train_mfu` and `train_step_runtime`.
    `BitsPerByteTrainer.log` adds them. `seq_len`: the sequence length of the FLOPs per token (default: the
    arguments' `max_length`, else the model's context).
    """

    def __init__(self, seq_len: int | None = None, clock: Callable[[], float] = time.perf_counter):
        self.seq_len, self.clock = seq_len, clock
        self.world_size, self.config, self.device_name = 1, None, None
        self._began: float | None = None
        self._seen = 0
        self._window = [0.0, 0]  # seconds, tokens since the last training log
        self._total = [0.0, 0]  # seconds, tokens since train() began

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.world_size = max(int(args.world_size or 1), 1)
        # the tokens of the steps before a resume are not this run's
        self._seen = int(state.num_input_tokens_seen or 0)
        self._began, self._window, self._total = None, [0.0, 0], [0.0, 0]
        config = getattr(model, "config", None)
        known = getattr(config, "model_type", None) in ("gpt_neo", "llama")  # FLOPs per token known
        self.config = config if known else None
        context = getattr(config, "max_position_embeddings", None)
        self.seq_len = self.seq_len or getattr(args, "max_length", None) or context
        device = torch.device(args.device)
        self.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None

    def on_step_begin(self, args, state, control, **kwargs):
        self._began = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        if self._began is None:
            return
        seconds, seen = self.clock() - self._began, int(state.num_input_tokens_seen or 0)
        tokens, self._seen, self._began = seen - self._seen, seen, None
        for acc in (self._window, self._total):
            acc[0] += seconds
            acc[1] += tokens

    def figures_for(self, logs: dict[str, Any]) -> dict[str, float]:
        """The figures a log gets: the window's for a training log (then a new window), the run's for the
        end-of-training summary, none for others (evaluations)."""
        if "loss" in logs:
            (seconds, tokens), self._window = self._window, [0.0, 0]
            return self._figures(seconds, tokens)
        if "train_runtime" in logs and "train_loss" in logs:
            seconds, tokens = self._total
            figures = {f"train_{k}": v for k, v in self._figures(seconds, tokens).items()}
            return {**figures, "train_step_runtime": round(seconds, 4)} if seconds > 0 else {}
        return {}

    def _figures(self, seconds: float, tokens: int) -> dict[str, float]:
        if seconds <= 0 or tokens <= 0:
            return {}
        rate = tokens / seconds
        per_gpu = rate / self.world_size
        figures = {"tokens_per_second": round(rate, 1), "tokens_per_second_per_gpu": round(per_gpu, 1)}
        if self.config is not None and self.seq_len and self.device_name:
            utilisation = mfu(per_gpu, self.config, self.seq_len, self.device_name)
            if utilisation is not None:  # a GPU of known peak
                figures["mfu"] = round(utilisation, 4)
        return figures


# --------------------------------------------------------------------------------------------- time box
def rank_zero_decides(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (a broadcast of one element); `flag` itself in a single process.

    The tensor is on the current CUDA device under NCCL (which cannot send CPU tensors), else on the CPU.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    decision = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.broadcast(decision, src=0)
    return bool(decision.item())


class TimeLimitCallback(TrainerCallback):
    """Stops training once `minutes` of wall clock have passed since `train()` began (`--max_minutes`).

    Rank 0's clock decides, broadcast to every rank after each step: ranks on their own clocks could stop a
    step apart, and the one that stopped would enter the tail's collectives while another still trains
    (a hang until the NCCL timeout). The run then ends as at `max_steps`: the last evaluation, the save and
    the card; the step it stopped at is in `trainer_state.json`. A resumed run gets the same budget again.
    """

    def __init__(self, minutes: float, clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.clock, self._start = minutes * 60, clock, None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        over = self._start is not None and self.clock() - self._start >= self.seconds
        if rank_zero_decides(over):
            logger.info("--max_minutes reached at step %d: stopping", state.global_step)
            control.should_training_stop = True  # the run's tail evaluates and saves
