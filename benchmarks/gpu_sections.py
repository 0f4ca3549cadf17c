"""The measuring sections of `make gpu-check` (`benchmarks/gpu_check.py`): pretrain, precision, eval_memory,
lora and multi_gpu, and the multi-GPU worker.

This module imports the measuring stack (torch, transformers, tinystories) at its top: `gpu_check` imports it
only once a CUDA GPU is known to be there and the wheels are installed.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from datasets import Dataset, DatasetDict
from peft import prepare_model_for_kbit_training
from transformers import AutoTokenizer, PrinterCallback, Trainer, set_seed
from trl import get_peft_config

import benchmarks.train_bench as tb
from benchmarks.bench import prepare_tokens
from benchmarks.finetune_bench import _base_dir, prepare_examples
from benchmarks.gpu_check import REPO, error_record, run_sections
from tinystories.core import ConfigError as ConfigError  # re-exported: gpu_check.main catches it
from tinystories.core.config import parse_args
from tinystories.data.packing import PackedCollator
from tinystories.models import losses
from tinystories.models.sizes import build_config
from tinystories.training.finetune.arguments import (
    LoraModelConfig,
    LoraScriptArguments,
    TinyStoriesLoraConfig,
)
from tinystories.training.finetune.trainer import build_trainer, load_base, qlora_compute_dtype
from tinystories.training.pretraining import configure_batch
from tinystories.training.throughput import mfu

FALLBACK_CHUNK = {"cuda": 4096, "cpu": 256}  # where models.losses has no default_loss_chunk_size
LORA_RECIPE = REPO / "recipes" / "lora" / "33M.yaml"


def pretrain_variants(default: dict, stock: dict, default_chunk: int, chunk_sizes: list[int]) -> list:
    """(name, spec, fused-loss chunk): default, stock, plain logits, other chunk sizes, other attention."""
    other = "flex" if default["attention"] == "sdpa" else "sdpa"
    rows = [("default", default, default_chunk), ("stock", stock, default_chunk)]
    rows.append(("plain logits", {**default, "fused_ce": False}, default_chunk))
    rows += [(f"fused chunk {c}", default, c) for c in chunk_sizes if c != default_chunk]
    return [*rows, (f"{other} attention", {**default, "attention": other}, default_chunk)]


def _items(deadline: float, items: list[tuple]) -> list[dict]:
    """Run each (name, fn) until the section's deadline; an error is recorded and the next one runs."""
    rows, environment = [], dict(os.environ)
    for name, fn in items:
        if time.monotonic() >= deadline:
            rows.append({"name": name, "skipped": "skipped: section time budget spent"})
            continue
        try:
            rows.append({"name": name, **fn()})
        except Exception as exc:
            rows.append({"name": name, **error_record(exc)})
        os.environ.clear()  # the next run starts from the same environment (TrainingArguments reads it)
        os.environ.update(environment)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def _cycle(rows: list, n: int) -> list:
    return [rows[i % len(rows)] for i in range(n)]


def _peak_mb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None


def prepare(plan: SimpleNamespace) -> dict:
    """The token pool (stock rows and packed blocks of the same tokens) and the payload every run shares."""
    tokenizer = AutoTokenizer.from_pretrained(plan.tokenizer)
    tokens = prepare_tokens(plan, tokenizer)
    batch = tokens["packed_batch_size"]
    packed = tokens["packed_rows"][: max(1, len(tokens["packed_rows"]) // batch) * batch]  # full steps only
    chunk_fn = getattr(losses, "default_loss_chunk_size", None)  # the library's, where it has one
    chunk = int(chunk_fn(plan.device)) if chunk_fn else FALLBACK_CHUNK[plan.device]
    base = {"size": plan.size, "device": plan.device, "seed": plan.seed, "tokenizer": plan.tokenizer}
    base |= {"block_size": plan.block_size, "batch_size": plan.batch_size, "warmup_steps": plan.warmup_steps}
    base |= {"stock_rows": tokens["stock_rows"], "packed_rows": packed, "packed_batch_size": batch}
    ctx = {"base": base | {"chunk_size": chunk}, "default": tb.default_variant(plan.device, "sdpa", False)}
    return ctx | {
        "stock": tb.STOCK,
        "chunk": chunk,
        "chunk_from_library": bool(chunk_fn),
        "vocab": len(tokenizer),
    }


def section_pretrain(plan: SimpleNamespace, ctx: dict, deadline: float) -> dict:
    def one(spec: dict, chunk: int):
        def run() -> dict:
            result = tb.run_variant({**ctx["base"], "spec": spec, "chunk_size": chunk})
            row = {"attention": spec["attention"], "loss": "fused" if spec["fused_ce"] else "plain logits"}
            row |= {"chunk": chunk if spec["fused_ce"] else None, "mfu": None, "packing": spec["packing"]}
            row["precision"] = "bf16" if spec["bf16"] and plan.device == "cuda" else "fp32"
            keys = ("tokens_per_second", "mfu", "peak_gpu_mb", "last_loss", "steps", "batch_size", "seconds")
            return row | {k: result[k] for k in keys if k in result}

        return run

    variants = pretrain_variants(ctx["default"], ctx["stock"], ctx["chunk"], plan.chunk_sizes)
    rows = _items(deadline, [(name, one(spec, chunk)) for name, spec, chunk in variants])
    speed = {r["name"]: r.get("tokens_per_second") for r in rows}
    for r in rows:
        for ref in ("stock", "default"):
            if r.get("tokens_per_second") and speed.get(ref):
                r[f"vs_{ref}"] = round(r["tokens_per_second"] / speed[ref], 2)
    out = {"rows": rows, "steps": plan.steps, "warmup_steps": plan.warmup_steps, "chunk": ctx["chunk"]}
    out |= {"packed_batch_size": ctx["base"]["packed_batch_size"], "stock_batch_size": plan.batch_size}
    return out | {"block_size": plan.block_size, "chunk_from_library": ctx["chunk_from_library"]}


def _loss_curve(payload: dict, steps: int) -> list[float]:
    """Training losses, one a step, of the payload's spec (train_bench's model, inputs and arguments)."""
    set_seed(payload["seed"])
    tokenizer = AutoTokenizer.from_pretrained(payload["tokenizer"])
    model, _ = tb._build_model(payload, tokenizer)
    dataset, collator, batch, _ = tb._train_inputs(payload, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        args = tb._training_arguments(tmp, payload, batch, steps)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def section_precision(plan: SimpleNamespace, ctx: dict, deadline: float) -> dict:
    rows = _cycle(ctx["base"]["packed_rows"], plan.precision_steps * plan.precision_batch)
    base = {**ctx["base"], "packed_rows": rows, "packed_batch_size": plan.precision_batch}

    def run(bf16: bool):
        spec = {**ctx["default"], "bf16": bf16}
        return lambda: {"curve": _loss_curve({**base, "spec": spec}, plan.precision_steps)}

    runs = _items(deadline, [("bf16", run(True)), ("fp32", run(False))])
    for r in runs:
        if "curve" not in r:
            raise RuntimeError(f"the {r['name']} run: {r.get('error') or r.get('skipped')}")
    curves = {r["name"]: r["curve"] for r in runs}
    diffs = [a - b for a, b in zip(curves["bf16"], curves["fp32"], strict=True)]
    out = {"steps": plan.precision_steps, "tokens_per_step": plan.precision_batch * plan.block_size}
    out |= {"final_bf16": curves["bf16"][-1], "final_fp32": curves["fp32"][-1], "final_difference": diffs[-1]}
    out["fp32_matmul_precision"] = torch.get_float32_matmul_precision()  # "highest": no TF32
    return out | {"max_abs_difference": max(map(abs, diffs)), "curves": curves}


def _eval_peak(plan: SimpleNamespace, ctx: dict, fused: bool) -> dict:
    payload = {**ctx["base"], "spec": {**ctx["default"], "fused_ce": fused}}
    model, _ = tb._build_model(payload, AutoTokenizer.from_pretrained(plan.tokenizer))
    blocks, cuda = _cycle(ctx["base"]["packed_rows"], plan.eval_blocks), plan.device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        args = tb._training_arguments(tmp, payload, plan.eval_batch, 1)
        args.per_device_eval_batch_size = plan.eval_batch
        data = Dataset.from_dict({"input_ids": blocks})
        trainer = Trainer(model=model, args=args, eval_dataset=data, data_collator=PackedCollator())
        trainer.remove_callback(PrinterCallback)
        weights = torch.cuda.memory_allocated() / 2**20 if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        metrics, peak = trainer.evaluate(), _peak_mb(plan.device)
    model.eval()
    with torch.no_grad():  # does the eval forward build the (tokens, vocabulary) logits?
        ids = torch.tensor(blocks[:1], device=model.device)
        logits = model(input_ids=ids, labels=ids).logits is not None
    out = {"peak_gpu_mb": peak, "increase_mb": round(peak - weights, 1) if peak is not None else None}
    return out | {"eval_loss": metrics.get("eval_loss"), "logits_materialised": logits}


def section_eval_memory(plan: SimpleNamespace, ctx: dict, deadline: float) -> dict:
    items = [(name, lambda f=f: _eval_peak(plan, ctx, f)) for name, f in (("fused", 1), ("plain logits", 0))]
    out = {"rows": _items(deadline, items), "tokens": plan.eval_blocks * plan.block_size}
    return out | {"batch_size": plan.eval_batch}


def _lora_trainer(plan: SimpleNamespace, base_dir: str, out: str, examples: list[dict], qlora: bool):
    """The `make lora` trainer (its recipe, `load_base`, `build_trainer` + PEFT) as the pipeline builds it."""
    flags = {"config": LORA_RECIPE, "base_model": base_dir, "output_dir": out, "max_steps": plan.lora_steps}
    flags |= {"eval_strategy": "no", "save_strategy": "no", "report_to": "none", "logging_steps": 1}
    flags |= {"load_in_4bit": str(qlora).lower(), **({"use_cpu": "true"} if plan.device == "cpu" else {})}
    argv = [x for k, v in flags.items() for x in (f"--{k}", str(v))] + plan.lora_overrides
    dataclasses = [LoraScriptArguments, TinyStoriesLoraConfig, LoraModelConfig]
    args, training_args, model_config = parse_args(dataclasses, argv)
    configure_batch(training_args)
    qlora_compute_dtype(model_config)
    model, tokenizer = load_base(args, model_config)
    if qlora:
        model = prepare_model_for_kbit_training(model, training_args.gradient_checkpointing)
    data, peft = DatasetDict({"train": Dataset.from_list(examples)}), get_peft_config(model_config)
    return build_trainer(training_args, model, tokenizer, data, args.fused_cross_entropy, peft_config=peft)


def _lora_run(plan: SimpleNamespace, base_dir: str, examples: list[dict], qlora: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer = _lora_trainer(plan, base_dir, out, examples, qlora)
        timing = tb._Timing(plan.device, plan.lora_warmup)
        trainer.add_callback(timing)
        trainer.remove_callback(PrinterCallback)
        if plan.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    seconds, a = timing.end[0] - timing.start[0], trainer.args
    out = {"steps_per_second": round((plan.lora_steps - plan.lora_warmup) / seconds, 3)}
    out["tokens_per_second"] = round((timing.end[1] - timing.start[1]) / seconds, 1)
    out |= {
        "peak_gpu_mb": _peak_mb(plan.device),
        "examples_per_step": a.train_batch_size * a.gradient_accumulation_steps,
    }
    out["trainable_parameters"] = trainer.model.get_nb_trainable_parameters()[0]
    return out | {"last_loss": [h["loss"] for h in trainer.state.log_history if "loss" in h][-1]}


def section_lora(plan: SimpleNamespace, ctx: dict, deadline: float) -> dict:
    examples = prepare_examples(plan.data, plan.lora_steps * 32 + 64, plan.seed)
    skip_qlora = "skipped: QLoRA needs CUDA" if plan.device != "cuda" else None
    if not skip_qlora and importlib.util.find_spec("bitsandbytes") is None:
        skip_qlora = "skipped: bitsandbytes not installed"
    with tempfile.TemporaryDirectory() as root:
        base = _base_dir({"tokenizer": plan.tokenizer, "seed": plan.seed, "size": plan.size}, root)
        items = [
            (name, lambda q=q: _lora_run(plan, base, examples, q)) for name, q in (("lora", 0), ("qlora", 1))
        ]
        rows = _items(deadline, items[:1] if skip_qlora else items)
    rows += [{"name": "qlora", "skipped": skip_qlora}] if skip_qlora else []
    out = {"rows": rows, "recipe": str(LORA_RECIPE.relative_to(REPO)), "steps": plan.lora_steps}
    return out | {"warmup_steps": plan.lora_warmup, "base": f"fresh {plan.size}, random weights"}


def _launched(plan: SimpleNamespace, config_name: str, tmp: Path, deadline: float) -> dict:
    """The payload in `tmp` trained by `plan.gpus` processes of `accelerate launch` (its own process group,
    killed as a whole past the deadline)."""
    out, log = tmp / f"{config_name}.json", tmp / f"{config_name}.log"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(plan.gpus)]
    cmd += ["--config_file", f"accelerate_configs/{config_name}.yaml", "-m", "benchmarks.gpu_check"]
    cmd += ["--worker", str(tmp / "payload.json"), "--result", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"} | {"OMP_NUM_THREADS": "1"}
    env |= {"CUDA_VISIBLE_DEVICES": plan.visible} if plan.visible is not None else {}  # every GPU
    env |= {"DS_ACCELERATOR": "cpu"} if plan.device == "cpu" else {}
    with log.open("w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc or not out.is_file():
        raise RuntimeError(f"`accelerate launch` exited {rc}: {log.read_text()[-1500:]}")
    return json.loads(out.read_text())


def section_multi_gpu(plan: SimpleNamespace, ctx: dict, deadline: float) -> dict:
    if plan.gpus < 2:
        return {"skipped": f"skipped: {plan.gpus} GPU"}
    payload, n = {**ctx["base"], "spec": ctx["default"]}, plan.gpus
    config = build_config(plan.size, vocab_size=ctx["vocab"], max_position_embeddings=plan.block_size)

    def per_gpu(result: dict, processes: int) -> dict:
        tps = result["tokens_per_second"] / processes  # the Trainer counts the tokens of every process
        utilisation = mfu(tps, config, plan.block_size, ctx["gpu_name"])
        return {"processes": processes, "tokens_per_second": round(tps, 1), "mfu": utilisation}

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        (Path(tmp) / "payload.json").write_text(json.dumps(payload))
        items = [("1 process", lambda: per_gpu(tb.run_variant(payload), 1))]
        for name, cfg in plan.launch.items():
            run = lambda c=cfg: per_gpu(_launched(plan, c, Path(tmp), deadline), n)  # noqa: E731
            items.append((f"{name} × {n}", run))
        rows = _items(deadline, items)
    for r in rows[1:]:
        one, tps = rows[0].get("tokens_per_second"), r.get("tokens_per_second")
        r["scaling"] = round(tps / one, 3) if one and tps else None
    return {"rows": rows, "gpus": n}


def run_worker(payload_path: str, result_path: str) -> int:
    """One process of a multi-GPU run: train the payload; rank 0 writes the result."""
    result = tb.run_variant(json.loads(Path(payload_path).read_text()))
    if int(os.environ.get("RANK", "0")) == 0:
        Path(result_path).write_text(
            json.dumps({**result, "world_size": int(os.environ.get("WORLD_SIZE", 1))})
        )
    return 0


def cuda_unavailable() -> str | None:
    """Why torch sees no CUDA GPU (its version and CUDA build), or None when it sees one."""
    if torch.cuda.is_available():
        return None
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees none"


def machine_info(plan: SimpleNamespace) -> dict:
    smi, cuda = shutil.which("nvidia-smi"), plan.device == "cuda"
    query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
    driver = subprocess.run(query, capture_output=True, text=True).stdout.split("\n")[0] if smi else ""
    props = torch.cuda.get_device_properties(0) if cuda else None
    info = {"gpu": props.name if cuda else "CPU smoke (no GPU)", "gpu_count": plan.gpus if cuda else 0}
    info |= {"driver": driver.strip() or None, "cuda": torch.version.cuda, "torch": torch.__version__}
    info |= {"gpu_memory_gb": round(props.total_memory / 2**30, 1) if cuda else None}
    info |= {"python": platform.python_version(), "cpu_count": os.cpu_count()}
    packages = ("transformers", "trl", "peft", "accelerate", "deepspeed", "datasets", "bitsandbytes")
    dists = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    return info | {"packages": {p: dists.get(p) for p in packages}}


def measure(plan: SimpleNamespace) -> dict:
    started, wall = time.monotonic(), time.strftime("%Y-%m-%d %H:%M")
    info = machine_info(plan)
    ctx = {**prepare(plan), "gpu_name": info["gpu"] if plan.device == "cuda" else None}
    fns = {"pretrain": section_pretrain, "precision": section_precision, "eval_memory": section_eval_memory}
    fns |= {"lora": section_lora, "multi_gpu": section_multi_gpu}
    sections = {name: (lambda d, f=fns[name]: f(plan, ctx, d)) for name in plan.sections}
    results = run_sections(sections, plan.budgets, started + plan.max_minutes * 60)
    report = {"machine": info, "started": wall, "seconds": round(time.monotonic() - started, 1)}
    return report | {"size": plan.size, "smoke": plan.cpu_smoke, "sections": results}
