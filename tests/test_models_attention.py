"""SDPA / flex GPT-Neo attention and the fused cross-entropy equal the stock eager model (fp32, CPU)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from tinystories.core import ConfigError
from tinystories.models import attention
from tinystories.models.attention import (
    GPTNeoSdpaAttention,
    _attention_by_chunks,
    attention_backend,
    sliding_window_mask,
    use_fast_attention,
)
from tinystories.models.losses import fused_linear_cross_entropy, use_fused_cross_entropy

TOL = 1e-5
WINDOW = 8  # small window so that short test sequences are longer than it


def tiny_config(**overrides) -> GPTNeoConfig:
    kwargs = dict(
        vocab_size=97,
        hidden_size=32,
        num_layers=4,
        num_heads=4,
        attention_types=[[["global", "local"], 2]],
        window_size=WINDOW,
        max_position_embeddings=64,
        bos_token_id=96,
        eos_token_id=96,
        resid_dropout=0.0,
        embed_dropout=0.0,
        attention_dropout=0.0,
    )
    kwargs.update(overrides)
    return GPTNeoConfig(**kwargs)


@pytest.fixture
def models():
    torch.manual_seed(0)
    eager = GPTNeoForCausalLM(tiny_config()).eval()
    fast = use_fast_attention(copy.deepcopy(eager), "sdpa")
    return eager, fast


def _padded_batch(seq_len: int = 30):
    torch.manual_seed(1)
    ids = torch.randint(0, 96, (3, seq_len))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, -7:] = 0  # right padding
    return ids, mask


def test_install_keeps_parameters_and_config(models, tmp_path):
    eager, fast = models
    assert attention_backend(eager) == "eager" and attention_backend(fast) == "sdpa"
    assert list(eager.state_dict()) == list(fast.state_dict())
    for (n1, p1), (n2, p2) in zip(eager.named_parameters(), fast.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    # the attention flag lives in a private config copy and is never serialised
    assert fast.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    fast.save_pretrained(tmp_path / "fast")
    eager.save_pretrained(tmp_path / "eager")
    assert json.loads((tmp_path / "fast" / "config.json").read_text()) == json.loads(
        (tmp_path / "eager" / "config.json").read_text()
    )
    # a checkpoint saved with the fast attention loads into stock transformers (eager) and back
    stock = GPTNeoForCausalLM.from_pretrained(tmp_path / "fast")
    assert stock.config._attn_implementation == "eager" and attention_backend(stock) == "eager"
    ids = torch.randint(0, 96, (2, 20))
    torch.testing.assert_close(stock(ids).logits, fast(ids).logits, atol=TOL, rtol=0)
    # switching back restores the stock class
    use_fast_attention(fast, "eager")
    assert attention_backend(fast) == "eager" and fast.config._attn_implementation == "eager"


@pytest.mark.parametrize(
    "seq_len", [6, WINDOW, 2 * WINDOW, 2 * WINDOW + 1, 30]
)  # <, =, 2x, 2x+1, >3x the window
def test_logits_match_eager_no_padding(models, seq_len):
    eager, fast = models
    ids = torch.randint(0, 96, (2, seq_len))
    with torch.no_grad():
        diff = (eager(ids).logits - fast(ids).logits).abs().max().item()
    assert diff < TOL


def test_logits_match_eager_with_padding(models):
    eager, fast = models
    ids, mask = _padded_batch()
    with torch.no_grad():
        a = eager(ids, attention_mask=mask).logits
        b = fast(ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.isfinite(b).all()
    assert (a - b)[real].abs().max().item() < TOL
    # and the window really bites: a global-only model differs on the same input
    glob = GPTNeoForCausalLM(tiny_config(attention_types=[[["global"], 4]]))
    glob.load_state_dict(eager.state_dict())
    with torch.no_grad():
        assert (glob(ids, attention_mask=mask).logits - a)[real].abs().max().item() > 1e-3


@pytest.mark.parametrize("padded", [False, True])
def test_gradients_match_eager(models, padded):
    eager, fast = models
    eager.train(), fast.train()
    ids, mask = _padded_batch()
    labels = ids.clone()
    if padded:
        labels[mask == 0] = -100
        labels[1, 5] = -100  # predicted from a padded position (meaningless in both)
    else:
        mask = None
    for model in (eager, fast):
        model.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
    worst = max(
        (p1.grad - p2.grad).abs().max().item()
        for p1, p2 in zip(eager.parameters(), fast.parameters(), strict=True)
    )
    assert worst < TOL


def test_greedy_generation_identical(models):
    eager, fast = models
    torch.manual_seed(3)
    ids = torch.randint(0, 96, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left-padded prompt in a batch
    kwargs = dict(attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=96, eos_token_id=None)
    out_eager = eager.generate(ids, **kwargs)
    out_fast = fast.generate(ids, **kwargs)
    assert out_fast.shape == (3, 42)  # past the 8-token window, through the KV cache
    assert torch.equal(out_eager, out_fast)
    single = ids[:1]
    assert torch.equal(
        eager.generate(single, max_new_tokens=20, do_sample=False, pad_token_id=96, eos_token_id=None),
        fast.generate(single, max_new_tokens=20, do_sample=False, pad_token_id=96, eos_token_id=None),
    )


def test_output_attentions_falls_back_to_eager(models):
    eager, fast = models
    ids = torch.randint(0, 96, (1, 20))
    with torch.no_grad():
        a = eager(ids, output_attentions=True).attentions
        b = fast(ids, output_attentions=True).attentions
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=TOL, rtol=0)


def test_flex_matches_eager_forward(models):
    eager, _ = models
    flex = use_fast_attention(copy.deepcopy(eager), "flex")
    assert attention_backend(flex) == "flex"
    ids = torch.randint(0, 96, (2, 30))
    with torch.no_grad():
        assert (eager(ids).logits - flex(ids).logits).abs().max().item() < TOL
    # training on CPU (no flex backward in torch 2.13) takes the exact SDPA path
    flex.train(), eager.train()
    for model in (eager, flex):
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
    worst = max(
        (a.grad - b.grad).abs().max().item()
        for a, b in zip(eager.parameters(), flex.parameters(), strict=True)
    )
    assert worst < TOL


def test_sliding_window_mask_is_the_eager_bias():
    cfg = tiny_config()
    eager_attn = GPTNeoForCausalLM(cfg).transformer.h[1].attn.attention
    assert eager_attn.attention_type == "local"
    for q_len, kv_len in [(30, 30), (1, 30), (5, 30)]:
        expected = eager_attn.bias[0, 0, kv_len - q_len : kv_len, :kv_len]
        assert torch.equal(sliding_window_mask(q_len, kv_len, WINDOW), expected)


def test_unknown_backend_and_non_gpt_neo():
    model = GPTNeoForCausalLM(tiny_config())
    with pytest.raises(ConfigError, match="sdpa"):
        use_fast_attention(model, "flash")
    linear = torch.nn.Linear(2, 2)
    assert use_fast_attention(linear) is linear and attention_backend(linear) is None
    assert isinstance(use_fast_attention(model).transformer.h[0].attn.attention, GPTNeoSdpaAttention)


# --------------------------------------------------------------------------------------------- fused CE
def test_fused_cross_entropy_equals_stock_loss_and_grads():
    torch.manual_seed(0)
    stock = GPTNeoForCausalLM(tiny_config()).train()
    fused = use_fused_cross_entropy(copy.deepcopy(stock), chunk_size=7)  # chunks do not divide the rows
    ids = torch.randint(0, 96, (3, 25))
    labels = ids.clone()
    labels[2, -6:] = -100
    for kwargs in ({}, {"num_items_in_batch": torch.tensor(50)}):
        for model in (stock, fused):
            model.zero_grad()
        out_s = stock(ids, labels=labels, **kwargs)
        out_f = fused(ids, labels=labels, **kwargs)
        assert out_f.logits is None  # never materialised
        torch.testing.assert_close(out_f.loss, out_s.loss, atol=TOL, rtol=0)
        out_s.loss.backward()
        out_f.loss.backward()
        for (name, a), b in zip(stock.named_parameters(), fused.parameters(), strict=True):
            assert (a.grad - b.grad).abs().max().item() < TOL, name
    # eval and generation keep the stock forward (logits available)
    fused.eval()
    assert fused(ids, labels=labels).logits is not None
    use_fused_cross_entropy(fused, enable=False)
    assert "forward" not in fused.__dict__


def test_fused_linear_cross_entropy_functional():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :3] = -100
    loss = fused_linear_cross_entropy(hidden, weight, labels, chunk_size=4)
    logits = hidden @ weight.t()
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(loss, ref, atol=TOL, rtol=0)
    g1 = torch.autograd.grad(loss * 3, (hidden, weight))
    g2 = torch.autograd.grad(ref * 3, (hidden, weight))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_fast_gelu_same_function_same_checkpoint():
    from transformers.activations import GELUTanh

    from tinystories.models.attention import use_fast_gelu

    torch.manual_seed(0)
    stock = GPTNeoForCausalLM(tiny_config()).train()
    fast = use_fast_gelu(use_fast_attention(copy.deepcopy(stock)))
    assert isinstance(fast.transformer.h[0].mlp.act, GELUTanh)
    assert list(stock.state_dict()) == list(fast.state_dict())
    ids = torch.randint(0, 96, (2, 30))
    for model in (stock, fast):
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
    worst = max(
        (a.grad - b.grad).abs().max().item()
        for a, b in zip(stock.parameters(), fast.parameters(), strict=True)
    )
    assert worst < TOL
    use_fast_gelu(fast, enable=False)
    assert type(fast.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"


@pytest.mark.parametrize("window", [None, 8, 20])
@pytest.mark.parametrize("chunk", [4, 7, 16])
def test_attention_by_chunks_equals_one_masked_call(window, chunk):
    """CPU chunking: every chunk sees exactly the keys of the causal (or sliding-window) mask; values and grads."""
    torch.manual_seed(0)
    for seq_len in (5, 16, 33):
        q, k, v = (torch.randn(2, 3, seq_len, 4, requires_grad=True) for _ in range(3))
        full = sliding_window_mask(seq_len, seq_len, window or seq_len)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=1.0)
        out = _attention_by_chunks(q, k, v, window, 0.0, chunk)
        assert (out - ref).abs().max().item() < TOL
        grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        for a, b in zip(grads, grads_ref, strict=True):
            assert (a - b).abs().max().item() < TOL


def test_long_sequences_take_the_chunked_path_and_match_eager(monkeypatch):
    calls = []
    monkeypatch.setattr(
        attention, "_attention_by_chunks", lambda *a: calls.append(a[5]) or _attention_by_chunks(*a)
    )
    torch.manual_seed(0)
    eager = GPTNeoForCausalLM(tiny_config(max_position_embeddings=320)).train()
    fast = use_fast_attention(copy.deepcopy(eager), "sdpa")
    ids = torch.randint(0, 96, (2, 300))  # local layers far past the 8-token window: 38 chunks
    loss_eager, loss_fast = eager(ids, labels=ids).loss, fast(ids, labels=ids).loss
    assert abs(loss_eager.item() - loss_fast.item()) < TOL
    loss_eager.backward(), loss_fast.backward()
    for (name, a), b in zip(eager.named_parameters(), fast.parameters(), strict=True):
        assert (a.grad - b.grad).abs().max().item() < TOL, name
    assert calls == [WINDOW, WINDOW], calls  # both local layers took it, by chunks of their window


# ------------------------------------------------------------------------------------ GPU decisions
def test_local_layers_go_by_chunks_on_a_gpu_too():
    """A 512-token local layer never gets a dense band mask (which rules out flash and computes 512 x 512)."""
    assert attention.local_plan("cuda", 512, 512, 256) == "chunks"
    assert attention.local_plan("cpu", 512, 512, 256) == "chunks"
    assert attention.local_plan("cuda", 1, 600, 256) == "last_window"
    assert attention.local_plan("cuda", 200, 200, 256) == "causal"
    assert attention.local_plan("cuda", 44, 300, 256) == "band"  # a prefill after a cache: the band


def test_flex_only_on_whole_blocks_and_compiled_with_dynamic_shapes(monkeypatch):
    applies = attention.flex_applies
    assert applies(512, 512, 128, masked=False, dropout=False, cpu_grad=False)
    assert not applies(44, 44, 128, masked=False, dropout=False, cpu_grad=False)  # a card-sample prefill
    assert not applies(512, 512, 128, masked=True, dropout=False, cpu_grad=False)
    assert not applies(1, 512, 128, masked=False, dropout=False, cpu_grad=False)
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.update(kwargs) or fn)
    attention._compiled_flex.cache_clear()
    attention._compiled_flex()
    attention._compiled_flex.cache_clear()
    assert seen.get("dynamic") is None  # not dynamic=False: that recompiles for every new shape


def test_bench_measures_the_recipes_attention():
    import yaml

    from benchmarks.train_bench import default_variant

    root = Path(__file__).resolve().parents[1]
    recipe = yaml.safe_load((root / "recipes" / "pretrain" / "33M.yaml").read_text())
    for device in ("cuda", "cpu"):
        assert default_variant(device, "auto", False)["attention"] == recipe["attn_implementation"]
