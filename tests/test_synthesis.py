"""Story synthesis: seeded prompts, backends, resumable / sharded jobs, failure injection, a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk
from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

from tinystories.core import ConfigError
from tinystories.data.instruct import parse_example
from tinystories.data.shards import read_shard, shard_dir
from tinystories.synthesis.arguments import SynthesisArguments
from tinystories.synthesis.backends import TemplateBackend
from tinystories.synthesis.cleaning import clean_completion, strip_preamble
from tinystories.synthesis.job import run, run_shard
from tinystories.synthesis.prompts import Vocabulary

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer, bucket, expected_outcome, fake_story, ok_plan

REPO = Path(__file__).resolve().parents[1]
FEATURES = {"Dialogue", "Twist", "BadEnding", "MoralValue", "Foreshadowing", "Conflict"}


def _args(tmp_path: Path, **kw) -> SynthesisArguments:
    defaults = dict(output_dir=str(tmp_path / "out"), backend="template", num_stories=40, flush_every=10)
    defaults.update(kw)
    return SynthesisArguments(**defaults)


# ----------------------------------------------------------------------------------- vocabulary / prompts
def test_vocabulary_files():
    vocab = Vocabulary()
    sizes = {pos: len(words) for pos, words in vocab.words.items()}
    assert 1400 <= sum(sizes.values()) <= 1700, sizes
    assert min(sizes.values()) >= 300
    assert set(vocab.features) == FEATURES
    for words in vocab.words.values():
        assert all(w.isalpha() and w.islower() for w in words)


def test_prompts_are_seeded_and_independent_of_order():
    vocab = Vocabulary()
    a = [vocab.spec(7, i) for i in range(200)]
    b = [vocab.spec(7, i) for i in reversed(range(200))][::-1]
    assert [s.prompt for s in a] == [s.prompt for s in b]
    assert [s.prompt for s in a] != [vocab.spec(8, i).prompt for i in range(200)]
    assert len({s.prompt for s in a}) == 200
    spec = a[0]
    assert f'verb "{spec.verb}"' in spec.prompt and f'noun "{spec.noun}"' in spec.prompt
    assert spec.verb in vocab.words["verb"] and spec.noun in vocab.words["noun"]
    # features: each drawn with its probability; the sentence for each is in the prompt
    with_dialogue = [s for s in a if "Dialogue" in s.features]
    assert 60 <= len(with_dialogue) <= 140  # p = 0.5 over 200
    assert all(vocab.features["Dialogue"].instruction in s.prompt for s in with_dialogue)
    assert any(not s.features for s in a) and all("features" not in s.prompt for s in a if not s.features)


# ------------------------------------------------------------------------------------------- template jobs
def test_template_job_instruct_records_and_merge(tmp_path):
    result = run(_args(tmp_path, mode="instruct", num_stories=30))
    assert result["merge"]["generated"] == 30 and result["merge"]["missing"] == 0
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(ds) == 30 and ds["index"] == list(range(30))
    row = ds[0]
    assert row["backend"] == "template" and "not an LLM" in row["model"]
    assert json.loads(row["generation_config"])["seed"] == 42
    for row in ds:
        example = parse_example(row["text"])
        assert example.story == row["story"].strip()
        assert example.order == row["instruction_fields"] and example.order
        if "words" in example.order:
            assert example.words == row["words"]
        if "summary" in example.order:
            assert example.summary == row["summary"]
        if "random_sentence" in example.order:
            assert row["random_sentence"] in row["story"]
        for word in row["words"]:
            assert word in row["story"]
    orders = {tuple(r) for r in ds["instruction_fields"]}
    assert len(orders) > 5  # random subsets and orders


def test_sharded_job_equals_single_job(tmp_path):
    single = run(_args(tmp_path / "a", num_stories=25))
    assert single["merge"]["generated"] == 25
    out = tmp_path / "b" / "out"
    for k in range(3):
        r = run(_args(tmp_path / "b", num_stories=25, num_shards=3, shard_index=k))
        assert ("merge" in r) == (k == 2)  # merged once every shard is done
    r = run(_args(tmp_path / "b", num_stories=25, num_shards=3, merge_only=True))
    assert r["merge"]["generated"] == 25 and r["merge"]["missing"] == 0
    a = load_from_disk(str(tmp_path / "a" / "out" / "dataset"))
    b = load_from_disk(str(out / "dataset"))
    assert a["id"] == b["id"] and a["text"] == b["text"]


def test_resume_guards(tmp_path):
    run(_args(tmp_path, num_stories=10))
    with pytest.raises(ConfigError, match="different job"):
        run(_args(tmp_path, num_stories=10, seed=1))
    with pytest.raises(ConfigError, match="shard_index"):
        _args(tmp_path, num_shards=2, shard_index=2).validate()
    with pytest.raises(ConfigError, match="--model"):
        _args(tmp_path, backend="openai").validate()


# --------------------------------------------------------------------------------------- openai backend
def test_failure_injection_every_record_generated_or_failed(tmp_path):
    # the timeout leaves a loaded 2-core machine (CI) ample time for every non-slow reply
    with FakeOpenAIServer(slow_seconds=6.0) as server:
        args = _args(
            tmp_path, backend="openai", model="fake", base_url=server.url, num_stories=60, concurrency=8,
            request_timeout=3.0, max_retries=3, backoff_base=0.01, backoff_max=0.05,
        )  # fmt: skip
        result = run(args)
        actions = dict(server.actions)
    merged = result["merge"]
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    failed = load_from_disk(str(tmp_path / "out" / "failed"))
    ids = set(ds["id"]) | set(failed["id"])
    assert len(ids) == 60 and not set(ds["id"]) & set(failed["id"])
    assert merged["generated"] + merged["failed"] == 60 and merged["missing"] == 0
    # every injected failure kind was exercised, and each record ended as the plan says
    for action in ("500", "429", "400", "drop", "malformed", "empty", "slow"):
        assert actions.get(action, 0) > 0, actions
    assert all(expected_outcome(p) == "generated" for p in ds["generation_prompt"])
    assert all(expected_outcome(p) == "failed" for p in failed["generation_prompt"])
    assert all(t == fake_story(p) for t, p in zip(ds["text"], ds["generation_prompt"], strict=True))
    for row in failed:
        if row["status_code"] == 400:
            assert row["attempts"] == 1 and "BadRequest" in row["error"]
        else:
            assert row["status_code"] == 500 and row["attempts"] == 4  # 1 + max_retries
    # resume with retry_failed: the permanent failures fail again, nothing is duplicated
    with FakeOpenAIServer() as server:
        args.base_url, args.retry_failed = server.url, True
        again = run(args)
    assert again["merge"]["generated"] == merged["generated"] and again["merge"]["failed"] == merged["failed"]


def _wait_for_parts(directory: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(list(directory.glob("data-*.parquet"))) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended before being killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no parquet parts appeared")


def test_kill_and_resume_no_loss_no_duplicates(tmp_path):
    out = tmp_path / "out"
    n = 120
    with FakeOpenAIServer(ok_plan, delay=0.15) as server:
        cmd = [
            sys.executable, "-m", "tinystories.cli", "data", "--backend", "openai", "--model", "fake",
            "--base_url", server.url, "--num_stories", str(n), "--concurrency", "4", "--flush_every", "8",
            "--output_dir", str(out), "--num_shards", "2", "--shard_index", "0",
        ]  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": "test"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            _wait_for_parts(shard_dir(out, 0, 2), 2, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        before, _ = read_shard(shard_dir(out, 0, 2))
        assert 0 < before.num_rows < n // 2  # killed midway; whole parts only
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, env=env)  # resume shard 0
        # shard 1 in-process (same job, other shard): the merge then holds both
        run(SynthesisArguments(output_dir=str(out), backend="openai", model="fake", base_url=server.url,
                               num_stories=n, concurrency=4, flush_every=8, num_shards=2, shard_index=1))  # fmt: skip
    ds = load_from_disk(str(out / "dataset"))
    assert len(ds) == n and len(set(ds["id"])) == n and ds["index"] == list(range(n))
    assert all(t == fake_story(p) for t, p in zip(ds["text"], ds["generation_prompt"], strict=True))
    first, _ = read_shard(shard_dir(out, 0, 2))
    assert first.num_rows == n // 2  # the resumed shard holds each of its records exactly once


# ----------------------------------------------------------------------------- real server: transformers serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory, gpt_neo_tokenizer_dir):
    torch.manual_seed(0)
    config = GPTNeoConfig(
        vocab_size=50257, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
        attention_types=[[["global", "local"], 1]], window_size=256, max_position_embeddings=512,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("model") / "tiny-gpt-neo"
    GPTNeoForCausalLM(config).save_pretrained(path)
    tok = AutoTokenizer.from_pretrained(gpt_neo_tokenizer_dir)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok.save_pretrained(path)
    return path


def test_end_to_end_against_transformers_serve(tmp_path, tiny_chat_model):
    exe = Path(sys.executable).parent / "transformers"
    if not exe.exists():
        pytest.skip("transformers CLI not installed (pip install 'transformers[serving]')")
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed in finally, after the server)
    server = subprocess.Popen(
        [str(exe), "serve", str(tiny_chat_model), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                pytest.fail(
                    f"transformers serve did not start: {(tmp_path / 'serve.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        args = _args(
            tmp_path, backend="openai", model=str(tiny_chat_model), base_url=f"http://127.0.0.1:{port}/v1",
            mode="instruct", num_stories=3, concurrency=2, max_new_tokens=12, request_timeout=60, max_retries=1,
            on_truncated="keep",  # 12 tokens cut every story off
            extra_body=json.dumps({"generation_config": json.dumps({"do_sample": True})}),
        )  # fmt: skip
        result = run(args)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert result["merge"]["generated"] == 3, result
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    for row in ds:
        assert row["backend"] == "openai" and row["model"] == str(tiny_chat_model)
        assert row["story"] and row["summary"] and row["completion_tokens"] == 12
        assert parse_example(row["text"]).story == row["story"]


def test_transformers_backend_batched(tmp_path, tiny_chat_model):
    # 8 new tokens cut every story off: kept here (flagged by finish_reason "length"), counted as truncated
    result = run(_args(tmp_path, backend="transformers", model=str(tiny_chat_model), num_stories=4,
                       batch_size=4, max_new_tokens=8, on_truncated="keep"))  # fmt: skip
    assert result["merge"]["generated"] + result["merge"]["failed"] == 4
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert set(ds["backend"]) == {"transformers"}
    assert (
        result["merge"]["truncated"]
        == result["merge"]["truncated_kept"]
        == ds["finish_reason"].count("length")
    )


def test_vllm_backend_is_optional(tmp_path):
    pytest.importorskip("openai")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed: the GPU smoke test covers it")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="pip install vllm"):
        run(_args(tmp_path, backend="vllm", model="x", num_stories=2))


def test_merge_pushes_to_hub(tmp_path, monkeypatch):
    pushed = {}

    def fake_push(self, repo_id, **kwargs):  # the Hub is unreachable here: record the call instead
        pushed.update(repo_id=repo_id, rows=len(self), columns=self.column_names, **kwargs)

    monkeypatch.setattr(Dataset, "push_to_hub", fake_push)
    with pytest.raises(ConfigError, match="hub_dataset_id"):
        run(_args(tmp_path, push_to_hub=True))
    result = run(
        _args(tmp_path, num_stories=12, push_to_hub=True, hub_dataset_id="me/tiny", hub_private=True)
    )
    assert result["merge"]["pushed_to"] == "me/tiny"
    assert pushed["repo_id"] == "me/tiny" and pushed["rows"] == 12 and pushed["private"] is True
    assert "generation_prompt" in pushed["columns"]


# ------------------------------------------------------------------------- fit to train on: preambles, truncation
@pytest.mark.parametrize(
    ("raw", "kept", "cut"),
    [
        ("Sure! Here's a short story for a 3-year-old:\n\nOnce upon a time.", "Once upon a time.",
         "Sure! Here's a short story for a 3-year-old:"),
        ("Title: The Red Ball\n\nOnce upon a time.", "Once upon a time.", "Title: The Red Ball"),
        ("**The Red Ball**\nOnce upon a time.", "Once upon a time.", "**The Red Ball**"),
        ("Sure!\nHere is a story:\n\n# Bob\n\nBob ran.", "Bob ran.", "Sure!\nHere is a story:\n\n# Bob"),
        ("Certainly! Here is a summary: Tom finds a ball.", "Tom finds a ball.", "Certainly! Here is a summary:"),
        ("Summary: A dog plays.", "A dog plays.", "Summary:"),
        ("Here is Tom. He is a boy.\nHe runs.", "Here is Tom. He is a boy.\nHe runs.", None),  # a story line
        ("Sure! Here is a story:", "Sure! Here is a story:", None),  # nothing after it: left alone
        ("Once upon a time, here's a story: no.", "Once upon a time, here's a story: no.", None),
    ],
)  # fmt: skip
def test_strip_preamble(raw, kept, cut):
    assert strip_preamble(raw) == (kept, cut)
    assert clean_completion(raw) == kept


PREAMBLE = "Sure! Here's a short story for a 3 year old:"


def _preamble_reply(prompt: str) -> str:
    return f"{PREAMBLE}\n\n{fake_story(prompt)}" if bucket(prompt, 3) == 0 else fake_story(prompt)


def _finish(prompt: str) -> str:
    return "length" if bucket(prompt, 5) == 1 else "stop"


@pytest.mark.parametrize("on_truncated", ["drop", "keep"])
def test_preambles_stripped_and_truncated_counted(tmp_path, on_truncated):
    with FakeOpenAIServer(ok_plan, reply=_preamble_reply, finish=_finish) as server:
        args = _args(tmp_path, backend="openai", model="fake", base_url=server.url, num_stories=30,
                     concurrency=4, on_truncated=on_truncated)  # fmt: skip
        result = run(args)
    prompts = [Vocabulary().spec(args.seed, i).prompt for i in range(30)]
    cut = {p for p in prompts if _finish(p) == "length"}
    with_preamble = {p for p in prompts if bucket(p, 3) == 0 and (p not in cut or on_truncated == "keep")}
    assert 0 < len(cut) < 30 and 0 < len(with_preamble) < 30
    merged, shard = result["merge"], result["shard"]
    for counts in (merged, shard):
        assert counts["truncated"] == len(cut) and counts["preambles_stripped"] == len(with_preamble)
        assert counts["truncated_kept"] == (len(cut) if on_truncated == "keep" else 0)
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    failed = load_from_disk(str(tmp_path / "out" / "failed"))
    assert all(t == fake_story(p) for t, p in zip(ds["text"], ds["generation_prompt"], strict=True))
    for row in ds:
        has = row["generation_prompt"] in with_preamble
        assert row["preambles"] == ([f"story: {PREAMBLE}"] if has else [])
        assert (row["finish_reason"] == "length") == (row["generation_prompt"] in cut)
    if on_truncated == "drop":
        assert len(ds) == 30 - len(cut) and set(failed["generation_prompt"]) == cut
        assert set(failed["error_type"]) == {"truncated"} and set(failed["stage"]) == {"story"}
        assert all("max_new_tokens=512" in e for e in failed["error"])
    else:
        assert len(ds) == 30 and len(failed) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["truncated"] == len(cut)


class _CutSummaries(TemplateBackend):
    """A batch backend whose summaries of odd records run into the token limit."""

    def complete_batch(self, requests):
        answers = super().complete_batch(requests)
        for r, a in zip(requests, answers, strict=True):
            if r.kind == "summary" and r.spec.index % 2:
                a.finish_reason = "length"
        return answers


def test_truncated_summaries_of_a_batch_backend(tmp_path):
    args = _args(tmp_path, mode="instruct", num_stories=10)
    summary = run_shard(args, backend=_CutSummaries(args.sampling()))
    assert summary["generated"] == 5 and summary["failed"] == 5 and summary["truncated"] == 5
    _, failures = read_shard(shard_dir(args.output_dir, 0, 1))
    assert failures.column("stage").to_pylist() == ["summary"] * 5
    assert failures.column("error_type").to_pylist() == ["truncated"] * 5
