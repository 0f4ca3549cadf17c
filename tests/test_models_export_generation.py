"""The generation graph (`models/export/decoder_graph`) and its loop (`session.OnnxGenerator`, `open_generator`):
greedy tokens equal PyTorch's on the real stories260K (Llama, 8 heads of 8 dims over 4 key/value heads) and on
tiny GPT-Neo / Llama models past GPT-Neo's local window, int8 agreement, sampling as transformers samples, and
`tinystories generate --runtime onnx` printing what the torch runtime prints."""

from __future__ import annotations

import collections
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from conftest import SHARED_DATA
from tinystories import cli
from tinystories.core import ConfigError
from tinystories.models.export.decoder_graph import build_generation_graph, export_generation_graph
from tinystories.models.export.layout import stepped_logits
from tinystories.models.export.session import OnnxGenerator, open_generator, sampling_probs
from tinystories.models.loading import load_model
from tinystories.models.sizes import build_config
from tinystories.stages import generate as generate_stage
from tinystories.stages import pull

L2C = SHARED_DATA / "llama2c-stories260K"
BIN, TOK = L2C / "stories260K.bin", L2C / "tok512.bin"
BOS = 1  # llama2.c: every story starts after BOS


def random_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def torch_greedy(model, prompt: list[int], n: int) -> list[int]:
    """A plain argmax loop over PyTorch's KV cache, through any end-of-story token."""
    out = model(torch.tensor([prompt]), use_cache=True)
    tokens = []
    for _ in range(n):
        tokens.append(int(out.logits[0, -1].argmax()))
        out = model(torch.tensor([tokens[-1:]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def op_types(path: Path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def s260k(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    """stories260K converted by `tinystories pull`, exported by `tinystories export --quantize int8`."""
    if not BIN.is_file():
        pytest.skip("../shared/data/llama2c-stories260K is not present")
    root = tmp_path_factory.mktemp("s260k")
    converted = pull.convert_llama2c(str(BIN), str(TOK), str(root / "stories260K"))
    exported = root / "exported"
    argv = ["export", "--model", str(converted), "--output_dir", str(exported), "--quantize", "int8"]
    assert cli.main(argv) == 0
    return Path(converted), exported, load_model(str(converted)).eval()


def varied_model(architecture: str, hidden: int, heads: int = 4, seed: int = 0):
    """A tiny GPT-Neo (global + local layer, window 256) or Llama (a quarter of the heads for keys/values) as
    `tiny.make_varied_model_dir` makes them, std-0.2 weights: sharp attention, a greedy story that varies."""
    config = build_config(
        hidden_size=hidden,
        num_layers=2,
        num_heads=heads,
        vocab_size=300,
        max_position_embeddings=512,
        eos_token_id=0,
        window_size=256,
        architecture=architecture,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return model


# ------------------------------------------------------------------------------------------- stories260K
def test_stories260k_greedy_tokens_equal_pytorch(s260k):
    _, exported, model = s260k
    generator = open_generator(exported)
    assert generator.max_length == 512
    got = generator.generate_greedy([BOS], 400)
    expected = torch_greedy(model, [BOS], 400)
    assert len(got.tokens) == 400 and got.tokens == expected
    assert len(set(expected)) > 50  # a story, not a loop of one token
    assert 0 < got.first_token_seconds <= got.seconds
    # heads of 8 dims: rotary by RotaryEmbedding, the attention by GroupQueryAttention over 4 key/value heads
    ops = op_types(exported / "onnx" / "generation.onnx")
    assert ops["GroupQueryAttention"] == 5 and ops["RotaryEmbedding"] == 10


def test_stories260k_logits_match_pytorch_as_prompt_and_as_steps(s260k):
    _, exported, model = s260k
    ids = random_ids(300, 512, seed=3)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    generator = open_generator(exported)
    assert np.abs(stepped_logits(generator, ids, 40) - expected).max() < 1e-4
    assert np.abs(generator.prefill(ids)[0] - expected[-1]).max() < 1e-4  # one 300-token prompt
    with pytest.raises(ConfigError, match="context"):
        generator.generate_greedy([BOS] * 10, 504)  # 10 + 503 fed tokens > 512


def test_stories260k_int8_agrees_with_pytorch_on_most_tokens(s260k):
    _, exported, model = s260k
    ids = torch_greedy(model, [BOS], 300)
    with torch.no_grad():
        expected = model(torch.tensor([[BOS, *ids]])).logits[0].numpy().argmax(-1)
    int8 = open_generator(exported, quantized=True)
    got = stepped_logits(int8, [BOS, *ids], 1).argmax(-1)
    agreement = float((got == expected).mean())
    assert agreement > 0.9  # int8 changes near-ties, not the story
    parity = json.loads((exported / "export_info.json").read_text())["parity"]  # what the export measured
    assert parity["generation_fp32"]["argmax_agreement_pytorch"] == 1.0
    assert 0.9 < parity["generation_int8"]["argmax_agreement_pytorch"] < 1.0
    assert op_types(exported / "onnx" / "generation_quantized.onnx")["MatMulInteger"] == 21
    assert len(int8.generate_greedy([BOS], 100).tokens) == 100


# ------------------------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize(("hidden", "heads"), [(32, 4), (64, 16)])  # heads of 8 dims; of 4, as the 1M size's
def test_gpt_neo_greedy_equals_pytorch_past_the_local_window(tmp_path, hidden, heads):
    model = varied_model("gpt_neo", hidden=hidden, heads=heads)
    generator = OnnxGenerator(export_generation_graph(model, tmp_path / "generation.onnx"))
    assert generator.caches["past_key_values.0.key"].shape() == [1, heads, 512, 8]  # 4 dims padded to 8
    assert generator.generate_greedy([0], 450).tokens == torch_greedy(model, [0], 450)
    ids = random_ids(400, 300)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
        unwindowed = copy.deepcopy(model)
        local = unwindowed.transformer.h[1].attn.attention
        local.bias.copy_(unwindowed.transformer.h[0].attn.attention.bias)
        global_logits = unwindowed(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(global_logits[256:] - expected[256:]).max() > 1e-2  # the window matters past 256 tokens
    diff = np.abs(stepped_logits(generator, ids, 16) - expected)
    assert diff[256:].max() < 1e-4 and diff.max() < 1e-4
    assert np.abs(generator.prefill(ids)[0] - expected[-1]).max() < 1e-4  # a prompt longer than the window


def test_llama_with_heads_of_16_rotates_inside_the_attention_kernel(tmp_path):
    model = varied_model("llama", hidden=64)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 1)
    path = export_generation_graph(model, tmp_path / "generation.onnx")
    ops = op_types(path)
    assert ops["GroupQueryAttention"] == 2 and "RotaryEmbedding" not in ops
    generator = OnnxGenerator(path)
    assert generator.generate_greedy([0], 300).tokens == torch_greedy(model, [0], 300)


def test_llama_heads_of_4_are_padded_for_the_kernel(tmp_path):
    model = varied_model("llama", hidden=64, heads=16)  # 4 key/value heads of 4 dims: rotary on 8 padded dims
    generator = OnnxGenerator(export_generation_graph(model, tmp_path / "generation.onnx"))
    assert generator.caches["past_key_values.0.key"].shape() == [1, 4, 512, 8]
    assert generator.generate_greedy([0], 300).tokens == torch_greedy(model, [0], 300)


# ------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0.8, None, 0.95), (1.3, 20, None), (0.7, 50, 0.5), (1.0, 3, 1.0)]
)
def test_sampling_probs_are_transformers_warpers(temperature, top_k, top_p):
    logits = torch.randn(1, 300, generator=torch.Generator().manual_seed(5)) * 3
    warped = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        warped = TopKLogitsWarper(top_k)(None, warped)
    if top_p is not None and top_p < 1.0:
        warped = TopPLogitsWarper(top_p)(None, warped)
    expected = torch.softmax(warped.double(), -1)[0].numpy()
    got = sampling_probs(logits[0].numpy(), temperature, top_k, top_p)
    assert (got > 0).sum() == (expected > 0).sum() and np.abs(got - expected).max() < 1e-6


def test_seeded_sampling_repeats_and_top_k_1_is_greedy(s260k):
    _, exported, _ = s260k
    generator = open_generator(exported)
    sample = [generator.generate([BOS], 80, temperature=1.0, top_p=0.95, seed=s).tokens for s in (3, 3, 4)]
    assert sample[0] == sample[1] and sample[0] != sample[2]
    top1 = generator.generate([BOS], 80, temperature=1.0, top_k=1, seed=7).tokens
    assert top1 == generator.generate_greedy([BOS], 80).tokens


# ------------------------------------------------------------------------------------------- the CLI
def test_cli_onnx_runtime_prints_the_torch_runtime_story(s260k, capsys):
    converted, exported, _ = s260k
    flags = [
        "--temperature",
        "0",
        "--max_new_tokens",
        "120",
        "--words",
        "dog",
        "ball",
        "--prompt",
        "Once upon a time",
    ]
    assert cli.main(["generate", "--model", str(converted), *flags]) == 0
    torch_story = capsys.readouterr().out
    assert cli.main(["generate", "--runtime", "onnx", "--model", str(exported), *flags]) == 0
    onnx_story = capsys.readouterr().out
    assert (
        onnx_story == torch_story
        and onnx_story.startswith("Once upon a time")
        and len(onnx_story.split()) > 20
    )
    argv = ["generate", "--runtime", "onnx", "--model", str(exported), "--quantized", "--num_stories", "2"]
    assert cli.main([*argv, "--seed", "1", "--max_new_tokens", "60"]) == 0
    assert capsys.readouterr().out.count("-" * 40) == 1  # two stories


def test_onnx_runtime_refuses_bad_input(s260k, tmp_path):
    converted, exported, _ = s260k
    with pytest.raises(ConfigError, match=r"tinystories export --model .*stories260K --output_dir"):
        generate_stage.main(["--runtime", "onnx", "--model", str(converted)])  # a training-style folder
    fp32_only = tmp_path / "fp32-only"
    shutil.copytree(exported, fp32_only)
    (fp32_only / "onnx" / "generation_quantized.onnx").unlink()
    with pytest.raises(ConfigError, match="--quantize int8"):
        generate_stage.main(["--runtime", "onnx", "--model", str(fp32_only), "--quantized"])
    with pytest.raises(ConfigError, match="--runtime onnx"):
        generate_stage.main(["--model", str(converted), "--quantized"])
    with pytest.raises(ConfigError, match="torch, onnx"):
        generate_stage.main(["--runtime", "tensorflow", "--model", str(exported)])
    with pytest.raises(ConfigError, match="not a generation graph"):
        OnnxGenerator(exported / "onnx" / "model.onnx")
    with pytest.raises(ConfigError, match="tinystories export"):
        open_generator(tmp_path)
    with pytest.raises(ConfigError, match="gpt_neo, llama"):
        build_generation_graph(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)))
