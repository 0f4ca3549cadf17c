"""Muon for the hidden matrices, AdamW for the rest (`--optim muon`): one optimizer the Trainer can drive.

`torch.optim.Muon` orthogonalises the momentum of a 2-D weight (Newton-Schulz) and is meant for the hidden
layers only; embeddings (the tied LM head with them), norms and biases keep AdamW (the standard split, as in
Keller Jordan's `MuonWithAuxAdam` and Moonshot's Moonlight). `MuonWithAdamW` holds both inner optimizers and
shows the Trainer, Accelerate and the LR scheduler one optimizer whose `param_groups` are the inner ones' own
group dicts (Muon's first): the scheduler scales both learning rates (`muon_learning_rate` and
`learning_rate`) by the same schedule, `zero_grad` and gradient clipping see every parameter, and one
`state_dict` holds both states, so a checkpoint resumes the momentum and Adam moments exactly.

Data parallel (DDP) is fine: each rank orthogonalises the same all-reduced gradient. DeepSpeed ZeRO is not:
it flattens and shards the parameters handed to a client optimizer, so Muon would never see a matrix
(`check_muon` refuses it before any work starts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from tinystories.core import ConfigError

MUON = "muon"
# transformers' own default: one fused kernel per step on a CPU or GPU, where the `adamw_torch` loop runs a
# dozen foreach kernels over every parameter (~4x the optimizer time of a 1M model's step on a CPU)
ADAMW = "adamw_torch_fused"
FUSED_DEVICES = ("cpu", "cuda")
DEFAULT_MUON_LR = 0.02  # Keller Jordan's default with the "original" shape adjustment
MUON_ADJUST_LR = ("original", "match_rms_adamw")


@dataclass
class MuonArguments:
    """`--optim muon` and its settings: a mixin before `TrainingArguments` (pretraining and SFT; LoRA refuses it).

    `muon` is not a transformers optimizer name: `resolve_muon` (call it before `TrainingArguments.__post_init__`)
    records `muon = True` and tells the Trainer AdamW; `BitsPerByteTrainer.create_optimizer` then builds Muon +
    AdamW (`build_muon_optimizer`)."""

    optim: str = field(
        default=ADAMW,
        metadata={
            "help": "muon (Muon on hidden matrices + AdamW, training/optimizers.py) or a transformers optimizer"
        },
    )
    muon_learning_rate: float = field(
        default=DEFAULT_MUON_LR,
        metadata={
            "help": "--optim muon: Muon's learning rate for the hidden matrices (learning_rate: AdamW's)"
        },
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "--optim muon: Muon's momentum"})
    muon_adjust_lr: str = field(
        default="original",
        metadata={
            "help": "--optim muon: original (Keller Jordan) or match_rms_adamw (Moonlight) lr per shape"
        },
    )

    def resolve_muon(self) -> None:
        self.muon = str(getattr(self.optim, "value", self.optim)) == MUON
        if self.muon:
            self.optim = ADAMW


def muon_parameter_names(model: nn.Module) -> set[str]:
    """The parameters Muon updates: 2-D weights that are neither an input nor an output embedding."""
    embeddings = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        embeddings.add(id(head.weight))
    position = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-Neo's learned positions
    if position is not None:
        embeddings.add(id(position.weight))
    return {
        name
        for name, p in model.named_parameters()
        if p.requires_grad and p.ndim == 2 and id(p) not in embeddings
    }


def _fusable(params: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters (floating point, on a CPU or a CUDA GPU)."""
    return all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


class MuonWithAdamW(torch.optim.Optimizer):
    """`torch.optim.Muon` on `muon_groups`, `torch.optim.AdamW` on `adamw_groups`, stepped together."""

    def __init__(self, muon_groups: Iterable[dict], adamw_groups: Iterable[dict], muon: dict, adamw: dict):
        muon_groups = [g for g in muon_groups if g["params"]]
        adamw_groups = [g for g in adamw_groups if g["params"]]
        if not muon_groups:
            raise ConfigError("--optim muon: the model has no 2-D hidden weights for Muon")
        self.muon = torch.optim.Muon(muon_groups, **muon)
        if adamw_groups and "fused" not in adamw:
            adamw = {**adamw, "fused": _fusable(p for g in adamw_groups for p in g["params"])}
        self.adamw = torch.optim.AdamW(adamw_groups, **adamw) if adamw_groups else None
        super().__init__([{"params": []}], {})  # a valid Optimizer; its groups are replaced just below
        self._link()

    def _link(self, groups: list[dict] | None = None) -> None:
        """One list of group dicts and one state for all three optimizers (the inner ones step, this one
        is what schedulers, clipping and checkpoints see)."""
        inner = [self.muon, *([self.adamw] if self.adamw else [])]
        if groups is None:
            groups = [g for opt in inner for g in opt.param_groups]
        self.param_groups = groups
        n = len(self.muon.param_groups)
        self.muon.param_groups = groups[:n]
        if self.adamw is not None:
            self.adamw.param_groups = groups[n:]
        for opt in inner:
            opt.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        if self.adamw is not None:
            self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # new group dicts and state: the inner optimizers follow
        self._link(self.param_groups)


def build_muon_optimizer(model: nn.Module, args, decay_names: Iterable[str]) -> MuonWithAdamW:
    """The split for `model`: Muon (lr `args.muon_learning_rate`, weight decay `args.weight_decay`) on the
    hidden matrices; AdamW (lr `args.learning_rate`, the Trainer's betas and eps) on the rest, with weight
    decay on the parameters the Trainer would decay (`decay_names`: not biases, not norms)."""
    hidden = muon_parameter_names(model)
    decay = set(decay_names)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon_groups = [{"params": [p for n, p in params if n in hidden]}]
    adamw_groups = [
        {
            "params": [p for n, p in params if n not in hidden and n in decay],
            "weight_decay": args.weight_decay,
        },
        {"params": [p for n, p in params if n not in hidden and n not in decay], "weight_decay": 0.0},
    ]
    return MuonWithAdamW(
        muon_groups,
        adamw_groups,
        muon={
            "lr": args.muon_learning_rate,
            "weight_decay": args.weight_decay,
            "momentum": args.muon_momentum,
            "adjust_lr_fn": args.muon_adjust_lr,
        },
        adamw={
            "lr": args.learning_rate,
            "betas": (args.adam_beta1, args.adam_beta2),
            "eps": args.adam_epsilon,
        },
    )


def check_muon(args, peft: bool = False) -> None:
    """Refuse what Muon cannot do, before data is read (`args`: the run's TrainingArguments; `peft`: a LoRA run)."""
    if not getattr(args, "muon", False):
        return
    if peft:
        raise ConfigError(
            "--optim muon is for full training (pretraining, `tinystories sft`): a LoRA adapter's low-rank factors "
            "are not the hidden matrices Muon orthogonalises; drop --optim muon for LoRA"
        )
    if args.deepspeed:
        raise ConfigError(
            "--optim muon does not run under DeepSpeed (ZeRO flattens and shards the parameters, Muon needs whole "
            "matrices): use a DDP launcher (ACCELERATE=multi_gpu) or drop --optim muon"
        )
    if args.muon_adjust_lr not in MUON_ADJUST_LR:
        raise ConfigError(f"--muon_adjust_lr {args.muon_adjust_lr!r}: use one of {', '.join(MUON_ADJUST_LR)}")
    if args.muon_learning_rate <= 0:
        raise ConfigError(f"--muon_learning_rate {args.muon_learning_rate}: give a positive learning rate")
