"""The training suite's variants (stock, default, one lever each) and `run_variant`, one training run.

`run_variant(payload)` trains one variant with `transformers.Trainer` (in a fresh process when
`benchmarks.bench` isolates runs) and returns its throughput, memory and losses.
"""

from __future__ import annotations

import math
import resource
import tempfile
import time

import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    GPTNeoForCausalLM,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging

from tinystories.data.packing import PackedCollator
from tinystories.models.attention import use_fast_attention, use_fast_gelu
from tinystories.models.losses import use_fused_cross_entropy
from tinystories.models.sizes import build_config
from tinystories.training.throughput import flops_per_token, mfu

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
        backend = (
            "sdpa"  # what the recipes (`attn_implementation: sdpa`) and `make train` run, on every device
        )
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


# --------------------------------------------------------------------------------------------- one run
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Timing(TrainerCallback):
    """(wall clock, real tokens seen, CPU time) at the end of the warm-up step and of the last step."""

    def __init__(self, device: str, warmup_steps: int):
        self.device, self.warmup_steps = device, warmup_steps
        self.start = self.end = None
        self.train_begin = self.first_step = None  # wall clock: train() entered, first step done

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.device == "cuda":
            torch.cuda.synchronize()
        mark = (time.perf_counter(), int(state.num_input_tokens_seen), time.process_time())
        if state.global_step == 1:
            self.first_step = mark[0]
        if state.global_step == self.warmup_steps:
            self.start = mark
        self.end = mark


def _build_model(payload: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[GPTNeoForCausalLM, object]:
    """(model, config) of `payload["size"]` with the variant's levers applied."""
    spec = payload["spec"]
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
    return model, config


def _train_inputs(payload: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[Dataset, object, int, object]:
    """(dataset, collator, batch size, processing class): packed blocks, or one story per padded row."""
    if payload["spec"]["packing"]:
        dataset = Dataset.from_dict({"input_ids": payload["packed_rows"]})
        return dataset, PackedCollator(), payload["packed_batch_size"], None
    tokenizer.pad_token = tokenizer.eos_token
    dataset = Dataset.from_dict({"input_ids": payload["stock_rows"]})
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return dataset, collator, payload["batch_size"], tokenizer


def _training_arguments(output_dir: str, payload: dict, batch_size: int, max_steps: int) -> TrainingArguments:
    """The same hyper-parameters for every variant; only the variant's levers differ."""
    spec, device = payload["spec"], payload["device"]
    return TrainingArguments(
        output_dir=output_dir,
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


def _variant_result(
    trainer: Trainer, timing: _Timing, config, payload: dict, batch_size: int, rss_before: float
) -> dict:
    """Throughput over the timed steps, memory and losses of one finished run."""
    max_steps = trainer.args.max_steps
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
    if payload["device"] == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        name = torch.cuda.get_device_name()
        utilisation = mfu(result["tokens_per_second"] or 0, config, payload["block_size"], name)
        if utilisation is not None:
            result["mfu"] = round(utilisation, 4)
            result["flops_per_token"] = flops_per_token(config, payload["block_size"])
    return result


def run_variant(payload: dict) -> dict:
    """Train one variant with `transformers.Trainer`; returns throughput, memory and losses."""
    hf_logging.set_verbosity_error()
    device, started = payload["device"], time.perf_counter()  # whole run: model, Trainer, every step
    set_seed(payload["seed"])
    tokenizer = AutoTokenizer.from_pretrained(payload["tokenizer"])
    model, config = _build_model(payload, tokenizer)
    model_built = time.perf_counter()
    dataset, collator, batch_size, processing_class = _train_inputs(payload, tokenizer)
    max_steps = math.ceil(len(dataset) / batch_size)
    timing = _Timing(device, payload["warmup_steps"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            model=model,
            args=_training_arguments(tmp, payload, batch_size, max_steps),
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
    result = _variant_result(trainer, timing, config, payload, batch_size, rss_before)
    ended = time.perf_counter()
    whole = ended - started
    result["whole_run_seconds"] = round(whole, 3)
    result["whole_run_tokens_per_second"] = round(result["real_tokens"] / whole, 1)
    result["phases"] = {  # where the whole run goes, in seconds
        "tokenizer_and_model": round(model_built - started, 3),
        "data_and_trainer": round(timing.train_begin - model_built, 3),
        "first_step": round(timing.first_step - timing.train_begin, 3),
        "other_steps": round(timing.end[0] - timing.first_step, 3),
        "end_of_training": round(ended - timing.end[0], 3),
    }
    return result
