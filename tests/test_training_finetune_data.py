"""Fine-tuning data: rare `Features:` (`feature_min_share`) and their absence (`feature_absent_min_share`)
repeated until they can be learned."""

from __future__ import annotations

from datasets import Dataset

from tinystories.training.finetune.data import (
    alone_groups,
    drop_over_length,
    feature_groups,
    upsample_features,
)


def test_rare_features_are_repeated_to_the_share_asked():
    prompts = ["Features: Dialogue\nStory: \n"] * 50 + ["Features: MoralValue\nStory: \n"] * 2
    prompts += ["Features: Dialogue, MoralValue\nStory: \n"] + ["Words: a, b, c\nStory: \n"] * 47
    data = Dataset.from_dict({"prompt": prompts, "completion": [f"\n\nstory {i}" for i in range(100)]})
    out = upsample_features(data, 0.2)
    # MoralValue in 3 of 100: round(0.2 * 100 / 3) = 7 copies each; Dialogue (51) is common: 1
    assert len(out) == 100 + 3 * 6
    moral = [p for p in out["prompt"] if "MoralValue" in p]
    assert len(moral) == 21 and out["completion"].count("\n\nstory 50") == 7
    assert upsample_features(data, 0.0) is data
    # 0.9: MoralValue capped at 20 copies, Dialogue round(0.9 * 100 / 51) = 2: 50 * 2 + 3 * 20 + 47
    assert len(upsample_features(data, 0.9)) == 207


def _lines_data():
    # 60 lines with Dialogue, 4 with BadEnding only, 36 without a Features line
    prompts = ["Features: Dialogue\nStory: \n"] * 60 + ["Features: BadEnding\nStory: \n"] * 4
    prompts += ["Words: a, b, c\nStory: \n"] * 36
    return Dataset.from_dict({"prompt": prompts, "completion": [f"\n\nstory {i}" for i in range(100)]})


def test_feature_groups_split_lines_by_presence_and_absence():
    groups = feature_groups([["Dialogue"], ["BadEnding"], [], ["Dialogue", "BadEnding"]])
    assert groups == {"+BadEnding": [1, 3], "-BadEnding": [0], "+Dialogue": [0, 3], "-Dialogue": [1]}


def test_lines_without_a_feature_are_repeated_to_the_absent_share():
    data = _lines_data()
    # presence only: BadEnding round(0.2 * 100 / 4) = 5 copies, Dialogue 1; no line: never repeated
    assert len(upsample_features(data, 0.2)) == 60 + 4 * 5 + 36
    # absence too: lines without Dialogue (the 4 BadEnding ones) round(0.4 * 100 / 4) = 10 copies, the larger
    # need wins; lines without BadEnding (60 Dialogue ones) round(0.4 * 100 / 60) = 1
    out = upsample_features(data, 0.2, absent_min_share=0.4)
    assert len(out) == 60 + 4 * 10 + 36
    assert out["completion"].count("\n\nstory 60") == 10 and out["completion"].count("\n\nstory 0") == 1
    assert upsample_features(data, 0.0, absent_min_share=0.0) is data
    # without Dialogue round(0.9 * 100 / 4) = 22, capped at MAX_REPEATS (20); without BadEnding 2
    assert len(upsample_features(data, 0.0, absent_min_share=0.9)) == 60 * 2 + 4 * 20 + 36
    assert upsample_features(data, 0.2, 0.4)["prompt"] == out["prompt"]  # deterministic


def test_lines_naming_a_feature_alone_are_repeated_to_the_alone_share():
    prompts = ["Features: Dialogue\nStory: \n"] * 60 + ["Features: Dialogue, MoralValue\nStory: \n"] * 10
    prompts += ["Features: MoralValue\nStory: \n"] * 2 + ["Features: BadEnding\nStory: \n"] * 8
    prompts += ["Words: a, b, c\nStory: \n"] * 20
    data = Dataset.from_dict({"prompt": prompts, "completion": [f"\n\nstory {i}" for i in range(100)]})
    assert alone_groups([["Dialogue"], ["Dialogue", "MoralValue"], ["MoralValue"], []]) == {
        "=Dialogue": [0],
        "=MoralValue": [2],
    }
    # presence only: MoralValue (12) round(0.2 * 100 / 12) = 2 copies, BadEnding (8) round(2.5) = 2, Dialogue 1
    assert len(upsample_features(data, 0.2)) == 60 + 12 * 2 + 8 * 2 + 20
    # alone 0.1: MoralValue alone (2) round(0.1 * 100 / 2) = 5 copies, BadEnding alone (8) keeps its 2
    out = upsample_features(data, 0.2, alone_min_share=0.1)
    assert len(out) == 60 + 10 * 2 + 2 * 5 + 8 * 2 + 20
    assert out["prompt"].count("Features: MoralValue\nStory: \n") == 10
    assert out["completion"].count("\n\nstory 60") == 2  # a Dialogue, MoralValue line: its + copies only
    assert upsample_features(data, 0.0, 0.0, 0.0) is data


def test_examples_longer_than_max_length_are_dropped_not_truncated(gpt_neo_tokenizer):
    tok = gpt_neo_tokenizer
    short, long = "\n\nTom ran home.", "\n\n" + "Tom ran home and then he ran back again. " * 20
    data = Dataset.from_dict(
        {"prompt": ["Features: Dialogue\nStory: \n"] * 3, "completion": [short, long, short]}
    )
    n_short = len(tok("Features: Dialogue\nStory: \n" + short)["input_ids"]) + 1  # + EOS, as TRL appends it
    kept, dropped = drop_over_length(data, tok, n_short)
    assert dropped == 1 and kept["completion"] == [short, short]
    assert drop_over_length(data, tok, n_short - 1)[1] == 3  # the EOS counts
    same, none = drop_over_length(data, tok, 10_000)
    assert none == 0 and same is data
