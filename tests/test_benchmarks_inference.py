"""`make bench ARGS="--suite inference"`: the JSON carries every path's numbers, and both ONNX paths generate
exactly PyTorch's greedy tokens; on llama2.c's stories260K so does llama2.c's run.c (`LLAMA2C_RUN`: a built binary).
Never asserts a speed: timings depend on the machine."""

from __future__ import annotations

import json
import os

import pytest
from transformers import AutoTokenizer

from benchmarks.bench import BenchArguments, main
from benchmarks.inference_bench import (
    PATHS,
    PROMPT,
    _label,
    _models,
    _prompt,
    cached_checkpoints,
    parse_shapes,
)
from conftest import SHARED_DATA
from tinystories.core import ConfigError
from tinystories.data.llama2c_tokenizer import load_llama2c_tokenizer

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


@pytest.mark.slow  # the benchmark harness end to end (an export or a training per path): make test-slow
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
    for name in ("torch fast", "torch fast loop", "onnx web fp32", "onnx fp32", "onnx int8"):
        assert runs[name]["tokens"] == eager and runs[name]["same_tokens"] is True, name
    assert runs["torch eager"]["speedup"] == 1.0
    assert runs["onnx int8"]["size_mb"] < runs["onnx fp32"]["size_mb"]
    table = capsys.readouterr().out
    assert "onnx int8" in table and "same tokens" in table


def test_random_weight_shapes(gpt_neo_tokenizer_dir):
    args = BenchArguments(
        inference_sizes="32x2", inference_models="none", tokenizer=str(gpt_neo_tokenizer_dir)
    )
    [(label, model, tokenizer, _)] = list(_models(args))
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


L2C = SHARED_DATA / "llama2c-stories260K"
RUNC = os.environ.get("LLAMA2C_RUN")  # a built llama2.c `run` (cc -O3 -o run run.c -lm); none in CI


def run_llama2c_suite(tmp_path, gpt_neo_tokenizer_dir, *extra: str) -> dict:
    if not (L2C / "stories260K.bin").is_file():
        pytest.skip("../shared/data/llama2c-stories260K is not present")
    argv = [
        "--suite", "inference", "--inference_sizes", "none", "--inference_models", "none",
        "--llama2c_model", str(L2C / "stories260K.bin"), "--llama2c_tokenizer", str(L2C / "tok512.bin"),
        "--inference_new_tokens", "12", "--inference_repeats", "1",
        "--tokenizer", str(gpt_neo_tokenizer_dir), "--output_dir", str(tmp_path / "bench"), *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return json.loads((tmp_path / "bench" / "bench.json").read_text())["inference"]["models"]["stories260K"]


@pytest.mark.slow  # the benchmark harness end to end (an export or a training per path): make test-slow
def test_llama2c_checkpoint_rows(tmp_path, gpt_neo_tokenizer_dir):
    """stories260K's imported twin on every torch/ONNX path: BOS + the prompt as run.c encodes it, 12 new
    tokens, fp32 ONNX exactly torch's greedy tokens; without --llama2c_run there is no run.c row, and it says so."""
    result = run_llama2c_suite(tmp_path, gpt_neo_tokenizer_dir)
    runs = result["runs"]
    assert (
        list(runs)[: len(PATHS)] == list(PATHS)
        and result["prompt_tokens"] == 55
        and result["new_tokens"] == 12
    )
    assert result["parameters"] == 260_032  # tied: the embedding counts once
    for name in ("torch fast", "torch fast loop", "onnx web fp32", "onnx fp32"):
        assert runs[name]["tokens"] == runs["torch eager"]["tokens"] and runs[name]["same_tokens"], name
    assert runs["torch eager"]["size_mb"] == 1.04  # the model's safetensors: 260,544 float32 + header
    assert "no --llama2c_run" in result["not_run"]["run.c"]
    # llama.cpp: a row (`make gguf-tools` built it) with torch's greedy tokens, or a note saying why not
    assert ("llama.cpp" in runs) != ("llama.cpp" in result["not_run"])
    if "llama.cpp" in runs:
        assert runs["llama.cpp"]["same_tokens"] and runs["llama.cpp"]["size_mb"] > 1.0


@pytest.mark.skipif(not RUNC, reason="set LLAMA2C_RUN to a built llama2.c run.c binary")
def test_runc_row_prints_torchs_tokens(tmp_path, gpt_neo_tokenizer_dir):
    result = run_llama2c_suite(tmp_path, gpt_neo_tokenizer_dir, "--llama2c_run", RUNC)
    runc = result["runs"]["run.c"]
    assert runc["same_tokens"] is True and runc["tokens"] == result["runs"]["torch eager"]["tokens"]
    assert runc["tokens_before_first_difference"] == runc["new_tokens"] == 12
    assert runc["size_mb"] == round((L2C / "stories260K.bin").stat().st_size / 1e6, 2)
    assert runc["loop_tokens_per_second"] > 0 and 0.5 < runc["peak_rss_mb"] < 64
    assert runc["command"].split()[1:8] == [
        str(L2C / "stories260K.bin"),
        "-z",
        str(L2C / "tok512.bin"),
        "-t",
        "0",
        "-n",
        "66",
    ]
    assert "run.c" not in result["not_run"]


def test_peer_flags_are_checked_before_any_work(tmp_path, gpt_neo_tokenizer_dir):
    base = [
        "--suite",
        "inference",
        "--tokenizer",
        str(gpt_neo_tokenizer_dir),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    script = tmp_path / "run"
    script.write_text("not a program\n")
    bad = [
        (["--llama2c_run", str(tmp_path / "missing")], "--llama2c_run"),
        (["--llama2c_run", str(script)], "not an executable"),
        (["--llama2c_model", str(L2C / "stories260K.bin")], "--llama2c_tokenizer"),
        (
            ["--llama2c_model", str(tmp_path / "x.bin"), "--llama2c_tokenizer", str(L2C / "tok512.bin")],
            "--llama2c_model",
        ),
        (["--inference_architectures", "llama,mamba"], "--inference_architectures"),
    ]
    for extra, message in bad:
        with pytest.raises(ConfigError, match=message):
            main(base + extra)
    assert not (tmp_path / "o").exists()


def test_llama_twin_shapes(gpt_neo_tokenizer_dir):
    args = BenchArguments(
        inference_sizes="1M", inference_architectures="gpt_neo,llama", inference_models="none",
        tokenizer=str(gpt_neo_tokenizer_dir),
    )  # fmt: skip
    (neo, _, _, _), (label, model, _tokenizer, source) = list(_models(args))
    assert (neo, label, source) == ("1M (random weights)", "1M llama (random weights)", None)
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 64, 8)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (16, 4, 50257)


def test_prompt_rule(gpt_neo_tokenizer_dir):
    """A llama2.c tokenizer starts every row from BOS + the story beginning (run.c's encoding); GPT-Neo's vocabulary
    starts from token 1 where run.c runs the model, else from the story beginning as before."""
    llama2c_tokenizer = load_llama2c_tokenizer(L2C / "tok512.bin", 512, 512)
    text, ids = _prompt(llama2c_tokenizer, None, runs_runc=True)
    assert text == PROMPT and len(ids) == 55 and ids[:5] == [1, 403, 407, 261, 378]
    neo = AutoTokenizer.from_pretrained(gpt_neo_tokenizer_dir)
    assert _prompt(neo, None, runs_runc=True) == ("", [1])
    assert _prompt(neo, None, runs_runc=False) == (PROMPT, neo(PROMPT, add_special_tokens=False)["input_ids"])
