"""The table `make quickstart` ends with: held-out bits per byte, required words used, `Features:` followed
(asked / not asked, SFT and its base), dark stories (models and data), time of each stage."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path


def main(root: str, mode: str) -> None:
    q = Path(root)
    lines = [line.split() for line in (q / "stage_times.txt").read_text().splitlines() if line.strip()]
    stages = [(name, int(t)) for name, t in lines]
    print(f"\nquickstart ({'real stories' if mode == 'real' else 'SMOKE TEST: template stories'})")
    print(f"{'model':<14} {'held-out bits/byte':>18} {'loss':>7} {'stories':>8} {'words used':>11}")
    sft = json.loads((q / "sft" / "eval_results.json").read_text()).get("instruct_words") or {}
    for name, folder in (("pretrain", "pretrain"), ("sft", "sft"), ("lora-merged", "lora/merged")):
        results = json.loads((q / folder / "eval_results.json").read_text())
        words = results.get("instruct_words") or {}
        if name == "pretrain":  # the base's rate, measured on the SFT model's prompts
            words = sft.get("base") or {}
        rate = f"{words['rate']:.0%}" if words.get("rate") is not None else "–"
        print(
            f"{name:<14} {results['bits_per_byte']:>18.4f} {results['loss']:>7.3f} "
            f"{results['num_stories']:>8} {rate:>11}"
        )
    features_table(json.loads((q / "sft" / "eval_results.json").read_text()))
    dark_line(q)
    memorization_line(q)
    print("stage times: " + ", ".join(f"{n} {b - a}s" for (n, a), (_, b) in itertools.pairwise(stages)))
    print(f"total {stages[-1][1]}s")
    if mode == "real" and (sft.get("rate") or 0) < 0.5:
        print(
            "words used: a model trained for minutes on a CPU does not follow `Words:` yet (it cannot copy from its "
            "context); see docs/results/words-following.md"
        )


def _pct(stats: dict | None) -> str:
    return f"{stats['rate']:.0%}" if stats and stats.get("rate") is not None else "–"


def features_table(results: dict) -> None:
    """Each detectable feature: the share of stories showing it when asked / when another is asked."""
    features = results.get("instruct_features") or {}
    if not features.get("features"):
        return
    base = (features.get("base") or {}).get("features") or {}
    print(
        f"\n{'Features: asked / not asked':<28} {'sft':>13} {'difference':>10} {'base':>13} {'difference':>10}"
    )
    for name, rates in features["features"].items():
        theirs = base.get(name) or {}
        mine = f"{_pct(rates['asked'])} / {_pct(rates['not_asked'])}"
        ref = f"{_pct(theirs.get('asked'))} / {_pct(theirs.get('not_asked'))}"
        print(f"{name:<28} {mine:>13} {_diff(rates):>10} {ref:>13} {_diff(theirs):>10}")


def _diff(rates: dict) -> str:
    return f"{rates['difference']:+.2f}" if rates.get("difference") is not None else "–"


def dark_line(q: Path) -> None:
    """Dark stories: each model's completions, and the evaluated stories themselves."""
    cells, data = [], None
    for name, folder in (("pretrain", "pretrain"), ("sft", "sft"), ("lora-merged", "lora/merged")):
        dark = json.loads((q / folder / "eval_results.json").read_text()).get("dark_stories") or {}
        cells.append(f"{name} {_pct(dark.get('model'))}")
        data = data or dark.get("data")
    if data or any(not c.endswith("–") for c in cells):
        print(f"dark stories: {', '.join(cells)}; the stories themselves {_pct(data)}")


def memorization_line(q: Path) -> None:
    """Do the models copy their training stories? 8-word spans shared, next to held-out real stories."""
    cells, real = [], None
    for name, folder in (("pretrain", "pretrain"), ("sft", "sft"), ("lora-merged", "lora/merged")):
        memo = json.loads((q / folder / "eval_results.json").read_text()).get("memorization") or {}
        mine = memo.get("completions") or {}
        if mine.get("share_with_shared_span") is not None:
            cells.append(
                f"{name} {mine['share_with_shared_span']:.0%} (longest {mine['longest_shared_span']})"
            )
        real = real or memo.get("held_out")
    if cells:
        tail = (
            f"; held-out real stories {real['share_with_shared_span']:.0%} (longest {real['longest_shared_span']})"
            if real
            else ""
        )
        print(f"8-word spans copied from training: {', '.join(cells)}{tail}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
