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


def alone_groups(features: list[list[str]]) -> dict[str, list[int]]:
    """{"=F": examples whose Features line names F and nothing else}: what a prompt asking for F alone looks like.

    In the quickstart's records 16 lines name MoralValue alone against 60 BadEnding alone: a model that sees
    the two rare features mostly next to Dialogue, and one of them alone four times as often, writes the same
    story for either (as many morals when asked for BadEnding as for MoralValue).
    """
    names = sorted({f for fs in features for f in fs})
    return {f"={name}": [i for i, fs in enumerate(features) if fs == [name]] for name in names}


def upsample_features(dataset, min_share: float, absent_min_share: float = 0.0, alone_min_share: float = 0.0):
    """Repeat examples until each feature's Features lines with it (`min_share`), without it (`absent_min_share`,
    among lines naming other features) and with it alone (`alone_min_share`) are about that share of the examples.

    An example is repeated as often as its neediest group asks: round(share / group share) copies in all,
    at most `MAX_REPEATS`. A feature in 3.5% of the stories (MoralValue) is otherwise seen too rarely to be
    learned in a short run, and a line without Dialogue (7% of the lines) too rarely for "not asked" to
    mean "absent". Deterministic (the Trainer shuffles); the group sizes before and after are logged.
    """
    if (min_share <= 0 and absent_min_share <= 0 and alone_min_share <= 0) or len(dataset) == 0:
        return dataset
    features = [_features_of(p) for p in dataset["prompt"]]
    groups = {**feature_groups(features), **alone_groups(features)}
    shares = {"+": min_share, "-": absent_min_share, "=": alone_min_share}
    total = len(dataset)
    copies = {g: _copies(len(members), shares[g[0]], total) for g, members in groups.items()}
    per_example = [1] * total
    for g, members in groups.items():
        for i in members:
            per_example[i] = max(per_example[i], copies[g])
    index = [i for i, c in enumerate(per_example) for _ in range(c)]
    after = {g: sum(per_example[i] for i in members) for g, members in groups.items()}
    logger.info(
        "feature_min_share %.2f, feature_absent_min_share %.2f, feature_alone_min_share %.2f: %d examples -> %d; "
        "Features lines with (+) / without (-) / with only (=) each feature, before -> after: %s",
        min_share,
        absent_min_share,
        alone_min_share,
        total,
        len(index),
        ", ".join(f"{g} {len(groups[g])} -> {after[g]} ({after[g] / len(index):.0%})" for g in groups),
    )
    return dataset.select(index)


def drop_over_length(dataset, tokenizer, max_length: int):
    """The examples whose prompt + story + EOS fit in `max_length` tokens (as TRL tokenizes them), and how many
    did not. Truncation would cut the end of the story, where a moral or a bad ending is: the truncated example
    would pair its `Features:` line with a story that does not show the feature."""
    texts = [p + c for p, c in zip(dataset["prompt"], dataset["completion"], strict=True)]
    keep = []
    for start in range(0, len(texts), 10_000):  # one tokenizer call per chunk: batched in Rust
        ids = tokenizer(texts[start : start + 10_000], add_special_tokens=False)["input_ids"]
        keep += [len(i) + 1 <= max_length for i in ids]
    dropped = keep.count(False)
    return (dataset.select([i for i, k in enumerate(keep) if k]) if dropped else dataset), dropped


def _as_text(dataset, text_column: str):
    if text_column != "text":
        dataset = dataset.rename_column(text_column, "text")
    return dataset.select_columns(["text"])


def prepare_data(
    args: FinetuneArguments, tokenizer=None, max_length: int | None = None
) -> tuple[DatasetDict, str]:
    """(DatasetDict with prompt/completion (Instruct) or text (plain stories) columns, the format used).

    With `args.drop_long_examples`, Instruct training examples longer than `max_length` tokens (`tokenizer`) are
    dropped before the rare features are repeated."""
    raw = load_stories(
        args.data,
        validation_fraction=args.validation_fraction,
        text_column=args.text_column,
        eval_data=args.eval_data,
        revision=args.data_revision,
        config_name=args.data_config,
        on_decode_error=args.on_decode_error,
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
    if args.drop_long_examples:
        if tokenizer is None or not max_length:
            raise ValueError("drop_long_examples needs the tokenizer and max_length")
        out["train"], dropped = drop_over_length(out["train"], tokenizer, max_length)
        logger.info(
            "drop_long_examples: %d training examples longer than %d tokens dropped", dropped, max_length
        )
        if len(out["train"]) == 0:
            raise ConfigError(
                f"every training example of {args.data!r} is longer than max_length {max_length}: "
                "raise --max_length or pass --drop_long_examples false"
            )
    out["train"] = upsample_features(
        out["train"], args.feature_min_share, args.feature_absent_min_share, args.feature_alone_min_share
    )
    return DatasetDict(out), fmt
