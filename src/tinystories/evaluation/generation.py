"""Generating stories: sampling within the trained context, card samples and evaluation completions.

`generate_story` is the one sampling function (stops at EOS, never reads past the trained context of 512
tokens). `SAMPLE_PROMPTS` (`hub.cards`) is the one table of prompts the recipes show in model cards and usage snippets;
the evaluation prompts are data, read by `load_prompt_set`: `paper` (default), the paper's 44 story beginnings
(`Evaluation prompts.yaml` of the `roneneldan/TinyStories` dataset, through the HF cache), `project`, the
project's own 50 (`data_generation/eval_prompts.jsonl`, also the fallback when the paper's file cannot be
had), or any JSONL with a `prompt` field (`load_prompts`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import hf_hub_download
from tqdm.auto import tqdm
from transformers import GenerationConfig, set_seed

from tinystories.core import EVAL_PROMPTS_FILE, ConfigError
from tinystories.data.instruct import build_prompt
from tinystories.data.tokenizer import story_boundary_ids
from tinystories.hub.cards import SAMPLE_PROMPTS
from tinystories.models.loading import context_limit

logger = logging.getLogger(__name__)

PAPER_PROMPTS_REPO = "roneneldan/TinyStories"  # a dataset repo
PAPER_PROMPTS_FILE = "Evaluation prompts.yaml"  # a YAML list of the paper's 44 story beginnings
_capped: set[tuple[int, int]] = set()  # (max_new_tokens, context) already said to be capped: said once


def _generation_config(
    tokenizer, max_length: int, temperature, top_k, top_p, num_return_sequences: int = 1, stop_ids=None
):
    """A complete generation config: the checkpoint's own (max_length, top_k, ...) must not override it.

    `max_length` (prompt + new tokens) rather than `max_new_tokens`, which would clash with a stored max_length.
    `stop_ids`: the tokens that end a story (default the tokenizer's EOS).
    """
    eos_id = tokenizer.eos_token_id
    do_sample = temperature is not None and temperature > 0
    sampling = (
        {"temperature": float(temperature), "top_k": top_k or 0, "top_p": top_p or 1.0} if do_sample else {}
    )
    return GenerationConfig(
        max_length=max_length,
        do_sample=do_sample,
        num_return_sequences=num_return_sequences,
        eos_token_id=stop_ids or eos_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id,
        **sampling,
    )


def generate_story(
    model,
    tokenizer,
    prompt: str = "",
    max_new_tokens: int = 400,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = 0.95,
    seed: int | None = None,
    num_return_sequences: int = 1,
) -> str | list[str]:
    """Continue `prompt` until the end-of-text token (or the trained context is full).

    Returns the generated continuation only (without the prompt and without the EOS token); a list
    when `num_return_sequences > 1`. `max_new_tokens` is capped so that prompt + continuation fit in
    the model's trained context (512). `temperature <= 0` decodes greedily.
    """
    (stories,) = generate_batch(
        model, tokenizer, [prompt], max_new_tokens, temperature, top_k, top_p, seed, num_return_sequences
    )
    return stories if num_return_sequences > 1 else stories[0]


def _prompt_ids(generation_config, tokenizer, prompts: list[str]) -> tuple[list[list[int]], list[int]]:
    """Each prompt's ids (after the family's story-start token where it has its own BOS; an empty prompt is that
    token alone) and the ids that end a story."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ConfigError(
            "the tokenizer has no eos_token: generation could not stop at the end of a story; pass a --tokenizer "
            "with one (the model's own)"
        )
    start, end = story_boundary_ids(tokenizer, generation_config)
    prefix = [start] if start != eos_id else []
    ids = [
        prefix + (tokenizer(p, add_special_tokens=False)["input_ids"] if p else []) or [start]
        for p in prompts
    ]
    return ids, sorted({end, eos_id})


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 400,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = 0.95,
    seed: int | None = None,
    num_return_sequences: int = 1,
) -> list[list[str]]:
    """`num_return_sequences` continuations of each prompt, sampled in one `generate` call.

    The prompts are padded on the left (the attention mask hides the padding and positions start at each
    prompt's first token), so a batch samples what the prompts would one at a time, up to float rounding and
    the random stream. New tokens are capped so that the longest prompt plus its continuation fit in the
    trained context. An empty prompt starts from the token the model saw before each story (<|endoftext|> for
    GPT-Neo); a family that starts every story with its own BOS (llama2.c, Llama 2) gets it before every prompt.
    A story stops at its family's end-of-story token (`story_boundary_ids`: BOS for llama2.c) or at EOS.
    """
    eos_id = tokenizer.eos_token_id
    ids, stops = _prompt_ids(getattr(model, "generation_config", None), tokenizer, prompts)
    width, limit = max(len(i) for i in ids), context_limit(model)
    new_tokens = _new_tokens(int(max_new_tokens), width, limit)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad_id] * (width - len(i)) + i for i in ids], device=device)
    attention_mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
    if seed is not None:
        set_seed(seed)
    was_training = model.training
    model.eval()
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=_generation_config(
            tokenizer,
            width + new_tokens,
            temperature,
            top_k,
            top_p,
            num_return_sequences,
            stops,
        ),
    )
    if was_training:
        model.train()
    stories = []
    for row in output[:, width:].tolist():
        ends = [row.index(t) for t in stops if t in row]
        if ends:  # stop at the first end of story; what follows is padding
            row = row[: min(ends)]
        stories.append(tokenizer.decode(row, skip_special_tokens=True))
    n = num_return_sequences  # generate returns each prompt's sequences next to each other
    return [stories[k * n : (k + 1) * n] for k in range(len(prompts))]


def generate_stories_onnx(
    generator,
    tokenizer,
    config,
    generation_config,
    prompt: str = "",
    max_new_tokens: int = 400,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = 0.95,
    seed: int | None = None,
    num_stories: int = 1,
) -> list[str]:
    """`generate_story` on ONNX Runtime: `generator` is `models.export.session.open_generator`'s, `config` and
    `generation_config` the exported folder's. The same prompt ids, cap and end-of-story tokens; story `i` is
    sampled with seed `seed + i` (numpy's generator: the same seed draws other stories than torch's)."""
    (ids,), stops = _prompt_ids(generation_config, tokenizer, [prompt])
    new_tokens = _new_tokens(int(max_new_tokens), len(ids), context_limit(config))
    stories = []
    for i in range(num_stories):
        row = generator.generate(
            ids,
            new_tokens,
            eos_token_id=stops,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=None if seed is None else seed + i,
        ).tokens
        if row and row[-1] in stops:
            row = row[:-1]
        stories.append(tokenizer.decode(row, skip_special_tokens=True))
    return stories


def _new_tokens(max_new_tokens: int, width: int, limit: int) -> int:
    """New tokens that fit after a `width`-token prompt in the trained context `limit`; when fewer than asked, said
    once per (--max_new_tokens, context)."""
    room = limit - width
    if room <= 0:
        raise ConfigError(
            f"a prompt is {width} tokens, but the model was trained on {limit}-token contexts: shorten the prompt "
            "(--prompt, or the prompts file of --prompts), or use a model trained on a longer context"
        )
    if max_new_tokens > room and (max_new_tokens, limit) not in _capped:
        _capped.add((max_new_tokens, limit))
        logger.warning(
            "--max_new_tokens %d is capped at %d new tokens: the prompt (%d token(s)) and the story must fit in "
            "the %d-token context the model was trained at (past it, quality falls apart); pass --max_new_tokens "
            "%d or less to silence this",
            max_new_tokens,
            room,
            width,
            limit,
            room,
        )
    return max(1, min(max_new_tokens, room))


def sample_generations(
    model, tokenizer, kind: str = "stories", n: int = 3, max_new_tokens: int = 200, seed: int = 0
) -> list[dict[str, str]]:
    """`n` samples ({prompt, completion}) from `SAMPLE_PROMPTS[kind]` ("stories" or "instruct") for a card.

    A failure is logged and ends the list: a card without samples beats a lost run.
    """
    samples = []
    for i, entry in enumerate(SAMPLE_PROMPTS[kind][: max(0, n)]):
        prompt = build_prompt(**entry) if kind == "instruct" else entry
        try:
            story = generate_story(model, tokenizer, prompt, max_new_tokens=max_new_tokens, seed=seed + i)
        except Exception as err:
            logger.warning("sample generation failed: %s", err)
            break
        samples.append({"prompt": prompt.strip(), "completion": story.strip()})
    return samples


def load_prompts(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows (`id`, `prompt`, optional `category`) of a JSONL file of story beginnings."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"prompts file {str(path)!r} not found: pass --prompts paper, project or <jsonl with a `prompt` field>"
        )
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{path}:{n} is not valid JSON: {e}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ConfigError(f"{path}:{n} needs a non-empty string field `prompt`")
        row.setdefault("id", f"p{len(prompts):03d}")
        prompts.append(row)
    return prompts[:limit] if limit else prompts


def parse_paper_prompts(path: str | os.PathLike) -> list[dict[str, Any]]:
    """`Evaluation prompts.yaml` (a YAML list of story beginnings) as `load_prompts` rows, ids `paper-000`..."""
    try:
        items = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"could not read {str(path)!r}: {err}. Pass --prompts project to use ours") from err
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise ConfigError(f"{str(path)!r} is not a YAML list of story beginnings: pass --prompts project")
    return [{"id": f"paper-{i:03d}", "prompt": p.strip(), "category": None} for i, p in enumerate(items)]


@dataclass
class PromptSet:
    """Evaluation prompts and the name of their set (`eval_results.json` `prompt_set`)."""

    name: str  # "paper", "project" or the JSONL file's name
    rows: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)


def load_prompt_set(source: str = "paper", limit: int | None = None) -> PromptSet:
    """`paper`: the paper's prompts from the Hub (or its cache), else the project's with one log line saying so;
    `project`: `data_generation/eval_prompts.jsonl`; anything else: a JSONL path (`load_prompts`)."""
    if source == "paper":
        try:
            path = hf_hub_download(PAPER_PROMPTS_REPO, PAPER_PROMPTS_FILE, repo_type="dataset")
        except Exception as err:  # offline without a cached copy, Hub unreachable
            logger.warning(
                "the paper's evaluation prompts (%r of %s) are not available (%s): using the project's own, %s",
                PAPER_PROMPTS_FILE,
                PAPER_PROMPTS_REPO,
                type(err).__name__,
                EVAL_PROMPTS_FILE.name,
            )
        else:
            rows = parse_paper_prompts(path)
            return PromptSet("paper", rows[:limit] if limit else rows)
    if source in ("paper", "project"):
        return PromptSet("project", load_prompts(EVAL_PROMPTS_FILE, limit))
    return PromptSet(Path(source).name, load_prompts(source, limit))


def generate_completions(model, tokenizer, prompts: list[dict], args, model_name: str) -> list[dict]:
    """`args.num_completions` sampled completions of every prompt, one row each with the sampling parameters.

    `args.generation_batch_size` prompts per `generate_batch` call, batch b seeded `args.seed + b`: the same
    prompts in the same order get the same seeds (a model and its base), and a batch of one is the one-prompt
    path (`generate_story`, seed + prompt index)."""
    sampling = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p if args.temperature > 0 else None,
        "top_k": args.top_k if args.temperature > 0 else None,
        "do_sample": args.temperature > 0,
        "num_completions": args.num_completions,
        "seed": args.seed,
        "batch_size": args.generation_batch_size,
    }
    rows = []
    size = max(1, args.generation_batch_size)
    batches = [prompts[k : k + size] for k in range(0, len(prompts), size)]
    with tqdm(total=len(prompts), desc="completing prompts", unit="prompt", mininterval=2) as bar:
        for b, batch in enumerate(batches):
            outs = generate_batch(
                model,
                tokenizer,
                [p["prompt"] for p in batch],
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                seed=args.seed + b,
                num_return_sequences=args.num_completions,
            )
            for p, completions in zip(batch, outs, strict=True):
                for k, completion in enumerate(completions):
                    rows.append(
                        {
                            "id": f"{p['id']}-{k}",
                            "prompt_id": p["id"],
                            "category": p.get("category"),
                            "prompt": p["prompt"],
                            "completion": completion,
                            "model": model_name,
                            "sampling": sampling,
                        }
                    )
            bar.update(len(batch))
    return rows
