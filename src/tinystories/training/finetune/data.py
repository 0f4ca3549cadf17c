"""Fine-tuning data: Instruct examples → `prompt`/`completion` (loss on the story and its EOS), or plain `text`."""

from __future__ import annotations

import logging

from datasets import DatasetDict

from tinystories.core import ConfigError
from tinystories.data.instruct import parse_example, split_prompt_completion
from tinystories.data.loading import load_stories
from tinystories.training.finetune.arguments import FinetuneArguments

logger = logging.getLogger(__name__)


def instruct_fraction(dataset, text_column: str = "text", n: int = 200) -> float:
    """Fraction of the first `n` examples that are Instruct-formatted (have a `Story:` line)."""
    texts = dataset.select(range(min(n, len(dataset))))[text_column]
    ok = 0
    for text in texts:
        try:
            parse_example(text)
            ok += 1
        except ValueError:
            pass
    return ok / max(1, len(texts))


def to_prompt_completion(dataset, text_column: str = "text"):
    """Instruct examples -> `prompt` (instructions + `Story: \\n`) and `completion` (blank line + story) columns.

    Examples without a `Story:` line or with an empty story are dropped (and counted in the log).
    """

    def convert(batch):
        prompts, completions = [], []
        for text in batch[text_column]:
            try:
                prompt, completion = split_prompt_completion(text)
            except ValueError:
                continue
            if completion.strip():
                prompts.append(prompt)
                completions.append(completion)
        return {"prompt": prompts, "completion": completions}

    converted = dataset.map(
        convert, batched=True, remove_columns=dataset.column_names, desc="splitting prompt / story"
    )
    dropped = len(dataset) - len(converted)
    if dropped:
        logger.warning("dropped %d of %d examples without a 'Story:' line or story", dropped, len(dataset))
    return converted, dropped


MAX_REPEATS = 20


def _features_of(prompt: str) -> list[str]:
    line = next((ln for ln in prompt.splitlines() if ln.startswith("Features:")), "")
    return [f.strip() for f in line.removeprefix("Features:").split(",") if f.strip()]


def upsample_features(dataset, min_share: float, seed: int = 0):
    """Repeat the examples of features rarer than `min_share` (of the examples), at most `MAX_REPEATS` times.

    An example is repeated as often as its rarest feature needs: round(min_share / share) copies in all.
    A feature that is in 3.5% of the stories (MoralValue) is otherwise seen too rarely to be learned in a
    short run; the others keep their share of the examples, nearly. Deterministic; shuffled by the Trainer.
    """
    if min_share <= 0 or len(dataset) == 0:
        return dataset
    features = [_features_of(p) for p in dataset["prompt"]]
    counts: dict[str, int] = {}
    for fs in features:
        for f in fs:
            counts[f] = counts.get(f, 0) + 1
    copies = {f: min(MAX_REPEATS, max(1, round(min_share * len(dataset) / n))) for f, n in counts.items()}
    index = [i for i, fs in enumerate(features) for _ in range(max([copies[f] for f in fs], default=1))]
    logger.info(
        "feature_min_share %.2f: %s examples -> %d (copies per feature: %s)",
        min_share,
        len(dataset),
        len(index),
        copies,
    )
    return dataset.select(index)


def _as_text(dataset, text_column: str):
    if text_column != "text":
        dataset = dataset.rename_column(text_column, "text")
    return dataset.select_columns(["text"])


def prepare_data(args: FinetuneArguments) -> tuple[DatasetDict, str]:
    """(DatasetDict with prompt/completion (Instruct) or text (plain stories) columns, the format used)."""
    raw = load_stories(
        args.data,
        validation_fraction=args.validation_fraction,
        text_column=args.text_column,
        eval_data=args.eval_data,
        revision=args.data_revision,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
    )
    instruct_share = instruct_fraction(raw["train"], args.text_column)
    fmt = args.data_format
    if fmt == "auto":
        fmt = "instruct" if instruct_share >= 0.5 else "stories"
        logger.info("data format detected: %s", fmt)
    elif fmt == "instruct" and instruct_share < 0.5:
        raise ConfigError(
            f"DATA {args.data!r} does not look like TinyStories-Instruct data (most examples have no 'Story:' line): "
            "pass Instruct data (e.g. roneneldan/TinyStoriesInstruct or `make data DATA_RECIPE=instruct`), "
            "or use `make lora` with --data_format stories to fine-tune on plain stories"
        )
    if fmt == "stories":
        return DatasetDict({s: _as_text(raw[s], args.text_column) for s in ("train", "validation")}), fmt
    out = {split: to_prompt_completion(raw[split], args.text_column)[0] for split in ("train", "validation")}
    for split, ds in out.items():
        if len(ds) == 0:
            raise ConfigError(f"no usable Instruct examples in the {split} split of {args.data!r}")
    out["train"] = upsample_features(out["train"], args.feature_min_share)
    return DatasetDict(out), fmt
