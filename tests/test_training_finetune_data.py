"""Fine-tuning data: rare `Features:` repeated until they can be learned (`feature_min_share`)."""

from __future__ import annotations

from datasets import Dataset

from tinystories.training.finetune.data import upsample_features


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
