"""Every number of `tinystories data-report` on hand-made datasets with known answers (data/report.py,
dedup/overlap.py, stages/data_report.py, the dataset card's table)."""

from __future__ import annotations

import json

import pytest

from tinystories.data.report import (
    child_vocabulary,
    distribution,
    feature_rates,
    load_report_input,
    openings,
    out_of_vocabulary,
    unknown_words,
    words_used,
)
from tinystories.dedup.overlap import duplicate_overlap
from tinystories.hub.dataset_card import report_rows, write_dataset_card
from tinystories.stages.data_report import main
from tinystories.stages.dedup import main as dedup_main
from tinystories.synthesis.arguments import SynthesisArguments
from tinystories.synthesis.backends import Completion, TemplateBackend
from tinystories.synthesis.job import run, run_shard

LONG = (
    "Once upon a time, there was a little boy named Sam. Sam had a red kite and a small cat. Every morning, Sam "
    "and the cat went to the big hill behind the house to fly the kite in the wind. The kite went up and up."
)
OTHER = (
    "Lily liked to paint pictures of the sun. She painted a yellow sun, a blue sky and a green tree. Her mom put "
    "the pictures on the wall of the kitchen, and Lily smiled every time she saw them there."
)


# ------------------------------------------------------------------------------------------- numbers
def test_words_used_counts_inflections_per_part_of_speech():
    stories = ["The dog ran to the balls. It was bigger.", "The dog ran. It was big.", "Nothing here."]
    words = [["run", "ball", "big"], ["run", "ball", "big"], ["run", "ball", "big"]]
    got = words_used(stories, words)
    assert got["words_all_used"] == pytest.approx(1 / 3, abs=1e-4)
    assert got["words_used"] == {
        "verb": pytest.approx(0.6667),
        "noun": pytest.approx(0.3333),
        "adjective": 0.6667,
    }


def test_feature_rates_when_requested_and_not():
    stories = ['"Hi!" said Tom.', "Tom sat.", '"Yes," said Sue.', "The moral is: share."]
    requested = [["Dialogue"], ["Dialogue"], [], ["MoralValue"]]
    rates = feature_rates(stories, requested)
    assert rates["Dialogue"] == {
        "present": 0.5,
        "requested": 2,
        "present_when_requested": 0.5,
        "present_when_not_requested": 0.5,
    }
    assert rates["MoralValue"]["present_when_requested"] == 1.0
    assert rates["MoralValue"]["present_when_not_requested"] == 0.0
    assert feature_rates(stories, None)["Dialogue"] == {"present": 0.5}


def test_words_outside_the_child_vocabulary():
    vocabulary = child_vocabulary()
    assert {"the", "dog", "dogs", "ran", "happy", "happier"} <= vocabulary
    story = "Zorg saw a xylophone. The xylophone was perplexed. Zorg ran."
    assert unknown_words(story, vocabulary) == ["perplexed", "xylophone"]  # Zorg: a name
    got = out_of_vocabulary([story, "The dog ran."], vocabulary)
    assert got["mean_per_story"] == 1.0 and got["median_per_story"] == 1.0 and got["stories_with_none"] == 0.5
    assert got["most_common"] == [["perplexed", 1], ["xylophone", 1]]


def test_lengths_and_openings():
    assert distribution([10, 20, 30, 40, 50]) == {
        "mean": 30.0,
        "median": 30,
        "p10": 10,
        "p90": 50,
        "min": 10,
        "max": 50,
    }
    stories = [
        "Once upon a time, a cat sat. It slept.",
        "Once upon a time, a cat sat. It ran.",
        "One day, Tom ran.",
    ]
    got = openings(stories, top=1)
    assert got["once_upon_a_time"] == pytest.approx(0.6667)
    assert got["distinct_first_sentences"] == pytest.approx(0.6667)
    assert got["most_common_first_sentences"] == [["Once upon a time, a cat sat.", 2]]


def test_duplicates_within_and_across():
    near = LONG.replace("red kite", "blue kite")
    a = [LONG, LONG.upper(), OTHER, near]  # an exact (case) and a near duplicate of the first
    b = [OTHER, "A short different story about a frog and a log in the rain, with many other words here."]
    got = duplicate_overlap([a, b], ["a", "b"])
    assert got["within"]["a"] == {"exact": 1, "near": 1, "exact_share": 0.25, "near_share": 0.25}
    assert got["within"]["b"] == {"exact": 0, "near": 0, "exact_share": 0.0, "near_share": 0.0}
    assert got["across"] == [
        {"a": "a", "b": "b", "exact": 1, "near": 0, "share_of_a": 0.25},
        {"a": "b", "b": "a", "exact": 1, "near": 0, "share_of_a": 0.5},
    ]
    changed = OTHER.replace("yellow sun", "yellow moon")
    across = duplicate_overlap([[changed], [OTHER]], ["x", "y"])["across"]
    assert (across[0]["exact"], across[0]["near"]) == (0, 1)


# ------------------------------------------------------------------------------------------- the stage
class _Loopy(TemplateBackend):
    """Odd records loop (trimmed), record 2 refuses; the rest are template stories."""

    def complete_batch(self, requests):
        out = super().complete_batch(requests)
        for r, a in zip(requests, out, strict=True):
            if r.spec.index % 2:
                a.text = LONG + " She was so happy." * 6
            elif r.spec.index == 2:
                out[out.index(a)] = Completion("I'm sorry, but I can't.", "stop")
        return out


@pytest.fixture
def generated(tmp_path):
    args = SynthesisArguments(
        output_dir=str(tmp_path / "gen"), backend="template", num_stories=6, flush_every=2
    )
    run_shard(args, backend=_Loopy(args.sampling()))
    run(SynthesisArguments(**{**args.__dict__, "merge_only": True}))
    return tmp_path / "gen"


def test_the_report_of_a_generated_dir_a_txt_and_a_jsonl(tmp_path, generated):
    txt = tmp_path / "real.txt"
    txt.write_text(f"{LONG}\n<|endoftext|>\n{OTHER}\n<|endoftext|>\n{OTHER}\n")
    jsonl = tmp_path / "records.jsonl"
    rows = [{"text": LONG, "words": ["fly", "kite", "red"], "features": ["Dialogue"]}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "report"
    assert (
        main(["--data", str(generated), str(txt), str(jsonl), "--output_dir", str(out), "--tokenizer", ""])
        == 0
    )
    report = json.loads((out / "data_report.json").read_text())
    gen, real, records = report["datasets"]
    assert [d["name"] for d in report["datasets"]] == ["gen", "real.txt", "records.jsonl"]
    assert (gen["stories"], real["stories"], records["stories"]) == (5, 3, 1)
    assert gen["generation"]["loops_trimmed"] == 3 and gen["generation"]["refused"] == 1
    assert gen["generation"]["backend"] == "template"
    assert real["words_all_used"] is None and records["words_all_used"] == 1.0
    assert records["features"]["Dialogue"]["present_when_requested"] == 0.0
    assert real["duplicates"]["exact"] == 1 and real["length_tokens"] is None
    assert gen["duplicates"]["exact"] == 2  # the three trimmed loops are the same story
    real_in_gen = next(o for o in report["overlap"] if o["a"] == "real.txt" and o["b"] == "gen")
    assert (real_in_gen["exact"], real_in_gen["near"]) == (0, 1)  # LONG vs LONG + "She was so happy."
    assert {p.name for p in out.glob("*.png")} == {"instructions.png", "lengths.png", "quality.png"}
    card = write_dataset_card(tmp_path / "card", {"data_report": report}).read_text()
    assert "## Data report" in card and "| real.txt | 3 | — |" in card
    assert report_rows(report)[0][-1] == "3 / 0"


def test_a_dedup_output_keeps_the_generation_stats(tmp_path, generated):
    dedup_main(["--input", str(generated), "--output_dir", str(tmp_path / "dedup"), "--num_proc", "1"])
    item = load_report_input(str(tmp_path / "dedup"))
    assert (
        item.name == "dedup" and len(item.stories) == 3
    )  # 5 generated, the two copies of the trimmed loop dropped
    assert item.generation["loops_trimmed"] == 3 and item.dedup["exact_duplicates"] == 2
