"""`make gpu-check`: one command that measures a GPU, in under 8 minutes on one H100/H200.

Sections, each under its own time budget; one that fails or runs out of time records why and the next runs:

* **pretrain**: the released 33M config, tokens/s per GPU and MFU of the default path (SDPA, fused loss at
  the CUDA default chunk size, packing, bf16) vs stock (eager, plain logits, padded rows, fp32), vs plain
  logits, other chunk sizes and flex attention: `benchmarks.train_bench`'s `run_variant`, one after another;
* **precision**: the default path in bf16 and in fp32, 30 steps on the same blocks and seed (both curves);
* **eval_memory**: CUDA peak memory of `Trainer.evaluate` over 32 × 512 tokens, fused loss vs plain logits;
* **lora**: `recipes/lora/33M.yaml` through the fine-tuning path (as `make lora`: `load_base`, `build_trainer`
  + PEFT) on a fresh 33M base, then QLoRA (needs bitsandbytes): steps/s and peak memory;
* **multi_gpu** (>= 2 GPUs): tokens/s per GPU, 1 process vs N under `accelerate launch` (DDP, ZeRO-2).

Writes `benchmarks/gpu/<gpu-name>.json` and `.md` (tables for a results page: CONTRIBUTING.md).
Without a visible CUDA GPU it stops at once (exit code 2), before importing torch or installing anything:
this module is the light part (arguments, preflight, the section runner, the report); the sections, and with
them torch and the rest of the measuring stack, are in `benchmarks/gpu_sections.py`, imported in one place,
`_measuring_sections`, once a GPU is known to be there.
`--wheels DIR` first installs the project and its pinned packages offline from a folder of wheels (torch
is never reinstalled). `--cpu_smoke` runs every section on the CPU with the 1M model and a few steps: it
checks the script and measures nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SECTIONS = {"pretrain": 170, "precision": 50, "eval_memory": 25, "lora": 80, "multi_gpu": 110}  # seconds
PLAN = {"size": "33M", "block_size": 512, "precision_steps": 30, "precision_batch": 8, "eval_blocks": 32}
PLAN |= {"eval_batch": 16, "lora_steps": 13, "lora_warmup": 3, "lora_overrides": [], "seed": 42}
PLAN |= {"device": "cuda", "launch": {"DDP": "multi_gpu", "ZeRO-2": "deepspeed_zero2"}}
SMOKE = {"size": "1M", "block_size": 128, "steps": 3, "warmup_steps": 1, "batch_size": 4, "chunk_sizes": [64]}
SMOKE |= {"precision_steps": 3, "eval_blocks": 4, "lora_steps": 5, "device": "cpu", "gpus": 2}
SMOKE |= {"launch": {"DDP": "cpu_ddp", "ZeRO-2": "cpu_deepspeed_zero2"}}
SMOKE["lora_overrides"] = ["--per_device_train_batch_size", "2", "--global_batch_size", "2"]
NO_GPU = (
    "gpu-check: no CUDA GPU is visible ({why}). This script measures a GPU: run `make gpu-check` on a "
    "machine with an NVIDIA GPU and a CUDA build of torch; for CPU numbers run `make bench`."
)
HEADERS = dict(tokens_per_second="tokens/s per GPU", vs_stock="× stock", mfu="MFU", peak_gpu_mb="peak MB")
HEADERS |= dict(last_loss="final loss", increase_mb="over the weights MB", steps_per_second="steps/s")
HEADERS |= dict(logits_materialised="logits built", trainable_parameters="trainable params")
COLUMNS = {  # section: (first column, its columns)
    "pretrain": ("pretraining variant", "attention loss chunk precision tokens_per_second vs_stock mfu"),
    "eval_memory": ("eval, {tokens:,} tokens, batch {batch_size}", "peak_gpu_mb increase_mb eval_loss"),
    "lora": ("{recipe} ({base})", "steps_per_second tokens_per_second peak_gpu_mb trainable_parameters"),
    "multi_gpu": ("multi-GPU, default path", "processes tokens_per_second scaling mfu"),
}
MORE_COLUMNS = {
    "pretrain": "peak_gpu_mb last_loss",
    "eval_memory": "logits_materialised",
    "lora": "last_loss",
}


class SectionTimeout(Exception):
    """A section ran past its time budget."""


# --------------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--sections", default=",".join(SECTIONS), help=f"a comma-separated subset of {', '.join(SECTIONS)}")
    add("--data", default=str(SHARED / "tinystories" / "TinyStories-train.sample.txt"), help="stories")
    add("--tokenizer", default=str(SHARED / "tokenizer-gpt-neo"), help="a GPT-Neo tokenizer folder")
    add("--output_dir", default=None, help="default benchmarks/gpu (--cpu_smoke: outputs/gpu_check_smoke)")
    add("--steps", type=int, default=20, help="optimizer steps of a pretraining variant")
    add("--warmup_steps", type=int, default=5, help="steps left out of the timing")
    add("--batch_size", type=int, default=80, help="stories a stock step (packed steps: the same tokens)")
    add("--chunk_sizes", default="1024,4096,8192", help="fused-loss chunk sizes to compare")
    add("--max_minutes", type=float, default=7.5, help="the whole run; sections past it are skipped")
    add("--section_seconds", default="", help=f"budgets, e.g. pretrain=200,lora=60 (default {SECTIONS})")
    add("--wheels", default=None, help="first install the pinned packages from this folder of wheels")
    add("--cpu_smoke", action="store_true", help="every section on the CPU, 1M model: checks, no numbers")
    add("--worker", default=None, help=argparse.SUPPRESS)  # one process under `accelerate launch`
    add("--result", default=None, help=argparse.SUPPRESS)
    return p


def _missing(path: str) -> bool:
    local = path.startswith(("/", ".", "~")) or Path(path).suffix in (".txt", ".jsonl", ".json", ".parquet")
    return local and not Path(path).expanduser().exists()


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Parsed and checked arguments; a bad one exits with code 2 and a message that names the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:
        return args
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    try:
        args.chunk_sizes = [int(c) for c in args.chunk_sizes.split(",") if c.strip()]
        pairs = [kv.split("=") for kv in args.section_seconds.split(",") if kv.strip()]
        budgets = {k.strip(): float(v) for k, v in pairs}
    except ValueError:
        parser.error("--chunk_sizes takes integers (1024,4096), --section_seconds name=seconds pairs")
    args.budgets, names = {**SECTIONS, **budgets}, ", ".join(SECTIONS)
    positive = [*args.chunk_sizes, *budgets.values(), args.max_minutes, args.warmup_steps, args.batch_size]
    checks = [
        (not args.sections or set(args.sections) - set(SECTIONS), f"--sections takes a subset of {names}"),
        (set(budgets) - set(SECTIONS), f"--section_seconds: the sections are {names}"),
        (
            min(positive) <= 0,
            "--chunk_sizes, --section_seconds, --max_minutes, --warmup_steps, --batch_size must be > 0",
        ),
        (
            args.steps <= args.warmup_steps,
            f"--steps ({args.steps}) must exceed --warmup_steps ({args.warmup_steps})",
        ),
        (_missing(args.data), f"--data {args.data!r} not found: pass --data (make gpu-check DATA=...)"),
        (_missing(args.tokenizer), f"--tokenizer {args.tokenizer!r} not found: pass --tokenizer"),
        (args.wheels and not Path(args.wheels).is_dir(), f"--wheels {args.wheels!r}: not a folder of wheels"),
    ]
    for bad, message in checks:
        if bad:
            parser.error(message)
    return args


def make_plan(args: argparse.Namespace, gpus: int) -> SimpleNamespace:
    """What to run: the measuring settings and the arguments, or the CPU smoke settings."""
    plan = SimpleNamespace(**PLAN, **vars(args), gpus=gpus, visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    if args.cpu_smoke:
        vars(plan).update(SMOKE)
    smoke = REPO / "outputs" / "gpu_check_smoke"
    plan.output_dir = args.output_dir or str(smoke if args.cpu_smoke else REPO / "benchmarks" / "gpu")
    return plan


# --------------------------------------------------------------------------------------------- preflight
def visible_gpu_count() -> tuple[int, str]:
    """(GPUs visible, how we know) without importing torch: CUDA_VISIBLE_DEVICES, nvidia-smi, /dev/nvidia*."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and mask.strip() in ("", "-1"):
        return 0, f"CUDA_VISIBLE_DEVICES={mask!r}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            listing = ""
        count = sum(line.startswith("GPU ") for line in listing.splitlines())
    else:  # a container without nvidia-smi: its device files
        count = len(glob.glob("/dev/nvidia[0-9]*"))
    count = min(count, len(mask.split(","))) if mask else count
    if count == 0:
        return 0, "`nvidia-smi -L` lists none" if smi else "no nvidia-smi, no /dev/nvidia*"
    return count, "nvidia-smi" if smi else "/dev/nvidia*"


def pinned_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The project's pinned dependencies except torch (the GPU machine's own CUDA build stays)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if re.split(r"[=<>!~\[; ]", d, maxsplit=1)[0].lower() != "torch"]


def pip_commands(python: str, wheels: str, constraints: str) -> list[list[str]]:
    """Offline installs from `wheels`: the project (no deps), then its pinned deps with torch held."""
    base = [python, "-m", "pip", "install", "--no-index", "--find-links", wheels]
    return [[*base, "--no-deps", "-e", str(REPO)], [*base, "-c", constraints, *pinned_requirements()]]


def install_wheels(wheels: str) -> str | None:
    """Install from `wheels`, holding the installed torch; None, or what went wrong."""
    try:
        held = f"torch=={importlib.metadata.version('torch')}\n"  # pip may not replace it
    except importlib.metadata.PackageNotFoundError:
        return "torch is not installed: install a CUDA build of torch first"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "torch.txt").write_text(held)
        for cmd in pip_commands(sys.executable, wheels, str(Path(tmp) / "torch.txt")):
            print("gpu-check: " + " ".join(cmd), flush=True)
            if subprocess.run(cmd, env=dict(os.environ, DS_BUILD_OPS="0")).returncode:
                return (
                    f"pip failed: {wheels} needs the pinned wheels, their dependencies, setuptools and wheel"
                )
    return None


# --------------------------------------------------------------------------------------------- running
def error_record(exc: BaseException) -> dict:
    """What a failed section or run records: the error and the end of its traceback."""
    return {"error": f"{type(exc).__name__}: {exc}"[:600], "traceback": traceback.format_exc()[-2000:]}


@contextlib.contextmanager
def _time_limit(seconds: float, name: str):
    """SIGALRM after `seconds` raises SectionTimeout here; an outer alarm (pytest-timeout) is re-armed."""

    def expire(signum, frame):
        raise SectionTimeout(f"the {name} section ran past its {seconds:.1f} s budget")

    previous, started = signal.signal(signal.SIGALRM, expire), time.monotonic()
    outer, interval = signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.05))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.01), interval)


def run_sections(sections: dict, budgets: dict, deadline: float) -> dict:
    """Each section fn(its deadline) → dict under its time budget; errors are recorded, the next one runs."""
    out = {}
    for name, fn in sections.items():
        started = time.monotonic()
        seconds = min(budgets[name], deadline - started)
        if seconds <= 0:
            out[name] = {"skipped": "skipped: --max_minutes spent before this section", "seconds": 0}
            continue
        print(f"[gpu-check] {name} (budget {seconds:.1f} s) ...", flush=True)
        try:
            with _time_limit(seconds, name):
                out[name] = fn(started + seconds)
        except Exception as exc:
            out[name] = error_record(exc)
        out[name]["seconds"] = round(time.monotonic() - started, 1)
    return out


# --------------------------------------------------------------------------------------------- report
def output_stem(machine: dict) -> str:
    """`nvidia-h100-80gb-hbm3` (one GPU) or `nvidia-h100-80gb-hbm3-x8`."""
    stem = re.sub(r"[^a-z0-9]+", "-", machine["gpu"].lower()).strip("-") or "gpu"
    return stem + (f"-x{machine['gpu_count']}" if machine.get("gpu_count", 0) > 1 else "")


def _fmt(key: str, value) -> str:
    if value is None or isinstance(value, str | bool):
        return {None: "–", True: "yes", False: "no"}[value] if not isinstance(value, str) else value
    if key == "mfu":
        return f"{value:.1%}"
    if key.startswith("vs_") or key == "scaling":
        return f"{value:.2f}×"
    if "loss" in key or key == "steps_per_second":
        return f"{value:.3f}" if "loss" in key else f"{value:.2f}"
    return f"{value:,.0f}"


def _table(label: str, keys: list[str], rows: list[dict]) -> list[str]:
    """A markdown table; a row that was skipped or failed says so in its second column."""
    heads = [HEADERS.get(k, k.replace("_", " ")) for k in keys]
    lines = [f"| {label} | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(keys)]
    for row in rows:
        note = row.get("skipped") or (f"error: {row['error']}" if row.get("error") else None)
        cells = [_fmt(k, row.get(k)) for k in keys]
        if note:
            cells = [note.replace("|", "\\|").replace("\n", " ")[:200]] + [""] * (len(keys) - 1)
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return lines


def _section_lines(name: str, s: dict) -> list[str]:
    if "error" in s or "skipped" in s:
        return [f"**{name}**: " + (s.get("skipped") or f"error: {s['error']}")]
    if name == "precision":
        losses = f"bf16 {s['final_bf16']:.4f}, fp32 {s['final_fp32']:.4f}, diff. {s['final_difference']:+.4f}"
        head = f"**bf16 vs fp32**, default path, {s['steps']} steps of {s['tokens_per_step']:,} tokens"
        return [f"{head}, same data, seed: final loss {losses} (max |Δ| {s['max_abs_difference']:.4f})"]
    label, keys = COLUMNS[name]
    return _table(label.format(**s), f"{keys} {MORE_COLUMNS.get(name, '')}".split(), s["rows"])


def format_markdown(report: dict) -> str:
    m = report["machine"]
    versions = ", ".join(f"{p} {v or 'not installed'}" for p, v in m["packages"].items())
    versions_gpu = f"driver {m['driver'] or '?'}, CUDA {m['cuda'] or '?'}, torch {m['torch']}"
    head = f"### {m['gpu']} × {m['gpu_count']} ({versions_gpu})"
    lines = [head, "", f"`make gpu-check`, {report['started']}, {report['seconds']:.0f} s in all, model "
             f"{report['size']}; Python {m['python']}, {versions}."]  # fmt: skip
    if report.get("smoke"):
        lines[-1] += " **CPU smoke run: checks the script, not a measurement.**"
    for name, section in report["sections"].items():
        lines += ["", *_section_lines(name, section)]
    return "\n".join(lines) + "\n"


def write_report(report: dict, output_dir: str) -> tuple[Path, Path]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = output_stem(report["machine"])
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(format_markdown(report))
    return out / f"{stem}.json", out / f"{stem}.md"


def _measuring_sections():
    """`benchmarks.gpu_sections`: the sections and, with them, torch, transformers and tinystories."""
    # The one import inside a function, on purpose: the measuring stack is heavy and may not be installed yet,
    # so it is imported only after the no-CUDA exit and the --wheels install and restart.
    from benchmarks import gpu_sections

    return gpu_sections


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_arguments(argv)
    if args.worker:
        return _measuring_sections().run_worker(args.worker, args.result)
    gpus, why = (0, "") if args.cpu_smoke else visible_gpu_count()
    if gpus == 0 and not args.cpu_smoke:
        print(NO_GPU.format(why=why), file=sys.stderr)
        return 2
    if args.wheels and not os.environ.get("GPU_CHECK_INSTALLED"):
        failed = install_wheels(args.wheels)
        if failed:
            print(f"gpu-check: {failed}", file=sys.stderr)
            return 3
        os.environ["GPU_CHECK_INSTALLED"] = "1"  # restart: an editable install is seen at start-up only
        os.execv(sys.executable, [sys.executable, "-m", "benchmarks.gpu_check", *argv])
    plan = make_plan(args, gpus)
    if not args.cpu_smoke:  # one GPU in this process (a Trainer would wrap several in DataParallel)
        os.environ["CUDA_VISIBLE_DEVICES"] = (plan.visible or "0").split(",")[0]
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")  # a GPU box often has no network: fail at once, not after timeouts
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.pop("ACCELERATE_MIXED_PRECISION", None)  # a run's precision is its spec's (fp32 means fp32)
    try:
        sections = _measuring_sections()
    except ImportError as exc:
        print(
            f"gpu-check: {exc}: install the project (offline: make gpu-check WHEELS=<dir>)", file=sys.stderr
        )
        return 3
    why = None if args.cpu_smoke else sections.cuda_unavailable()
    if why:
        print(NO_GPU.format(why=why), file=sys.stderr)
        return 2
    try:
        report = sections.measure(plan)
    except sections.ConfigError as exc:
        print(f"gpu-check: {exc}", file=sys.stderr)
        return 2
    json_path, md_path = write_report(report, plan.output_dir)
    print(format_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
