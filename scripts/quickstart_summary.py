"""The table `make quickstart` ends with: held-out bits per byte, required words used, time of each stage."""

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
    print("stage times: " + ", ".join(f"{n} {b - a}s" for (n, a), (_, b) in itertools.pairwise(stages)))
    print(f"total {stages[-1][1]}s")
    if mode == "real" and (sft.get("rate") or 0) < 0.5:
        print(
            "words used: a model trained for minutes on a CPU does not follow `Words:` yet (it cannot copy from its "
            "context); see 'Instruction following at CPU scale' in README.md"
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
