"""Model/dataset cards, staged pushes, the token check, and push -> pull round trips through an HF cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tiny import make_tiny_model_dir, train_tiny_tokenizer
from tinystories.core import ConfigError
from tinystories.hub import cards
from tinystories.hub import staging as hub
from tinystories.stages import pull, push

FAKE_TOKEN = "hf_FAKEfakeFAKEfakeFAKEfakeFAKEfake01"


@pytest.fixture(scope="module")
def tiny_dir(stories, tmp_path_factory):
    tokenizer = train_tiny_tokenizer(stories[:150])
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("hub") / "tiny", tokenizer, max_positions=2048, window_size=16
    )


@pytest.fixture
def trained(tiny_dir, tmp_path):
    """A copy of the tiny model laid out like a finished training run (leftovers included)."""
    import shutil

    folder = Path(shutil.copytree(tiny_dir, tmp_path / "outputs" / "tinystories-tiny"))
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"x" * 10)
    (folder / "training_args.bin").write_bytes(b"pickled " + str(folder).encode())
    (folder / "trainer_state.json").write_text(
        json.dumps({"best_model_checkpoint": str(folder / "checkpoint-10"), "log_history": []})
    )
    (folder / "eval_results.json").write_text(
        json.dumps(
            {
                "loss": 1.2345,
                "perplexity": 3.4367,
                "bits_per_byte": 0.4567,
                "num_tokens": 12345,
                "data": "roneneldan/TinyStories",
                "split": "validation",
                "max_length": 512,
                "judge": {
                    "model": "gpt-4o",
                    "graded": 48,
                    "malformed": 2,
                    "failed": 0,
                    "scores": {c: {"mean": 7.5, "ci95": [7.1, 7.9], "n": 48} for c in ("grammar", "plot")},
                    "age_groups": {"B": 30, "C": 18},
                },
            }
        )
    )
    run_info = {
        "stage": "pretrain",
        "model_name": "TinyStories-tiny",
        "base_model": str(tmp_path / "some" / "local" / "model"),  # local: must be dropped
        "datasets": ["roneneldan/TinyStories", str(tmp_path / "data" / "my_stories.txt")],
        "size": "tiny",
        "num_parameters": 123456,
        "num_non_embedding_parameters": 23456,
        "config": json.loads((folder / "config.json").read_text()),
        "hyperparameters": {
            "learning_rate": 5e-4,
            "lr_scheduler_type": "SchedulerType.CONSTANT",
            "train_tokens": 40960,
            "weight_decay": 0.1,
            "output_dir": str(folder),
            "hub_token": FAKE_TOKEN,
        },
        "samples": [{"prompt": "Once upon a time", "completion": " there was a dog."}],
        "tokenizer": str(tmp_path / "tok"),
    }
    cards.write_model_card(folder, run_info)
    return folder


def _all_text(folder: Path) -> str:
    return "\n".join(
        p.read_text(errors="ignore") for p in folder.rglob("*") if p.is_file() and p.suffix != ".safetensors"
    )


# ----------------------------------------------------------------------------------- cards


def test_model_card_metadata_validates_and_has_no_local_paths(trained, tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard.load(trained / "README.md")
    assert isinstance(card.data, ModelCardData)
    data = card.data.to_dict()
    ModelCardData(**data)  # the YAML round-trips through the strict parser, model-index included
    assert data["license"] == "apache-2.0" and data["language"] == "en"
    assert data["pipeline_tag"] == "text-generation" and data["library_name"] == "transformers"
    assert data["datasets"] == ["roneneldan/TinyStories"]
    assert "base_model" not in data  # a local base model is never published
    assert {"tinystories", "gpt_neo"} <= set(data["tags"])
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert (
        metrics["loss"] == 1.2345 and metrics["bits_per_byte"] == 0.4567 and metrics["perplexity"] == 3.4367
    )
    assert metrics["llm_judge_grammar"] == 7.5
    text = card.content
    for needle in (
        "## Usage",
        "## Limitations",
        "not for factual",
        "learning_rate",
        "0.0005",
        "there was a dog",
    ):
        assert needle.lower() in text.lower(), needle
    assert "| bits per byte | 0.4567 |" in text and "[7.10, 7.90]" in text
    assert str(tmp_path) not in text and FAKE_TOKEN not in text and "hub_token" not in text
    assert cards.find_local_paths(text) == []
    info = json.loads((trained / "card_info.json").read_text())
    assert str(tmp_path) not in json.dumps(info) and info["datasets"] == [
        "roneneldan/TinyStories",
        "my_stories.txt",
    ]


def test_card_keeps_hub_base_model_and_rerenders_with_new_eval(trained):
    from huggingface_hub import ModelCard

    cards.write_model_card(trained, {"stage": "sft", "base_model": "roneneldan/TinyStories-33M"})
    results = json.loads((trained / "eval_results.json").read_text())
    results.update(loss=0.9876, bits_per_byte=0.3333)
    (trained / "eval_results.json").write_text(json.dumps(results))
    cards.update_model_card(trained)
    card = ModelCard.load(trained / "README.md")
    assert card.data.base_model == "roneneldan/TinyStories-33M"
    assert "sft" in card.data.tags and "Instruct" in card.content
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["bits_per_byte"] == 0.3333
    assert "TinyStories-tiny" in card.content  # model name kept from the first write


def test_llama_run_card_names_its_architecture(stories, tmp_path):
    """A `--architecture llama` run (issue 22): the llama tag, "Llama-architecture" instead of GPT-Neo, the
    key/value heads and the SwiGLU width in the model table; a GPT-Neo card has neither row."""
    from huggingface_hub import ModelCard

    tokenizer = train_tiny_tokenizer(stories[:150])
    folder = make_tiny_model_dir(tmp_path / "llama", tokenizer, architecture="llama")
    config = json.loads((folder / "config.json").read_text())
    run_info = {
        "stage": "pretrain", "model_name": "TinyStories-llama-tiny", "size": "custom", "config": config,
        "num_parameters": 123456, "num_non_embedding_parameters": 23456,
        "hyperparameters": {"optimizer": "muon", "muon_learning_rate": 0.02, "learning_rate": 5e-4},
    }  # fmt: skip
    cards.write_model_card(folder, run_info)
    card = ModelCard.load(folder / "README.md")
    assert {"tinystories", "llama"} <= set(card.data.tags) and "gpt_neo" not in card.data.tags
    text = card.content
    assert "a Llama-architecture causal language model pretrained from scratch" in text
    assert "GPT-Neo" not in text
    assert "| architecture | LlamaForCausalLM |" in text
    assert f"| key/value heads | {config['num_key_value_heads']} |" in text
    assert f"| MLP width | {config['intermediate_size']} |" in text
    assert "| attention heads | 4 |" in text and "| layers | 2 |" in text
    assert "local attention window" not in text  # GPT-Neo's rows only where the config has them
    assert "| `optimizer` | muon |" in text and "| `muon_learning_rate` | 0.02 |" in text
    neo = tmp_path / "neo"
    make_tiny_model_dir(neo, tokenizer)
    cards.write_model_card(neo, {**run_info, "config": json.loads((neo / "config.json").read_text())})
    neo_card = ModelCard.load(neo / "README.md")
    assert "gpt_neo" in neo_card.data.tags and "llama" not in neo_card.data.tags
    assert "a GPT-Neo causal language model" in neo_card.content and "key/value heads" not in neo_card.content
    assert "MLP width" not in neo_card.content  # GPT-Neo stores intermediate_size None (4 x hidden)


def test_resolve_hub_id():
    assert cards.resolve_hub_id("roneneldan/TinyStories-33M") == "roneneldan/TinyStories-33M"
    snap = "/root/.cache/huggingface/hub/models--roneneldan--TinyStories-8M/snapshots/abc123"
    assert cards.resolve_hub_id(snap) == "roneneldan/TinyStories-8M"
    assert cards.resolve_hub_id("/tmp/x/model") is None and cards.resolve_hub_id("outputs/run") is None
    assert cards.public_name("/home/me/data/stories.txt") == "stories.txt"


def test_dataset_card(tmp_path):
    from huggingface_hub import DatasetCard

    folder = tmp_path / "synthetic"
    folder.mkdir()
    (folder / "dedup_stats.json").write_text(
        json.dumps(
            {
                "input": 1000,
                "exact_duplicates": 12,
                "near_duplicates": 30,
                "contaminated": 3,
                "kept": 955,
                "threshold": 0.8,
            }
        )
    )
    path = cards.write_dataset_card(
        folder,
        {
            "variant": "instruct",
            "backend": "vllm",
            "generator_model": "Qwen/Qwen2.5-7B-Instruct",
            "num_stories": 1000,
            "output_dir": str(tmp_path),
        },
        repo_id="me/tinystories-synthetic",
    )
    card = DatasetCard.load(path)
    assert (
        card.data.license == "cdla-sharing-1.0" and card.data.size_categories == ["1K<n<10K"]
    ) or card.data.size_categories == "1K<n<10K"
    for needle in (
        "vllm",
        "Qwen/Qwen2.5-7B-Instruct",
        "| exact duplicates removed | 12 |",
        "| kept | 955 |",
        "`threshold`=0.8",
        "Random sentence",
        'load_dataset("me/tinystories-synthetic")',
    ):
        assert needle in card.content, needle
    assert str(tmp_path) not in card.content


# ----------------------------------------------------------------------------------- push (staged)


def test_dry_run_stages_exactly_the_upload(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (trained / "runs" / "Nov22").mkdir(parents=True)
    (trained / "runs" / "Nov22" / "events.out.tfevents.1").write_bytes(b"\x00args" + str(trained).encode())
    (trained / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (trained / "extra.dat").write_bytes(b"\x00\x01" + str(trained / "x").encode())
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    assert push.main(["--model", str(trained), "--repo", "alice/TinyStories-tiny", "--dry_run", "true"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    stage = Path(out[-1])
    assert stage == Path("outputs/push/alice__TinyStories-tiny")
    files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    assert "model.safetensors" in files and "config.json" in files and "README.md" in files
    assert "tokenizer.json" in files and "eval_results.json" in files and "trainer_state.json" in files
    assert not any(f.startswith(("checkpoint-", "runs/")) or f == "training_args.bin" for f in files)
    assert (
        "loss_curve.png" in files and "extra.dat" not in files
    )  # a binary file with a local path is left out
    text = _all_text(stage)
    assert str(tmp_path) not in text and FAKE_TOKEN not in text
    assert 'from_pretrained("alice/TinyStories-tiny")' in (stage / "README.md").read_text()
    assert (trained / "checkpoint-10").is_dir()  # the source folder is untouched


def test_push_refuses_a_token_inside_the_files(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (trained / "notes.txt").write_text(f"my token is {FAKE_TOKEN}")
    with pytest.raises(ConfigError, match="token"):
        hub.push_folder(trained, "alice/x", dry_run=True, stage_dir=tmp_path / "stage")


class _Recorder:
    def __init__(self, monkeypatch, me=None):
        from huggingface_hub import HfApi

        self.calls = []
        me = me or {
            "name": "alice",
            "orgs": [{"name": "tiny-org"}],
            "auth": {"accessToken": {"role": "write"}},
        }
        monkeypatch.setattr(HfApi, "whoami", lambda api, token=None, **kw: self.calls.append("whoami") or me)
        monkeypatch.setattr(
            HfApi, "create_repo", lambda api, repo_id, **kw: self.calls.append(("create_repo", repo_id, kw))
        )
        monkeypatch.setattr(
            HfApi,
            "create_branch",
            lambda api, repo_id, **kw: self.calls.append(("create_branch", kw["branch"])),
        )

        def upload(api, **kw):
            self.calls.append(("upload_folder", kw))
            return type("Commit", (), {"commit_url": "https://huggingface.co/alice/x/commit/abc"})()

        monkeypatch.setattr(HfApi, "upload_folder", upload)


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(c, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    from huggingface_hub import get_token

    assert get_token() is None


def test_push_without_token_fails_before_any_upload(trained, tmp_path, monkeypatch, no_token):
    rec = _Recorder(monkeypatch)
    with pytest.raises(ConfigError) as err:
        push.main(["--model", str(trained), "--repo", "alice/x", "--stage_dir", str(tmp_path / "stage")])
    assert "hf auth login" in str(err.value) and "HF_TOKEN" in str(err.value)
    assert rec.calls == [] and not (tmp_path / "stage").exists()


def test_push_respects_offline_mode(trained, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    rec = _Recorder(monkeypatch)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        hub.push_folder(trained, "alice/x", stage_dir=tmp_path / "stage")
    assert rec.calls == []


def test_push_checks_token_and_repo_then_uploads_the_staged_folder(trained, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    rec = _Recorder(monkeypatch)
    with pytest.raises(ConfigError, match="cannot write to 'bob'"):
        hub.push_folder(trained, "bob/x", stage_dir=tmp_path / "stage")
    assert rec.calls == ["whoami"]
    rec.calls.clear()
    url = hub.push_folder(
        trained,
        "tiny-org/x",
        private=True,
        revision="v1",
        commit_message="release",
        stage_dir=tmp_path / "stage",
    )
    assert url.endswith("/commit/abc")
    assert [c if isinstance(c, str) else c[0] for c in rec.calls] == [
        "whoami",
        "create_repo",
        "create_branch",
        "upload_folder",
    ]
    assert rec.calls[1][2]["private"] is True and rec.calls[2][1] == "v1"
    upload = rec.calls[3][1]
    assert Path(upload["folder_path"]) == tmp_path / "stage" and upload["revision"] == "v1"
    assert upload["commit_message"] == "release" and upload["repo_id"] == "tiny-org/x"
    read_only = {"name": "alice", "orgs": [], "auth": {"accessToken": {"role": "read"}}}
    _Recorder(monkeypatch, me=read_only)
    with pytest.raises(ConfigError, match="read-only"):
        hub.push_folder(trained, "alice/x", stage_dir=tmp_path / "stage2")


def test_push_rejects_bad_input(trained, tmp_path):
    with pytest.raises(ConfigError, match="user/name"):
        hub.push_folder(trained, "no-namespace", dry_run=True)
    with pytest.raises(ConfigError, match="safetensors"):
        hub.push_folder(tmp_path, "alice/x", dry_run=True, stage_dir=tmp_path / "s")


def test_adapter_base_model_is_published_as_hub_id(trained, tmp_path):
    (trained / "adapter_config.json").write_text(
        json.dumps(
            {"peft_type": "LORA", "base_model_name_or_path": str(tmp_path / "pulled" / "TinyStories-33M")}
        )
    )
    cards.write_model_card(trained, {"stage": "lora", "base_model": "roneneldan/TinyStories-33M"})
    stage = Path(hub.push_folder(trained, "alice/lora", dry_run=True, stage_dir=tmp_path / "stage"))
    assert (
        json.loads((stage / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "roneneldan/TinyStories-33M"
    )


# ----------------------------------------------------------------------------------- push -> pull


def test_staged_push_loads_by_repo_id_through_an_offline_cache(trained, tmp_path, hub_cache, capsys):
    from transformers import AutoModelForCausalLM

    from tinystories.models.loading import load_model

    stage = hub.push_folder(trained, "alice/TinyStories-tiny", dry_run=True, stage_dir=tmp_path / "stage")
    hub_cache.add("alice/TinyStories-tiny", Path(stage))
    assert pull.main(["--model", "alice/TinyStories-tiny"]) == 0
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert (folder / "model.safetensors").is_file() and "alice--TinyStories-tiny" in str(folder)
    local = tmp_path / "pulled"
    assert pull.pull("alice/TinyStories-tiny", output_dir=str(local)) == local
    assert json.loads((local / "pull_info.json").read_text())["repo_id"] == "alice/TinyStories-tiny"
    assert (local / "model.safetensors").is_file() and not (local / "trainer_state.json").exists()
    assert cards.resolve_hub_id(local) == "alice/TinyStories-tiny"

    ids = torch.tensor([[0, 5, 17, 42, 99, 3]])
    original = AutoModelForCausalLM.from_pretrained(trained).eval()
    by_id = load_model("alice/TinyStories-tiny").eval()
    with torch.no_grad():
        torch.testing.assert_close(by_id(ids).logits, original(ids).logits, rtol=1e-5, atol=1e-5)


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # a full unpickle would create the marker file
        return open, (str(self.marker), "w")


def test_pull_never_unpickles_code_from_a_pickle_only_repo(tmp_path, hub_cache):
    """A `.bin`-only repo is read with weights_only=True (tests/test_models_released.py converts a real one)."""
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neo"}))
    marker = tmp_path / "unpickled"
    torch.save(
        {"transformer.wte.weight": torch.zeros(2, 2), "x": _WritesMarker(marker)},
        folder / "pytorch_model.bin",
    )
    snapshot = hub_cache.add("someone/pickled", folder)
    with pytest.raises(ConfigError, match="weights_only=True"):
        pull.pull("someone/pickled")
    assert not marker.exists() and not (snapshot / "model.safetensors").exists()
    with pytest.raises(ConfigError, match="not in the local HF cache"):
        pull.pull("someone/missing")
    with pytest.raises(ConfigError, match="Hub id"):
        pull.pull("not a repo id!")


def test_dataset_push_exports_parquet_and_card(tmp_path, hub_cache, monkeypatch, stories):
    from datasets import Dataset, load_dataset

    out = tmp_path / "outputs" / "dedup"
    Dataset.from_dict({"text": stories[:40]}).save_to_disk(str(out / "data"))
    Dataset.from_dict({"text": stories[40:43], "reason": ["exact_duplicate"] * 3}).save_to_disk(
        str(out / "dropped")
    )
    stats = {"input": 45, "contaminated": 1, "exact_duplicates": 3, "near_duplicates": 1, "kept": 40}
    stats |= {"params": {"threshold": 0.8, "num_perm": 128}, "source": str(tmp_path / "raw.jsonl")}
    (out / "dedup_stats.json").write_text(json.dumps(stats))
    stage = Path(
        hub.push_folder(
            out, "alice/tiny-stories", dry_run=True, stage_dir=tmp_path / "stage", repo_type="dataset"
        )
    )
    files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    assert files == ["README.md", "data/train-00000-of-00001.parquet", "dedup_stats.json"]
    card = (stage / "README.md").read_text()
    for needle in ("| kept | 40 |", "| exact duplicates removed | 3 |", "`threshold`=0.8", "| train | 40 |"):
        assert needle in card, needle
    assert str(tmp_path) not in card and str(tmp_path) not in (stage / "dedup_stats.json").read_text()
    # The repo as the Hub would serve it, resolved from the offline cache by repo id; `load_dataset` on the
    # snapshot infers splits from the file names exactly as it does for a Hub repo (data/train-*.parquet).
    from huggingface_hub import snapshot_download

    hub_cache.add("alice/tiny-stories", stage, repo_type="dataset")
    snapshot = snapshot_download("alice/tiny-stories", repo_type="dataset")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds_cache"))
    loaded = load_dataset(snapshot)
    assert list(loaded) == ["train"] and loaded["train"]["text"] == stories[:40]


def test_push_without_network_fails_clearly(trained, tmp_path, monkeypatch):
    import huggingface_hub.constants as c
    from huggingface_hub import HfApi

    class ConnectError(Exception):  # what httpx raises: not an OSError
        pass

    def no_network(api, token=None, **kw):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    rec = _Recorder(monkeypatch)
    monkeypatch.setattr(HfApi, "whoami", no_network)
    with pytest.raises(ConfigError, match="cannot reach the Hub"):
        hub.push_folder(trained, "alice/x", stage_dir=tmp_path / "stage")
    assert rec.calls == [] and not (tmp_path / "stage").exists()
