"""Two CPU processes: DDP over gloo and DeepSpeed ZeRO-2/ZeRO-3 end with the single-process losses.

Sequential sampling makes the global batches identical: process r of 2 takes rows r, r+2, ... of the
same order a single process reads 8 at a time, so the gradients match up to float reduction order.
The vocabulary (4096 x hidden 32 = 131K embedding entries) is above ZeRO-3's 100K-element persistence
threshold, so under ZeRO-3 the tied embedding / LM-head weight really is sharded between the ranks.

Run as a script under `accelerate launch` (see `test_fused_loss_gathers_a_sharded_weight_under_zero3`),
this file is the worker of the fused-loss gradient check, and with `time-limit` that of the `--max_minutes`
check on skewed clocks.
"""

import copy
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
from accelerate import Accelerator
from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
from deepspeed.utils import safe_get_full_grad
from transformers import AutoModelForCausalLM, GPTNeoConfig, GPTNeoForCausalLM, Trainer, TrainingArguments

from tinystories.evaluation.generation import SAMPLE_PROMPTS
from tinystories.models.losses import use_fused_cross_entropy
from tinystories.training.trainer import TimeLimitCallback

COMMON = [
    "--max_train_samples", "400", "--max_eval_samples", "40",
    "--train_tokenizer", "true", "--vocab_size", "4096",
    "--hidden_size", "32", "--num_layers", "2", "--block_size", "64",
    "--per_device_eval_batch_size", "16", "--global_batch_size", "8", "--learning_rate", "3e-3",
    "--max_steps", "12", "--logging_steps", "4", "--eval_steps", "12", "--save_steps", "12",
    "--train_sampling_strategy", "sequential", "--report_to", "none", "--use_cpu", "true",
    "--dataloader_num_workers", "0", "--seed", "3", "--attn_implementation", "eager",
]  # fmt: skip

pytestmark = pytest.mark.distributed  # `make test-distributed`: 2-process DDP / ZeRO runs


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["DS_ACCELERATOR"] = "cpu"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a launcher to the end; on `timeout` kill its whole process group (ranks included, so no rank
    is left hanging for the rest of the suite) and fail with the tail of what it printed."""
    with subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            stdout, stderr = popen.communicate()
            pytest.fail(f"no exit after {timeout} s (killed): {stdout[-2000:]}{stderr[-6000:]}")
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _card_info(out) -> dict:
    return json.loads((out / "card_info.json").read_text())


def _train(out, sample_txt, launcher: list[str], per_device: int) -> list[dict]:
    cmd = [
        *launcher,
        "-m",
        "tinystories.cli",
        "train",
        "--data",
        str(sample_txt),
        "--output_dir",
        str(out),
    ]
    _run([*cmd, *COMMON, "--per_device_train_batch_size", str(per_device)])
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def _losses(history):
    return [h["loss"] for h in history if "loss" in h], [h["eval_loss"] for h in history if "eval_loss" in h]


def _logits(model_dir) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = (torch.arange(64).reshape(2, 32) * 37) % model.config.vocab_size
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, sample_txt):
    out = tmp_path_factory.mktemp("single")
    return out, _losses(_train(out, sample_txt, [sys.executable], per_device=8))


@pytest.fixture(scope="module")
def single_process(single_run):
    return single_run[1]


def _accelerate(repo_root, config):
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(repo_root / "accelerate_configs" / config),
    ]


def test_ddp_two_processes_match_single(tmp_path, sample_txt, repo_root, single_run):
    """DDP ends with the single-process losses; its training logs and run record carry tokens/s of all
    processes and per GPU (half of it), over the training steps."""
    out = tmp_path / "ddp"
    history = _train(out, sample_txt, _accelerate(repo_root, "cpu_ddp.yaml"), per_device=4)
    train, evals = _losses(history)
    ref_out, (ref_train, ref_evals) = single_run
    assert len(train) == len(ref_train) == 3
    assert train == pytest.approx(ref_train, abs=2e-3)
    assert evals[-1] == pytest.approx(ref_evals[-1], abs=2e-3)
    assert train[-1] < train[0]  # it learned
    logs = [h for h in history if "loss" in h]
    assert all(
        2 * h["tokens_per_second_per_gpu"] == pytest.approx(h["tokens_per_second"], abs=0.2) for h in logs
    )
    throughput, single = _card_info(out)["throughput"], _card_info(ref_out)["throughput"]
    assert throughput["world_size"] == 2 and single["world_size"] == 1 and "mfu" not in throughput  # CPUs
    assert 2 * throughput["train_tokens_per_second_per_gpu"] == pytest.approx(
        throughput["train_tokens_per_second"], abs=0.2
    )


def test_max_minutes_two_processes_stop_at_the_same_step(tmp_path, sample_txt, repo_root):
    """A 3-second budget and 100,000 steps on two processes: both stop at rank 0's step, the tail (save,
    evaluation, card) runs and the launcher exits 0 (ranks that stop a step apart hang in the tail)."""
    out = tmp_path / "boxed"
    cmd = [*_accelerate(repo_root, "cpu_ddp.yaml"), "-m", "tinystories.cli", "train", *COMMON]
    cmd += [
        "--data", str(sample_txt), "--output_dir", str(out), "--per_device_train_batch_size", "4",
        "--max_steps", "100000", "--eval_steps", "100000", "--save_steps", "100000", "--max_minutes", "0.05",
        "--ddp_timeout", "120",  # a collective that hangs fails in 2 minutes, naming itself
    ]  # fmt: skip
    proc = _run(cmd, timeout=400)
    stops = [int(n) for n in re.findall(r"--max_minutes reached at step (\d+)", proc.stderr)]
    step = json.loads((out / "trainer_state.json").read_text())["global_step"]
    assert len(stops) == 2 and stops == [step, step], proc.stderr[-3000:]
    assert 0 < step < 100000 and (out / "model.safetensors").is_file()


def test_time_limit_follows_rank_zero_on_skewed_clocks(repo_root):
    """Rank 1's clock runs twice as fast: on its own it would stop at step 8, rank 0 at step 15. Both must
    stop at 15 (rank 0 decides) and then evaluate together, and end (a 60 s gloo timeout catches a hang)."""
    proc = _run([*_accelerate(repo_root, "cpu_ddp.yaml"), __file__, "time-limit"], timeout=300)
    stops = sorted(re.findall(r"rank (\d): stopped at step (\d+), evaluated", proc.stdout))
    assert stops == [("0", "15"), ("1", "15")], proc.stdout[-2000:] + proc.stderr[-3000:]


def test_deepspeed_zero2_two_processes_match_single(tmp_path, sample_txt, repo_root, single_process):
    out = tmp_path / "ds"
    train, evals = _losses(
        _train(out, sample_txt, _accelerate(repo_root, "cpu_deepspeed_zero2.yaml"), per_device=4)
    )
    ref_train, ref_evals = single_process
    assert len(train) == len(ref_train)
    # DeepSpeed steps with its own (CPU) Adam implementation: close, not bit-equal
    assert train == pytest.approx(ref_train, abs=2e-2)
    assert evals[-1] == pytest.approx(ref_evals[-1], abs=2e-2)
    assert (out / "model.safetensors").is_file()


def test_deepspeed_zero3_two_processes_match_single(tmp_path, sample_txt, repo_root, single_run):
    """Sharded parameters, fused loss (the default): the tail gathers the weights into model.safetensors
    and generates the card samples on both ranks (a rank-0-only generation would hang)."""
    out = tmp_path / "z3"
    train, evals = _losses(
        _train(out, sample_txt, _accelerate(repo_root, "cpu_deepspeed_zero3.yaml"), per_device=4)
    )
    ref_out, (ref_train, ref_evals) = single_run
    assert len(train) == len(ref_train)
    assert train == pytest.approx(ref_train, abs=2e-2)
    assert evals[-1] == pytest.approx(ref_evals[-1], abs=2e-2)
    assert not list(out.glob("global_step*"))  # full weights, not only a sharded DeepSpeed checkpoint
    torch.testing.assert_close(_logits(out), _logits(ref_out), atol=1e-3, rtol=0)
    assert SAMPLE_PROMPTS["stories"][0] in (out / "README.md").read_text()
    # the full parameter count (`ds_numel`), not what is left on a rank after DeepSpeed freed the shards
    assert _card_info(out)["num_parameters"] == _card_info(ref_out)["num_parameters"]
    assert _card_info(out)["num_parameters"] == AutoModelForCausalLM.from_pretrained(out).num_parameters()


def test_fused_loss_gathers_a_sharded_weight_under_zero3(repo_root):
    """The fused loss on a ZeRO-3 sharded, untied LM head that DeepSpeed does not gather by itself."""
    _run([*_accelerate(repo_root, "cpu_deepspeed_zero3.yaml"), __file__])


def _without_parameter_discovery(module, args) -> None:
    for m in module.modules():
        m._parameters._in_forward = False  # DeepSpeed's flag: gather a parameter read in this forward


def _zero3_fused_loss_worker() -> None:
    """Each rank: the fused loss of its half batch; the gathered gradients of every parameter must equal
    those of the stock loss, averaged over both halves, in one process.

    In an eager forward, DeepSpeed's engine gathers a parameter read outside its module's forward by
    itself; under torch.compile it does not. A pre-hook turns that discovery off, so the head weight
    reaches the fused loss still sharded and `losses._gathered` has to do it.
    """
    config = GPTNeoConfig(
        vocab_size=2048, hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global"], 2]],
        max_position_embeddings=32, intermediate_size=128, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")  # before ZeRO-3 init
    ref = copy.deepcopy(model)
    use_fused_cross_entropy(model)
    accelerator = Accelerator()  # the DeepSpeed launcher's config; ranks from torch.distributed
    rank, world = dist.get_rank(), dist.get_world_size()
    accelerator.state.deepspeed_plugin.deepspeed_config.update(
        train_micro_batch_size_per_gpu=2, train_batch_size=2 * world
    )
    engine, _ = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.0))
    ids = torch.randint(0, 2048, (2 * world, 16), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :5] = -100
    head = engine.module.lm_head.weight  # 131K entries (> the 100K persistence threshold): sharded
    assert head.ds_status == ZeroParamStatus.NOT_AVAILABLE and head.numel() == 0
    engine.module.register_forward_pre_hook(_without_parameter_discovery)
    engine.train()
    rows = slice(2 * rank, 2 * rank + 2)
    accelerator.backward(engine(input_ids=ids[rows], labels=labels[rows]).loss)
    grads = {name: safe_get_full_grad(p) for name, p in engine.module.named_parameters()}  # collective
    ref.train()
    expected = sum(
        ref(input_ids=ids[r : r + 2], labels=labels[r : r + 2]).loss for r in range(0, 2 * world, 2)
    )
    (expected / world).backward()
    for name, param in ref.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-6, rtol=1e-4, msg=name)
    print(f"rank {rank}: fused loss on the sharded head: gradients match", flush=True)


def _time_limit_worker() -> None:
    """Each rank: a tiny DDP Trainer under `--max_minutes` 0.25 (15 s) on a fake clock of 1 + rank seconds a
    call; after `train()`, an evaluation (collective) that both ranks must reach."""
    rank = int(os.environ["RANK"])
    ticks = itertools.count(0, 1 + rank)
    config = GPTNeoConfig(
        vocab_size=128, hidden_size=16, num_layers=1, num_heads=2, attention_types=[[["global"], 1]],
        max_position_embeddings=16, intermediate_size=32,
    )  # fmt: skip
    torch.manual_seed(0)
    rows = torch.randint(0, 128, (32, 16), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": r, "labels": r} for r in rows]
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=1000, per_device_train_batch_size=2, save_strategy="no",
        logging_steps=1000, report_to="none", use_cpu=True, ddp_timeout=60, dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    callback = TimeLimitCallback(0.25, clock=lambda: float(next(ticks)))
    trainer = Trainer(
        model=GPTNeoForCausalLM(config),
        args=args,
        train_dataset=data,
        eval_dataset=data[:8],
        callbacks=[callback],
    )
    trainer.train()
    trainer.evaluate()
    print(f"rank {rank}: stopped at step {trainer.state.global_step}, evaluated", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    # tearing down the DDP reducer at interpreter exit can deadlock with gloo's worker thread (seen in CI: the
    # main thread joins the thread, which waits for the GIL): the worker is done, so leave without teardown
    os._exit(0)


def _muon_run(out_dir: str, per_device: int) -> tuple[list[float], dict]:
    """`--optim muon` (PretrainConfig + BitsPerByteTrainer, as `tinystories train` builds them) on a tiny Llama:
    6 steps of 4 sequences (per_device x processes), sequential sampling. Returns the logged losses and the
    final parameters."""
    from tinystories.models.sizes import build_config
    from tinystories.training.optimizers import MuonWithAdamW
    from tinystories.training.pretraining import PretrainConfig
    from tinystories.training.trainer import BitsPerByteTrainer

    config = build_config(
        hidden_size=32, num_layers=2, num_heads=4, vocab_size=64, max_position_embeddings=16, eos_token_id=0,
        architecture="llama",
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    g = torch.Generator().manual_seed(1)
    start, stride = torch.randint(0, 64, (48, 1), generator=g), torch.randint(1, 4, (48, 1), generator=g)
    rows = (start + stride * torch.arange(16)) % 64  # learnable: arithmetic sequences mod 64
    args = PretrainConfig(
        output_dir=out_dir, optim="muon", learning_rate=3e-3, muon_learning_rate=0.02, max_steps=6,
        per_device_train_batch_size=per_device, gradient_accumulation_steps=1, eval_strategy="no",
        save_strategy="no", logging_steps=1, report_to="none", use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, train_sampling_strategy="sequential", ddp_timeout=120, seed=3,
    )  # fmt: skip
    trainer = BitsPerByteTrainer(
        model=model, args=args, train_dataset=[{"input_ids": r, "labels": r} for r in rows]
    )
    trainer.train()
    assert isinstance(getattr(trainer.optimizer, "optimizer", None), MuonWithAdamW)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_muon_under_ddp_two_processes_agree_and_match_single(tmp_path, repo_root):
    """Two gloo ranks with `--optim muon`: both end with bit-identical parameters (each orthogonalises the same
    all-reduced gradient), the loss drops, and they match one process on the same global batches."""
    _run([*_accelerate(repo_root, "cpu_ddp.yaml"), __file__, "muon", str(tmp_path)], timeout=300)
    ranks = [torch.load(tmp_path / f"muon-rank{r}.pt", weights_only=True) for r in range(2)]
    for name, param in ranks[0]["params"].items():
        assert torch.equal(param, ranks[1]["params"][name]), name
    losses = ranks[0]["losses"]
    assert ranks[1]["losses"] == losses and len(losses) == 6
    assert losses[-1] < losses[0] - 0.2, losses
    single_losses, single = _muon_run(str(tmp_path / "single"), per_device=4)
    assert losses == pytest.approx(single_losses, abs=2e-3)
    hidden = {n for n in single if n.endswith("_proj.weight")}  # what Muon steps (test_training_optimizers)
    for name, param in single.items():
        update = param - ranks[0]["initial"][name]
        assert update.abs().max().item() > 5e-3, name  # trained: not a comparison of two untrained models
        # AdamW's parameters agree to float reduction order; Muon orthogonalises in bf16 (torch's Newton-Schulz),
        # which blows rounding noise in a near rank-deficient gradient (o_proj: one key/value head, near-uniform
        # attention) up to a few percent of the update
        off = (param - ranks[0]["params"][name]).norm() / update.norm()
        assert off < (0.2 if name in hidden else 0.02), (name, off)


def _muon_worker(out_dir: str) -> None:
    """Each rank: `_muon_run` on 2 sequences a step, then its losses and parameters to muon-rank<r>.pt."""
    rank = int(os.environ["RANK"])
    from tinystories.models.sizes import build_config

    config = build_config(
        hidden_size=32, num_layers=2, num_heads=4, vocab_size=64, max_position_embeddings=16, eos_token_id=0,
        architecture="llama",
    )  # fmt: skip
    torch.manual_seed(0)
    initial = {n: p.detach().clone() for n, p in AutoModelForCausalLM.from_config(config).named_parameters()}
    losses, params = _muon_run(tempfile.mkdtemp(), per_device=2)
    torch.save(
        {"losses": losses, "params": params, "initial": initial}, os.path.join(out_dir, f"muon-rank{rank}.pt")
    )
    print(f"rank {rank}: muon trained, losses {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # as `_time_limit_worker`: no DDP teardown at interpreter exit


if __name__ == "__main__":
    if sys.argv[1:2] == ["muon"]:
        _muon_worker(sys.argv[2])
    elif sys.argv[1:] == ["time-limit"]:
        _time_limit_worker()
    else:
        _zero3_fused_loss_worker()
