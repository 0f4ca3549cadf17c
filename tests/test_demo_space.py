"""The Gradio Space (demo/space/app.py): its Instruct prompt is `build_prompt`'s, it serves (queried with
gradio_client on 127.0.0.1) the greedy story PyTorch writes, streamed, and `push --space true` stages it."""

from __future__ import annotations

import importlib.util
import itertools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import gradio
import pytest
import torch
import transformers
import yaml
from gradio_client import Client
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiny import make_varied_model_dir
from tinystories.core import ConfigError
from tinystories.data.instruct import build_prompt
from tinystories.evaluation.generation import generate_story
from tinystories.hub.staging import push_folder
from tinystories.models.loading import load_model
from tinystories.stages import push
from tinystories.stages.generate import GenerateArguments, build_generation_prompt

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "demo" / "space" / "app.py"
MAX_NEW = 24


def _load_app():
    spec = importlib.util.spec_from_file_location("space_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load_app()


@pytest.mark.parametrize(
    "fields",
    [
        {"words": ["dog", "ball", "happy"], "features": ["Dialogue"]},
        {"summary": "A girl  finds a\nkitten.", "features": ["Twist", "BadEnding"]},
        {"words": ["tree"], "random_sentence": "The wind was strong.", "summary": "Tom climbs."},
        {"features": ["MoralValue", "Foreshadowing", "Conflict"], "words": ["run", "jump"]},
    ],
)
def test_prompt_equals_build_prompt(fields):
    assert app.build_prompt(**fields) == build_prompt(**fields)
    words = ", ".join(fields.get("words", []))
    args = GenerateArguments(
        words=[words] if words else None,
        features=fields.get("features"),
        summary=fields.get("summary"),
        random_sentence=fields.get("random_sentence"),
        prompt="Once upon a time",
    )
    ui = app.full_prompt(
        words,
        fields.get("features", []),
        fields.get("summary", ""),
        fields.get("random_sentence", ""),
        "Once upon a time",
    )
    assert ui == build_generation_prompt(args)[0]  # what `tinystories generate` conditions on
    assert ui.endswith("Story: \nOnce upon a time")


def test_plain_beginning_has_no_instructions():
    assert app.full_prompt("", [], " ", "", "Tom and his dog") == "Tom and his dog"
    assert app.split_words("dog, ball  happy,") == ["dog", "ball", "happy"]


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory, gpt_neo_tokenizer_dir):
    """The tiny GPT-Neo with larger random weights, so that its greedy story does not repeat one token."""
    return make_varied_model_dir(tmp_path_factory.mktemp("space") / "m", gpt_neo_tokenizer_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(varied_model, tmp_path_factory):
    """`python demo/space/app.py --model <dir>` (what `make demo` runs) on 127.0.0.1; yields its URL."""
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(APP), "--model", str(varied_model), "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path_factory.mktemp("app") / "app.log"  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the app did not start: {log.read_text()}")
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _greedy(model_dir: Path, prompt: str) -> str:
    """The greedy continuation from plain transformers on PyTorch, without the prompt and the EOS."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_served_story_is_the_greedy_continuation(served, varied_model):
    client = Client(served, verbose=False)
    beginning = "Once upon a time, there was a little girl named Lily."
    story = client.predict("", [], "", "", beginning, 0, 0.95, MAX_NEW, 1, api_name="/generate")
    greedy = _greedy(varied_model, beginning)
    assert len(greedy.split()) >= 5 and len(set(greedy.split())) >= 5  # a story, not one token repeated
    assert story == (beginning + greedy).strip()
    # the project's own sampling function (exact SDPA attention) writes the same greedy story
    tok = AutoTokenizer.from_pretrained(varied_model)
    ours = generate_story(
        load_model(str(varied_model)), tok, beginning, max_new_tokens=MAX_NEW, temperature=0
    )
    assert ours == greedy

    # Instruct fields: streamed; every update extends the last, the last is the greedy continuation
    job = client.submit(
        "dog, ball", ["Dialogue"], "A dog plays.", "", "", 0, 0.95, MAX_NEW, 1, api_name="/generate"
    )
    final = job.result()
    updates = [u for u in job.outputs() if u]
    prompt = build_prompt(words=["dog", "ball"], features=["Dialogue"], summary="A dog plays.")
    assert final == _greedy(varied_model, prompt).strip() and final
    assert len(updates) >= 3 and updates[-1] == final
    assert all(b.startswith(a) for a, b in itertools.pairwise(updates))


def test_sampling_follows_the_seed(served):
    client = Client(served, verbose=False)
    args = ("", [], "", "", "Tom went to the park.", 1.0, 0.95, MAX_NEW)
    first = client.predict(*args, 7, api_name="/generate")
    assert first == client.predict(*args, 7, api_name="/generate")
    assert first != client.predict(*args, 8, api_name="/generate")


def _front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_space_folder_is_a_valid_space():
    meta = _front_matter(APP.parent / "README.md")
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ == "6.31.0"
    assert meta["app_file"] == "app.py" and meta["models"] == [app.DEFAULT_MODEL] == [
        "roneneldan/TinyStories-33M"
    ]
    requirements = (APP.parent / "requirements.txt").read_text().split("\n")
    pins = dict(line.split("==") for line in requirements if line and not line.startswith("#"))
    assert pins == {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}


def test_push_space_dry_run_stages_the_app_with_the_model(tmp_path, capsys):
    stage = tmp_path / "stage"
    argv = ["--model", "alice/TinyStories-Instruct-8M", "--repo", "alice/tinystories-demo", "--space", "true"]
    assert push.main([*argv, "--dry_run", "true", "--stage_dir", str(stage)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert (
        out[0] == "staged 3 files for space repo alice/tinystories-demo: README.md, app.py, requirements.txt"
    )
    assert out[-1] == str(stage)
    meta = _front_matter(stage / "README.md")
    assert meta["models"] == ["alice/TinyStories-Instruct-8M"] and meta["sdk"] == "gradio"
    assert meta["app_file"] == "app.py" and meta["sdk_version"] == "6.31.0"
    assert "roneneldan/TinyStories-33M" not in (stage / "README.md").read_text()
    staged_app = (stage / "app.py").read_text()
    assert 'DEFAULT_MODEL = "alice/TinyStories-Instruct-8M"' in staged_app
    assert (
        staged_app.replace("alice/TinyStories-Instruct-8M", "roneneldan/TinyStories-33M") == APP.read_text()
    )
    assert (stage / "requirements.txt").read_text() == (APP.parent / "requirements.txt").read_text()


def test_push_space_needs_a_hub_model(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="push the model first"):
        push_folder(tiny_model_dir, "alice/demo", dry_run=True, stage_dir=tmp_path / "s", space=True)
    with pytest.raises(ConfigError, match="REPO must be"):
        push_folder("alice/model", "demo", dry_run=True, space=True)


def test_push_space_checks_the_token_and_the_model_then_creates_the_space(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    calls = []
    me = {"name": "alice", "orgs": [], "auth": {"accessToken": {"role": "write"}}}
    monkeypatch.setattr(HfApi, "whoami", lambda api, token=None, **kw: calls.append("whoami") or me)

    def model_info(api, repo_id, **kw):
        calls.append(("model_info", repo_id))
        if repo_id != "alice/TinyStories-8M":
            raise RepositoryNotFoundError(f"{repo_id} not found")

    monkeypatch.setattr(HfApi, "model_info", model_info)
    monkeypatch.setattr(
        HfApi, "create_repo", lambda api, repo_id, **kw: calls.append(("create_repo", repo_id, kw))
    )

    def upload(api, **kw):
        calls.append(("upload_folder", kw))
        return type("Commit", (), {"commit_url": "https://huggingface.co/spaces/alice/demo/commit/abc"})()

    monkeypatch.setattr(HfApi, "upload_folder", upload)
    with pytest.raises(ConfigError, match="which the Hub does not serve"):
        push_folder("alice/missing", "alice/demo", stage_dir=tmp_path / "s", space=True)
    assert [c if isinstance(c, str) else c[0] for c in calls] == ["whoami", "model_info"]  # no Space created
    calls.clear()
    url = push_folder("alice/TinyStories-8M", "alice/demo", stage_dir=tmp_path / "s", space=True)
    assert url.endswith("/commit/abc")
    assert [c if isinstance(c, str) else c[0] for c in calls] == [
        "whoami",
        "model_info",
        "whoami",
        "create_repo",
        "upload_folder",
    ]
    assert calls[3][2]["repo_type"] == "space" and calls[3][2]["space_sdk"] == "gradio"
    upload_kw = calls[4][1]
    assert upload_kw["repo_type"] == "space" and Path(upload_kw["folder_path"]) == tmp_path / "s"
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["README.md", "app.py", "requirements.txt"]
