"""What every training run (pretraining, SFT, LoRA) accepts beyond `TrainingArguments`: one declaration of the
run, precision and batch options, one precision rule, and the checks of the numbers a run is given.

`TrainingRunArguments` is a mixin placed before `TrainingArguments` / TRL's `SFTConfig`, so its defaults win
(as `MuonArguments`, which it includes). Its `__post_init__` checks the numbers, resolves the precision and
Muon, then hands over to `TrainingArguments.__post_init__`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinystories.core.arguments import (
    SEED_MAX,
    check_choice,
    check_fraction,
    check_min,
    check_positive,
    check_range,
)
from tinystories.core.runtime import PRECISIONS, export_mixed_precision, resolve_precision
from tinystories.training.optimizers import MuonArguments


@dataclass
class TrainingRunArguments(MuonArguments):
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on a native-bf16 GPU, fp16 on an older CUDA GPU, else fp32), bf16, fp16, fp32; "
            "--bf16/--fp16 given explicitly win"
        },
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "sequences per optimizer step across all processes; sets gradient_accumulation_steps"
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "replace a finished run in output_dir"}
    )
    max_minutes: float | None = field(
        default=None,
        metadata={
            "help": "stop after this many minutes of training (then evaluate, save, card as at max_steps)"
        },
    )
    data_cache_shared: bool = field(
        default=True,
        metadata={
            "help": "the datasets cache is shared by all nodes: only the global main process tokenizes "
            "(false: node-local caches, one tokenization per node)"
        },
    )
    # DDP: every parameter gets a gradient (no unused-parameter search), and the constant attention-mask
    # buffers are not broadcast every forward
    ddp_find_unused_parameters: bool | None = False
    ddp_broadcast_buffers: bool | None = False
    # the other ranks wait at a barrier while the main process downloads and tokenizes the data (2.12M
    # stories the first time): 3 hours instead of 30 minutes (or pre-tokenize: `train --prepare_only true`)
    ddp_timeout: int = 10800

    def __post_init__(self):
        self.check_run()
        self.resolve_muon()  # `--optim muon`: the Trainer is told AdamW, `create_optimizer` builds Muon + AdamW
        if not (self.bf16 or self.fp16):  # --bf16 / --fp16 given explicitly win over --precision
            self.bf16, self.fp16 = resolve_precision(self.precision, use_cpu=bool(self.use_cpu))
        export_mixed_precision(bool(self.bf16), bool(self.fp16))
        super().__post_init__()

    def check_run(self) -> None:
        """The numbers of a run, refused before any data is read (the flag, the value, the fix)."""
        check_choice("precision", self.precision, PRECISIONS)
        check_positive("learning_rate", self.learning_rate, "pass a positive learning rate such as 5e-4")
        check_min("weight_decay", self.weight_decay, 0)
        check_min("per_device_train_batch_size", self.per_device_train_batch_size, 1)
        check_min("per_device_eval_batch_size", self.per_device_eval_batch_size, 1)
        check_min("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_min("global_batch_size", self.global_batch_size, 1)
        check_positive(
            "max_minutes", self.max_minutes, "pass a positive number of minutes, or leave it unset"
        )
        check_positive("num_train_epochs", self.num_train_epochs)
        check_min("warmup_steps", self.warmup_steps, 0)
        if self.max_steps == 0 or self.max_steps < -1:
            check_min(
                "max_steps", self.max_steps, 1, "pass a positive step count, or leave it unset for epochs"
            )
        for flag in ("logging_steps", "eval_steps", "save_steps"):
            check_positive(flag, getattr(self, flag))
        self.check_optimizer()
        for flag in ("seed", "data_seed"):
            check_range(flag, getattr(self, flag), 0, SEED_MAX, f"pass a seed from 0 to {SEED_MAX}")
        for flag in ("save_total_limit", "eval_accumulation_steps", "ddp_timeout"):
            check_min(flag, getattr(self, flag), 1, f"pass a positive --{flag}, or leave it unset")
        check_min("dataloader_num_workers", self.dataloader_num_workers, 0)

    def check_optimizer(self) -> None:
        for flag in ("adam_beta1", "adam_beta2", "muon_momentum"):
            check_fraction(flag, getattr(self, flag), open_low=False)
        check_positive("adam_epsilon", self.adam_epsilon, "pass a small positive epsilon such as 1e-8")
        check_positive("muon_learning_rate", self.muon_learning_rate, "pass a positive rate such as 0.02")
        check_min("max_grad_norm", self.max_grad_norm, 0, "pass 0 (no clipping) or a positive norm")
        check_fraction("label_smoothing_factor", self.label_smoothing_factor, open_low=False)


__all__ = ["TrainingRunArguments"]
