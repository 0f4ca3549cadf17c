"""The feature detectors (what Instruct records list and eval counts), checked on stories read by hand."""

from __future__ import annotations

import pytest

from conftest import read_sample_stories
from tinystories.data.features import (
    FEATURES,
    detect_features,
    ending_sentiment,
    has_bad_ending,
    is_dark,
)
from tinystories.evaluation.features import dark_stories, feature_prompts, feature_rates

# Read by hand (2026-12-01): the last sentences of 45 stories of the shared sample, by index. Bad ending:
# the story ends in loss, hurt, fear or failure that is not resolved. 20 the detector flags, 25 it does not.
BAD = [1799, 1974, 125, 1476, 2205, 1913, 1585, 2196, 1706, 1380, 837, 1528, 592, 1448, 885, 1593, 342, 2162]
NOT_BAD = [621, 1656]  # flagged, but they end in relief after a scare
UNFLAGGED_GOOD = [433, 1519, 1880, 1349, 874, 2067, 1917, 2263, 1117, 273, 63, 403, 1728, 4, 2141]
UNFLAGGED_GOOD += [1428, 1048, 1390, 275, 816, 951, 1023, 608, 1938, 393]


def test_detectors_on_short_texts():
    assert detect_features('Tom said, "Let us play!" They played.') == ["Dialogue"]
    assert detect_features("Tom played. The moral of the story is to share.") == ["MoralValue"]
    sad = "Tom lost his red ball in the river. He cried and cried, and he never saw it again."
    assert detect_features(sad) == ["BadEnding"] and ending_sentiment(sad) <= -0.3
    assert detect_features("Tom and Sue played all day. They were very happy.") == []
    assert is_dark("The old dog died.") and is_dark(sad + " He was sad, scared and hurt.")
    assert not is_dark("Tom and Sue played all day. They were very happy.")


def test_bad_ending_agrees_with_reading():
    stories = read_sample_stories()
    if len(stories) < 2300:
        pytest.skip("needs the shared 2,316-story sample")
    flagged = {i for i in BAD + NOT_BAD + UNFLAGGED_GOOD if has_bad_ending(stories[i])}
    assert flagged == set(BAD + NOT_BAD)  # the detector as it was read
    agree = sum(i in flagged for i in BAD) + sum(i not in flagged for i in UNFLAGGED_GOOD)
    assert agree == 43 and len(BAD + NOT_BAD + UNFLAGGED_GOOD) == 45  # 43 of 45 agree
    share = sum(has_bad_ending(s) for s in stories) / len(stories)
    assert 0.04 < share < 0.08  # 129 of 2,316


def test_feature_prompts_and_rates():
    prompts = feature_prompts(2, seed=0)
    assert [p["asks"] for p in prompts] == [f for f in FEATURES for _ in range(2)]
    assert all(p["prompt"].startswith(f"Features: {p['asks']}\nWords: ") for p in prompts)
    assert feature_prompts(2, seed=0) == prompts and feature_prompts(2, seed=1) != prompts
    rows = []
    for p in prompts:  # Dialogue whenever asked, never otherwise; MoralValue never; BadEnding in 1 of 4
        for k in range(2):
            shows = {
                "Dialogue": p["asks"] == "Dialogue",
                "MoralValue": False,
                "BadEnding": k == 0 and p["asks"] == "Dialogue",
            }
            rows.append({"prompt_id": p["id"], "asks": p["asks"], "shows": shows})
    rates = feature_rates(rows)
    assert rates["Dialogue"]["asked"]["rate"] == 1.0 and rates["Dialogue"]["not_asked"]["rate"] == 0.0
    assert rates["Dialogue"]["difference"] == 1.0 and rates["Dialogue"]["asked"]["prompts"] == 2
    assert rates["MoralValue"]["difference"] == 0.0
    assert rates["BadEnding"]["asked"]["rate"] == 0.0 and rates["BadEnding"]["not_asked"]["rate"] == 0.25
    lo, hi = rates["BadEnding"]["not_asked"]["ci95"]
    assert lo < 0.25 < hi  # over the 4 prompts that did not ask for it, as clusters


def test_dark_stories_next_to_the_data():
    rows = [{"prompt_id": "a", "completion": "He died."}, {"prompt_id": "b", "completion": "They played."}]
    result = dark_stories(rows, ["The cat died.", "A nice day.", "Fun.", "Sun."], seed=0)
    assert result["model"]["rate"] == 0.5 and result["model"]["completions"] == 2
    assert result["data"]["rate"] == 0.25 and result["data"]["stories"] == 4
