"""The table `make quickstart` ends with, from the files its stages wrote."""

import json

import pytest

from scripts.quickstart_summary import main


def _write(root, sft_rate):
    (root / "stage_times.txt").write_text("data 0\npretrain 10\nsft 250\ndone 300\n")
    for folder, bpb in (("pretrain", 1.3367), ("sft", 1.3595), ("lora/merged", 1.3402)):
        (root / folder).mkdir(parents=True)
        results = {"bits_per_byte": bpb, "loss": 3.77, "num_stories": 232}
        results["dark_stories"] = {"model": {"rate": 0.25}, "data": {"rate": 0.1}}
        if folder == "sft":
            results["instruct_words"] = {"rate": sft_rate, "base": {"rate": 0.02}}
            rates = {"asked": {"rate": 0.7}, "not_asked": {"rate": 0.3}, "difference": 0.4}
            base = {"asked": {"rate": 0.5}, "not_asked": {"rate": 0.48}, "difference": 0.02}
            results["instruct_features"] = {
                "features": {"Dialogue": rates},
                "base": {"features": {"Dialogue": base}},
            }
        (root / folder / "eval_results.json").write_text(json.dumps(results))


@pytest.mark.parametrize("sft_rate", [0.03, 0.6])
def test_summary_table_and_the_words_note(tmp_path, capsys, sft_rate):
    _write(tmp_path, sft_rate)
    main(str(tmp_path), "real")
    out = capsys.readouterr().out
    assert "pretrain                   1.3367" in out and "2%" in out  # the base's rate on the pretrain row
    assert f"{sft_rate:.0%}" in out
    assert "stage times: data 10s, pretrain 240s, sft 50s" in out and "total 300s" in out
    assert ("does not follow `Words:` yet" in out) is (sft_rate < 0.5)
    row = next(line for line in out.splitlines() if line.startswith("Dialogue"))
    assert row.split() == ["Dialogue", "70%", "/", "30%", "+0.40", "50%", "/", "48%", "+0.02"]
    assert "dark stories: pretrain 25%, sft 25%, lora-merged 25%; the stories themselves 10%" in out
