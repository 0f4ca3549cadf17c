"""`tinystories generate`: sample a story from a checkpoint, from a plain beginning or an Instruct prompt.

    tinystories generate --model roneneldan/TinyStories-33M --prompt "Once upon a time"
    tinystories generate --model roneneldan/TinyStories-Instruct-33M \\
        --words dog ball happy --features Dialogue Twist --summary "A dog loses his ball."

Instruction fields (`--words`, `--features`, `--summary`, `--random_sentence`) build the
TinyStories-Instruct prompt (`tinystories.data.instruct.build_prompt`, ending in `Story:`); `--prompt` is a
plain story beginning (after the instructions, when both are given). Sampling stays inside the context
the released models were trained at (512 tokens: their stored `max_position_embeddings` 2048 is
misleading) and stops at the end-of-text token. Only the story is printed.

The sampling itself is `tinystories.evaluation.generation.generate_story` (also used for card samples and eval).
`--runtime onnx --model <folder of tinystories export>` runs the same prompt, cap and stop tokens on ONNX
Runtime's CPU provider instead (`onnx/generation.onnx`, or with `--quantized` its int8 twin; one thread):

    tinystories export --model outputs/tinystories-8M --output_dir web/8M --quantize int8
    tinystories generate --runtime onnx --model web/8M --prompt "Once upon a time" --quantized
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, GenerationConfig

from tinystories.core import TRAINED_CONTEXT, ConfigError
from tinystories.core.arguments import (
    InferenceArguments,
    ModelSource,
    SamplingArguments,
    SeedArguments,
    check_choice,
    check_min,
)
from tinystories.core.config import parse_args
from tinystories.core.runtime import resolve_device, resolve_dtype
from tinystories.data.instruct import build_prompt, feature_names
from tinystories.data.tokenizer import load_tokenizer
from tinystories.evaluation.generation import generate_stories_onnx, generate_story
from tinystories.models.export.session import GENERATION_FILE, GENERATION_INT8_FILE, open_generator
from tinystories.models.loading import context_limit, load_model

__all__ = ["TRAINED_CONTEXT", "GenerateArguments", "context_limit", "generate_story", "main"]


@dataclass
class GenerateArguments(ModelSource, SamplingArguments, InferenceArguments, SeedArguments):
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
    num_stories: int = field(
        default=1, metadata={"help": "how many stories to sample (printed one per block)"}
    )
    show_prompt: bool = field(
        default=False, metadata={"help": "also print the Instruct prompt before the story (debugging)"}
    )
    runtime: str = field(
        default="torch",
        metadata={
            "help": "torch, or onnx: ONNX Runtime on the CPU over a `tinystories export` folder given as --model"
        },
    )
    quantized: bool = field(
        default=False,
        metadata={"help": "--runtime onnx: the int8 graph (the folder was exported with --quantize int8)"},
    )

    def check(self):
        check_min("num_stories", self.num_stories, 1)
        check_choice("runtime", self.runtime, RUNTIMES)
        if self.quantized and self.runtime != "onnx":
            raise ConfigError("--quantized picks the int8 ONNX graph: pass it with --runtime onnx")
        for flag, example in (("words", "dog ball happy"), ("features", "Dialogue Twist")):
            if getattr(self, flag) is not None and not _split_list(getattr(self, flag)):
                raise ConfigError(
                    f"--{flag} {' '.join(getattr(self, flag))!r}: holds no {flag[:-1]}; pass some, e.g. "
                    f"--{flag} {example}, or leave --{flag} out"
                )
        known = {name.lower(): name for name in feature_names()}
        unknown = [f for f in _split_list(self.features) if f.lower() not in known]
        if unknown:
            raise ConfigError(
                f"--features {' '.join(unknown)}: unknown feature; use one of {', '.join(known.values())} "
                "(the labels of the Instruct Features: line)"
            )
        if self.features:  # the spelling the models were trained on
            self.features = [known[f.lower()] for f in _split_list(self.features)]


RUNTIMES = ("torch", "onnx")


def _split_list(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def build_generation_prompt(args: GenerateArguments) -> tuple[str, bool]:
    """(prompt, is_instruct): the Instruct prompt when any instruction field is given, plus `--prompt`."""
    words, features = _split_list(args.words), _split_list(args.features)
    is_instruct = bool(words or features or args.summary or args.random_sentence)
    prompt = ""
    if is_instruct:
        prompt = build_prompt(
            words=words, features=features, summary=args.summary, random_sentence=args.random_sentence
        )
    return prompt + (args.prompt or ""), is_instruct


# the dataclasses of this stage's flags (`--help`, the CLI reference in the docs)
ARGUMENTS = (GenerateArguments,)
DEFAULTS = {"model": "roneneldan/TinyStories-Instruct-33M", "max_new_tokens": 400, "temperature": 0.8}


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args(ARGUMENTS, argv, DEFAULTS)
    prompt, _ = build_generation_prompt(args)
    stories = _generate_onnx(args, prompt) if args.runtime == "onnx" else _generate_torch(args, prompt)

    if args.show_prompt and prompt:
        print(prompt, end="" if prompt.endswith("\n") else "\n")
    for i, story in enumerate(stories):
        if i:
            print("\n" + "-" * 40 + "\n")
        print(
            ((args.prompt or "") + story).strip()
        )  # a plain beginning is part of the story; instructions are not
    return 0


def _sampling(args: GenerateArguments) -> dict:
    """The sampling flags, as both runtimes take them."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
    }


def _generate_torch(args: GenerateArguments, prompt: str) -> list[str]:
    device, dtype = resolve_device(args.device), resolve_dtype(args.precision)
    model = load_model(args.model, revision=args.revision, dtype=dtype).to(device)  # a bad --model first
    tokenizer = load_tokenizer(
        args.tokenizer or args.model, revision=None if args.tokenizer else args.revision
    )
    try:
        stories = generate_story(
            model,
            tokenizer,
            prompt,
            **_sampling(args),
            num_return_sequences=args.num_stories,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return [stories] if isinstance(stories, str) else stories


def _generate_onnx(args: GenerateArguments, prompt: str) -> list[str]:
    """The exported folder's generation graph, tokenizer, config and generation config."""
    folder = Path(args.model).expanduser()
    file = GENERATION_INT8_FILE if args.quantized else GENERATION_FILE
    if not (folder / file).is_file():
        flags = " --quantize int8" if args.quantized else ""
        raise ConfigError(
            f"--runtime onnx reads a folder written by `tinystories export{flags}`, and {args.model} "
            f"has no {file}: run `tinystories export --model {args.model} --output_dir <dir>{flags}`, "
            "then pass --model <dir>"
        )
    tokenizer = load_tokenizer(args.tokenizer or str(folder))
    return generate_stories_onnx(
        open_generator(folder, quantized=args.quantized, threads=1),
        tokenizer,
        AutoConfig.from_pretrained(folder),
        GenerationConfig.from_pretrained(folder),
        prompt,
        **_sampling(args),
        num_stories=args.num_stories,
    )


if __name__ == "__main__":
    raise SystemExit(main())
