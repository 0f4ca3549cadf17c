"""`tinystories bench` / `make bench`: training throughput (stock vs project path) and dedup throughput.

Training suite, per model size, in one run on the same real TinyStories tokens:

* **stock**: what `transformers` gives you: `GPTNeoForCausalLM` with eager attention, one story per row
  padded to the longest story of the batch by `DataCollatorForLanguageModeling(mlm=False)`, the model's
  own cross-entropy over the full logits, `adamw_torch`;
* **default**: the project's pretraining path: the same model with `use_fast_attention` (SDPA on CPU,
  flex_attention on a GPU), stories packed into `block_size` blocks (`tinystories.data.pack_tokenized`,
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
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tinystories.config import ConfigError, parse_args

DEFAULT_DATA = "../shared/data/tinystories/TinyStories-train.sample.txt"
DEFAULT_TOKENIZER_DIR = "../shared/data/tokenizer-gpt-neo"
SUITES = ("train", "dedup")
# dense bf16 peak FLOP/s by GPU name fragment, for MFU
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
}


@dataclass
class BenchArguments:
    suite: str = field(default="train,dedup", metadata={"help": "comma-separated: train, dedup"})
    sizes: str = field(
        default="auto", metadata={"help": "model sizes, e.g. 1M,8M; auto: 1M,8M (+33M on a GPU)"}
    )
    data: str = field(
        default=DEFAULT_DATA, metadata={"help": "stories (.txt with <|endoftext|>, .jsonl, ...)"}
    )
    tokenizer: str = field(
        default=DEFAULT_TOKENIZER_DIR, metadata={"help": "GPT-Neo tokenizer dir or Hub id"}
    )
    steps: int = field(default=4, metadata={"help": "optimizer steps of the stock path (it sets the tokens)"})
    batch_size: int = field(default=8, metadata={"help": "stories per stock step (packed: same real tokens)"})
    block_size: int = field(default=512, metadata={"help": "packed sequence length (the paper's context)"})
    warmup_steps: int = field(default=1, metadata={"help": "steps left out of the timing"})
    levers: bool = field(default=False, metadata={"help": "also measure each lever on its own"})
    compile_lever: bool = field(
        default=False,
        metadata={"help": "with --levers: also default + torch.compile (minutes to compile on CPU)"},
    )
    backend: str = field(default="auto", metadata={"help": "attention of the default path: auto, sdpa, flex"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the default path"})
    chunk_size: int = field(default=256, metadata={"help": "rows per chunk of the fused cross-entropy"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    isolate: bool = field(
        default=True, metadata={"help": "run each path in a fresh process (clean peak memory)"}
    )
    output_dir: str = "outputs/bench"
    seed: int = 42
    dedup_stories: int = field(default=20000, metadata={"help": "stories for the dedup benchmark"})
    num_proc: int = field(default=2, metadata={"help": "processes for the dedup benchmark"})


# --------------------------------------------------------------------------------------------- variants
STOCK = {
    "attention": "eager",
    "packing": False,
    "fused_ce": False,
    "optim": "adamw_torch",
    "workers": 0,
    "compile": False,
    "bf16": False,
    "fast_gelu": False,
}


def default_variant(device: str, backend: str, compile_: bool) -> dict:
    if backend == "auto":
        backend = "flex" if device == "cuda" else "sdpa"
    return {
        "attention": backend,
        "packing": True,
        "fused_ce": True,
        "optim": "adamw_torch_fused",
        "workers": 2 if device == "cuda" else 0,
        "compile": compile_,
        "bf16": device == "cuda",
        "fast_gelu": True,
    }


def lever_variants(device: str, default: dict, compile_lever: bool = True) -> list[tuple[str, str, dict]]:
    """(name, baseline name, spec): each lever on its own on top of its baseline."""
    attn = default["attention"]
    levers = [
        (f"+{attn} attention", "stock", {**STOCK, "attention": attn}),
        ("+packing", "stock", {**STOCK, "packing": True}),
        ("+fused cross-entropy", "stock", {**STOCK, "fused_ce": True}),
        ("+fused AdamW", "stock", {**STOCK, "optim": "adamw_torch_fused"}),
        ("+fused GELU", "stock", {**STOCK, "fast_gelu": True}),
        ("+dataloader workers", "stock", {**STOCK, "workers": 1 if device == "cpu" else 2}),
    ]
    if (
        compile_lever and not default["compile"]
    ):  # compile needs fixed shapes: measured on top of the default path
        levers.append(("default+torch.compile", "default", {**default, "compile": True}))
    return levers


# --------------------------------------------------------------------------------------------- data
def _check_inputs(args: BenchArguments) -> list[str]:
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    bad = [s for s in suites if s not in SUITES]
    if bad or not suites:
        raise ConfigError(
            f"unknown --suite {args.suite!r}: use a comma-separated subset of {', '.join(SUITES)}"
        )
    if "train" in suites:
        if args.steps <= args.warmup_steps:
            raise ConfigError(f"--steps ({args.steps}) must exceed --warmup_steps ({args.warmup_steps})")
        if args.batch_size < 1 or args.block_size < 2:
            raise ConfigError("--batch_size must be >= 1 and --block_size >= 2")
        if args.backend not in ("auto", "sdpa", "flex", "eager"):
            raise ConfigError(f"unknown --backend {args.backend!r}: use auto, sdpa, flex or eager")
        if args.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown --device {args.device!r}: use auto, cpu or cuda")
        from tinystories.data import looks_like_path

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
    return suites


def prepare_tokens(args: BenchArguments, tokenizer) -> dict:
    """The token stream both paths train on: stock rows (one story each) and packed blocks, same tokens."""
    from datasets import DatasetDict

    from tinystories.data import load_raw, pack_tokenized, tokenize_stories

    raw = load_raw(args.data)
    if isinstance(raw, DatasetDict):
        raw = raw["train"] if "train" in raw else next(iter(raw.values()))
    if "text" not in raw.column_names:
        raise ConfigError(f"{args.data!r} has no 'text' column (columns: {raw.column_names})")
    raw = raw.filter(lambda ex: bool(ex["text"] and ex["text"].strip()))
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


# --------------------------------------------------------------------------------------------- one run
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (6 × matmul params incl. the LM head + attention scores, window-aware)."""
    h, n_layers, vocab = config.hidden_size, config.num_layers, config.vocab_size
    matmul_params = n_layers * 12 * h * h + vocab * h
    attn = 0.0
    for kind in config.attention_layers:
        ctx = min(seq_len, config.window_size) if kind == "local" else seq_len
        attn += 6 * 2 * h * ctx / 2  # QK^T and AV, causal: half the context on average
    return 6 * matmul_params + attn


def run_variant(payload: dict) -> dict:
    """Train one variant with `transformers.Trainer`; returns throughput, memory and losses."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        GPTNeoForCausalLM,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )
    from transformers.utils import logging as hf_logging

    from tinystories.attention import use_fast_attention, use_fast_gelu
    from tinystories.data import PackedCollator
    from tinystories.losses import use_fused_cross_entropy
    from tinystories.sizes import build_config

    hf_logging.set_verbosity_error()
    spec, device = payload["spec"], payload["device"]
    set_seed(payload["seed"])
    tokenizer = AutoTokenizer.from_pretrained(payload["tokenizer"])
    config = build_config(
        payload["size"], vocab_size=len(tokenizer), max_position_embeddings=payload["block_size"]
    )
    model = GPTNeoForCausalLM(config)
    if spec["attention"] != "eager":
        use_fast_attention(model, spec["attention"])
    if spec.get("fast_gelu"):
        use_fast_gelu(model)
    if spec["fused_ce"]:
        use_fused_cross_entropy(model, chunk_size=payload["chunk_size"])

    if spec["packing"]:
        dataset = Dataset.from_dict({"input_ids": payload["packed_rows"]})
        collator, batch_size, processing_class = PackedCollator(), payload["packed_batch_size"], None
    else:
        tokenizer.pad_token = tokenizer.eos_token
        dataset = Dataset.from_dict({"input_ids": payload["stock_rows"]})
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        batch_size, processing_class = payload["batch_size"], tokenizer
    max_steps = math.ceil(len(dataset) / batch_size)

    class Timing(TrainerCallback):
        def __init__(self):
            self.start = self.end = None

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            mark = (time.perf_counter(), int(state.num_input_tokens_seen), time.process_time())
            if state.global_step == payload["warmup_steps"]:
                self.start = mark
            self.end = mark

    timing = Timing()
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_size,
            max_steps=max_steps,
            learning_rate=5e-4,
            weight_decay=0.1,
            adam_beta1=0.9,
            adam_beta2=0.95,
            lr_scheduler_type="constant",
            optim=spec["optim"],
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=payload["seed"],
            data_seed=payload["seed"],
            use_cpu=device == "cpu",
            bf16=spec["bf16"] and torch.cuda.is_bf16_supported(),
            dataloader_num_workers=spec["workers"],
            dataloader_persistent_workers=spec["workers"] > 0,
            dataloader_pin_memory=device == "cuda",
            torch_compile=spec["compile"],
            include_num_input_tokens_seen="non_padding",
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=dataset,
            data_collator=collator,
            processing_class=processing_class,
            callbacks=[timing],
        )
        trainer.remove_callback(PrinterCallback)  # keep the bench output to its own table
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rss_before = _rss_mb()
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    seconds = timing.end[0] - timing.start[0]
    timed_tokens = timing.end[1] - timing.start[1]
    cpu_seconds = timing.end[2] - timing.start[2]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "steps": max_steps,
        "batch_size": batch_size,
        "real_tokens": int(trainer.state.num_input_tokens_seen),
        "timed_steps": max_steps - payload["warmup_steps"],
        "timed_tokens": timed_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(timed_tokens / seconds, 1) if seconds > 0 else None,
        # CPU time of this process (all threads): robust to other jobs on a shared machine
        "cpu_seconds": round(cpu_seconds, 3),
        "tokens_per_cpu_second": round(timed_tokens / cpu_seconds, 1) if cpu_seconds > 0 else None,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "peak_rss_mb": round(peak_rss, 1),
        "train_rss_increase_mb": round(peak_rss - rss_before, 1),
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        if peak and result["tokens_per_second"]:
            fpt = flops_per_token(config, payload["block_size"])
            result["mfu"] = round(result["tokens_per_second"] * fpt / peak, 4)
            result["flops_per_token"] = fpt
    return result


def _run(payload: dict, isolate: bool) -> dict:
    if not isolate:
        return run_variant(payload)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_variant, payload).result()


# --------------------------------------------------------------------------------------------- suites
def bench_train(args: BenchArguments, device: str, sizes: list[str]) -> dict:
    from transformers import AutoTokenizer

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
            for key, out_key in (("tokens_per_second", "speedup"), ("tokens_per_cpu_second", "cpu_speedup")):
                if base_run and base_run[key] and result[key]:
                    result[out_key] = round(result[key] / base_run[key], 2)
        out["sizes"][size] = {
            "runs": runs,
            "ratio_default_over_stock": runs["default"].get("speedup"),
            "cpu_time_ratio_default_over_stock": runs["default"].get("cpu_speedup"),
            "same_real_tokens": runs["stock"]["real_tokens"]
            == runs["default"]["real_tokens"]
            == tokens["real_tokens"],
        }
    return out


def bench_dedup(args: BenchArguments) -> dict:
    try:
        from tinystories.dedup import run_benchmark
    except ImportError as e:
        raise ConfigError(
            f"the dedup benchmark needs tinystories.dedup.run_benchmark ({e}); run with --suite train"
        ) from e
    sample = args.data if Path(args.data).suffix == ".txt" and Path(args.data).is_file() else None
    return run_benchmark(num_stories=args.dedup_stories, num_proc=args.num_proc, sample_path=sample)


def machine_info(device: str) -> dict:
    import torch
    import transformers

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
            lines.append(
                f"{size}: default / stock = {res['ratio_default_over_stock']}× real tokens/s "
                f"({res['cpu_time_ratio_default_over_stock']}× per CPU-second; "
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


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args([BenchArguments], argv)
    suites = _check_inputs(args)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA GPU is visible: use --device cpu")
    if args.sizes == "auto":
        sizes = ["1M", "8M"] + (["33M"] if device == "cuda" else [])
    else:
        sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    from tinystories.sizes import SIZES, size_names

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
    report["load_average_1min_end"] = round(os.getloadavg()[0], 2)

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (out_dir / "bench.json").write_text(text)
    stamped = out_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    stamped.write_text(text)
    print(format_table(report))
    print(f"wrote {out_dir / 'bench.json'} and {stamped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
