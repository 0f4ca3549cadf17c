"""Helpers shared by the SFT, LoRA and generation tests: a tiny GPT-Neo and Instruct-format data.

The tiny model uses the real GPT-Neo tokenizer (vocab 50257) and the released architecture
(`tinystories.sizes.build_config`) at hidden 32 / 2 layers, so the code paths are the 33M ones.
The Instruct examples are built from real TinyStories stories the way the paper's data is: words
that occur in the story, a sentence taken from it, a feature list, a one-line summary, in a random
subset and order (`tinystories.instruct.randomize_fields`).
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import torch

TINY_HUB_ID = "roneneldan/TinyStories-tiny-test"
_STOP = {"there", "their", "they", "were", "with", "that", "this", "what", "when", "then", "said", "from"}


def build_tiny_model_dir(
    out_dir: Path,
    tokenizer_dir: Path,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    max_position_embeddings: int = 512,
) -> Path:
    """Save a randomly initialised tiny GPT-Neo + the GPT-Neo tokenizer in `out_dir` (safetensors)."""
    from transformers import AutoTokenizer, GPTNeoForCausalLM

    from tinystories.sizes import build_config

    torch.manual_seed(seed)
    config = build_config(
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=4,
        max_position_embeddings=max_position_embeddings,
    )
    model = GPTNeoForCausalLM(config)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return out_dir


def publish_tiny_model(hub_cache, tmp_path: Path, tokenizer_dir: Path, repo_id: str = TINY_HUB_ID) -> str:
    """Build the tiny model and publish it in the offline HF cache under `repo_id`; returns the id."""
    folder = build_tiny_model_dir(tmp_path / "tiny-model-src", tokenizer_dir)
    hub_cache.add(repo_id, folder)
    shutil.rmtree(folder)  # only the cache copy remains: loading must go through the Hub id
    return repo_id


def instruct_example_text(story: str, rng: random.Random) -> str:
    from tinystories.instruct import InstructExample, format_example, randomize_fields

    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]+", story) if len(w) >= 4} - _STOP)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", story) if len(s.split()) >= 4]
    features = []
    if '"' in story:
        features.append("Dialogue")
    if re.search(r"\b(but|suddenly)\b", story, re.I):
        features.append("Twist")
    if re.search(r"\blearn", story, re.I):
        features.append("MoralValue")
    example = InstructExample(
        story=story,
        features=features,
        words=rng.sample(words, k=min(3, len(words))),
        summary=sentences[0] if sentences else None,
        random_sentence=rng.choice(sentences) if sentences else None,
    )
    return format_example(randomize_fields(example, rng))


def write_instruct_txt(stories: list[str], path: Path, n: int = 300, seed: int = 0) -> Path:
    """`n` Instruct examples as the official `.txt` format: `<|endoftext|>` between examples."""
    rng = random.Random(seed)
    examples = [instruct_example_text(s, rng) for s in stories[:n]]
    path = Path(path)
    path.write_text("\n<|endoftext|>\n".join(examples) + "\n<|endoftext|>\n", encoding="utf-8")
    return path
