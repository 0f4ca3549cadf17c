"""`tinystories export`: the transformers.js layout, fp32 parity with PyTorch (also past the local window), greedy
generation through the ONNX Runtime loop, and int8 bits per byte on real held-out stories."""

from __future__ import annotations

import copy
import json
import os
import subprocess

import numpy as np
import onnx
import pytest
import torch
from transformers import GenerationConfig, GPTNeoForCausalLM

from tinystories import cli
from tinystories.core import ConfigError
from tinystories.data.loading import load_eval_texts
from tinystories.data.packing import num_utf8_bytes
from tinystories.data.tokenizer import load_tokenizer
from tinystories.evaluation.metrics import bits_per_byte, score_texts, story_windows
from tinystories.models.export.layout import export_model
from tinystories.models.export.session import OnnxCausalLM
from tinystories.models.loading import context_limit
from tinystories.stages import export as export_stage

WINDOW = 256
LAYERS = 2
HEADS = 4  # tiny.make_tiny_model_dir: hidden 32 = 4 heads of 8


@pytest.fixture(scope="module")
def windowed_model_dir(tmp_path_factory, gpt_neo_tokenizer_dir):
    """Hidden 32, a global and a local layer (window 256), 512 positions; q/k scaled up so attention is sharp and
    the window changes the logits (at init it is near uniform and a missing window would hardly show)."""
    from tiny import make_tiny_model_dir

    folder = make_tiny_model_dir(
        tmp_path_factory.mktemp("export") / "model",
        gpt_neo_tokenizer_dir,
        max_positions=512,
        window_size=WINDOW,
    )
    model = GPTNeoForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.attention.q_proj.weight.mul_(20)
            block.attn.attention.k_proj.weight.mul_(20)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(windowed_model_dir):
    """`tinystories export --model <dir> --quantize int8`, through the CLI, into the default <dir>/onnx-export."""
    assert cli.main(["export", "--model", str(windowed_model_dir), "--quantize", "int8"]) == 0
    return windowed_model_dir / "onnx-export"


@pytest.fixture(scope="module")
def torch_model(windowed_model_dir):
    return GPTNeoForCausalLM.from_pretrained(windowed_model_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def fp32(exported):
    return OnnxCausalLM(exported / "onnx" / "model.onnx")


def random_ids(n: int, seed: int = 1, vocab: int = 50257) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_make_export_runs_the_cli(repo_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    out = subprocess.run(
        ["make", "-n", "export", "MODEL=outputs/run", "ARGS=--quantize int8"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "-m tinystories.cli export --model outputs/run --quantize int8" in " ".join(out.stdout.split())


def test_export_writes_the_transformers_js_layout(exported):
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (exported / name).is_file(), name
    assert sorted(p.name for p in (exported / "onnx").iterdir()) == [
        "generation.onnx",
        "generation_quantized.onnx",
        "model.onnx",
        "model_quantized.onnx",
    ]
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "gpt_neo" and config["window_size"] == WINDOW
    assert (config["num_heads"], config["num_layers"], config["hidden_size"]) == (HEADS, LAYERS, 32)
    assert config["transformers.js_config"] == {"use_external_data_format": False}  # q8 present: no dtype pin
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 50256 and generation["max_length"] == 512

    for name in ("model.onnx", "model_quantized.onnx"):
        graph = onnx.load(str(exported / "onnx" / name)).graph
        dims = {
            v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input
        }
        past = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
        assert list(dims) == ["input_ids", "attention_mask", "position_ids", *past]
        assert dims["attention_mask"] == ["batch_size", "past_sequence_length + sequence_length"]
        # transformers.js builds the empty cache from these: `batch_size` is resolved, the rest must be numbers
        assert dims["past_key_values.0.key"] == ["batch_size", HEADS, "past_sequence_length", 8]
        present = [f"present.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
        assert [v.name for v in graph.output] == ["logits", *present]
        assert not list((exported / "onnx").glob("*.data"))  # weights inside the one file

    info = json.loads((exported / "export_info.json").read_text())
    assert info["parity"]["tokens"] == 320 and info["parity"]["fp32"]["max_abs_logit_diff"] < 1e-4
    # the generation graph, stepped through the same 320 tokens
    generation = info["parity"]["generation_fp32"]
    assert generation["max_abs_logit_diff_past_window"] < 1e-4
    assert generation["greedy_prefix_equal_pytorch"] == info["parity"]["greedy_tokens"]
    assert info["files"]["onnx/model_quantized.onnx"] < 0.6 * info["files"]["onnx/model.onnx"]


@pytest.mark.parametrize("length", [40, 300])  # shorter and longer than the 256-token window
def test_fp32_logits_match_pytorch(fp32, torch_model, length):
    ids = random_ids(length)
    with torch.no_grad():
        expected = torch_model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(fp32.logits([ids])[0] - expected).max() < 1e-4
    if length > WINDOW:  # the window bites here: without it the logits would be far off
        unwindowed = copy.deepcopy(torch_model)
        global_bias = unwindowed.transformer.h[0].attn.attention.bias
        unwindowed.transformer.h[1].attn.attention.bias.copy_(global_bias)
        with torch.no_grad():
            no_window = unwindowed(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(no_window[WINDOW:] - expected[WINDOW:]).max() > 1e-2
        assert np.abs(no_window[:WINDOW] - expected[:WINDOW]).max() < 1e-5


def test_cached_decoding_past_the_window_and_padding_match_pytorch(fp32, torch_model):
    ids = random_ids(300, seed=2)
    with torch.no_grad():
        expected = torch_model(torch.tensor([ids])).logits[0].numpy()
    logits, past = fp32.forward(np.array([ids[:240]]))
    diffs = [np.abs(logits[0] - expected[:240]).max()]
    for t in range(240, 300):  # one token a step, the cache growing from 240 to 300 positions
        logits, past = fp32.forward(np.array([[ids[t]]]), past=past)
        diffs.append(np.abs(logits[0, 0] - expected[t]).max())
    assert past["past_key_values.1.key"].shape == (
        1,
        HEADS,
        300,
        8,
    )  # the cache grows; the mask keeps it local
    assert max(diffs) < 1e-4

    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :5] = 0  # left padding, as a batched generate pads
    batch = torch.tensor([random_ids(20, seed=3), random_ids(20, seed=4)])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = torch_model(batch, attention_mask=mask, position_ids=position_ids).logits.numpy()
    got = fp32.logits(batch.numpy(), mask.numpy())
    assert np.abs(got - expected)[mask.bool().numpy()].max() < 1e-4


def test_greedy_generation_with_the_cache_equals_pytorch_generate(fp32, torch_model):
    prompt = random_ids(200, seed=5)  # 200 + 100 new tokens: decoding crosses the window
    with torch.no_grad():
        expected = torch_model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, 200, dtype=torch.long),
            generation_config=GenerationConfig(
                max_new_tokens=100, do_sample=False, eos_token_id=None, pad_token_id=0
            ),
        )[0, 200:].tolist()
    got = fp32.generate_greedy(prompt, max_new_tokens=100)
    assert len(expected) == 100 and got.tokens == expected
    assert 0 < got.first_token_seconds <= got.seconds


def test_export_rejects_bad_input(windowed_model_dir):
    with pytest.raises(ConfigError, match="none, int8"):
        export_stage.main(["--model", str(windowed_model_dir), "--quantize", "int4"])
    with pytest.raises(ConfigError, match="MODEL="):
        export_stage.main([])


def onnx_bits_per_byte(lm: OnnxCausalLM, tokenizer, texts: list[str], max_length: int, vocab: int) -> float:
    """`score_texts` on ONNX Runtime: every story as [EOS, story, EOS] in the same windows, NLL summed in fp64."""
    total = 0.0
    for _, ids, first in story_windows(tokenizer, texts, max_length, max_length // 2, vocab):
        logits = lm.logits([ids])[0].astype(np.float64)
        peak = logits.max(axis=-1, keepdims=True)
        log_probs = logits - peak - np.log(np.exp(logits - peak).sum(axis=-1, keepdims=True))
        nll = -log_probs[np.arange(len(ids) - 1), ids[1:]]
        total += float(nll[first - 1 :].sum())
    return bits_per_byte(total, num_utf8_bytes(texts))


@pytest.mark.parametrize(
    "steps", [pytest.param(60, id="60-steps"), pytest.param(400, id="400-steps", marks=pytest.mark.slow)]
)
def test_int8_bits_per_byte_within_2_percent_of_fp32(tmp_path, sample_txt, pretrained_tiny, steps):
    """A model pretrained by `tinystories train` (own 512-token BPE, hidden 32, 2 layers) on the real stories,
    scored on the stories that run held out: int8 within 2% of fp32, fp32 ONNX equal to PyTorch."""
    run = pretrained_tiny(steps)  # the 60-step run is the inference bench test's model too
    tokenizer = load_tokenizer(str(run))
    model = GPTNeoForCausalLM.from_pretrained(run).eval()
    export_model(model, tokenizer, tmp_path / "onnx-export", quantize="int8", verify=False)
    held_out = load_eval_texts(str(sample_txt), validation_fraction=0.1, seed=7).texts[:60]

    context, vocab = context_limit(model), model.config.vocab_size  # 64: the trained block
    reference = score_texts(model, tokenizer, held_out, max_length=context, progress=False)
    onnx_dir = tmp_path / "onnx-export" / "onnx"
    fp32 = onnx_bits_per_byte(OnnxCausalLM(onnx_dir / "model.onnx"), tokenizer, held_out, context, vocab)
    int8 = onnx_bits_per_byte(
        OnnxCausalLM(onnx_dir / "model_quantized.onnx"), tokenizer, held_out, context, vocab
    )
    uniform = reference["num_tokens"] * np.log2(vocab) / reference["num_bytes"]
    print(f"{steps} steps: bpb PyTorch {reference['bits_per_byte']:.5f}, fp32 {fp32:.5f}, int8 {int8:.5f}")
    assert reference["bits_per_byte"] < 0.9 * uniform  # trained: below a uniform guess over the vocabulary
    assert fp32 == pytest.approx(reference["bits_per_byte"], rel=1e-5)
    assert abs(int8 - fp32) / fp32 < 0.02


# ------------------------------------------------------------------------- a Llama model (issue 22)
@pytest.fixture(scope="module")
def llama_export(tmp_path_factory, gpt_neo_tokenizer_dir):
    """The tiny Llama twin (hidden 32, 2 layers, 4 query heads of 8, one key/value head) with larger random
    weights (std 0.2), so that attention (and with it rotary positions and the shared key/value head) shows in
    the logits and greedy decoding varies; exported by `tinystories export` with the parity check on."""
    from transformers import LlamaForCausalLM

    from tiny import make_varied_model_dir

    folder = make_varied_model_dir(
        tmp_path_factory.mktemp("llama") / "model", gpt_neo_tokenizer_dir, architecture="llama"
    )
    out = folder.parent / "onnx-llama"
    assert cli.main(["export", "--model", str(folder), "--output_dir", str(out)]) == 0
    reference = LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return out, reference, OnnxCausalLM(out / "onnx" / "model.onnx")


def test_llama_export_layout_and_cache_shape(llama_export):
    out, _, lm = llama_export
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 1, 8)
    graph = onnx.load(str(out / "onnx" / "model.onnx")).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    past = [f"past_key_values.{i}.{kv}" for i in range(LAYERS) for kv in ("key", "value")]
    assert list(dims) == ["input_ids", "attention_mask", "position_ids", *past]
    assert dims["past_key_values.0.key"] == [
        "batch_size",
        1,
        "past_sequence_length",
        8,
    ]  # kv heads x head_dim
    assert (lm.num_heads, lm.head_dim) == (1, 8)
    # no --quantize: fp32 only
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["generation.onnx", "model.onnx"]
    info = json.loads((out / "export_info.json").read_text())
    assert info["model_type"] == "llama" and info["window_size"] is None
    parity = info["parity"]["fp32"]
    assert parity["max_abs_logit_diff"] < 1e-4 and parity["max_abs_logit_diff_past_window"] is None
    assert parity["greedy_prefix_equal_pytorch"] == info["parity"]["greedy_tokens"] == 32
    generation = info["parity"]["generation_fp32"]  # one key/value head for four query heads, heads of 8
    assert generation["max_abs_logit_diff"] < 1e-4 and generation["greedy_prefix_equal_pytorch"] == 32


def test_llama_fp32_logits_and_cached_decoding_match_pytorch(llama_export):
    _, model, lm = llama_export
    ids = random_ids(120, seed=6)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
        shuffled = model(torch.tensor([ids]), position_ids=torch.arange(120).flip(0)[None]).logits[0].numpy()
    assert np.abs(shuffled - expected).max() > 1e-2  # positions matter: rotary is really in the logits
    assert np.abs(lm.logits([ids])[0] - expected).max() < 1e-4
    logits, past = lm.forward(np.array([ids[:80]]))
    diffs = [np.abs(logits[0] - expected[:80]).max()]
    for t in range(80, 120):  # one token a step: rotary positions and the cache continue from 80
        logits, past = lm.forward(np.array([[ids[t]]]), past=past)
        diffs.append(np.abs(logits[0, 0] - expected[t]).max())
    assert past["past_key_values.1.value"].shape == (1, 1, 120, 8) and max(diffs) < 1e-4

    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, :6] = 0  # left padding, as a batched generate pads
    batch = torch.tensor([random_ids(20, seed=7), random_ids(20, seed=8)])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = model(batch, attention_mask=mask, position_ids=position_ids).logits.numpy()
    got = lm.logits(batch.numpy(), mask.numpy())
    assert np.abs(got - expected)[mask.bool().numpy()].max() < 1e-4


def test_llama_greedy_generation_with_the_cache_equals_pytorch_generate(llama_export):
    _, model, lm = llama_export
    prompt = random_ids(30, seed=9)
    with torch.no_grad():
        expected = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, 30, dtype=torch.long),
            generation_config=GenerationConfig(
                max_new_tokens=60, do_sample=False, eos_token_id=None, pad_token_id=0
            ),
        )[0, 30:].tolist()
    got = lm.generate_greedy(prompt, max_new_tokens=60)
    assert len(expected) == 60 and got.tokens == expected
    assert len(set(expected)) > 1  # not one token repeated: the comparison can fail


def test_llama_export_restores_the_attention_backend(tmp_path, gpt_neo_tokenizer_dir):
    from tiny import make_tiny_model_dir
    from tinystories.models.export.graph import cache_shape, export_attention
    from tinystories.models.loading import load_model

    folder = make_tiny_model_dir(tmp_path / "m", gpt_neo_tokenizer_dir, architecture="llama")
    model = load_model(str(folder), attn_implementation="sdpa")
    assert cache_shape(model.config) == (1, 8)
    backend = model.config._attn_implementation
    with export_attention(model) as traced:
        assert traced.config._attn_implementation == "eager"
    assert model.config._attn_implementation == backend != "eager"
