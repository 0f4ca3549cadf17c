"""The fused loss's device decisions, its GPU path run on the CPU, and evaluation without the logits."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from tinystories.models import losses
from tinystories.models.losses import (
    default_loss_chunk_size,
    fused_linear_cross_entropy,
    skips_ignored_rows,
    use_fused_cross_entropy,
    vocab_multiple,
    weight_grad_in_gemm,
)

TOL = 1e-5


def test_device_decisions():
    assert default_loss_chunk_size("cpu") == 256  # the CPU's measured best
    assert default_loss_chunk_size("cuda") == 4096  # an 80 x 512 micro-batch in 10 chunks, not 160
    assert default_loss_chunk_size("mps") == 256
    assert vocab_multiple("cuda") == 64 and vocab_multiple("cpu") == 1
    assert skips_ignored_rows("cpu") and not skips_ignored_rows("cuda")
    assert weight_grad_in_gemm("cuda", torch.bfloat16) and weight_grad_in_gemm("cuda", torch.float16)
    assert not weight_grad_in_gemm("cuda", torch.float32) and not weight_grad_in_gemm("cpu", torch.bfloat16)


def _reference(hidden, weight, labels):
    logits = hidden @ weight.t()
    return F.cross_entropy(logits[:, :-1].reshape(-1, weight.shape[0]), labels[:, 1:].reshape(-1))


@pytest.fixture
def gpu_path(monkeypatch):
    """What a CUDA device runs (masked contiguous chunks, a head padded to 64 rows), on the CPU."""
    monkeypatch.setattr(losses, "skips_ignored_rows", lambda device_type: False)
    monkeypatch.setattr(losses, "vocab_multiple", lambda device_type: 64)


@pytest.mark.parametrize("chunk_size", [3, 4096])
def test_gpu_path_equals_cross_entropy(gpu_path, chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)  # 50 rows: padded to 64 inside
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :3] = -100
    labels[1, 5] = -100
    loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=chunk_size)
    ref = _reference(hidden, weight, labels)
    torch.testing.assert_close(loss, ref, atol=TOL, rtol=0)
    got = torch.autograd.grad(loss * 3, (hidden, weight))
    want = torch.autograd.grad(ref * 3, (hidden, weight))
    assert got[1].shape == (50, 16)  # the padding never reaches the gradient
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_gpu_path_never_waits_for_the_host(gpu_path, monkeypatch):
    """No `.item()` and no `nonzero()` in a fused step with `num_items_in_batch` (each a device sync)."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))

    def sync(*args, **kwargs):
        raise AssertionError("host sync")

    monkeypatch.setattr(torch.Tensor, "item", sync)
    monkeypatch.setattr(torch.Tensor, "nonzero", sync)
    for items in (torch.tensor(16), None):
        loss = fused_linear_cross_entropy(hidden, weight, labels, num_items_in_batch=items, chunk_size=5)
        loss.backward()
    monkeypatch.undo()
    assert torch.isfinite(loss).item()


def _tiny(vocab=97):
    return GPTNeoForCausalLM(
        GPTNeoConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            max_position_embeddings=64,
            resid_dropout=0.0,
            embed_dropout=0.0,
            attention_dropout=0.0,
        )
    )


def test_eval_without_grad_is_the_fused_loss_only():
    torch.manual_seed(0)
    stock = _tiny().eval()
    fused = use_fused_cross_entropy(_tiny().eval(), chunk_size=7)
    fused.load_state_dict(stock.state_dict())
    ids = torch.randint(0, 97, (3, 25))
    with torch.no_grad():
        want = stock(ids, labels=ids)
        got = fused(ids, labels=ids)
        assert got.logits is None  # the Trainer's eval: loss only
        torch.testing.assert_close(got.loss, want.loss, atol=TOL, rtol=0)
        assert fused(ids).logits.shape == (3, 25, 97)  # no labels: logits, as generation needs


def test_chunk_size_key_reaches_the_model():
    from tinystories.training.pretraining import (
        DataArguments,
        ModelArguments,
        PretrainConfig,
        build_model,
        validate,
    )

    class Tok:
        eos_token_id = 0

        def __len__(self):
            return 97

    args = ModelArguments(size="1M", loss_chunk_size=1024)
    model = build_model(args, DataArguments(block_size=64), Tok())
    assert model._fused_ce_chunk_size == 1024
    assert (
        build_model(ModelArguments(size="1M"), DataArguments(block_size=64), Tok())._fused_ce_chunk_size
        is None
    )
    with pytest.raises(Exception, match="loss_chunk_size"):
        validate(
            ModelArguments(size="1M", loss_chunk_size=0), DataArguments(), PretrainConfig(output_dir="x")
        )


EVAL_PEAK = textwrap.dedent(
    """
    import json, resource, sys

    def peak_kb():
        # the peak of this process's own memory: Linux's ru_maxrss also keeps the parent's peak at fork (the
        # pytest process, gigabytes late in the suite), VmHWM does not
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import torch
    from datasets import Dataset
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, Trainer, TrainingArguments, default_data_collator
    from tinystories.models.losses import use_fused_cross_entropy

    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=50257, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=512,
                          attention_types=[[["global", "local"], 1]], window_size=256)
    model = GPTNeoForCausalLM(config)
    if sys.argv[1] == "fused":
        use_fused_cross_entropy(model)
    ids = torch.randint(0, 50257, (32, 512))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=sys.argv[2], per_device_eval_batch_size=32, use_cpu=True, report_to=[],
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, eval_dataset=data, data_collator=default_data_collator)
    trainer.evaluate()  # warm-up: imports, allocator
    before = peak_kb()
    loss = trainer.evaluate()["eval_loss"]
    after = peak_kb()
    print(json.dumps({"loss": loss, "peak_increase_mb": (after - before) / 1024, "peak_mb": after / 1024}))
    """
)


def test_eval_peak_memory_stays_far_below_the_logits(tmp_path):
    """A Trainer eval of 32 x 512 tokens with the 50K vocabulary: fp32 logits alone would be 3.3 GB."""
    logits_mb = 32 * 512 * 50257 * 4 / 2**20
    # a fresh process with a minimal environment: what earlier tests left in os.environ does not change its peak
    keep = ("PATH", "HOME", "LANG", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    out = subprocess.run(
        [sys.executable, "-c", EVAL_PEAK, "fused", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(result["loss"] - torch.log(torch.tensor(50257.0)).item()) < 0.5  # untrained: ~ln V
    assert result["peak_mb"] < logits_mb / 2, result  # the whole process, after two evals


def test_llama_fast_path_equals_the_stock_model():
    """A `--architecture llama` model on the pretraining fast path (the library's SDPA kernel, the fused
    loss): loss and every gradient equal the stock eager model's, with a tied LM head."""
    from transformers import AutoModelForCausalLM

    from tinystories.models.loading import install_attention
    from tinystories.models.sizes import build_config

    config = build_config(
        hidden_size=32, num_layers=2, num_heads=4, vocab_size=97, max_position_embeddings=32, eos_token_id=0,
        architecture="llama",
    )  # fmt: skip
    torch.manual_seed(0)
    stock = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    fast = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
    fast.load_state_dict(stock.state_dict())
    fast = use_fused_cross_entropy(install_attention(fast, "sdpa"), chunk_size=7)
    assert fast.config._attn_implementation == "sdpa" and stock.config._attn_implementation == "eager"
    ids = torch.randint(0, 97, (3, 25))
    want, got = stock(ids, labels=ids), fast(ids, labels=ids)
    assert got.logits is None  # the fused loss: no (tokens, vocab) logits
    torch.testing.assert_close(got.loss, want.loss, atol=TOL, rtol=0)
    want.loss.backward(), got.loss.backward()
    for (name, a), (_, b) in zip(stock.named_parameters(), fast.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
