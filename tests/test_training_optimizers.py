"""`--optim muon`: Muon on exactly the hidden matrices, AdamW on the rest; one optimizer the LR scheduler, a
checkpoint and the Trainer (gradient accumulation included) drive; DeepSpeed refused before any work."""

from __future__ import annotations

import io
import itertools
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

from tinystories.core import ConfigError
from tinystories.models.sizes import build_config
from tinystories.training.finetune.arguments import TinyStoriesSFTConfig
from tinystories.training.optimizers import (
    DEFAULT_MUON_LR,
    MuonWithAdamW,
    _fusable,
    build_muon_optimizer,
    check_muon,
    muon_parameter_names,
)
from tinystories.training.pretraining import PretrainConfig
from tinystories.training.record import hyperparameters
from tinystories.training.trainer import BitsPerByteTrainer

VOCAB, SEQ = 64, 16
ARGS = dict(
    muon_learning_rate=0.02,
    muon_momentum=0.95,
    muon_adjust_lr="original",
    weight_decay=0.1,
    learning_rate=3e-3,
    adam_beta1=0.9,
    adam_beta2=0.95,
    adam_epsilon=1e-8,
)


def tiny_model(architecture: str, seed: int = 0):
    config = build_config(
        hidden_size=32, num_layers=2, num_heads=4, vocab_size=VOCAB, max_position_embeddings=SEQ,
        eos_token_id=0, window_size=8, architecture=architecture,
    )  # fmt: skip
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def decay_names(model) -> list[str]:
    """What the Trainer decays: not biases, not norms."""
    return [
        n for n, _ in model.named_parameters() if not n.endswith("bias") and "norm" not in n and "ln" not in n
    ]


def batch(seed: int = 0, rows: int = 8) -> torch.Tensor:
    """Learnable rows: an arithmetic sequence mod VOCAB from a random start and stride."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (rows, 1), generator=g)
    stride = torch.randint(1, 4, (rows, 1), generator=g)
    return (start + stride * torch.arange(SEQ)) % VOCAB


def step(model, optimizer, ids) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


EXPECTED_MUON = {
    "gpt_neo": [
        "attn.attention.q_proj.weight", "attn.attention.k_proj.weight", "attn.attention.v_proj.weight",
        "attn.attention.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight",
    ],
    "llama": [
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    ],
}  # fmt: skip
BLOCKS = {"gpt_neo": "transformer.h", "llama": "model.layers"}


@pytest.mark.parametrize("architecture", ["gpt_neo", "llama"])
def test_muon_gets_exactly_the_hidden_matrices(architecture):
    model = tiny_model(architecture)
    expected = {
        f"{BLOCKS[architecture]}.{i}.{name}" for i in range(2) for name in EXPECTED_MUON[architecture]
    }
    assert muon_parameter_names(model) == expected
    optimizer = build_muon_optimizer(model, SimpleNamespace(**ARGS), decay_names(model))
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}  # the tied head shares the embedding's id
    groups = [{names[id(p)] for p in g["params"]} for g in optimizer.param_groups]
    muon, decayed, plain = groups
    assert muon == expected and optimizer.muon.param_groups[0] is optimizer.param_groups[0]
    assert (
        len(optimizer.adamw.param_groups) == 2
        and optimizer.adamw.param_groups[0] is optimizer.param_groups[1]
    )
    embedding = "transformer.wte.weight" if architecture == "gpt_neo" else "model.embed_tokens.weight"
    assert (
        embedding in decayed and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    if architecture == "gpt_neo":
        assert "transformer.wpe.weight" in decayed  # learned positions: an embedding, AdamW
        assert all(n.endswith("bias") or ".ln_" in n for n in plain) and "transformer.ln_f.weight" in plain
        assert "transformer.h.0.mlp.c_fc.bias" in plain
    else:
        assert all("norm" in n for n in plain) and "model.norm.weight" in plain and len(plain) == 2 * 2 + 1
    # every trainable parameter in exactly one group, with the intended hyperparameters
    assert sum(len(g) for g in groups) == len(names) and set().union(*groups) == set(names.values())
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 3e-3, 3e-3]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.1, 0.0]
    assert optimizer.param_groups[0]["momentum"] == 0.95 and optimizer.param_groups[1]["betas"] == (0.9, 0.95)


def test_an_untied_output_head_stays_with_adamw():
    config = build_config(hidden_size=32, num_layers=1, num_heads=4, vocab_size=VOCAB, architecture="llama")
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    hidden = muon_parameter_names(model)
    assert "lm_head.weight" not in hidden and "model.embed_tokens.weight" not in hidden and len(hidden) == 7


def test_muon_refuses_a_model_without_hidden_matrices():
    embedding_only = torch.nn.Module()
    embedding_only.wte = torch.nn.Embedding(10, 4)
    embedding_only.get_input_embeddings = lambda: embedding_only.wte
    embedding_only.get_output_embeddings = lambda: None
    assert muon_parameter_names(embedding_only) == set()
    with pytest.raises(ConfigError, match="no 2-D hidden weights"):
        build_muon_optimizer(embedding_only, SimpleNamespace(**ARGS), ["wte.weight"])


@pytest.mark.parametrize("architecture", ["gpt_neo", "llama"])
def test_loss_goes_down_and_every_group_moves(architecture):
    model = tiny_model(architecture)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_muon_optimizer(model, SimpleNamespace(**ARGS), decay_names(model))
    ids = batch()
    losses = [step(model, optimizer, ids) for _ in range(12)]
    assert losses[0] > 3.9  # ~ln(64) untrained
    assert losses[-1] < losses[0] - 1.0, losses
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(before)  # Muon's matrices, the embedding and the norms all stepped
    state = optimizer.state_dict()["state"]
    muon_ids = range(len(optimizer.param_groups[0]["params"]))
    assert all(set(state[i]) == {"momentum_buffer"} for i in muon_ids)
    assert all({"exp_avg", "exp_avg_sq", "step"} <= set(s) for i, s in state.items() if i not in muon_ids)


def test_lr_scheduler_scales_both_groups():
    model = tiny_model("llama")
    optimizer = build_muon_optimizer(model, SimpleNamespace(**ARGS), decay_names(model))
    factors = [0.0, 1.0, 0.5]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: factors[min(s, 2)])
    assert [g["lr"] for g in optimizer.muon.param_groups] == [0.0]  # the inner optimizers see it too
    assert [g["lr"] for g in optimizer.adamw.param_groups] == [0.0, 0.0]
    before = [p.detach().clone() for p in model.parameters()]
    step(model, optimizer, batch())  # lr 0: nothing moves (weight decay is scaled by the lr too)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.02, 3e-3, 3e-3]
    step(model, optimizer, batch())
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 1.5e-3, 1.5e-3])
    assert optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.01)
    assert optimizer.adamw.param_groups[1]["lr"] == pytest.approx(1.5e-3)


@pytest.mark.parametrize("architecture", ["gpt_neo", "llama"])
def test_state_dict_resume_is_exact(architecture):
    """Three steps uninterrupted == two steps, a checkpoint (bytes), a fresh model + optimizer loaded, one step."""
    args = SimpleNamespace(**ARGS)
    model = tiny_model(architecture)
    optimizer = build_muon_optimizer(model, args, decay_names(model))
    for s in range(2):
        step(model, optimizer, batch(s))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    step(model, optimizer, batch(2))
    uninterrupted = {n: p.detach().clone() for n, p in model.named_parameters()}

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    fresh = tiny_model(architecture, seed=1)  # other weights: everything must come from the checkpoint
    fresh.load_state_dict(checkpoint["model"])
    restored = build_muon_optimizer(fresh, args, decay_names(fresh))
    restored.load_state_dict(checkpoint["optimizer"])
    # the inner optimizers follow the loaded groups and state (the momentum and Adam moments)
    assert restored.muon.param_groups[0] is restored.param_groups[0]
    assert restored.adamw.param_groups == restored.param_groups[1:]
    assert restored.muon.state is restored.state and restored.adamw.state is restored.state
    first = (
        fresh.model.layers[0].mlp.up_proj.weight
        if architecture == "llama"
        else fresh.transformer.h[0].mlp.c_fc.weight
    )
    assert restored.state[first]["momentum_buffer"].abs().sum() > 0
    step(fresh, restored, batch(2))
    for name, param in fresh.named_parameters():
        assert torch.equal(param, uninterrupted[name]), name
    # ... and a fresh optimizer without the state does not give the same step (the test can fail)
    cold = tiny_model(architecture, seed=1)
    cold.load_state_dict(checkpoint["model"])
    step(cold, build_muon_optimizer(cold, args, decay_names(cold)), batch(2))
    assert any(not torch.equal(p, uninterrupted[n]) for n, p in cold.named_parameters())


class _Lrs(TrainerCallback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


def _trainer_run(tmp_path, per_device: int, accumulation: int, architecture: str = "llama"):
    rows = batch(seed=5, rows=24)
    data = [{"input_ids": r, "labels": r} for r in rows]
    args = PretrainConfig(
        output_dir=str(tmp_path / f"run-{per_device}x{accumulation}"), optim="muon", learning_rate=3e-3,
        muon_learning_rate=0.02, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
        max_steps=4, lr_scheduler_type="linear", warmup_steps=0, eval_strategy="no", save_strategy="no",
        logging_steps=1, report_to="none", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
        train_sampling_strategy="sequential", seed=3,
    )  # fmt: skip
    model = tiny_model(architecture, seed=2)
    lrs = _Lrs()
    trainer = BitsPerByteTrainer(model=model, args=args, train_dataset=data, callbacks=[lrs])
    trainer.train()
    return trainer, lrs.lrs


def test_gradient_accumulation_through_the_trainer(tmp_path):
    """2 sequences x 2 accumulation steps == 4 sequences at once; the Trainer's linear schedule scales both
    learning rates; the run record says muon."""
    accumulated, lrs = _trainer_run(tmp_path, per_device=2, accumulation=2)
    whole, _ = _trainer_run(tmp_path, per_device=4, accumulation=1)
    inner = getattr(accumulated.optimizer, "optimizer", accumulated.optimizer)  # Accelerate's wrapper
    assert isinstance(inner, MuonWithAdamW) and accumulated.args.optim == "adamw_torch_fused"
    assert accumulated.state.global_step == 4
    losses = [h["loss"] for h in accumulated.state.log_history if "loss" in h]
    ref_losses = [h["loss"] for h in whole.state.log_history if "loss" in h]
    assert len(losses) == 4 and losses == pytest.approx(ref_losses, abs=1e-3)
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < losses[0] - 0.1, losses
    initial = tiny_model("llama", seed=2).state_dict()
    hidden = muon_parameter_names(accumulated.model)
    for (name, a), b in zip(accumulated.model.named_parameters(), whole.model.parameters(), strict=True):
        update = a - initial[name]
        assert update.abs().max().item() > 5e-3, (
            name
        )  # 4 steps moved it: not a comparison of untrained models
        if name not in hidden:  # AdamW: equal up to float summation order
            assert (a - b).abs().max().item() < 5e-5, name
        # Muon orthogonalises in bf16 (torch's Newton-Schulz): a rounding-level change of a near rank-deficient
        # gradient (o_proj: one key/value head) moves its update by a few percent of its size, not by its size
        assert (a - b).norm() / update.norm() < 0.2, name
    # linear decay over 4 steps: factors 0.75, 0.5, 0.25, 0 after each step, on Muon's and AdamW's groups
    assert [lr[0] for lr in lrs] == pytest.approx([0.015, 0.01, 0.005, 0.0])
    assert all(lr[1:] == pytest.approx([lr[0] / 0.02 * 3e-3] * 2) for lr in lrs)
    record = hyperparameters(accumulated.args, accumulated)
    assert record["optimizer"] == "muon" and record["muon_learning_rate"] == 0.02
    assert record["muon_momentum"] == 0.95 and record["learning_rate"] == 3e-3


def test_pretrain_config_muon_flags():
    args = PretrainConfig(output_dir="unused", optim="muon", use_cpu=True, report_to="none")
    assert (
        args.muon is True and args.optim == "adamw_torch_fused" and args.muon_learning_rate == DEFAULT_MUON_LR
    )
    plain = PretrainConfig(output_dir="unused", use_cpu=True, report_to="none")
    no_trainer = SimpleNamespace(state=SimpleNamespace(max_steps=1, num_input_tokens_seen=0))
    assert plain.muon is False and plain.optim == "adamw_torch_fused"
    record = hyperparameters(plain, no_trainer)
    assert record["optimizer"] == "adamw_torch_fused" and "muon_learning_rate" not in record
    assert hyperparameters(args, no_trainer)["optimizer"] == "muon"


def test_check_muon_refuses_deepspeed_and_bad_settings():
    ok = SimpleNamespace(muon=True, deepspeed=None, muon_adjust_lr="original", muon_learning_rate=0.02)
    check_muon(ok)
    check_muon(SimpleNamespace(muon=False, deepspeed="ds_zero2.json"))  # AdamW under DeepSpeed is fine
    with pytest.raises(ConfigError, match="DeepSpeed.*ACCELERATE=multi_gpu.*drop --optim muon"):
        check_muon(SimpleNamespace(**{**vars(ok), "deepspeed": "ds_zero2.json"}))
    with pytest.raises(ConfigError, match="--muon_adjust_lr 'sqrt'.*original, match_rms_adamw"):
        check_muon(SimpleNamespace(**{**vars(ok), "muon_adjust_lr": "sqrt"}))
    with pytest.raises(ConfigError, match="--muon_learning_rate 0.0: give a positive"):
        check_muon(SimpleNamespace(**{**vars(ok), "muon_learning_rate": 0.0}))


def test_adamw_is_the_fused_kernel_by_default():
    """Every training config defaults to transformers' own `adamw_torch_fused`, and Muon's AdamW half is the
    fused kernel on a CPU: the same update as the per-parameter loop, to float rounding, over three steps."""
    stock = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none").optim
    for config in (PretrainConfig, TinyStoriesSFTConfig):
        assert (
            config(output_dir="unused", use_cpu=True, report_to="none").optim == stock == "adamw_torch_fused"
        )
    fused, looped = tiny_model("gpt_neo", seed=4), tiny_model("gpt_neo", seed=4)
    opt = build_muon_optimizer(fused, SimpleNamespace(**ARGS), decay_names(fused))
    assert opt.adamw.defaults["fused"] is True
    ref = build_muon_optimizer(looped, SimpleNamespace(**ARGS), decay_names(looped))
    ref.adamw = torch.optim.AdamW(ref.adamw.param_groups, foreach=False, fused=False)
    ref._link()
    for seed in range(3):
        ids = batch(seed)
        assert step(fused, opt, ids) == pytest.approx(step(looped, ref, ids), abs=1e-5)
    hidden = muon_parameter_names(fused)
    for (name, a), b in zip(fused.named_parameters(), looped.parameters(), strict=True):
        if name not in hidden:
            assert (a - b).abs().max().item() < 1e-5, name
            assert not torch.equal(a, tiny_model("gpt_neo", seed=4).get_parameter(name)), name  # it moved


def test_fused_adamw_only_where_its_kernel_runs():
    """Muon's AdamW half is fused for floating-point parameters on a CPU or CUDA GPU, the loop elsewhere (an MPS
    or XLA device, integer buffers): the decision, checked on this CPU with meta-device stand-ins."""
    assert _fusable([torch.zeros(2), torch.zeros(2, 2, dtype=torch.bfloat16)])
    assert not _fusable([torch.zeros(2), torch.zeros(2, device="meta")])
    assert not _fusable([torch.zeros(2, dtype=torch.int64)])
