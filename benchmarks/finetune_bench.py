"""Fine-tuning suite: TRL's stock `SFTTrainer` path vs the project's SFT and LoRA paths (and pretraining).

All paths train the same freshly initialised model (a released size, saved to a folder and loaded the way
a user's base is) on the same Instruct examples built from real stories (`Words:` three words of the story,
`Random sentence:` one of its sentences, then `Story:`), with the same hyper-parameters:

* **trl**: `trl.SFTTrainer` as it comes: the model loaded by `AutoModelForCausalLM` (eager attention), TRL's
  loss (its chunked LM head with per-token entropy and top-1 metrics), one example per padded row (TRL's
  default activation checkpointing is turned off, as on every other path);
* **sft**: `tinystories.finetune` (what `make sft` runs): SDPA attention, fused GELU, the fused chunked
  cross-entropy of pretraining computing the loss inside the forward; `sft+packing` with TRL's `wrapped`
  packing (full blocks, no padding; the prompt masks are kept);
* **lora**: the same with a LoRA adapter (r 16 on all six projections), as `make lora` runs it;
* **pretrain**: the pretraining default path on the same examples as plain text, packed.

Real tokens are the non-padding input tokens of the timed steps (pretraining: every token); `trained tokens`
are those with a label (story + EOS), the ones the loss is on. Each path runs in its own process.
"""

from __future__ import annotations

import random
import re
import resource
import tempfile
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoForCausalLM,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging as hf_logging
from trl import SFTConfig, SFTTrainer

from benchmarks.train_bench import _rss_mb
from tinystories.data.instruct import InstructExample, format_completion, format_prompt
from tinystories.data.loading import load_stories
from tinystories.data.packing import PackedCollator, pack_dataset
from tinystories.data.tokenizer import prepare_tokenizer
from tinystories.models.sizes import build_config
from tinystories.training.finetune.arguments import (
    GPT_NEO_TARGET_MODULES,
    FinetuneArguments,
    FinetuneModelConfig,
    TinyStoriesSFTConfig,
)
from tinystories.training.finetune.trainer import build_trainer, load_base

PATHS = ("trl", "sft", "sft+packing", "lora", "pretrain")
_WORD = re.compile(r"[A-Za-z]{4,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def instruct_examples(stories: list[str], seed: int = 0) -> list[dict[str, str]]:
    """prompt/completion pairs: `Words:` (3 words of the story), `Random sentence:`, `Story: `; the story."""
    rng = random.Random(seed)
    rows = []
    for story in stories:
        words = sorted({w.lower() for w in _WORD.findall(story)})
        sentences = [s for s in _SENTENCE.split(story.strip()) if len(s.split()) >= 4]
        if len(words) < 3 or not sentences:
            continue
        example = InstructExample(
            story=story.strip(), words=rng.sample(words, 3), random_sentence=rng.choice(sentences)
        )
        example.order = rng.sample(["words", "random_sentence"], 2)
        rows.append({"prompt": format_prompt(example), "completion": format_completion(example.story)})
    return rows


class _Counter(TrainerCallback):
    """Real and trained tokens and time of the steps after the warm-up (counted from the batches)."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps, self.step = warmup_steps, 0
        self.real = self.trained = self.all_real = 0
        self.start = self.end = None

    def count(self, batch: dict) -> None:
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.all_real += real
        if self.step >= self.warmup_steps:
            self.real += real
            self.trained += int((batch["labels"] != -100).sum())

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        if state.global_step == self.warmup_steps:
            self.start = (time.perf_counter(), time.process_time())
        self.end = (time.perf_counter(), time.process_time())


def _counting(collator, counter: _Counter):
    def collate(features):
        batch = collator(features)
        counter.count(batch)
        return batch

    return collate


def _base_dir(payload: dict, root: str) -> str:
    """A freshly initialised model of `payload["size"]` saved with its tokenizer (trimmed when asked)."""
    tokenizer = AutoTokenizer.from_pretrained(payload["tokenizer"])
    if payload.get("vocab_size"):
        texts = Dataset.from_dict({"text": [r["prompt"] + r["completion"] for r in payload["examples"]]})
        tokenizer = prepare_tokenizer(payload["tokenizer"], texts, root, vocab_size=payload["vocab_size"])
    set_seed(payload["seed"])
    config = build_config(
        payload["size"],
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPTNeoForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def _common(payload: dict, output_dir: str) -> dict:
    """The hyper-parameters every path shares (only the path's own levers differ)."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": payload["batch_size"],
        "max_steps": payload["steps"],
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "use_cpu": payload["device"] == "cpu",
        "bf16": payload["device"] == "cuda",
        "dataloader_num_workers": 0,
        "seed": payload["seed"],
    }


def _trainer(path: str, payload: dict, base: str, tmp: str):
    """The path's trainer on the payload's prompt/completion examples (pretraining: the same text, packed)."""
    data = Dataset.from_list(payload["examples"])
    common = _common(payload, tmp)
    if path == "trl":
        model = AutoModelForCausalLM.from_pretrained(base)
        # TRL's defaults, except activation checkpointing (on by default in TRL): a memory lever, not a loss path
        args = SFTConfig(**common, max_length=payload["max_length"], gradient_checkpointing=False)
        return SFTTrainer(model=model, args=args, train_dataset=data)
    model, tokenizer = load_base(FinetuneArguments(base_model=base), FinetuneModelConfig())
    if path == "pretrain":
        texts = Dataset.from_dict({"text": [r["prompt"] + r["completion"] for r in payload["examples"]]})
        blocks = pack_dataset(texts, tokenizer, block_size=payload["max_length"])
        return Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=blocks,
            data_collator=PackedCollator(),
        )
    packing = path == "sft+packing"
    args = TinyStoriesSFTConfig(**common, max_length=payload["max_length"], packing=packing)
    peft = LoraConfig(r=16, lora_alpha=32, target_modules=GPT_NEO_TARGET_MODULES, task_type="CAUSAL_LM")
    extra = {"peft_config": peft} if path == "lora" else {}
    return build_trainer(args, model, tokenizer, {"train": data}, **extra)


def run_path(payload: dict) -> dict:
    """Train one fine-tuning path for `payload["steps"]` steps; returns its throughput and memory."""
    hf_logging.set_verbosity_error()
    path, started = payload["path"], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        base = _base_dir(payload, f"{tmp}/base")
        trainer = _trainer(path, payload, base, f"{tmp}/out")
        counter = _Counter(payload["warmup_steps"])
        trainer.data_collator = _counting(trainer.data_collator, counter)
        trainer.add_callback(counter)
        trainer.remove_callback(PrinterCallback)
        rss_before = _rss_mb()
        trainer.train()
    whole_run = time.perf_counter() - started  # start-up, data preparation and every step
    seconds = counter.end[0] - counter.start[0]
    cpu_seconds = counter.end[1] - counter.start[1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "path": path,
        "steps": payload["steps"],
        "real_tokens": counter.real,
        "trained_tokens": counter.trained,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(counter.real / seconds, 1),
        "trained_tokens_per_second": round(counter.trained / seconds, 1),
        "tokens_per_cpu_second": round(counter.real / cpu_seconds, 1),
        "whole_run_seconds": round(whole_run, 1),
        "whole_run_tokens_per_second": round(counter.all_real / whole_run, 1),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "peak_rss_mb": round(peak_rss, 1),
        "train_rss_increase_mb": round(peak_rss - rss_before, 1),
        **(
            {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
            if torch.cuda.is_available()
            else {}
        ),
    }


def prepare_examples(data: str, n: int, seed: int) -> list[dict[str, str]]:
    """Instruct examples from the first `n` training stories (the stories pretraining would train on)."""
    stories = load_stories(data, validation_fraction=0.1, seed=seed, max_train_samples=n)["train"]["text"]
    return instruct_examples(stories, seed)


def bench_finetune(args, device: str, run) -> dict:
    """Every path of `args.finetune_paths` on the same model and examples; ratios vs TRL and vs pretraining.

    `run(payload)` trains one path (in a fresh process when the bench isolates runs).
    """
    need = args.finetune_steps * args.finetune_batch_size * 2
    examples = prepare_examples(args.data, need, args.seed)
    paths = [p.strip() for p in args.finetune_paths.split(",") if p.strip()]
    base = {
        "examples": examples,
        "size": args.finetune_size,
        "tokenizer": args.tokenizer,
        "vocab_size": args.finetune_vocab_size,
        "seed": args.seed,
        "batch_size": args.finetune_batch_size,
        "max_length": args.finetune_max_length,
        "steps": args.finetune_steps,
        "warmup_steps": args.warmup_steps,
        "device": device,
    }
    runs = {}
    for path in paths:
        print(f"[bench] finetune {args.finetune_size} {path} ...", flush=True)
        runs[path] = run({**base, "path": path})
    for r in runs.values():
        for ref in ("trl", "pretrain"):
            if ref in runs and r is not runs[ref]:
                r[f"vs_{ref}"] = round(r["tokens_per_second"] / runs[ref]["tokens_per_second"], 3)
                r[f"whole_run_vs_{ref}"] = round(
                    r["whole_run_tokens_per_second"] / runs[ref]["whole_run_tokens_per_second"], 2
                )
    data = {"examples": len(examples), "vocab_size": args.finetune_vocab_size or "full"}
    return {"size": args.finetune_size, "data": data, "runs": runs}


def format_finetune_table(result: dict) -> str:
    head = (
        f"{'path':<12} {'real tok':>9} {'tok/s':>7} {'trained/s':>9} {'× trl':>6} {'× pretrain':>10} "
        f"{'whole-run tok/s':>15} {'peak MB':>8}"
    )
    lines = [
        f"fine-tuning suite: {result['size']}, vocabulary {result['data']['vocab_size']}",
        head,
        "-" * len(head),
    ]
    for name, r in result["runs"].items():
        lines.append(
            f"{name:<12} {r['real_tokens']:>9} {r['tokens_per_second']:>7.0f} {r['trained_tokens_per_second']:>9.0f} "
            f"{r.get('vs_trl', 1.0):>6.2f} {r.get('vs_pretrain', 1.0):>10.2f} "
            f"{r['whole_run_tokens_per_second']:>15.0f} {r.get('peak_gpu_mb', r['peak_rss_mb']):>8.0f}"
        )
    lines.append(
        "real tokens: non-padding inputs of the timed steps; trained: story + EOS tokens (labels); × trl / × pretrain: "
        "real tokens/s against TRL's stock SFTTrainer path and the pretraining default path"
    )
    return "\n".join(lines)


__all__ = [
    "PATHS",
    "bench_finetune",
    "format_finetune_table",
    "instruct_examples",
    "prepare_examples",
    "run_path",
]
