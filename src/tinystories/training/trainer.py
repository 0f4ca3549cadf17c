"""The Trainer additions every training stage uses: bits per byte in the logs, tokens/s, the time box."""

from __future__ import annotations

import logging
import time

from transformers import Trainer, TrainerCallback

from tinystories.evaluation.metrics import bits_per_byte, perplexity

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ Trainer additions
class BitsPerByteTrainer(Trainer):
    """A Trainer whose eval logs also carry perplexity and bits per byte.

    `eval_text_stats` = (tokens, UTF-8 bytes) of the eval texts, so that bits per byte = eval loss × tokens /
    (ln 2 × bytes) (`tinystories.evaluation.metrics.bits_per_byte`) and runs with different tokenizers compare.
    """

    def __init__(self, *args, eval_text_stats: tuple[int, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_text_stats = eval_text_stats

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = perplexity(logs["eval_loss"])
            if self.eval_text_stats and self.eval_text_stats[0] and self.eval_text_stats[1]:
                tokens, num_bytes = self.eval_text_stats
                logs["eval_bits_per_byte"] = bits_per_byte(logs["eval_loss"] * tokens, num_bytes)
        super().log(logs, *args, **kwargs)


class TokensPerSecondCallback(TrainerCallback):
    """Logs `tokens_per_second` (real tokens, from `num_input_tokens_seen`) with each training log."""

    def __init__(self):
        self._last: tuple[float, int] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        now, seen = time.perf_counter(), int(state.num_input_tokens_seen or 0)
        if self._last is not None and seen > self._last[1]:
            logs["tokens_per_second"] = round((seen - self._last[1]) / (now - self._last[0]), 1)
        self._last = (now, seen)


class TimeLimitCallback(TrainerCallback):
    """Stops training once `minutes` of wall clock have passed since `train()` began (`--max_minutes`).

    The run then ends as at `max_steps`: the last evaluation, the save and the card; the step it stopped at
    is in `trainer_state.json`. A resumed run gets the same budget again.
    """

    def __init__(self, minutes: float):
        self.seconds, self._start = minutes * 60, None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None and time.perf_counter() - self._start >= self.seconds:
            logger.info("--max_minutes reached at step %d: stopping", state.global_step)
            control.should_training_stop = True  # the run's tail evaluates and saves
