"""Fine-tuning data: rare `Features:` (`feature_min_share`) and their absence (`feature_absent_min_share`)
repeated until they can be learned."""

from __future__ import annotations

from datasets import Dataset

from tinystories.training.finetune.data import feature_groups, upsample_features


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
