"""The leaderboard: real local models of two families on the same stories, a failing repo, reused rows, its files.

A tiny GPT-Neo (GPT-Neo's 50,257-token BPE) and llama2.c's real stories260K (512-token sentencepiece BPE) are scored
on the same 12 real stories; bits per byte divides both by the same UTF-8 bytes, checked against `score_texts`
called here. A Hub id that cannot be had offline gets its error in its row while the others finish; the same
command again reuses the finished rows (the model loader is made to raise, so a load would show).
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO_ROOT, SHARED_DATA
from tinystories.data.loading import STORY_SEPARATOR
from tinystories.data.packing import num_utf8_bytes
from tinystories.data.tokenizer import load_tokenizer
from tinystories.evaluation import leaderboard as lb
from tinystories.evaluation import pipeline
from tinystories.evaluation.metrics import score_texts
from tinystories.hub.conversion import convert_llama2c
from tinystories.models.loading import load_model
from tinystories.stages import leaderboard as stage

L2C = SHARED_DATA / "llama2c-stories260K"
ROW_KEYS = {
    "model", "family", "architecture", "tokenizer", "vocab_size", "num_parameters", "non_embedding_parameters",
    "context", "loss", "bits_per_byte", "num_stories", "num_bytes", "dark_story_rate", "samples", "key",
}  # fmt: skip


@pytest.fixture(scope="module")
def stories260k(tmp_path_factory):
    if not (L2C / "stories260K.bin").is_file():
        pytest.skip("../shared/data/llama2c-stories260K is not present")
    out = tmp_path_factory.mktemp("board") / "stories260K"
    return convert_llama2c(str(L2C / "stories260K.bin"), str(L2C / "tok512.bin"), str(out))


def _argv(data, out, *models) -> list[str]:
    return [
        "--config", "recipes/eval/leaderboard.yaml", "--public_models", "false", "--model", *map(str, models),
        "--data", str(data), "--output_dir", str(out), "--prompts", "project", "--num_prompts", "2",
        "--max_new_tokens", "8", "--device", "cpu",
    ]  # fmt: skip


def test_two_families_one_failing_repo_and_reused_rows(
    tiny_model_dir, stories260k, stories, hub_cache, tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO_ROOT)  # the recipe path
    texts = stories[:12]
    data = tmp_path / "stories.txt"
    data.write_text(f"\n{STORY_SEPARATOR}\n".join(texts) + "\n")
    out = tmp_path / "board"
    argv = _argv(data, out, tiny_model_dir, stories260k, "nobody/TinyStories-missing")

    assert stage.main(argv) == 0
    board = json.loads((out / "leaderboard.json").read_text())
    rows = {r["model"]: r for r in board["rows"]}
    assert set(board) == {"split", "rows"} and board["split"]["num_bytes"] == num_utf8_bytes(texts)
    neo, l2c, missing = rows[tiny_model_dir.name], rows["stories260K"], rows["nobody/TinyStories-missing"]
    assert set(neo) >= ROW_KEYS and set(l2c) >= ROW_KEYS
    assert neo["num_bytes"] == l2c["num_bytes"] == num_utf8_bytes(texts)  # one denominator, two tokenizers
    assert neo["num_stories"] == l2c["num_stories"] == 12
    assert (l2c["family"], l2c["architecture"], l2c["vocab_size"], l2c["context"]) == (
        "llama2.c", "LlamaForCausalLM", 512, 512,
    )  # fmt: skip
    assert (neo["family"], neo["architecture"], neo["vocab_size"]) == ("local", "GPTNeoForCausalLM", 50257)
    assert missing["error"] and "bits_per_byte" not in missing
    assert board["rows"][-1]["model"] == "nobody/TinyStories-missing"  # failed rows last

    model, tokenizer = load_model(str(stories260k)), load_tokenizer(str(stories260k))
    direct = score_texts(model, tokenizer, texts, 512, progress=False)
    assert l2c["bits_per_byte"] == pytest.approx(direct["bits_per_byte"], rel=1e-9)
    assert l2c["non_embedding_parameters"] == l2c["num_parameters"] - 512 * 64  # a tied 512 x 64 embedding
    assert (out / "bpb_vs_params.png").stat().st_size > 1000
    table = (out / "leaderboard.md").read_text()
    assert f"{l2c['bits_per_byte']:.4f}" in table and "nobody/TinyStories-missing" in table

    def refuse(*args, **kwargs):
        raise AssertionError("a finished row was scored again")

    monkeypatch.setattr(pipeline, "load_model", refuse)
    assert stage.main(argv) == 0
    again = {r["model"]: r for r in json.loads((out / "leaderboard.json").read_text())["rows"]}
    assert again[tiny_model_dir.name] == neo and again["stories260K"] == l2c  # reused, not rescored
    assert again["nobody/TinyStories-missing"]["error"]  # a failed row is tried again (and fails again)


def test_row_key_follows_the_split_and_the_settings(tmp_path):
    (args, _) = stage.parse_args(stage.ARGUMENTS, ["--output_dir", str(tmp_path)], stage.DEFAULTS)
    entry = lb.Entry("roneneldan/TinyStories-1M", "TinyStories")
    key = lb.row_key(entry, args)
    assert key == lb.row_key(entry, args)
    args.max_samples = 10
    assert lb.row_key(entry, args) != key
    args.max_samples, args.temperature = None, 0.0
    assert lb.row_key(entry, args) != key


def test_public_models_and_the_llama2_tokenizer_requirement(tmp_path):
    names = [e.source for e in lb.PUBLIC_MODELS]
    assert len(names) == len(set(names)) == 14 + 4 + 10
    assert "roneneldan/TinyStories-Instuct-1Layer-21M" in names  # the Hub's spelling
    assert lb.leaderboard_entries(["roneneldan/TinyStories-1M", "x"], public=False)[1].family == "local"
    (args, _) = stage.parse_args(stage.ARGUMENTS, ["--output_dir", str(tmp_path)], stage.DEFAULTS)
    entry = next(e for e in lb.PUBLIC_MODELS if e.source.endswith("stories15M"))
    with pytest.raises(lb.ConfigError, match="tokenizer.bin"):
        lb._local_model(entry, args)
