"""Generation speed in the browser: `python -m demo.web.bench` (from the repository root) writes
benchmarks/results/browser_inference.json.

    python -m demo.web.bench                                   # the 1M and 8M shapes, random weights
    python -m demo.web.bench --sizes 1M --models outputs/stories260K --threads 2

Per model, the page of `make web-demo` (demo/web/build.py's served folder, on 127.0.0.1, every other request
refused) runs in headless Chromium through Playwright; `window.tinystories.benchmark` times batch-1 greedy
generation in transformers.js on ONNX Runtime Web (WebAssembly) for the fp32 and the q8 (int8) export of the
same model: the CPU suite's prompt (`benchmarks.inference_bench.PROMPT`), the same number of new tokens (the
end-of-text token does not stop it), full warm-up calls until two in a row agree within 10% (at most 8: the
browser's optimizing WebAssembly compiler keeps speeding up the first calls), then the median of `--repeats` calls.
Tokens/s counts the new tokens over the whole call (prompt included); the first-token time is the prompt's forward
pass + the first token. The same graph runs in native ONNX Runtime on the CPU (the page's thread count, the
project's loop), timed the same way in the same run: `× native` is a ratio a busy machine disturbs less than the
tokens/s. fp32 must give PyTorch's greedy tokens (else this fails); q8 is compared with PyTorch and with native
ONNX Runtime's int8 tokens. The models: `--sizes` (released size names or `<hidden>x<layers>`, random
weights as in the CPU suite: speed does not depend on training) and `--models` (model folders, e.g. llama2.c's
stories260K after `tinystories pull`). Needs Chromium (`apt-get install chromium`) and `npm ci` in demo/web.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import torch
from playwright.sync_api import sync_playwright
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GPTNeoForCausalLM

from benchmarks.inference_bench import PROMPT, parse_shapes
from demo.web.build import HERE, WEIGHTS, Handler, build, ensure_node_modules
from tinystories.core import ConfigError
from tinystories.models.export.layout import export_model
from tinystories.models.export.session import OnnxCausalLM
from tinystories.models.loading import context_limit
from tinystories.models.sizes import build_config

ROOT = HERE.parents[1]
COMMAND = "python -m demo.web.bench"
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "browser_inference.json"
DEFAULT_TOKENIZER = ROOT.parent / "shared" / "data" / "tokenizer-gpt-neo"
PAGE = "docs/results/inference-speed.md"
DTYPES = ("fp32", "q8")


def find_chromium(given: str | None = None) -> str:
    found = (
        given or os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not found:
        raise ConfigError(
            "no chromium: install it (`sudo apt-get install chromium`) or pass --chromium <path>"
        )
    return found


def random_model(kwargs: dict, tokenizer, seed: int) -> GPTNeoForCausalLM:
    """A `build_config` shape with random weights, as the CPU inference suite builds it."""
    torch.manual_seed(seed)
    config = build_config(**kwargs, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    return GPTNeoForCausalLM(config).eval()


def prompt_ids(tokenizer, model, new_tokens: int) -> tuple[list[int], int]:
    """The benchmark prompt's tokens and how many to generate within the model's context."""
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    context = context_limit(model)
    if len(ids) >= context:
        raise ConfigError(
            f"the benchmark prompt ({len(ids)} tokens) does not fit the {context}-token context"
        )
    return ids, min(new_tokens, context - len(ids))


def torch_greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    """PyTorch's greedy tokens (fp32, eager), the end-of-text token not stopping it."""
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=config)
    return out[0, len(ids) :].tolist()


def agreement(tokens: list[int], reference: list[int]) -> dict:
    """Whether `tokens` are `reference`, and how many come before the first difference."""
    pairs = zip(tokens, reference, strict=False)
    first = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(tokens), len(reference)))
    return {"same": tokens == reference, "tokens_before_first_difference": first}


@contextlib.contextmanager
def serving(folder: Path):
    """`folder` on 127.0.0.1 (a free port) with build.py's headers, in a thread; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def browser_page(chromium: str, url: str, timeout_ms: int = 300_000):
    """Headless Chromium on the page at `url`, ready (its model loaded); any request elsewhere is refused."""
    host = urlparse(url).netloc
    refused: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context()

            def route(r):
                if r.request.url.startswith(("blob:", "data:")) or urlparse(r.request.url).netloc == host:
                    return r.continue_()
                refused.append(r.request.url)
                return r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=timeout_ms)
            if page.get_attribute("body", "data-state") != "ready":
                raise RuntimeError(f"the page did not load its model: {page.inner_text('#status')} {errors}")
            page.refused = refused
            page.browser_version = browser.version
            yield page
        finally:
            browser.close()


def measure_page(page, ids: list[int], new_tokens: int, repeats: int, dtype: str) -> dict:
    """`window.tinystories.benchmark` for `dtype`; medians over the timed calls, tokens/s over the whole call."""
    args = {"dtype": dtype, "ids": ids, "newTokens": new_tokens, "repeats": repeats}
    raw = page.evaluate("a => window.tinystories.benchmark(a)", args)
    seconds = statistics.median(raw["ms"]) / 1000
    tokens = raw["tokens"]
    if len(tokens) != new_tokens:
        raise RuntimeError(f"transformers.js made {len(tokens)} tokens ({dtype}), not the {new_tokens} asked")
    return {
        "tokens": tokens,
        "new_tokens": len(tokens),
        "seconds": round(seconds, 4),
        "tokens_per_second": round(len(tokens) / seconds, 1),
        "first_token_ms": round(statistics.median(raw["first_token_ms"]), 2),
        "runs_ms": [round(ms, 2) for ms in raw["ms"]],
        "warmup_ms": [round(ms, 2) for ms in raw["warmup_ms"]],
        "same_tokens_every_run": raw["same_tokens_every_run"],
        "threads": raw["threads"],
        "cross_origin_isolated": raw["cross_origin_isolated"],
        "user_agent": raw["user_agent"],
    }


def native_onnxruntime(path: Path, ids: list[int], new_tokens: int, repeats: int, threads: int) -> dict:
    """The same graph in native ONNX Runtime (CPU, the page's thread count), timed in the same run the same way."""
    lm = OnnxCausalLM(path, threads=threads)
    lm.generate_greedy(ids, new_tokens)  # warm-up
    runs = [lm.generate_greedy(ids, new_tokens) for _ in range(repeats)]
    seconds = statistics.median(r.seconds for r in runs)
    return {
        "tokens": runs[0].tokens,
        "threads": threads,
        "seconds": round(seconds, 4),
        "tokens_per_second": round(len(runs[0].tokens) / seconds, 1),
        "first_token_ms": round(1000 * statistics.median(r.first_token_seconds for r in runs), 2),
    }


def bench_export(page, export: Path, model, ids: list[int], new_tokens: int, repeats: int) -> dict:
    """Both dtypes in the page, checked against PyTorch (fp32 must match) and timed against native ONNX Runtime."""
    reference = torch_greedy(model, ids, new_tokens)
    runs = {}
    for dtype in DTYPES:
        run = measure_page(page, ids, new_tokens, repeats, dtype)
        run["pytorch"] = agreement(run["tokens"], reference)
        native = native_onnxruntime(export / WEIGHTS[dtype], ids, new_tokens, repeats, run["threads"])
        run["onnxruntime"] = agreement(run["tokens"], native.pop("tokens"))
        run["native"] = native
        run["x_native"] = round(run["tokens_per_second"] / native["tokens_per_second"], 3)
        run["size_mb"] = round((export / WEIGHTS[dtype]).stat().st_size / 1e6, 2)
        runs[dtype] = run
    if not runs["fp32"]["pytorch"]["same"]:
        raise RuntimeError(
            f"fp32 in the browser left PyTorch's greedy path after "
            f"{runs['fp32']['pytorch']['tokens_before_first_difference']} tokens: "
            f"{runs['fp32']['tokens']} vs {reference}"
        )
    return runs


def describe(model) -> dict:
    c = model.config
    return {
        "model_type": c.model_type,
        "hidden_size": c.hidden_size,
        "num_layers": c.num_hidden_layers,
        "num_heads": c.num_attention_heads,
        "vocab_size": c.vocab_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def bench_model(label: str, model, tokenizer, args, chromium: str, workdir: Path) -> dict:
    """Export `model` (fp32 + int8), build the page's folder for it, and time both dtypes in Chromium."""
    export = workdir / "onnx-export"
    export_model(model, tokenizer, export, quantize="int8", verify=False)
    served = build(str(export), workdir / "dist")
    ids, new = prompt_ids(tokenizer, model, args.new_tokens)
    with serving(served) as base:
        url = base + (f"?threads={args.threads}" if args.threads else "")
        print(f"[bench] {label}: {len(ids)} prompt tokens + {new} new, fp32 and q8 at {url}", flush=True)
        with browser_page(chromium, url) as page:
            runs = bench_export(page, export, model, ids, new, args.repeats)
            if page.refused:
                raise RuntimeError(f"the page asked for files elsewhere: {page.refused}")
            browser_version = page.browser_version
    return {
        "label": label,
        **describe(model),
        "prompt_tokens": len(ids),
        "new_tokens": new,
        "browser": browser_version,
        "runs": runs,
    }


def models(args):
    """(label, model, tokenizer): the random-weight shapes, then the model folders of `--models`."""
    for label, kwargs in parse_shapes(args.sizes):
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        yield f"{label} (random weights)", random_model(kwargs, tokenizer, args.seed), tokenizer
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"--models {name}: not a model folder (no config.json); `tinystories pull` writes one"
            )
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        yield folder.name, model.eval(), AutoTokenizer.from_pretrained(folder)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    return f"{os.cpu_count()} logical CPUs ({cpu}), {platform.system()} {platform.release()}"


def _cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.is_file() else ""


def _package_version(name: str) -> str:
    return json.loads((HERE / "node_modules" / name / "package.json").read_text())["version"]


def _same(check: dict) -> str:
    return "yes" if check["same"] else f"no (first {check['tokens_before_first_difference']} equal)"


def study_table(result: dict) -> dict:
    """The results page's table (scripts/results_table.py renders it): one row per model and weights."""
    rows = []
    for label, res in result["models"].items():
        for dtype, run in res["runs"].items():
            rows.append(
                {
                    "model": label.removesuffix(" (random weights)"),
                    "shape": f"{res['model_type']} {res['hidden_size']}×{res['num_layers']}, vocab {res['vocab_size']:,}",
                    "weights": dtype,
                    "tokens_per_s": run["tokens_per_second"],
                    "first_token_ms": run["first_token_ms"],
                    "native_tokens_per_s": run["native"]["tokens_per_second"],
                    "x_native": run["x_native"],
                    "file_mb": run["size_mb"],
                    "same_pytorch": _same(run["pytorch"]),
                    "same_onnxruntime": _same(run["onnxruntime"]),
                }
            )
    columns = [
        {"key": "model", "header": "model"},
        {"key": "shape", "header": "shape (hidden × layers)"},
        {"key": "weights", "header": "weights"},
        {"key": "tokens_per_s", "header": "tokens/s", "numeric": True},
        {"key": "first_token_ms", "header": "first token (ms)", "numeric": True, "format": ".1f"},
        {"key": "native_tokens_per_s", "header": "native ONNX Runtime tokens/s", "numeric": True},
        {"key": "x_native", "header": "× native", "numeric": True, "format": ".2f"},
        {"key": "file_mb", "header": "file (MB)", "numeric": True, "format": ".1f"},
        {"key": "same_pytorch", "header": "same tokens as PyTorch"},
        {"key": "same_onnxruntime", "header": "same tokens as ONNX Runtime (CPU)"},
    ]
    load = result["load_average"]
    threads = f"{result['threads']} thread" + ("s" if result["threads"] != 1 else "")
    title = (
        f"{result['browser']}, transformers.js {result['transformers_js']} (ONNX Runtime Web "
        f"{result['onnxruntime_web']}, WebAssembly, {threads}); {result['new_tokens']} new "
        f"tokens, batch 1, greedy, median of {result['repeats']} (1-minute load {load[0]:.1f})"
    )
    return {
        "title": title,
        "date": result["date"],
        "command": result["command"],
        "columns": columns,
        "rows": rows,
    }


def headline(table: dict) -> dict:
    first = table["rows"][0]["model"]
    index = {r["weights"]: i for i, r in enumerate(table["rows"]) if r["model"] == first}
    return {
        "text": f"{first} in headless Chromium (transformers.js, WebAssembly): q8 {{0}}, fp32 {{1}} tokens/s, "
        "{2}× native ONNX Runtime (fp32)",
        "values": [
            {"row": index["q8"], "key": "tokens_per_s"},
            {"row": index["fp32"], "key": "tokens_per_s"},
            {"row": index["fp32"], "key": "x_native"},
        ],
    }


def run_benchmark(args) -> dict:
    chromium = find_chromium(args.chromium)
    ensure_node_modules()  # transformers.js and ONNX Runtime Web, pinned by package-lock.json: `npm ci` once
    result: dict = {
        "study": "browser_inference",
        "title": "Inference speed in the browser",
        "date": datetime.date.today().isoformat(),
        "page": PAGE,
        "machine": machine(),
        "command": " ".join([COMMAND, *args.argv]),
        "transformers_js": _package_version("@huggingface/transformers"),
        "onnxruntime_web": _package_version("onnxruntime-web"),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "models": {},
    }
    for label, model, tokenizer in models(args):
        with tempfile.TemporaryDirectory(prefix="tinystories-browser-") as tmp:
            result["models"][label] = bench_model(label, model, tokenizer, args, chromium, Path(tmp))
    if not result["models"]:
        raise ConfigError("nothing to measure: give --sizes or --models")
    first = next(iter(result["models"].values()))
    result["browser"] = f"Chromium {first['browser']}"
    result["threads"] = first["runs"]["fp32"]["threads"]
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] += f"; {result['browser']}, headless"
    result["tables"] = [study_table(result)]
    result["headline"] = headline(result["tables"][0])
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="1M,8M", help="released sizes or <hidden>x<layers>, random weights"
    )
    parser.add_argument(
        "--models", default="", help="comma-separated model folders (e.g. a pulled stories260K)"
    )
    parser.add_argument(
        "--tokenizer", default=str(DEFAULT_TOKENIZER), help="the GPT-Neo tokenizer of --sizes"
    )
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime Web threads; 0: its default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chromium", default=None, help="the browser (default: chromium on PATH)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.new_tokens < 1 or args.repeats < 1 or args.threads < 0:
        raise ConfigError("--new_tokens and --repeats must be at least 1, --threads at least 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    try:
        args = parse_args(argv)
        result = run_benchmark(args)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["tables"][0]["rows"]:
        print(
            f"[bench] {row['model']:<12} {row['weights']:<5} {row['tokens_per_s']:>8} tok/s  "
            f"first {row['first_token_ms']:>7} ms  PyTorch: {row['same_pytorch']}"
        )
    print(f"[bench] wrote {args.output}", flush=True)
    return result


if __name__ == "__main__":
    main()
