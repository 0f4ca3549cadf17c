"""`make bench ARGS="--suite inference"`: the JSON carries every path's numbers, and both ONNX paths generate
exactly PyTorch's greedy tokens. Never asserts a speed: timings depend on the machine."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench import BenchArguments, main
from benchmarks.inference_bench import PATHS, _label, _models, cached_checkpoints, parse_shapes
from tinystories.core import ConfigError

RUN_KEYS = {
    "tokens",
    "new_tokens",
    "seconds",
    "tokens_per_second",
    "tokens_per_cpu_second",
    "cpu_speedup",
    "first_token_ms",
    "same_tokens",
    "tokens_before_first_difference",
    "speedup",
    "first_token_speedup",
    "size_mb",
}


@pytest.fixture(scope="module")
def trained_dir(pretrained_tiny):
    """A tiny model (own 512-token BPE, hidden 32, 2 layers) pretrained 60 steps by `tinystories train` (the
    export int8 test's model too): its top logits stand apart, as a real model's do (a random model's nearly tie,
    and int8 may then flip one)."""
    return pretrained_tiny(60)


def test_inference_suite_json_and_tokens(tmp_path, trained_dir, gpt_neo_tokenizer_dir, capsys):
    out = tmp_path / "bench"
    argv = [
        "--suite", "inference", "--inference_sizes", "none", "--inference_models", str(trained_dir),
        "--inference_new_tokens", "8", "--inference_repeats", "1",
        "--tokenizer", str(gpt_neo_tokenizer_dir), "--output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "bench.json").read_text())["inference"]
    assert report["new_tokens"] == 8 and list(report["models"]) == ["run"]
    result = report["models"]["run"]
    assert result["prompt_tokens"] > 20 and result["threads"] >= 1 and result["export_seconds"] > 0
    runs = result["runs"]
    assert list(runs) == list(PATHS)
    for name, run in runs.items():
        assert set(run) == RUN_KEYS, name
        assert run["new_tokens"] == 8 and run["tokens_per_second"] > 0 and run["first_token_ms"] > 0
    eager = runs["torch eager"]["tokens"]
    for name in ("torch fast", "torch fast loop", "onnx fp32", "onnx int8"):
        assert runs[name]["tokens"] == eager and runs[name]["same_tokens"] is True, name
    assert runs["torch eager"]["speedup"] == 1.0
    assert runs["onnx int8"]["size_mb"] < runs["onnx fp32"]["size_mb"]
    table = capsys.readouterr().out
    assert "onnx int8" in table and "same tokens" in table


def test_random_weight_shapes(gpt_neo_tokenizer_dir):
    args = BenchArguments(
        inference_sizes="32x2", inference_models="none", tokenizer=str(gpt_neo_tokenizer_dir)
    )
    [(label, model, tokenizer)] = list(_models(args))
    assert label == "32x2 (random weights)" and len(tokenizer) == model.config.vocab_size == 50257
    assert (model.config.hidden_size, model.config.num_layers, model.config.window_size) == (32, 2, 256)


def test_shapes_and_cached_checkpoints(hub_cache, tmp_path, gpt_neo_tokenizer_dir):
    from tiny import make_tiny_model_dir

    assert parse_shapes("auto") == [("1M", {"size": "1M"}), ("8M", {"size": "8M"})]
    assert parse_shapes("64x2") == [("64x2", {"hidden_size": 64, "num_layers": 2, "num_heads": 4})]
    with pytest.raises(ConfigError, match="hidden"):
        parse_shapes("huge")
    assert cached_checkpoints(parse_shapes("1M")) == []  # nothing cached: skipped silently
    snapshot = hub_cache.add(
        "roneneldan/TinyStories-1M", make_tiny_model_dir(tmp_path / "m", gpt_neo_tokenizer_dir)
    )
    assert cached_checkpoints(parse_shapes("1M,8M")) == [str(snapshot)]
    assert _label(str(snapshot)) == "roneneldan/TinyStories-1M"
