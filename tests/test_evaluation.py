"""`tinystories eval`: numbers equal a direct computation, bits per byte is exact, outputs are complete."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tiny import make_tiny_model_dir, train_tiny_tokenizer
from tinystories.core import ConfigError
from tinystories.data.packing import num_utf8_bytes
from tinystories.evaluation import metrics
from tinystories.evaluation.metrics import bits_per_byte, perplexity
from tinystories.stages import eval as evaluation

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run ~100x faster on one thread than on two OpenMP threads of a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(stories, tmp_path_factory):
    """(model dir with 1024 positions, model dir with 64 positions, tokenizer, eval texts)."""
    tokenizer = train_tiny_tokenizer(stories[:300])
    root = tmp_path_factory.mktemp("eval_models")
    long_ctx = make_tiny_model_dir(root / "long", tokenizer, max_positions=1024, seed=1, window_size=16)
    short_ctx = make_tiny_model_dir(root / "short", tokenizer, max_positions=64, seed=2, window_size=16)
    texts = [*stories[300:312], "Tom said: “Wow — café!” 🐶"]  # multi-byte UTF-8 on purpose
    return long_ctx, short_ctx, tokenizer, texts


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


# ----------------------------------------------------------------------------------- metrics math


def test_bits_per_byte_is_exact():
    # A uniform model over 256 byte values pays ln(256) nats per byte: exactly 8 bits per byte.
    assert bits_per_byte(3 * math.log(256), 3) == pytest.approx(8.0, abs=1e-12)
    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0, abs=1e-12)
    assert bits_per_byte(0.0, 7) == 0.0
    assert num_utf8_bytes("héllo") == 6 and num_utf8_bytes(["🐶", "a"]) == 5
    assert perplexity(math.log(42.0)) == pytest.approx(42.0)
    assert perplexity(1e6) == math.inf
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)
    with pytest.raises(ValueError):
        bits_per_byte(-1.0, 10)


def test_windows_score_every_target_once():
    seq = list(range(23))
    for max_len, stride in [(8, 4), (8, 7), (5, 1), (30, 15), (23, 10)]:
        scored = []
        for window, first in metrics._windows(seq, max_len, stride):
            assert 1 <= first < len(window) <= max_len
            scored += window[first:]
            if window[0] != 0:  # later windows keep max_len - stride tokens of context
                assert first == max_len - stride
        assert scored == seq[1:], (max_len, stride)


# ----------------------------------------------------------------------------------- loss == direct


def test_loss_equals_direct_unbatched_computation(tiny):
    long_ctx, _, tokenizer, texts = tiny
    model = _load(long_ctx)
    eos = tokenizer.eos_token_id
    total, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:  # one story at a time, HF's own shifted loss, no padding anywhere
            ids = torch.tensor([[eos, *tokenizer(text)["input_ids"], eos]])
            assert ids.shape[1] <= 1024
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    got = metrics.score_texts(model, tokenizer, texts, max_length=1024, batch_size=5, progress=False)
    assert got["num_tokens"] == tokens
    assert got["num_bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert got["num_windows"] == len(texts)
    assert got["total_nll"] == pytest.approx(total, rel=1e-5)
    assert got["loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(total / (math.log(2) * got["num_bytes"]), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)
    # batching and padding do not change the numbers
    one = metrics.score_texts(model, tokenizer, texts, max_length=1024, batch_size=1, progress=False)
    assert one["total_nll"] == pytest.approx(got["total_nll"], rel=1e-6)


def test_long_stories_are_scored_in_windows_within_the_context(tiny):
    _, short_ctx, tokenizer, texts = tiny
    model = _load(short_ctx)
    eos = tokenizer.eos_token_id
    max_len, stride = 64, 32
    total, tokens = 0.0, 0
    with torch.no_grad():  # the classic strided-perplexity loop, one window at a time with -100 labels
        for text in texts:
            seq = [eos, *tokenizer(text)["input_ids"], eos]
            assert len(seq) > max_len or text == texts[-1]
            done, start = 1, 0
            while done < len(seq):
                end = min(start + max_len, len(seq))
                ids = torch.tensor([seq[start:end]])
                labels = ids.clone()
                labels[0, : done - start] = -100
                n = int((labels[0, 1:] != -100).sum())
                total += model(input_ids=ids, labels=labels).loss.item() * n
                tokens += n
                done, start = end, end - (max_len - stride)
    got = metrics.score_texts(model, tokenizer, texts, max_length=max_len, stride=stride, progress=False)
    assert got["num_tokens"] == tokens == sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts)
    assert got["num_windows"] > len(texts)
    assert got["total_nll"] == pytest.approx(total, rel=1e-5)


def test_bits_per_byte_metric_module_matches_eval(tiny):
    import evaluate

    long_ctx, _, tokenizer, texts = tiny
    metric = evaluate.load(str(REPO / "metrics" / "bits_per_byte"))
    via_module = metric.compute(predictions=texts, model_id=str(long_ctx), max_length=1024)
    direct = metrics.score_texts(_load(long_ctx), tokenizer, texts, max_length=1024, progress=False)
    assert via_module["num_tokens"] == direct["num_tokens"]
    assert via_module["bits_per_byte"] == pytest.approx(direct["bits_per_byte"], rel=1e-5)
    converted = metric.compute(predictions=["ab", "c"], nll=[math.log(2) * 4, math.log(2) * 2], num_tokens=3)
    assert converted["bits_per_byte"] == pytest.approx(2.0)
    assert converted["loss"] == pytest.approx(math.log(2) * 2)


# ----------------------------------------------------------------------------------- the CLI


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_eval_cli_writes_results_completions_and_card(tiny, tmp_path, monkeypatch, capsys):
    import shutil

    from tinystories.hub.cards import write_model_card

    long_ctx, short_ctx, tokenizer, texts = tiny
    monkeypatch.chdir(tmp_path)
    model_a = Path(shutil.copytree(long_ctx, tmp_path / "model_a"))
    model_b = Path(shutil.copytree(short_ctx, tmp_path / "model_b"))
    write_model_card(model_a, {"stage": "pretrain", "size": "tiny", "datasets": ["roneneldan/TinyStories"]})
    data = _write_jsonl(tmp_path / "stories.jsonl", texts * 2)  # 26 stories -> held-out fraction 0.25
    args = [
        "--model",
        str(model_a),
        "--model",
        str(model_b),
        "--data",
        str(data),
        "--validation_fraction",
        "0.25",
    ]
    args += ["--num_prompts", "2", "--num_completions", "2", "--max_new_tokens", "6", "--batch_size", "4"]
    args += ["--prompts", "project"]
    assert evaluation.main(args) == 0
    out = capsys.readouterr().out

    res_a = json.loads((model_a / "eval_results.json").read_text())
    res_b = json.loads((model_b / "eval_results.json").read_text())
    for res in (res_a, res_b):
        assert {"loss", "perplexity", "bits_per_byte", "num_tokens", "num_bytes", "data", "split"} <= set(res)
        assert res["data"] == "stories.jsonl" and res["split"] == "validation" and res["num_stories"] == 7
        assert res["selected"] == "held_out_fraction" and res["held_out_fraction"] == 0.25
        assert res["prompt_set"] == "project"
        assert res["bits_per_byte"] == pytest.approx(
            bits_per_byte(res["total_nll"], res["num_bytes"]), rel=1e-12
        )
    assert res_a["max_length"] == 512 and res_b["max_length"] == 64  # min(max_position_embeddings, 512)

    # the same held-out stories, scored directly, give the same numbers
    from tinystories.data.loading import load_stories

    held_out = list(load_stories(str(data), validation_fraction=0.25, seed=42)["validation"]["text"])
    direct = metrics.score_texts(_load(model_a), tokenizer, held_out, max_length=512, progress=False)
    assert res_a["num_tokens"] == direct["num_tokens"]
    assert res_a["loss"] == pytest.approx(direct["loss"], rel=1e-5)

    rows = [json.loads(line) for line in (model_a / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["prompt_id"] for r in rows} == {"p000", "p001"}
    assert rows[0]["sampling"]["temperature"] == 0.7 and rows[0]["sampling"]["max_new_tokens"] == 6

    # one comparison table for both models, also on disk
    assert "| model | params | context | tokens | loss | ppl | bits/byte |" in out
    assert "`model_a`" in out and "`model_b`" in out
    assert (tmp_path / "outputs" / "eval" / "comparison.md").is_file()
    # the card of the trained folder now carries the new numbers; the foreign folder got none
    card = (model_a / "README.md").read_text()
    assert f"{res_a['bits_per_byte']:.4f}" in card
    assert "continue the project's own evaluation prompts (`data_generation/eval_prompts.jsonl`)" in card
    assert not (model_b / "README.md").exists()


def test_eval_hub_id_writes_under_outputs_eval(tiny, tmp_path, monkeypatch, hub_cache):
    long_ctx, _, _, texts = tiny
    hub_cache.add("someone/TinyStories-tiny", long_ctx)
    monkeypatch.chdir(tmp_path)
    data = _write_jsonl(tmp_path / "val.jsonl", texts)
    args = [
        "--model",
        "someone/TinyStories-tiny",
        "--data",
        str(data),
        "--split",
        "train",
        "--generate",
        "false",
    ]
    assert evaluation.main(args) == 0
    res = json.loads((tmp_path / "outputs/eval/someone__TinyStories-tiny/eval_results.json").read_text())
    # a local file without splits is scored whole (no held-out fraction asked for): all 13 stories
    assert res["model"] == "someone/TinyStories-tiny" and res["num_stories"] == 13
    assert res["selected"] == "whole_file" and res["split"] == "all"


def test_eval_config_errors(tiny, tmp_path, monkeypatch):
    long_ctx, *_ = tiny
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):  # before any model is loaded
        evaluation.main(
            ["--model", str(long_ctx), "--judge_base_url", "https://api.example.com/v1", "--judge_model", "m"]
        )
    with pytest.raises(ConfigError, match="judge_model"):
        evaluation.main(["--model", str(long_ctx), "--judge_base_url", "http://127.0.0.1:1/v1"])
    with pytest.raises(ConfigError, match="prompts file"):
        evaluation.main(["--model", str(long_ctx), "--prompts", str(tmp_path / "nope.jsonl"), "--skip_loss"])


def test_repeated_model_flags_are_merged():
    argv = ["--model", "a", "--data", "d", "--model", "b c", "--model=e"]
    assert evaluation._merge_model_flags(argv) == ["--model", "a", "b", "c", "e", "--data", "d"]


def test_eval_prompts_file():
    rows = [
        json.loads(line)
        for line in (REPO / "data_generation" / "eval_prompts.jsonl").read_text().splitlines()
    ]
    assert 45 <= len(rows) <= 60
    assert {r["category"] for r in rows} == {
        "grammar",
        "consistency",
        "context_tracking",
        "factual_knowledge",
        "reasoning",
        "creativity",
    }
    assert len({r["prompt"] for r in rows}) == len(rows) and len({r["id"] for r in rows}) == len(rows)
    assert all(r["prompt"].strip() == r["prompt"] and len(r["prompt"]) > 20 for r in rows)
