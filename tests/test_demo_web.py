"""The offline browser demo (demo/web) in a real headless Chromium, driven by Playwright.

`demo/web/build.py` (what `make web-demo` runs) exports a tiny model (it has no onnx/ yet, so `tinystories export
--quantize int8` runs first), copies transformers.js, the ONNX Runtime Web files and the model into the served
folder and serves it on 127.0.0.1. Every request that is not to that server is aborted and counted: the page must
need none. The greedy story the page streams must be PyTorch's, token for token, on a prompt that runs past the
local attention window; the page's Instruct prompt must be `build_prompt`'s. The page's speed hook times fp32 and
q8 generation (`demo/web/bench.py`), and `python -m demo.web.bench` writes a results file the docs can render.

Needs Debian's `chromium` and `npm ci` in demo/web (`.ci/run` installs both, then runs this file with
`make test-slow ARGS=tests/test_demo_web.py`); skipped without them.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from playwright.sync_api import sync_playwright
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from demo.web import bench
from scripts.results_table import render_table
from tiny import make_varied_model_dir
from tinystories.data.instruct import build_prompt
from tinystories.models.export.session import OnnxCausalLM

REPO = Path(__file__).resolve().parents[1]
WEB = REPO / "demo" / "web"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
MAX_NEW = 48
WINDOW = 256  # the tiny model's local attention window (the released models')

pytestmark = [
    # slow: `tinystories export` (torch.onnx, int8) and a real Chromium take about a minute on 2 cores; .ci/run runs it
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium: `apt-get install chromium` (.ci/run does)"),
    pytest.mark.skipif(
        not (WEB / "node_modules" / "@huggingface" / "transformers").is_dir(),
        reason="demo/web/node_modules is missing: run `npm ci` in demo/web (.ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt_neo_tokenizer_dir):
    """The tiny GPT-Neo with larger random weights (its greedy story does not repeat one token); no onnx/."""
    return make_varied_model_dir(tmp_path_factory.mktemp("web") / "m", gpt_neo_tokenizer_dir)


def _wait_for_url(proc: subprocess.Popen, seconds: float) -> str:
    """The URL build.py prints once it serves (its output is read by a thread: no line is left in a buffer)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if " at http://" in line:
            return line.split(" at ", 1)[1].split()[0]
    proc.kill()
    pytest.fail("build.py did not serve:\n" + "".join(seen))


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, str(WEB / "build.py"), "--model", str(model_dir), "--out", str(out)]
    cmd += ["--quantize", "int8", "--port", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = _wait_for_url(proc, 300)
    yield url, out
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(served):
    url, _ = served
    host = urlparse(url).netloc
    blocked = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context()

        def route(r):
            request_host = urlparse(r.request.url).netloc
            if r.request.url.startswith(("blob:", "data:")) or request_host == host:
                return r.continue_()
            blocked.append(r.request.url)
            return r.abort()

        context.route("**/*", route)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=120_000)
        assert page.get_attribute("body", "data-state") == "ready", (page.inner_text("#status"), errors)
        page.blocked = blocked
        yield page
        browser.close()


def _greedy(model_dir: Path, prompt: str) -> list[int]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    return new[:-1] if new and new[-1] == tok.eos_token_id else new


def _write(page, fields: dict, dtype: str = "fp32") -> dict:
    if page.input_value("#dtype") != dtype:
        page.select_option("#dtype", dtype)
        page.wait_for_selector(f"body[data-state=ready] >> text=Ready ({dtype}", timeout=120_000)
    page.fill("#beginning", fields.get("beginning", ""))
    page.fill("#words", fields.get("words", ""))
    page.fill("#summary", fields.get("summary", ""))
    page.fill("#random-sentence", fields.get("random_sentence", ""))
    for box in page.query_selector_all("#features input"):
        box.set_checked(box.get_attribute("value") in fields.get("features", []))
    page.fill("#temperature", "0")
    page.fill("#max-new-tokens", str(MAX_NEW))
    page.click("#generate")
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=120_000)
    assert page.get_attribute("body", "data-state") == "done", page.inner_text("#status")
    return page.evaluate("window.tinystories.state.last")


def test_page_prompt_equals_build_prompt(page):
    cases = [
        {"words": ["dog", "ball", "happy"], "features": ["Dialogue"]},
        {"summary": "A girl  finds a\nkitten.", "features": ["Twist", "BadEnding"]},
        {"words": ["tree"], "random_sentence": "The wind was strong.", "summary": "Tom climbs."},
    ]
    for fields in cases:
        assert page.evaluate("f => window.tinystories.buildPrompt(f)", fields) == build_prompt(**fields)
    ui = {
        "words": "dog, ball  happy",
        "features": ["Dialogue"],
        "summary": "",
        "random_sentence": "",
        "beginning": "Tom",
    }
    expected = build_prompt(words=["dog", "ball", "happy"], features=["Dialogue"]) + "Tom"
    assert page.evaluate("f => window.tinystories.fullPrompt(f)", ui) == expected
    assert (
        page.evaluate("f => window.tinystories.fullPrompt(f)", {**ui, "words": "", "features": []}) == "Tom"
    )


def test_streamed_greedy_story_is_pytorch_s(page, model_dir, stories):
    tok = AutoTokenizer.from_pretrained(model_dir)
    beginning = " ".join(stories[3].split()[:190])
    fields = {
        "words": "dog, ball",
        "features": ["Dialogue"],
        "summary": "A dog plays.",
        "beginning": beginning,
    }
    prompt = build_prompt(words=["dog", "ball"], features=["Dialogue"], summary="A dog plays.") + beginning
    n_prompt = len(tok(prompt, add_special_tokens=False).input_ids)
    assert n_prompt < WINDOW < n_prompt + MAX_NEW < 512  # the story runs past the local attention window

    record = _write(page, fields)
    expected = _greedy(model_dir, prompt)
    assert record["prompt"] == prompt
    assert len(expected) == MAX_NEW and len(set(expected)) > 10  # a story, not one token repeated
    assert record["tokens"] == expected
    assert record["text"] == tok.decode(expected, skip_special_tokens=True)
    assert page.text_content("#story") == (beginning + record["text"]).strip()
    assert record["chunks"] > 5  # streamed piece by piece, not written at the end
    assert page.blocked == []  # no CDN, no Hub: every file came from 127.0.0.1


def test_int8_weights_run_in_the_page(page, served, model_dir):
    _, out = served
    assert (out / "models" / "tinystories" / "onnx" / "model_quantized.onnx").is_file()
    beginning = "Once upon a time, there was a little girl named Lily."
    record = _write(page, {"beginning": beginning}, dtype="q8")
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(beginning, add_special_tokens=False).input_ids
    native = OnnxCausalLM(out / "models" / "tinystories" / "onnx" / "model_quantized.onnx")
    reference = native.generate_greedy(ids, MAX_NEW, eos_token_id=tok.eos_token_id).tokens
    assert record["tokens"] and record["text"].strip()
    assert record["tokens"] == reference  # ONNX Runtime Web and native ONNX Runtime, the same int8 graph
    assert page.blocked == []


def test_benchmark_hook_times_fp32_and_q8_without_touching_the_page(page, served, model_dir):
    _, out = served
    export = out / "models" / "tinystories"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok(bench.PROMPT, add_special_tokens=False).input_ids
    before = page.evaluate("() => [window.tinystories.state.dtype, document.body.dataset.state]")
    runs = bench.bench_export(page, export, model, ids, MAX_NEW, repeats=2)

    inputs = torch.tensor([ids])
    config = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    assert runs["fp32"]["tokens"] == expected[0, len(ids) :].tolist()  # PyTorch's greedy tokens, all 48
    native = OnnxCausalLM(export / "onnx" / "model_quantized.onnx").generate_greedy(ids, MAX_NEW).tokens
    assert runs["q8"]["tokens"] == native and runs["q8"]["onnxruntime"]["same"]
    for dtype, run in runs.items():
        print(f"{dtype}: {run['tokens_per_second']} tokens/s, first token {run['first_token_ms']} ms")
        assert run["new_tokens"] == len(run["tokens"]) == MAX_NEW  # the end-of-text token stops nothing
        assert len(run["runs_ms"]) == 2 and run["same_tokens_every_run"]
        assert 2 <= len(run["warmup_ms"]) <= 8  # warm-up calls until two in a row agree within 10%
        assert math.isfinite(run["tokens_per_second"]) and run["tokens_per_second"] > 0
        assert 0 < run["first_token_ms"] < 1000 * max(run["runs_ms"])
        assert run["cross_origin_isolated"] and run["threads"] >= 1
    assert page.evaluate("() => [window.tinystories.state.dtype, document.body.dataset.state]") == before
    assert page.blocked == []


def test_bench_command_writes_a_results_file(tmp_path, gpt_neo_tokenizer_dir):
    output = tmp_path / "browser_inference.json"
    cmd = [sys.executable, "-m", "demo.web.bench", "--sizes", "32x1", "--new_tokens", "6", "--repeats", "1"]
    cmd += ["--tokenizer", str(gpt_neo_tokenizer_dir), "--output", str(output), "--chromium", CHROMIUM]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=600)
    result = json.loads(output.read_text())
    assert result["study"] == "browser_inference" and result["command"].startswith(
        "python -m demo.web.bench "
    )
    assert result["browser"].startswith("Chromium ") and result["transformers_js"]
    runs = result["models"]["32x1 (random weights)"]["runs"]
    assert list(runs) == ["fp32", "q8"]
    assert runs["fp32"]["pytorch"] == {"same": True, "tokens_before_first_difference": 6}
    assert all(len(run["tokens"]) == 6 and run["tokens_per_second"] > 0 for run in runs.values())
    table = render_table(result["tables"][0]).splitlines()
    assert len(table) == 2 + 2 and table[2].startswith("| 32x1 | gpt_neo 32×1, vocab 50,257 | fp32 |")
