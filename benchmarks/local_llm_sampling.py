"""Which sampling keeps a small instruction model out of loops? SmolLM2-135M-Instruct on the paper's prompts.

    python -m benchmarks.local_llm_sampling --model outputs/models/SmolLM2-135M-Instruct --num_stories 12

Each setting generates the same `--num_stories` prompts (words and features of `recipes/data/local_llm.yaml`'s
seed) through the synthesis `transformers` backend, batched, then the job's own screen
(`synthesis.cleaning.screen_story`): how many completions loop (and how many of those are rejected rather than
trimmed), run out of tokens, use all three words; tokens/s and stories/s. Writes `--output` (JSON) and prints a
table. Timings depend on what else runs on the machine: compare settings measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tinystories.data.wordforms import uses_word
from tinystories.synthesis.backends import Completion, Request, SamplingConfig, TransformersBackend
from tinystories.synthesis.cleaning import loop_start, screen_story
from tinystories.synthesis.prompts import Vocabulary

BASE = {"temperature": 0.7, "top_p": 0.9}  # what the issue tried first
SETTINGS = {
    "paper (T 0.7, top-p 0.9)": {},
    "+ repetition_penalty 1.1": {"repetition_penalty": 1.1},
    "+ no_repeat_ngram_size 4": {"no_repeat_ngram_size": 4},
    "+ repetition_penalty 1.1, no_repeat_ngram_size 6": {
        "repetition_penalty": 1.1,
        "no_repeat_ngram_size": 6,
    },
}


def measure(model: str, extra: dict, specs, max_new_tokens: int, batch_size: int) -> dict:
    sampling = SamplingConfig(max_new_tokens, BASE["temperature"], BASE["top_p"], 42, extra)
    backend = TransformersBackend(model, sampling, api="chat", device="cpu")
    answers, start = [], time.perf_counter()
    for i in range(0, len(specs), batch_size):
        chunk = specs[i : i + batch_size]
        answers += backend.complete_batch([Request(s.prompt, "story", s) for s in chunk])
    seconds = time.perf_counter() - start
    done = [(s, a) for s, a in zip(specs, answers, strict=True) if isinstance(a, Completion)]
    screened = [screen_story(a.text) for _, a in done]
    tokens = sum(a.usage.get("completion_tokens", 0) for _, a in done)
    return {
        "extra_body": extra,
        "stories": len(specs),
        "looping": sum(loop_start(a.text) is not None for _, a in done),
        "loops_rejected": sum(s.rejected == "loop" for s in screened),
        "hit_max_new_tokens": sum(a.finish_reason == "length" for _, a in done),
        "words_all_used": sum(
            all(
                uses_word(s.text, w, pos)
                for w, pos in zip(spec.words, ("verb", "noun", "adjective"), strict=True)
            )
            for (spec, _), s in zip(done, screened, strict=True)
        )
        / max(1, len(done)),
        "mean_words": sum(len(s.text.split()) for s in screened) / max(1, len(done)),
        "tokens_per_second": round(tokens / seconds, 2),
        "stories_per_second": round(len(specs) / seconds, 4),
        "sample": screened[0].text if screened else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="outputs/models/SmolLM2-135M-Instruct")
    parser.add_argument("--num_stories", type=int, default=12)
    parser.add_argument("--max_new_tokens", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=12)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="benchmarks/results/local_llm_sampling.json")
    args = parser.parse_args(argv)
    vocab = Vocabulary()
    specs = [vocab.spec(args.seed, i) for i in range(args.num_stories)]
    rows = {}
    for name, extra in SETTINGS.items():
        rows[name] = measure(args.model, extra, specs, args.max_new_tokens, args.batch_size)
        row = rows[name]
        print(
            f"{name:50s} looping {row['looping']:2d}/{row['stories']}  rejected {row['loops_rejected']:2d}  "
            f"at max {row['hit_max_new_tokens']:2d}  all words {row['words_all_used']:.2f}  "
            f"{row['mean_words']:.0f} words  {row['tokens_per_second']} tok/s",
            flush=True,
        )
    result = {
        "model": args.model,
        "base_sampling": BASE,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "settings": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
