"""Throughput: tokens/s over training steps only (not evals, saves, or the tokens before a resume), per GPU,
MFU on a known GPU; FLOPs per token and peaks. The callback is driven by a fake clock and state, then a tiny
real Trainer run shows the figures in its logs and run record."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM, TrainingArguments

from tinystories.training.record import run_record
from tinystories.training.tail import _write_results
from tinystories.training.throughput import flops_per_token, mfu, peak_flops
from tinystories.training.trainer import BitsPerByteTrainer, TokensPerSecondCallback

CONFIG = GPTNeoConfig(
    vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
    max_position_embeddings=64, window_size=16, intermediate_size=64,
)  # fmt: skip


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drive(steps, *, world_size=1, resumed_tokens=0, device="cpu", seq_len=64):
    """Run `steps` = [(step seconds, tokens, pause after)] through a callback on a fake clock.

    Returns (callback, the training log's figures, the summary's figures).
    """
    clock = FakeClock()
    callback = TokensPerSecondCallback(seq_len=seq_len, clock=clock)
    args = SimpleNamespace(world_size=world_size, device=torch.device(device))
    state = SimpleNamespace(num_input_tokens_seen=resumed_tokens)
    callback.on_train_begin(args, state, None, model=SimpleNamespace(config=CONFIG))
    for seconds, tokens, pause in steps:
        clock.now += 0.5  # loading the batches: before on_step_begin, not a training step
        state.num_input_tokens_seen += tokens  # counted by the Trainer before the step ends
        callback.on_step_begin(args, state, None)
        clock.now += seconds
        callback.on_step_end(args, state, None)
        clock.now += pause  # an evaluation or a save
    window = callback.figures_for({"loss": 1.0})
    summary = callback.figures_for({"train_runtime": clock.now, "train_loss": 1.0})
    return callback, window, summary


def test_eval_and_save_pauses_do_not_lower_the_rate():
    steps = [(1.0, 1000, 0.0), (1.0, 1000, 300.0), (1.0, 1000, 0.0), (1.0, 1000, 60.0)]
    _, window, summary = _drive(steps)
    assert window == {"tokens_per_second": 1000.0, "tokens_per_second_per_gpu": 1000.0}  # no mfu on a CPU
    assert summary["train_tokens_per_second"] == 1000.0
    assert summary["train_step_runtime"] == 4.0
    assert "train_mfu" not in summary


def test_windows_restart_at_each_training_log():
    callback, first, _ = _drive([(1.0, 1000, 0.0)])
    state = SimpleNamespace(num_input_tokens_seen=1000)
    callback.on_step_begin(None, state, None)
    state.num_input_tokens_seen += 3000
    callback.clock.now += 1.0
    callback.on_step_end(None, state, None)
    assert first["tokens_per_second"] == 1000.0
    assert callback.figures_for({"loss": 1.0})["tokens_per_second"] == 3000.0  # this window only
    assert callback.figures_for({"eval_loss": 1.0}) == {}  # an evaluation's log gets nothing


def test_tokens_seen_before_a_resume_are_excluded():
    _, window, summary = _drive([(2.0, 1000, 0.0), (2.0, 1000, 5.0)], resumed_tokens=1_000_000)
    assert window["tokens_per_second"] == 500.0
    assert summary["train_tokens_per_second"] == 500.0  # not (1,002,000 tokens) / the runtime


def test_per_gpu_figure_divides_by_the_world_size():
    _, window, summary = _drive([(1.0, 8000, 0.0)] * 3, world_size=4)
    assert window == {"tokens_per_second": 8000.0, "tokens_per_second_per_gpu": 2000.0}
    assert summary["train_tokens_per_second_per_gpu"] == 2000.0


def test_mfu_on_a_cuda_gpu_of_known_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    _, window, summary = _drive([(1.0, 4_000_000, 0.0)], world_size=2, device="cuda:0")
    expected = 2_000_000 * flops_per_token(CONFIG, 64) / 989e12
    assert window["mfu"] == pytest.approx(expected, abs=1e-4) and window["mfu"] > 0
    assert summary["train_mfu"] == window["mfu"]
    assert mfu(2_000_000, CONFIG, 64, "NVIDIA H100 80GB HBM3") == pytest.approx(expected)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Unknown GPU")
    _, window, _ = _drive([(1.0, 4_000_000, 0.0)], device="cuda:0")
    assert "mfu" not in window and peak_flops("Some Unknown GPU") is None


def _tiny_trainer(tmp_path, **overrides):
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(CONFIG)
    rows = torch.randint(0, 256, (64, 32), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": r, "labels": r} for r in rows]
    settings = dict(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        logging_steps=2, eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=4,
        report_to="none", use_cpu=True, dataloader_num_workers=0, include_num_input_tokens_seen="all",
        disable_tqdm=True,
    )  # fmt: skip
    args = TrainingArguments(**{**settings, **overrides})
    return BitsPerByteTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data[:16],
        callbacks=[TokensPerSecondCallback(seq_len=32)],
    )  # fmt: skip


def test_a_real_run_logs_and_records_training_step_throughput(tmp_path):
    first = _tiny_trainer(tmp_path, max_steps=4)
    first.train()
    trainer = _tiny_trainer(tmp_path)  # resumes at step 4: its figures cover steps 5-8 only
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    history = trainer.state.log_history
    train_logs = [h for h in history if "loss" in h and h["step"] > 4]
    assert len(train_logs) == 2
    for log in train_logs:  # in log_history (not only on the console)
        assert log["tokens_per_second"] > 0 and log["tokens_per_second_per_gpu"] == log["tokens_per_second"]
        assert "mfu" not in log  # a CPU
    summary = history[-1]
    step_seconds = summary["train_step_runtime"]
    assert 0 < step_seconds < summary["train_runtime"]  # the evaluation and the save are not in it
    tokens = summary["train_tokens_per_second"] * step_seconds
    assert tokens == pytest.approx(4 * 4 * 32, rel=0.01)  # steps 5-8, not the 8 steps' tokens
    record = run_record("pretrain", trainer, datasets=["d"], tokenizer="t", context_length=32)
    assert record["num_parameters"] == trainer.model.num_parameters()
    throughput = record["throughput"]
    assert throughput["world_size"] == 1
    assert throughput["train_tokens_per_second_per_gpu"] == summary["train_tokens_per_second_per_gpu"]
    assert throughput["train_step_seconds"] == step_seconds and "mfu" not in throughput
    results = _write_results(trainer, tmp_path, {}, "tiny")
    assert results["train_tokens_per_second"] == summary["train_tokens_per_second"]
    assert json.loads((tmp_path / "all_results.json").read_text())["train_tokens_per_second_per_gpu"] > 0
