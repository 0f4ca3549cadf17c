"""The LLM judge: the paper's prompt, robust parsing, CIs, retries/concurrency, and a real local server."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import evaluate
import pytest
import torch

from fake_openai_server import FakeOpenAIServer, ok_plan
from tiny import make_tiny_model_dir, train_tiny_tokenizer
from tinystories.core import ConfigError
from tinystories.core.openai_client import RetryPolicy
from tinystories.evaluation import judge
from tinystories.stages import eval as evaluation

GOOD = "Grammar: 8\nCreativity: 6\nConsistency: 9\nPlot: 7\nAge group: B"
GOOD_JSON = '{"grammar": 8, "creativity": 6, "consistency": 9, "plot": 7, "age_group": "B"}'


# ----------------------------------------------------------------------------------- prompt


def test_messages_follow_the_paper():
    msgs = judge.assessment_messages("Lily saw a big", " dog. It was brown.")
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    assert "Lily saw a big*** dog. It was brown." in msgs[0]["content"]
    assert "the one after the *** symbol" in msgs[0]["content"]
    graded = judge.grading_messages("Lily saw a big", " dog.", "Good work.")
    assert [m["role"] for m in graded] == ["user", "assistant", "user"]
    assert graded[1]["content"] == "Good work."
    for word in ("grammar", "creativity", "consistency", "plot", "A: 3 or under", "F: 13-16"):
        assert word in graded[2]["content"]
    single = judge.single_turn_messages("Lily saw a big", " dog.")
    assert len(single) == 1 and "Age group: <letter A-F>" in single[0]["content"]


# ----------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "answer, scores, age",
    [
        (GOOD, {"grammar": 8, "creativity": 6, "consistency": 9, "plot": 7}, "B"),
        (
            "**Grammar:** 8/10\n**Creativity:** 5/10\n**Consistency:** 7 out of 10\n**Plot:** 6/10\n**Age group:** C (6-7)",
            {"grammar": 8, "creativity": 5, "consistency": 7, "plot": 6},
            "C",
        ),
        (
            "The story is fine.\n- Grammar - 9\n- Creativity - 4\n- Consistency with the beginning: 8\n"
            "- Plot makes sense: 7.5\nAge: 4-5",
            {"grammar": 9, "creativity": 4, "consistency": 8, "plot": 7.5},
            "B",
        ),
        (
            'Sure! {"grammar": 10, "creativity": 3, "consistency": "6", "plot": 5, "age_group": "D"}',
            {"grammar": 10, "creativity": 3, "consistency": 6, "plot": 5},
            "D",
        ),
        ("grammar: 2\ncreativity: 1\nconsistency: 1\nplot: 1\nage group: a", None, "A"),
    ],
)
def test_parse_well_formed(answer, scores, age):
    parsed = judge.parse_grades(answer)
    assert parsed.ok, parsed.reason
    if scores:
        assert parsed.scores == scores
    assert parsed.age_group == age


@pytest.mark.parametrize(
    "answer, reason",
    [
        (None, "empty"),
        ("", "empty"),
        ("   \n", "empty"),
        ("I cannot grade this.", "no grammar grade"),
        ("Grammar: 8\nCreativity: 6\nConsistency: 9\nAge group: B", "no plot grade"),
        (
            "Grammar: 11\nCreativity: 6\nConsistency: 9\nPlot: 7\nAge group: B",
            "grammar grade 11 outside 1-10",
        ),
        ("Grammar: 0\nCreativity: 6\nConsistency: 9\nPlot: 7\nAge group: B", "grammar grade 0 outside 1-10"),
        ("Grammar: 8/5\nCreativity: 6\nConsistency: 9\nPlot: 7\nAge group: B", "grammar on a /5 scale"),
        ("Grammar: 8\nCreativity: 6\nConsistency: 9\nPlot: 7", "no age group"),
        ("Grammar: 8\nCreativity: 6\nConsistency: 9\nPlot: 7\nAge group: Z", "no age group"),
        ('{"grammar": "good", "creativity": 6}', "no grammar grade"),
        ("{not json at all", "no grammar grade"),
    ],
)
def test_parse_malformed_is_reported_not_raised(answer, reason):
    parsed = judge.parse_grades(answer)
    assert not parsed.ok
    assert reason in parsed.reason


def test_json_grades_are_strict_else_the_text_parser_reads_them():
    parsed = judge.parse_json_grades(GOOD_JSON)
    assert parsed.ok and parsed.scores == {"grammar": 8, "creativity": 6, "consistency": 9, "plot": 7}
    assert parsed.age_group == "B"
    for answer in (GOOD, "Sure! " + GOOD_JSON, GOOD_JSON.replace("8", "11"), GOOD_JSON.replace('"B"', '"Z"'),
                   '{"grammar": 8}', "[1, 2]", None, ""):  # fmt: skip
        assert judge.parse_json_grades(answer) is None, answer
    assert judge.parse_grades("Sure! " + GOOD_JSON).ok  # the free-text parser still finds embedded JSON
    schema = judge.RESPONSE_FORMAT["json_schema"]["schema"]
    assert set(schema["required"]) == {*judge.CATEGORIES, "age_group"} and len(schema["required"]) == 5


def test_parse_never_raises_on_noise():
    rng = random.Random(0)
    alphabet = "Grammar:Plot Age group ABCDEF0123456789{}[]\"'/\n*-–.,"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        parsed = judge.parse_grades(text)
        assert parsed.ok == (parsed.reason is None)
        assert all(1 <= v <= 10 for v in parsed.scores.values())


# ----------------------------------------------------------------------------------- aggregation


def test_mean_and_t_confidence_interval():
    stats = judge.mean_ci([7, 8, 9])
    assert stats["n"] == 3 and stats["mean"] == 8 and stats["std"] == pytest.approx(1.0)
    half = 4.302652729911275 / 3**0.5  # t(0.975, df=2) * s / sqrt(n)
    assert stats["ci95"] == pytest.approx([8 - half, 8 + half])
    assert judge.mean_ci([5])["ci95"] is None and judge.mean_ci([])["mean"] is None


def test_confidence_interval_is_over_prompts():
    # 3 prompts x 4 completions: the completions of a prompt agree, so they are one unit, not four
    per_prompt = {"p0": [4, 4, 5, 5], "p1": [7, 7, 8, 8], "p2": [9, 9, 9, 9]}
    values = [v for vs in per_prompt.values() for v in vs]
    clusters = [p for p, vs in per_prompt.items() for _ in vs]
    got = judge.clustered_mean_ci(values, clusters)
    assert got["mean"] == pytest.approx(sum(values) / 12) and got["n"] == 12 and got["n_prompts"] == 3
    over_prompts = judge.mean_ci([sum(vs) / 4 for vs in per_prompt.values()])  # t with 2 df over 3 means
    assert got["ci95"] == pytest.approx(over_prompts["ci95"])
    naive = judge.mean_ci(values)["ci95"]
    assert got["ci95"][1] - got["ci95"][0] > 2 * (
        naive[1] - naive[0]
    )  # independent completions: far too narrow
    # unequal clusters (a malformed answer dropped): still centred on the mean over completions
    got = judge.clustered_mean_ci([4, 5, 7, 8, 8, 9], ["a", "a", "b", "b", "b", "c"])
    assert sum(got["ci95"]) / 2 == pytest.approx(got["mean"]) and got["n_prompts"] == 3
    one = judge.clustered_mean_ci([4, 5, 6], ["a", "a", "a"])  # one prompt: no interval over prompts
    assert one["ci95"] is None and one["mean"] == 5
    # one completion per prompt: the plain Student-t interval
    assert judge.clustered_mean_ci([7, 8, 9], ["a", "b", "c"])["ci95"] == pytest.approx(
        judge.mean_ci([7, 8, 9])["ci95"]
    )


def test_aggregate_counts_add_up():
    rows = [
        {
            "status": "ok",
            "scores": {c: 8.0 for c in judge.CATEGORIES},
            "age_group": "B",
            "category": "grammar",
        },
        {
            "status": "ok",
            "scores": {c: 6.0 for c in judge.CATEGORIES},
            "age_group": "C",
            "category": "grammar",
        },
        {"status": "malformed", "reason": "no plot grade", "scores": {}, "age_group": None},
        {"status": "failed", "error": "timeout", "scores": {}, "age_group": None},
    ]
    summary = judge.aggregate(rows)
    assert (summary["graded"], summary["malformed"], summary["failed"]) == (2, 1, 1)
    assert summary["scores"]["plot"]["mean"] == 7.0
    assert summary["age_groups"] == {"A": 0, "B": 1, "C": 1, "D": 0, "E": 0, "F": 0}
    assert summary["malformed_reasons"] == {"no plot grade": 1}
    assert summary["by_prompt_category"]["grammar"]["n"] == 2


# ----------------------------------------------------------------------------------- requests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Scripted:
    """A stdlib OpenAI-compatible stand-in: replies from a script, records concurrency and calls."""

    def __init__(self, replies, delay=0.0):
        self.replies, self.delay, self.calls, self.active, self.max_active = list(replies), delay, 0, 0, 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.calls += 1
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                    status, content = outer.replies.pop(0) if len(outer.replies) > 1 else outer.replies[0]
                time.sleep(outer.delay)
                payload = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                }
                data = json.dumps(payload if status == 200 else {"error": {"message": content}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with outer.lock:
                    outer.active -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(replies, delay=0.0):
        servers.append(_Scripted(replies, delay))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


ROWS = [
    {"id": str(i), "prompt": "Tom had a", "completion": " red ball.", "category": "grammar"} for i in range(6)
]


def _config(url, **kw):
    return judge.JudgeArguments(judge_base_url=url, judge_model="judge", judge_backoff=0.01, **kw)


def test_retries_on_5xx_then_succeeds(scripted):
    server = scripted([(500, "boom"), (503, "busy"), (200, GOOD)])
    graded, summary = judge.run_judge(
        ROWS[:1], _config(server.url, judge_single_turn=True, judge_max_retries=3), progress=False
    )
    assert server.calls == 3 and graded[0]["status"] == "ok" and summary["graded"] == 1


def test_client_errors_fail_without_retry_and_do_not_stop_the_run(scripted):
    server = scripted([(400, "bad request")])
    graded, summary = judge.run_judge(
        ROWS[:2], _config(server.url, judge_single_turn=True, judge_max_retries=3), progress=False
    )
    assert server.calls == 2 and summary["failed"] == 2 and "400" in graded[0]["error"]


def test_unreachable_server_is_counted_as_failed():
    config = _config(f"http://127.0.0.1:{_free_port()}/v1", judge_max_retries=1, judge_timeout=5)
    _, summary = judge.run_judge(ROWS[:2], config, progress=False)
    assert summary["failed"] == 2 and summary["graded"] == 0 and summary["scores"]["grammar"]["mean"] is None


def test_concurrency_is_bounded_and_order_kept(scripted):
    server = scripted([(200, GOOD)], delay=0.15)
    rows = [dict(r, id=f"r{i}", prompt_id=f"p{i // 2}") for i, r in enumerate(ROWS)]  # 2 per prompt
    graded, summary = judge.run_judge(rows, _config(server.url, judge_concurrency=2), progress=False)
    assert server.calls == 12  # two turns per completion
    assert server.max_active == 2
    assert [g["id"] for g in graded] == [r["id"] for r in rows]
    assert summary["graded"] == 6 and summary["scores"]["consistency"]["mean"] == 9
    assert summary["num_prompts"] == 3 and summary["scores"]["consistency"]["n_prompts"] == 3
    assert summary["scores"]["consistency"]["ci95"] == pytest.approx([9, 9])


def _grade_lines(prompt: str) -> str:
    return GOOD


def test_structured_output_where_the_server_honours_it():
    rows = [dict(r, id=f"r{i}", prompt_id=f"p{i}") for i, r in enumerate(ROWS)]
    with FakeOpenAIServer(ok_plan, reply=_grade_lines, response_format="honour") as server:
        graded, summary = judge.run_judge(rows, _config(server.url), progress=False)
    assert server.formats == {"none": 6, "json_schema": 6}  # the assessment is free text, the grades JSON
    assert summary["graded"] == summary["json_answers"] == 6 and summary["malformed"] == 0
    for g in graded:
        assert g["grades_format"] == "json" and json.loads(g["answer"])["age_group"] == g["age_group"]
        assert set(g["scores"]) == set(judge.CATEGORIES) and all(1 <= v <= 10 for v in g["scores"].values())


@pytest.mark.parametrize("status", [400, 422])
def test_server_rejecting_response_format_falls_back_to_lines(status):
    rows = [dict(r, id=f"r{i}", prompt_id=f"p{i}") for i, r in enumerate(ROWS)]
    config = _config(None, judge_concurrency=1)
    with FakeOpenAIServer(
        ok_plan, reply=_grade_lines, response_format="reject", reject_status=status
    ) as server:
        config.judge_base_url = server.url
        graded, summary = judge.run_judge(rows, config, progress=False)
    assert summary["graded"] == 6 and summary["failed"] == 0 and summary["json_answers"] == 0
    assert all(g["grades_format"] == "text" for g in graded)
    assert server.formats["json_schema"] == 1  # refused once, then lines for the rest of the run
    assert server.formats["none"] == 12
    off = _config(None, judge_json=False)
    with FakeOpenAIServer(ok_plan, reply=_grade_lines, response_format="reject") as server:
        off.judge_base_url = server.url
        assert judge.run_judge(rows[:2], off, progress=False)[1]["graded"] == 2
    assert server.formats["json_schema"] == 0  # judge_json false: never asked


def test_unparsable_json_answer_goes_to_the_text_parser(scripted):
    server = scripted([(200, "Assessment."), (200, GOOD), (200, "Assessment."), (200, '{"grammar": 8, oops')])
    rows = [dict(r, id=f"r{i}") for i, r in enumerate(ROWS[:2])]
    graded, summary = judge.run_judge(rows, _config(server.url, judge_concurrency=1), progress=False)
    assert [g["grades_format"] for g in graded] == ["text", "text"]
    assert graded[0]["status"] == "ok" and graded[0]["scores"]["plot"] == 7  # accepted, answered in lines
    assert graded[1]["status"] == "malformed" and summary["malformed"] == 1


def test_key_from_environment(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)

    def args(url):
        return judge.JudgeArguments(judge_base_url=url, judge_model="m", judge_api_key_env="MY_JUDGE_KEY")

    with pytest.raises(ConfigError, match="MY_JUDGE_KEY"):
        args("https://api.example.com/v1").validate()
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    assert args("https://api.example.com/v1").api_key() == "sk-test"
    assert args("http://127.0.0.1:8000/v1").api_key() == "sk-test"
    assert judge.public_url("https://user:pw@host.example:8443/v1?key=1") == "https://host.example:8443/v1"


def test_judge_arguments_validate():
    off = judge.JudgeArguments()
    assert not off.enabled
    off.validate()  # no judge asked for: nothing to check
    with pytest.raises(ConfigError, match="needs both --judge_base_url and --judge_model"):
        judge.JudgeArguments(judge_base_url="http://127.0.0.1:1/v1").validate()
    with pytest.raises(ConfigError, match="needs both --judge_base_url and --judge_model"):
        judge.JudgeArguments(judge_model="m").validate()
    with pytest.raises(ConfigError, match="--judge_concurrency 0: must be at least 1"):
        judge.JudgeArguments(
            judge_base_url="http://127.0.0.1:1/v1", judge_model="m", judge_concurrency=0
        ).validate()


def test_retry_policy_backoff_and_retry_after():
    policy = RetryPolicy(max_retries=3, backoff_base=1.0, backoff_max=4.0, rng=random.Random(0))
    assert all(0.5 <= policy.delay(1) <= 1.5 for _ in range(50))
    assert all(2.0 <= policy.delay(10) <= 6.0 for _ in range(50))  # capped at backoff_max, jittered
    assert policy.delay(1, retry_after=3.0) >= 3.0  # the server's Retry-After is honoured...
    assert policy.delay(1, retry_after=100.0) <= 6.0  # ...up to backoff_max


def test_llm_judge_metric_module(scripted):
    server = scripted([(200, GOOD)])
    metric = evaluate.load(str(Path(__file__).resolve().parents[1] / "metrics" / "llm_judge"))
    out = metric.compute(
        prompts=["Tom had a", "Sue saw a"], predictions=[" ball.", " cat."], base_url=server.url, model="j"
    )
    assert out["grammar"] == 8 and out["plot"] == 7 and out["graded"] == 2 and out["malformed"] == 0
    assert out["age_groups"]["B"] == 2


# ----------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def served_model(stories, tmp_path_factory):
    """`transformers serve` on 127.0.0.1 with a tiny random chat model: a real OpenAI-compatible server."""
    root = tmp_path_factory.mktemp("served")
    # the two-turn judge conversation is ~1,000 tiny-BPE tokens: give the model room for it
    folder = make_tiny_model_dir(
        root / "judge", train_tiny_tokenizer(stories[:200]), max_positions=2048, window_size=16
    )
    log = (root / "serve.log").open("w")
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {(root / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not answer /health within 120 s")
        yield folder, f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_eval_with_judge_against_a_real_local_server(served_model, tmp_path, monkeypatch):
    folder, url = served_model
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["--model", str(folder), "--skip_loss", "--num_prompts", "3", "--max_new_tokens", "8"]
        args += ["--judge_base_url", url, "--judge_model", str(folder), "--judge_max_tokens", "12"]
        args += ["--judge_concurrency", "2", "--judge_timeout", "60", "--judge_max_retries", "1"]
        assert evaluation.main(args) == 0
    finally:
        torch.set_num_threads(before)
    results = json.loads((folder / "eval_results.json").read_text())
    block = results["judge"]
    assert block["model"] == str(folder) and block["base_url"] == url and block["scheme"] == "two-turn"
    assert block["num_completions"] == 3
    assert block["graded"] + block["malformed"] + block["failed"] == 3
    assert block["failed"] == 0  # the server answered every request
    assert sum(block["malformed_reasons"].values()) == block["malformed"]
    assert set(block["scores"]) == set(judge.CATEGORIES)
    rows = [json.loads(line) for line in (folder / "judge_results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["status"] in ("ok", "malformed") for r in rows)
    # `transformers serve` accepts response_format without enforcing it: the free-text parser reads the answers
    assert all(r["grades_format"] == "text" for r in rows) and block["json_answers"] == 0
    assert all(isinstance(r["answer"], str) and isinstance(r["assessment"], str) for r in rows)
