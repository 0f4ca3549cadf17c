"""`python -m benchmarks.bench` / `make bench`: training throughput (stock vs project path) and dedup
throughput (`benchmarks.dedup_bench`); `--suite finetune` (`benchmarks.finetune_bench`) and `--suite inference`
(CPU generation: torch eager / fast attention / ONNX Runtime fp32 / int8, `benchmarks.inference_bench`).

Training suite, per model size, in one run on the same real TinyStories tokens (the variants and one
training run: `benchmarks.train_bench`):

* **stock**: what `transformers` gives you: `GPTNeoForCausalLM` with eager attention, one story per row
  padded to the longest story of the batch by `DataCollatorForLanguageModeling(mlm=False)`, the model's
  own cross-entropy over the full logits, `adamw_torch`;
* **default**: the project's pretraining path: the same model with `use_fast_attention` (SDPA, as the
  recipes run it; `--backend flex` measures flex_attention), stories packed into `block_size` blocks (`tinystories.data.pack_tokenized`,
  no padding), the fused linear cross-entropy (`tinystories.losses`), the one-kernel tanh GELU
  (`use_fast_gelu`, same function as `gelu_new`), fused AdamW, bf16 on a GPU.

Both run through the real `transformers.Trainer` with the same hyper-parameters; both see exactly the same
real (non-padding) tokens: the stories (+ EOS) are packed, and the stock path gets the same token stream
cut at the same point, one story per row (a story longer than `block_size` takes several rows). Throughput is real tokens per second over the steps after
`--warmup_steps`. Each path runs in its own fresh process, so its peak memory (RSS on CPU, CUDA peak
allocation on a GPU) is its own. `--levers` also measures each lever on its own (stock + one lever).

Results are printed as a table and written to `outputs/bench/bench.json` (plus a time-stamped copy).
Timings depend on the machine and on what else runs on it: compare ratios measured in the same run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from benchmarks.dedup_bench import run_benchmark
from benchmarks.finetune_bench import PATHS as FINETUNE_PATHS
from benchmarks.finetune_bench import bench_finetune, format_finetune_table, run_path
from benchmarks.inference_bench import bench_inference, check_inference_flags, format_inference_table
from benchmarks.train_bench import STOCK, default_variant, lever_variants, run_variant
from tinystories.core import ConfigError
from tinystories.core.arguments import (
    BatchArguments,
    DataSource,
    OutputArguments,
    SeedArguments,
    TokenizerSource,
    check_min,
)
from tinystories.core.config import parse_args
from tinystories.core.paths import looks_like_path
from tinystories.data.loading import load_stories
from tinystories.data.packing import pack_tokenized, tokenize_stories
from tinystories.models.sizes import SIZES, size_names

DEFAULT_DATA = "../shared/data/tinystories/TinyStories-train.sample.txt"
DEFAULT_TOKENIZER_DIR = "../shared/data/tokenizer-gpt-neo"
SUITES = ("train", "dedup", "finetune", "inference")


@dataclass
class BenchArguments(DataSource, TokenizerSource, BatchArguments, SeedArguments, OutputArguments):
    """--data: stories (.txt, .jsonl, ..., Hub id), read as pretraining reads them (its train part); --tokenizer: a
    GPT-Neo tokenizer dir or Hub id; --batch_size: stories per stock step (packed: the same real tokens)."""

    suite: str = field(
        default="train,dedup",
        metadata={
            "help": "comma-separated: train, dedup, finetune (SFT/LoRA vs TRL), inference (CPU generation)"
        },
    )
    sizes: str = field(
        default="auto", metadata={"help": "model sizes, e.g. 1M,8M; auto: 1M,8M (+33M on a GPU)"}
    )
    steps: int = field(default=4, metadata={"help": "optimizer steps of the stock path (it sets the tokens)"})
    block_size: int = field(default=512, metadata={"help": "packed sequence length (the paper's context)"})
    warmup_steps: int = field(default=1, metadata={"help": "steps left out of the timing"})
    levers: bool = field(default=False, metadata={"help": "also measure each lever on its own"})
    compile_lever: bool = field(
        default=False,
        metadata={"help": "with --levers: also default + torch.compile (minutes to compile on CPU)"},
    )
    backend: str = field(default="auto", metadata={"help": "attention of the default path: auto, sdpa, flex"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the default path"})
    chunk_size: int | None = field(
        default=None, metadata={"help": "rows per chunk of the fused cross-entropy (default: per device)"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    isolate: bool = field(
        default=True, metadata={"help": "run each path in a fresh process (clean peak memory)"}
    )
    dedup_stories: int = field(default=20000, metadata={"help": "stories for the dedup benchmark"})
    finetune_size: str = field(default="1M", metadata={"help": "finetune suite: model size"})
    finetune_paths: str = field(
        default=",".join(FINETUNE_PATHS),
        metadata={"help": f"finetune suite: paths among {', '.join(FINETUNE_PATHS)}"},
    )
    finetune_steps: int = field(default=6, metadata={"help": "finetune suite: optimizer steps per path"})
    finetune_batch_size: int = field(default=16, metadata={"help": "finetune suite: examples per step"})
    finetune_max_length: int = field(
        default=256, metadata={"help": "finetune suite: tokens per example/block"}
    )
    finetune_vocab_size: int | None = field(
        default=None, metadata={"help": "finetune suite: trim the tokenizer to K tokens (paper: 10000)"}
    )
    num_proc: int = field(default=2, metadata={"help": "processes for the dedup benchmark"})
    inference_sizes: str = field(
        default="auto",
        metadata={"help": "inference suite: random-weight shapes, 1M,8M (auto) or <hidden>x<layers>"},
    )
    inference_models: str = field(
        default="auto",
        metadata={
            "help": "inference suite: model dirs / Hub ids; auto: released sizes found in the HF cache"
        },
    )
    inference_architectures: str = field(
        default="gpt_neo",
        metadata={"help": "inference suite: architectures of the random-weight shapes, gpt_neo and/or llama"},
    )
    llama2c_model: str | None = field(
        default=None,
        metadata={"help": "inference suite: a llama2.c .bin (its imported twin runs the other rows)"},
    )
    llama2c_tokenizer: str | None = field(
        default=None, metadata={"help": "inference suite: the tokenizer.bin of --llama2c_model"}
    )
    llama2c_run: str | None = field(
        default=None,
        metadata={"help": "inference suite: a built llama2.c run.c binary: adds a run.c row per Llama"},
    )
    inference_new_tokens: int = field(default=128, metadata={"help": "inference suite: new tokens per run"})
    inference_repeats: int = field(default=3, metadata={"help": "inference suite: timed runs (median)"})

    def check(self):
        for flag in ("steps", "dedup_stories", "finetune_steps", "finetune_batch_size", "num_proc"):
            check_min(flag, getattr(self, flag), 1)
        for flag in ("chunk_size", "inference_new_tokens", "inference_repeats"):
            check_min(flag, getattr(self, flag), 1)
        check_min("warmup_steps", self.warmup_steps, 0)
        for flag in ("block_size", "finetune_max_length", "finetune_vocab_size"):
            check_min(flag, getattr(self, flag), 2)


# --------------------------------------------------------------------------------------------- data
def _check_inputs(args: BenchArguments) -> list[str]:
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    bad = [s for s in suites if s not in SUITES]
    if bad or not suites:
        raise ConfigError(
            f"unknown --suite {args.suite!r}: use a comma-separated subset of {', '.join(SUITES)}"
        )
    if "inference" in suites and looks_like_path(args.tokenizer) and not Path(args.tokenizer).exists():
        raise ConfigError(
            f"tokenizer {args.tokenizer!r} not found: pass --tokenizer with a GPT-Neo tokenizer dir"
        )
    if "inference" in suites:
        check_inference_flags(args)
    if "train" in suites or "finetune" in suites:
        if args.steps <= args.warmup_steps:
            raise ConfigError(f"--steps ({args.steps}) must exceed --warmup_steps ({args.warmup_steps})")
        if args.batch_size < 1 or args.block_size < 2:
            raise ConfigError("--batch_size must be >= 1 and --block_size >= 2")
        if args.backend not in ("auto", "sdpa", "flex", "eager"):
            raise ConfigError(f"unknown --backend {args.backend!r}: use auto, sdpa, flex or eager")
        if args.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown --device {args.device!r}: use auto, cpu or cuda")
        if looks_like_path(args.data) and not Path(args.data).exists():
            raise ConfigError(
                f"benchmark data {args.data!r} not found: run from the repository root next to ../shared/data, "
                "or pass --data with a TinyStories file (.txt with <|endoftext|>, .jsonl, .parquet, dir, Hub id)"
            )
        if looks_like_path(args.tokenizer) and not Path(args.tokenizer).exists():
            raise ConfigError(
                f"tokenizer {args.tokenizer!r} not found: pass --tokenizer with a GPT-Neo tokenizer dir "
                "(or the Hub id EleutherAI/gpt-neo-125M)"
            )
    if "finetune" in suites:
        unknown = [x.strip() for x in args.finetune_paths.split(",") if x.strip() not in FINETUNE_PATHS]
        if unknown:
            raise ConfigError(f"unknown --finetune_paths {unknown}: choose among {', '.join(FINETUNE_PATHS)}")
        if args.finetune_steps <= args.warmup_steps:
            raise ConfigError(
                f"--finetune_steps ({args.finetune_steps}) must exceed --warmup_steps ({args.warmup_steps})"
            )
    return suites


def prepare_tokens(args: BenchArguments, tokenizer) -> dict:
    """The token stream both paths train on: stock rows (one story each) and packed blocks, same tokens."""
    raw = load_stories(
        args.data, seed=args.seed, text_column=args.text_column, on_decode_error=args.on_decode_error
    )["train"]  # what pretraining trains on (same loader)
    want = args.steps * args.batch_size
    if len(raw) < want:
        raise ConfigError(
            f"{args.data!r} holds {len(raw)} stories, fewer than --steps × --batch_size = {want}"
        )
    stories = raw.shuffle(seed=args.seed).select(range(want))
    tokenized = tokenize_stories(stories, tokenizer)
    packed = pack_tokenized(tokenized, args.block_size)
    n_blocks = len(packed)
    if n_blocks == 0:
        raise ConfigError(f"{want} stories hold less than one {args.block_size}-token block: raise --steps")
    budget = n_blocks * args.block_size  # pack_tokenized drops the tail: cut the stock stream there too
    rows: list[list[int]] = []  # one story per row; a story longer than the context is split into rows
    for ids in tokenized["input_ids"]:
        for start in range(0, len(ids), args.block_size):
            if budget <= 0:
                break
            rows.append(ids[start : start + min(args.block_size, budget)])
            budget -= len(rows[-1])
    real_tokens = sum(map(len, rows))
    assert real_tokens == n_blocks * args.block_size
    per_step = real_tokens / math.ceil(len(rows) / args.batch_size)
    packed_batch = max(1, round(per_step / args.block_size))
    return {
        "stock_rows": rows,
        "packed_rows": packed["input_ids"],
        "real_tokens": real_tokens,
        "stock_row_count": len(rows),
        "packed_batch_size": packed_batch,
        "mean_story_tokens": round(real_tokens / len(rows), 1),
    }


def _run(payload: dict, isolate: bool, fn=run_variant) -> dict:
    """One run; isolated, in a fresh process whose wall clock (interpreter, imports, run) is `process_seconds`."""
    if not isolate:
        return fn(payload)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(fn, payload).result()
    result["process_seconds"] = round(time.perf_counter() - started, 3)
    return result


# --------------------------------------------------------------------------------------------- suites
def bench_train(args: BenchArguments, device: str, sizes: list[str]) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    tokens = prepare_tokens(args, tokenizer)
    default = default_variant(device, args.backend, args.compile)
    out = {
        "data": {k: v for k, v in tokens.items() if not k.endswith("_rows")},
        "stock": STOCK,
        "default": default,
        "sizes": {},
    }
    for size in sizes:
        base = {
            **{k: tokens[k] for k in ("stock_rows", "packed_rows", "packed_batch_size")},
            "size": size,
            "device": device,
            "seed": args.seed,
            "tokenizer": args.tokenizer,
            "block_size": args.block_size,
            "batch_size": args.batch_size,
            "warmup_steps": args.warmup_steps,
            "chunk_size": args.chunk_size,
        }
        runs: dict[str, dict] = {}
        plan = [("stock", None, STOCK), ("default", "stock", default)]
        if args.levers:
            plan += lever_variants(device, default, args.compile_lever)
        for name, baseline, spec in plan:
            print(f"[bench] {size} {name} ...", flush=True)
            result = _run({**base, "spec": spec}, args.isolate)
            result["spec"] = spec
            result["baseline"] = baseline
            runs[name] = result
        for result in runs.values():
            base_run = runs[result["baseline"]] if result["baseline"] else None
            for key, out_key in (
                ("tokens_per_second", "speedup"),
                ("tokens_per_cpu_second", "cpu_speedup"),
                ("whole_run_tokens_per_second", "whole_run_speedup"),
            ):
                if base_run and base_run[key] and result[key]:
                    result[out_key] = round(result[key] / base_run[key], 2)
            if base_run and base_run.get("process_seconds") and result.get("process_seconds"):
                result["process_speedup"] = round(base_run["process_seconds"] / result["process_seconds"], 2)
        out["sizes"][size] = {
            "runs": runs,
            "ratio_default_over_stock": runs["default"].get("speedup"),
            "cpu_time_ratio_default_over_stock": runs["default"].get("cpu_speedup"),
            "whole_run_ratio_default_over_stock": runs["default"].get("whole_run_speedup"),
            "process_ratio_default_over_stock": runs["default"].get("process_speedup"),
            "same_real_tokens": runs["stock"]["real_tokens"]
            == runs["default"]["real_tokens"]
            == tokens["real_tokens"],
        }
    return out


def bench_dedup(args: BenchArguments) -> dict:
    sample = args.data if Path(args.data).suffix == ".txt" and Path(args.data).is_file() else None
    return run_benchmark(num_stories=args.dedup_stories, num_proc=args.num_proc, sample_path=sample)


def machine_info(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_table(report: dict) -> str:
    lines = []
    train = report.get("train")
    if train:
        head = (
            f"{'size':<5} {'path':<24} {'steps':>5} {'real tok':>9} {'tok/s':>9} {'× base':>7} "
            f"{'tok/cpu-s':>9} {'× base':>7} {'peak MB':>8} {'loss':>6}"
        )
        lines += [head, "-" * len(head)]
        for size, res in train["sizes"].items():
            for name, r in res["runs"].items():
                peak = r.get("peak_gpu_mb", r["peak_rss_mb"])
                ratio = f"{r['speedup']:.2f}" if r.get("speedup") else "1.00"
                cpu_ratio = f"{r['cpu_speedup']:.2f}" if r.get("cpu_speedup") else "1.00"
                loss = f"{r['last_loss']:.2f}" if r.get("last_loss") is not None else "-"
                lines.append(
                    f"{size:<5} {name:<24} {r['steps']:>5} {r['real_tokens']:>9} {r['tokens_per_second']:>9.0f} "
                    f"{ratio:>7} {r['tokens_per_cpu_second']:>9.0f} {cpu_ratio:>7} {peak:>8.0f} {loss:>6}"
                    + (f"  MFU {r['mfu']:.1%}" if r.get("mfu") else "")
                )
            for name, r in res["runs"].items():
                if r.get("phases"):
                    phases = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in r["phases"].items())
                    process = (
                        f"process {r['process_seconds']:.1f} s (interpreter + imports + run); "
                        if r.get("process_seconds")
                        else ""
                    )
                    lines.append(
                        f"{size} {name}: {process}whole run {r['whole_run_seconds']:.1f} s = {phases}"
                    )
            lines.append(
                f"{size}: default / stock = {res['ratio_default_over_stock']}× real tokens/s "
                f"({res['cpu_time_ratio_default_over_stock']}× per CPU-second; "
                f"{res['whole_run_ratio_default_over_stock']}× whole run, start-up included; "
                f"{res.get('process_ratio_default_over_stock')}× whole process, imports included; "
                f"same real tokens: {res['same_real_tokens']})"
            )
        lines.append(
            "× base: vs stock (or vs default for default+…); tok/cpu-s: real tokens per CPU-second of the "
            "training process (robust on a shared machine); peak MB: process peak RSS on CPU, CUDA peak "
            "allocation on a GPU"
        )
    dedup = report.get("dedup")
    if dedup:
        lines.append(
            f"dedup: {dedup.get('num_stories')} stories in {dedup.get('seconds')} s = "
            f"{dedup.get('stories_per_second')} stories/s (num_proc {dedup.get('num_proc')})"
        )
    return "\n".join(lines)


ARGUMENTS = (BenchArguments,)
DEFAULTS = {
    "data": DEFAULT_DATA,
    "tokenizer": DEFAULT_TOKENIZER_DIR,
    "batch_size": 8,
    "output_dir": "outputs/bench",
}


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args(ARGUMENTS, argv, DEFAULTS)
    suites = _check_inputs(args)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible: use --device cpu")
    if args.sizes == "auto":
        sizes = ["1M", "8M"] + (["33M"] if device == "cuda" else [])
    else:
        sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise ConfigError(f"unknown size(s) {unknown}: valid sizes are {size_names()}")

    report: dict = {
        "command": "tinystories bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": asdict(args),
        "machine": machine_info(device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if "train" in suites:
        report["train"] = bench_train(args, device, sizes)
    if "dedup" in suites:
        print("[bench] dedup ...", flush=True)
        report["dedup"] = bench_dedup(args)
    if "finetune" in suites:
        report["finetune"] = bench_finetune(
            args, device, lambda payload: _run(payload, args.isolate, run_path)
        )
    if "inference" in suites:
        report["inference"] = bench_inference(args)
    report["load_average_1min_end"] = round(os.getloadavg()[0], 2)

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (out_dir / "bench.json").write_text(text)
    stamped = out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    stamped.write_text(text)
    print(format_table(report))
    if "finetune" in report:
        print(format_finetune_table(report["finetune"]))
    if "inference" in report:
        print(format_inference_table(report["inference"]))
    print(f"wrote {out_dir / 'bench.json'} and {stamped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
