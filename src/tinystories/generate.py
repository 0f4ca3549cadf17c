"""`tinystories generate`: sample a story from a checkpoint, from a plain beginning or an Instruct prompt.

    tinystories generate --model roneneldan/TinyStories-33M --prompt "Once upon a time"
    tinystories generate --model roneneldan/TinyStories-Instruct-33M \\
        --words dog ball happy --features Dialogue Twist --summary "A dog loses his ball."

Instruction fields (`--words`, `--features`, `--summary`, `--random_sentence`) build the
TinyStories-Instruct prompt (`tinystories.instruct.build_prompt`, ending in `Story:`); `--prompt` is a
plain story beginning (after the instructions, when both are given). Sampling stays inside the context
the released models were trained at (512 tokens: their stored `max_position_embeddings` 2048 is
misleading) and stops at the end-of-text token. Only the story is printed.

`generate_story` is the reusable piece (evaluation samples, model cards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tinystories.config import TRAINED_CONTEXT


@dataclass
class GenerateArguments:
    model: str = field(
        default="roneneldan/TinyStories-Instruct-33M",
        metadata={"help": "Hub id or local dir of a causal LM, or a LoRA adapter dir (merged onto its base)"},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)"})
    prompt: str | None = field(
        default=None,
        metadata={"help": "plain story beginning, e.g. 'Once upon a time' (after the instructions)"},
    )
    words: list[str] | None = field(
        default=None, metadata={"help": "Instruct: words the story must use (space or comma separated)"}
    )
    features: list[str] | None = field(
        default=None, metadata={"help": "Instruct: story features, e.g. Dialogue Twist BadEnding MoralValue"}
    )
    summary: str | None = field(default=None, metadata={"help": "Instruct: a one-line summary of the story"})
    random_sentence: str | None = field(
        default=None, metadata={"help": "Instruct: a sentence the story must include"}
    )
    max_new_tokens: int = field(
        default=400, metadata={"help": f"capped so that prompt + story <= {TRAINED_CONTEXT} tokens"}
    )
    temperature: float = field(default=0.8, metadata={"help": "0 = greedy decoding"})
    top_k: int | None = field(default=None, metadata={"help": "sample among the k most likely tokens"})
    top_p: float | None = field(default=0.95, metadata={"help": "nucleus sampling (1.0 or unset = off)"})
    num_stories: int = field(
        default=1, metadata={"help": "how many stories to sample (printed one per block)"}
    )
    seed: int = field(default=42, metadata={"help": "random seed (the same seed gives the same story)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps"})
    dtype: str | None = field(
        default=None, metadata={"help": "float32, bfloat16 or float16 (default: float32)"}
    )
    show_prompt: bool = field(
        default=False, metadata={"help": "also print the Instruct prompt before the story (debugging)"}
    )


def _split_list(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def context_limit(model) -> int:
    """Tokens the model may see at once: the trained context (512), or less if the config says so."""
    config = getattr(model, "config", None)
    max_positions = getattr(config, "max_position_embeddings", None) or TRAINED_CONTEXT
    return min(TRAINED_CONTEXT, int(max_positions))


@torch.no_grad()
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
    from transformers import GenerationConfig, set_seed

    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("the tokenizer has no eos_token: generation could not stop at the end of a story")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    if (
        not prompt_ids
    ):  # unconditional: start from <|endoftext|>, the separator the model saw before each story
        prompt_ids = [eos_id]
    limit = context_limit(model)
    room = limit - len(prompt_ids)
    if room <= 0:
        raise ValueError(
            f"the prompt is {len(prompt_ids)} tokens, but the model was trained on {limit}-token contexts: "
            "shorten the prompt"
        )
    max_new_tokens = max(1, min(int(max_new_tokens), room))
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], device=device)
    do_sample = temperature is not None and temperature > 0
    sampling = {}
    if do_sample:
        sampling = {"temperature": float(temperature), "top_k": top_k or 0, "top_p": top_p or 1.0}
    if seed is not None:
        set_seed(seed)
    was_training = model.training
    model.eval()
    # A complete generation config: the checkpoint's own (max_length, top_k, ...) must not override these.
    generation_config = GenerationConfig(
        max_length=len(prompt_ids) + max_new_tokens,  # max_new_tokens would clash with a stored max_length
        do_sample=do_sample,
        num_return_sequences=num_return_sequences,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id,
        **sampling,
    )
    output = model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=generation_config
    )
    if was_training:
        model.train()
    stories = []
    for row in output[:, len(prompt_ids) :].tolist():
        if eos_id in row:  # stop at the first EOS; what follows is padding
            row = row[: row.index(eos_id)]
        stories.append(tokenizer.decode(row, skip_special_tokens=True))
    return stories if num_return_sequences > 1 else stories[0]


def build_generation_prompt(args: GenerateArguments) -> tuple[str, bool]:
    """(prompt, is_instruct): the Instruct prompt when any instruction field is given, plus `--prompt`."""
    from tinystories.instruct import build_prompt

    words, features = _split_list(args.words), _split_list(args.features)
    is_instruct = bool(words or features or args.summary or args.random_sentence)
    prompt = ""
    if is_instruct:
        prompt = build_prompt(
            words=words, features=features, summary=args.summary, random_sentence=args.random_sentence
        )
    if args.prompt:
        prompt += args.prompt
    return prompt, is_instruct


def load_for_generation(name_or_path: str, revision: str | None = None, dtype=None):
    """A causal LM from a Hub id or dir; a LoRA adapter dir (`tinystories lora` output) is merged onto its base."""
    from pathlib import Path

    from tinystories.modeling import install_attention, load_model

    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        # the base named in adapter_config.json (a Hub id, or a path relative to the current directory)
        model = AutoPeftModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
        return install_attention(model.merge_and_unload())
    return load_model(name_or_path, revision=revision, dtype=dtype)


def _resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def main(argv: list[str] | None = None) -> int:
    from tinystories.config import ConfigError, parse_args

    (args,) = parse_args([GenerateArguments], argv)
    if args.num_stories < 1:
        raise ConfigError("--num_stories must be at least 1")
    if args.max_new_tokens < 1:
        raise ConfigError("--max_new_tokens must be at least 1")
    if args.dtype not in (None, "float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype {args.dtype!r}: use float32, bfloat16 or float16")
    prompt, _ = build_generation_prompt(args)

    from tinystories.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.model, revision=args.revision)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = load_for_generation(args.model, revision=args.revision, dtype=dtype).to(
        _resolve_device(args.device)
    )
    try:
        stories = generate_story(
            model,
            tokenizer,
            prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            num_return_sequences=args.num_stories,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if isinstance(stories, str):
        stories = [stories]
    if args.show_prompt and prompt:
        print(prompt, end="" if prompt.endswith("\n") else "\n")
    for i, story in enumerate(stories):
        if i:
            print("\n" + "-" * 40 + "\n")
        # a plain beginning is part of the story; an Instruct prompt is not
        beginning = args.prompt or ""
        print((beginning + story).strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
