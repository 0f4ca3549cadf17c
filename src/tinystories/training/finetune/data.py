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


def _copies(members: int, share: float, total: int) -> int:
    """Copies of each member that bring a group of `members` of `total` examples to `share` (capped)."""
    if share <= 0 or members == 0:
        return 1
    return min(MAX_REPEATS, max(1, round(share * total / members)))


def feature_groups(features: list[list[str]]) -> dict[str, list[int]]:
    """{"+F": examples whose Features line lists F, "-F": examples with a Features line without F}.

    The "-F" groups are what a prompt asking for another feature looks like: without them a model that
    sees `Features: Dialogue` on 93% of the lines learns "a Features line means dialogue", not the word.
    Examples with no Features line are in neither group (they are not asked anything about features).
    """
    names = sorted({f for fs in features for f in fs})
    groups: dict[str, list[int]] = {}
    for name in names:
        groups[f"+{name}"] = [i for i, fs in enumerate(features) if name in fs]
        groups[f"-{name}"] = [i for i, fs in enumerate(features) if fs and name not in fs]
    return groups


def upsample_features(dataset, min_share: float, absent_min_share: float = 0.0):
    """Repeat examples until each feature's Features lines with it (`min_share`) and without it
    (`absent_min_share`, among lines naming other features) are about that share of the examples.

    An example is repeated as often as its neediest group asks: round(share / group share) copies in all,
    at most `MAX_REPEATS`. A feature in 3.5% of the stories (MoralValue) is otherwise seen too rarely to be
    learned in a short run, and a line without Dialogue (7% of the lines) too rarely for "not asked" to
    mean "absent". Deterministic (the Trainer shuffles); the group sizes before and after are logged.
    """
    if (min_share <= 0 and absent_min_share <= 0) or len(dataset) == 0:
        return dataset
    groups = feature_groups([_features_of(p) for p in dataset["prompt"]])
    total = len(dataset)
    copies = {
        g: _copies(len(members), min_share if g[0] == "+" else absent_min_share, total)
        for g, members in groups.items()
    }
    per_example = [1] * total
    for g, members in groups.items():
        for i in members:
            per_example[i] = max(per_example[i], copies[g])
    index = [i for i, c in enumerate(per_example) for _ in range(c)]
    after = {g: sum(per_example[i] for i in members) for g, members in groups.items()}
    logger.info(
        "feature_min_share %.2f, feature_absent_min_share %.2f: %d examples -> %d; "
        "Features lines with (+) / without (-) each feature, before -> after: %s",
        min_share,
        absent_min_share,
        total,
        len(index),
        ", ".join(f"{g} {len(groups[g])} -> {after[g]} ({after[g] / len(index):.0%})" for g in groups),
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
    out["train"] = upsample_features(out["train"], args.feature_min_share, args.feature_absent_min_share)
    return DatasetDict(out), fmt
