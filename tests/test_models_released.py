"""Released checkpoints as they really are on the Hub, through the user's commands, offline.

The stand-in repo is shaped like `roneneldan/TinyStories-33M`: `main` holds config.json (2048 positions),
`pytorch_model.bin` (a `torch.save(state_dict)`, with the old GPT-Neo attention buffers), the GPT-Neo tokenizer
files and README.md, and no safetensors; the conversion PR `refs/pr/1` holds `model.safetensors` and no tokenizer
files. Its safetensors are another seed's weights, so a test can tell which file was loaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoForCausalLM

from tiny import make_tiny_model_dir
from tinystories import cli
from tinystories.core import ConfigError
from tinystories.models import checkpoints
from tinystories.models.loading import load_model
from tinystories.stages import eval as evaluation
from tinystories.stages import generate, pull

REPO_ID = "roneneldan/TinyStories-released-test"
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)
IDS = torch.tensor([[7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 3290]])


@dataclass
class Released:
    main: Path  # main's weights as a local safetensors dir (the reference)
    pr: Path  # the PR's weights as a local safetensors dir
    main_repo: Path  # what `main` holds on the Hub
    pr_repo: Path  # what `refs/pr/1` holds on the Hub


def save_pickled(safe_dir: Path, path: Path) -> None:
    """`pytorch_model.bin` as the 2023 uploads hold it: `torch.save(state_dict)`, old attention buffers included."""
    state_dict = GPTNeoForCausalLM.from_pretrained(safe_dir).state_dict()
    positions = json.loads((safe_dir / "config.json").read_text())["max_position_embeddings"]
    for i in range(json.loads((safe_dir / "config.json").read_text())["num_layers"]):
        state_dict[f"transformer.h.{i}.attn.attention.bias"] = (
            torch.ones(1, 1, positions, positions).tril().bool()
        )
        state_dict[f"transformer.h.{i}.attn.attention.masked_bias"] = torch.tensor(-1e9)
    torch.save(state_dict, path)


@pytest.fixture(scope="module")
def released(tmp_path_factory, gpt_neo_tokenizer_dir) -> Released:
    root = tmp_path_factory.mktemp("released")
    kw = dict(max_positions=2048, window_size=16)
    main = make_tiny_model_dir(root / "main", gpt_neo_tokenizer_dir, seed=0, **kw)
    pr = make_tiny_model_dir(root / "pr", gpt_neo_tokenizer_dir, seed=1, **kw)
    main_repo, pr_repo = root / "hub-main", root / "hub-pr"
    for repo in (main_repo, pr_repo):
        repo.mkdir()
        shutil.copy(main / "config.json", repo / "config.json")
        (repo / "README.md").write_text("---\nlicense: mit\n---\n# TinyStories stand-in\n")
    assert json.loads((main_repo / "config.json").read_text())["max_position_embeddings"] == 2048
    save_pickled(main, main_repo / "pytorch_model.bin")
    for name in TOKENIZER_FILES:
        shutil.copy(gpt_neo_tokenizer_dir / name, main_repo / name)
    shutil.copy(main_repo / "pytorch_model.bin", pr_repo / "pytorch_model.bin")  # the PR's base commit
    shutil.copy(pr / "model.safetensors", pr_repo / "model.safetensors")
    return Released(main, pr, main_repo, pr_repo)


def publish(hub_cache, released: Released, repo_id: str = REPO_ID) -> Path:
    """The repo in the offline HF cache: `main` and `refs/pr/1`; returns main's snapshot folder."""
    hub_cache.add(repo_id, released.pr_repo, revision="refs/pr/1")
    return hub_cache.add(repo_id, released.main_repo)


@pytest.fixture
def eval_data(stories, tmp_path) -> Path:
    path = tmp_path / "stories.txt"
    path.write_text("\n<|endoftext|>\n".join(stories[:12]) + "\n<|endoftext|>\n", encoding="utf-8")
    return path


def eval_loss(model: str, data: Path, out: Path, *extra: str) -> float:
    argv = ["--model", model, "--data", str(data), "--generate", "false", "--device", "cpu"]
    assert evaluation.main([*argv, "--output_dir", str(out), "--write_card", "false", *extra]) == 0
    loss = json.loads((out / "eval_results.json").read_text())["loss"]
    assert math.isfinite(loss)
    return loss


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits


# ----------------------------------------------------------------------------------------- main: .bin only
def test_pull_converts_main_once_and_stages_load_the_id_offline(
    hub_cache, released, eval_data, tmp_path, capsys
):
    publish(hub_cache, released)
    assert cli.main(["pull", "--model", REPO_ID]) == 0
    snapshot = Path(capsys.readouterr().out.strip().splitlines()[-1])
    converted = snapshot / "model.safetensors"
    assert "models--roneneldan--TinyStories-released-test" in str(snapshot)
    assert (
        converted.is_file() and not converted.is_symlink() and (snapshot / "pytorch_model.bin").is_symlink()
    )
    stamp = converted.stat().st_mtime_ns
    assert cli.main(["pull", "--model", REPO_ID]) == 0 and converted.stat().st_mtime_ns == stamp  # once
    assert "2048 positions" in capsys.readouterr().out

    # transformers itself now finds safetensors under the id, offline
    stock = AutoModelForCausalLM.from_pretrained(REPO_ID, use_safetensors=True)
    torch.testing.assert_close(logits(stock), logits(AutoModelForCausalLM.from_pretrained(released.main)))

    by_id = eval_loss(REPO_ID, eval_data, tmp_path / "eval-id")
    reference = eval_loss(str(released.main), eval_data, tmp_path / "eval-local")
    assert by_id == pytest.approx(reference, abs=1e-5)
    assert (
        generate.main(["--model", REPO_ID, "--prompt", "Once", "--max_new_tokens", "4", "--device", "cpu"])
        == 0
    )

    local = tmp_path / "pulled"
    assert pull.main(["--model", REPO_ID, "--output_dir", str(local)]) == 0
    assert sorted(p.name for p in local.iterdir()) == sorted(
        ["config.json", "model.safetensors", "README.md", "pull_info.json", *TOKENIZER_FILES]
    )
    info = json.loads((local / "pull_info.json").read_text())
    assert info == {"repo_id": REPO_ID, "revision": "main", "commit": snapshot.name}
    assert eval_loss(str(local), eval_data, tmp_path / "eval-dir") == pytest.approx(reference, abs=1e-5)


def test_load_model_converts_a_local_pickled_dir_once(released, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(released.main_repo, folder)
    model = load_model(str(folder))
    assert (folder / "model.safetensors").is_file()
    torch.testing.assert_close(logits(model), logits(load_model(str(released.main))), rtol=1e-5, atol=1e-5)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    load_model(str(folder))
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


# ----------------------------------------------------------------------------------- the conversion PR
def test_revision_pr_uses_its_safetensors_and_mains_tokenizer(hub_cache, released, eval_data, tmp_path):
    publish(hub_cache, released)
    assert cli.main(["pull", "--model", REPO_ID, "--revision", "refs/pr/1"]) == 0
    pr_snapshot = hub_cache.path / "models--roneneldan--TinyStories-released-test" / "snapshots"
    pr_snapshot = next(p for p in pr_snapshot.iterdir() if (p / "model.safetensors").is_symlink())
    assert all((pr_snapshot / name).is_file() for name in TOKENIZER_FILES)  # taken from main

    by_pr = eval_loss(REPO_ID, eval_data, tmp_path / "eval-pr", "--revision", "refs/pr/1")
    assert by_pr == pytest.approx(eval_loss(str(released.pr), eval_data, tmp_path / "ref-pr"), abs=1e-5)
    assert by_pr != pytest.approx(eval_loss(str(released.main), eval_data, tmp_path / "ref-main"), abs=1e-3)


# ----------------------------------------------------------------------------------------- refusals
class RunsCode:
    """Unpickling this runs `touch <marker>`: what a hostile `pytorch_model.bin` can do to a full unpickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_and_never_runs(hub_cache, released, tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile"
    shutil.copytree(released.main_repo, hostile)
    torch.save(
        {"transformer.wte.weight": torch.zeros(2, 2), "x": RunsCode(marker)}, hostile / "pytorch_model.bin"
    )
    snapshot = hub_cache.add("someone/hostile", hostile)

    with pytest.raises(ConfigError, match=r"refused pytorch_model.bin: .*weights_only=True"):
        pull.pull("someone/hostile")
    assert cli.main(["pull", "--model", "someone/hostile"]) == 2
    with pytest.raises(ConfigError, match="refused pytorch_model.bin"):
        load_model(str(hostile))
    assert not marker.exists()
    assert not (snapshot / "model.safetensors").exists() and not (hostile / "model.safetensors").exists()

    torch.save({"epoch": 3, "step": 10}, hostile / "pytorch_model.bin")  # safe to read, but no weights
    with pytest.raises(ConfigError, match="no plain state dict"):
        load_model(str(hostile))

    torch.save({"x": RunsCode(marker)}, tmp_path / "live.bin")  # the payload is live: a full unpickle runs it
    torch.load(tmp_path / "live.bin", weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------ several models
def test_released_recipe_survives_a_broken_repo(hub_cache, released, eval_data, tmp_path, capsys):
    publish(hub_cache, released)
    recipe = tmp_path / "released.yaml"
    recipe.write_text(
        f"model:\n  - {REPO_ID}\n  - roneneldan/TinyStories-missing-test\n"
        f"data: {eval_data}\ngenerate: false\ndevice: cpu\n"
        f"output_dir: {tmp_path / 'eval'}\ncomparison_dir: {tmp_path / 'eval'}\n"
    )
    assert evaluation.main(["--config", str(recipe)]) == 1  # done, but not everything worked
    rows = json.loads((tmp_path / "eval" / "comparison.json").read_text())
    assert [r["model"] for r in rows] == [REPO_ID, "roneneldan/TinyStories-missing-test"]
    assert math.isfinite(rows[0]["loss"]) and rows[0]["error"] is None
    assert rows[1]["loss"] is None and "not in the local HF cache" in rows[1]["error"]
    assert Path(rows[0]["eval_results_file"]).is_file()
    table = (tmp_path / "eval" / "comparison.md").read_text()
    assert "| error |" in table.splitlines()[0] and "not in the local HF cache" in table
    assert "failed: roneneldan/TinyStories-missing-test" in capsys.readouterr().out


def test_a_revision_without_weights_names_the_fix(monkeypatch):
    monkeypatch.setattr(checkpoints, "remote_files", lambda repo_id, revision: ["README.md", "config.json"])
    with pytest.raises(ConfigError, match="no model weights.*--revision"):
        load_model("someone/card-only")
