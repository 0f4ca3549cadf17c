"""Tiny models, tokenizers and Instruct data for the tests (CPU, seconds).

`make_tiny_model_dir` is the one tiny-model builder: the released GPT-Neo architecture
(`tinystories.sizes.build_config`: global + local attention, `gelu_new`, no dropout) at hidden 32 / 2 layers,
saved as safetensors with its tokenizer, so every code path is the 33M one. Pass the real GPT-Neo
tokenizer (`../shared/data/tokenizer-gpt-neo`, vocab 50257) or a small BPE from `train_tiny_tokenizer`.
`publish_tiny_model` lays it out in an offline HF cache under a repo id, as the Hub would serve it.
The Instruct examples are built from real TinyStories stories the way the paper's data is: words that occur
in the story, a sentence taken from it, a feature list, a one-line summary, in a random subset and order.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tinystories.data.instruct import InstructExample, format_example, randomize_fields
from tinystories.models.sizes import build_config

TINY_HUB_ID = "roneneldan/TinyStories-tiny-test"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_STOP = {"there", "their", "they", "were", "with", "that", "this", "what", "when", "then", "said", "from"}


def train_tiny_tokenizer(texts: list[str], vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE with `<|endoftext|>` (id 0) as bos/eos/pad, like GPT-Neo's but small."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model_dir(
    folder: Path,
    tokenizer,
    hidden: int = 32,
    layers: int = 2,
    max_positions: int = 512,
    seed: int = 0,
    window_size: int = 256,
    architecture: str = "gpt_neo",
) -> Path:
    """A randomly initialised tiny GPT-Neo (or its Llama twin: `architecture="llama"`, 4 heads of 8, one
    key/value head) + its tokenizer (a tokenizer object or dir) saved in `folder`."""
    if not hasattr(tokenizer, "save_pretrained"):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(seed)
    config = build_config(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
        eos_token_id=tokenizer.eos_token_id,
        window_size=window_size,
        architecture=architecture,
    )
    folder = Path(folder)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def make_varied_model_dir(folder: Path, tokenizer_dir: Path, architecture: str = "gpt_neo") -> Path:
    """The tiny model with larger random weights (std 0.2), so that its greedy story does not repeat one token
    (and, for Llama, attention, rotary positions and the shared key/value head show in the logits)."""
    folder = make_tiny_model_dir(folder, tokenizer_dir, architecture=architecture)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    return folder


def publish_tiny_model(hub_cache, tmp_path: Path, tokenizer_dir: Path, repo_id: str = TINY_HUB_ID) -> str:
    """Build the tiny model and publish it in the offline HF cache under `repo_id`; returns the id."""
    folder = make_tiny_model_dir(tmp_path / "tiny-model-src", tokenizer_dir)
    hub_cache.add(repo_id, folder)
    shutil.rmtree(folder)  # only the cache copy remains: loading must go through the Hub id
    return repo_id


def instruct_example_text(story: str, rng: random.Random) -> str:
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
