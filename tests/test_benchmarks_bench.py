"""`tinystories bench`: both paths see exactly the same real tokens; the JSON carries the numbers.

Never asserts a speed: timings depend on the machine.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.bench import BenchArguments, main, prepare_tokens
from tinystories.core import ConfigError


def test_prepare_tokens_same_stream(sample_txt, gpt_neo_tokenizer):
    args = BenchArguments(data=str(sample_txt), steps=3, batch_size=4, block_size=128)
    tokens = prepare_tokens(args, gpt_neo_tokenizer)
    stock, packed = tokens["stock_rows"], tokens["packed_rows"]
    assert all(len(b) == 128 for b in packed)
    assert all(0 < len(r) <= 128 for r in stock)
    assert sum(map(len, stock)) == len(packed) * 128 == tokens["real_tokens"]
    # literally the same token stream, cut at the same point
    assert [t for r in stock for t in r] == [t for b in packed for t in b]
    eos = gpt_neo_tokenizer.eos_token_id
    assert sum(t == eos for r in stock for t in r) == sum(r[-1] == eos for r in stock)  # EOS ends a row
    assert sum(r[-1] == eos for r in stock) >= 3 * 4 - 1  # one row per story (the last one may be cut)
    assert tokens["packed_batch_size"] >= 1


def test_bench_train_and_dedup_json(tmp_path, sample_txt, gpt_neo_tokenizer_dir, capsys):
    out = tmp_path / "bench"
    argv = [
        "--suite", "train,dedup",
        "--sizes", "1M",
        "--data", str(sample_txt),
        "--tokenizer", str(gpt_neo_tokenizer_dir),
        "--steps", "2",
        "--batch_size", "2",
        "--block_size", "128",
        "--warmup_steps", "1",
        "--isolate", "false",
        "--dedup_stories", "400",
        "--num_proc", "1",
        "--output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "bench.json").read_text())
    res = report["train"]["sizes"]["1M"]
    stock, default = res["runs"]["stock"], res["runs"]["default"]
    assert res["same_real_tokens"] is True
    assert stock["real_tokens"] == default["real_tokens"] == report["train"]["data"]["real_tokens"]
    data = report["train"]["data"]
    assert stock["real_tokens"] % 128 == 0
    assert stock["steps"] == math.ceil(data["stock_row_count"] / 2)  # one story (piece) per row, 2 per step
    assert default["steps"] == math.ceil(stock["real_tokens"] / 128 / data["packed_batch_size"])
    for run in (stock, default):
        assert run["tokens_per_second"] > 0 and run["peak_rss_mb"] > 0 and run["seconds"] > 0
        assert run["tokens_per_cpu_second"] > 0 and run["cpu_seconds"] > 0
        assert 0 < run["timed_tokens"] < run["real_tokens"]  # the warm-up step is left out
        assert run["first_loss"] == pytest.approx(10.8, abs=0.5)  # ln(50257) at init: a real model trained
    assert (
        default["spec"]["attention"] == "sdpa" and default["spec"]["packing"] and default["spec"]["fused_ce"]
    )
    assert stock["spec"]["attention"] == "eager" and not stock["spec"]["packing"]
    assert res["ratio_default_over_stock"] == pytest.approx(
        default["tokens_per_second"] / stock["tokens_per_second"], rel=0.02
    )
    assert res["cpu_time_ratio_default_over_stock"] == pytest.approx(
        default["tokens_per_cpu_second"] / stock["tokens_per_cpu_second"], rel=0.02
    )
    for run in (stock, default):  # the whole run (model, Trainer, every step) is slower than the timed window
        assert run["whole_run_tokens_per_second"] > 0 and run["whole_run_seconds"] > run["seconds"]
    assert res["whole_run_ratio_default_over_stock"] == pytest.approx(
        default["whole_run_tokens_per_second"] / stock["whole_run_tokens_per_second"], rel=0.02
    )
    for run in (stock, default):  # the phases add up to the whole run
        phases = run["phases"]
        assert set(phases) == {
            "tokenizer_and_model",
            "data_and_trainer",
            "first_step",
            "other_steps",
            "end_of_training",
        }
        assert min(phases.values()) >= 0 and phases["first_step"] > 0 and phases["other_steps"] > 0
        assert sum(phases.values()) == pytest.approx(run["whole_run_seconds"], abs=0.01)
    assert report["dedup"]["num_stories"] == 400 and report["dedup"]["stories_per_second"] > 0
    assert report["machine"]["device"] == "cpu"
    printed = capsys.readouterr().out
    assert (
        "default / stock" in printed
        and "dedup:" in printed
        and "first step" in printed
        and str(out / "bench.json") in printed
    )


def test_bench_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        main(["--suite", "train", "--data", str(tmp_path / "missing.txt")])
    with pytest.raises(ConfigError, match="--tokenizer"):
        main(["--suite", "train", "--data", str(tmp_path), "--tokenizer", str(tmp_path / "nope")])
    with pytest.raises(ConfigError, match="warmup"):
        main(["--suite", "train", "--steps", "1", "--warmup_steps", "1"])
    with pytest.raises(ConfigError, match="suite"):
        main(["--suite", "speed"])
    with pytest.raises(ConfigError, match="size"):
        main(["--suite", "train", "--sizes", "5M", "--data", str(tmp_path)])


@pytest.mark.slow  # the benchmark harness end to end (an export or a training per path): make test-slow
def test_bench_finetune_suite_json(tmp_path, sample_txt, gpt_neo_tokenizer_dir, capsys):
    """TRL's stock path, the project's SFT / LoRA and pretraining on the same examples: counted, ratios in the JSON."""
    out = tmp_path / "bench"
    argv = [
        "--suite", "finetune",
        "--data", str(sample_txt),
        "--tokenizer", str(gpt_neo_tokenizer_dir),
        "--finetune_paths", "trl,sft,lora,pretrain",
        "--finetune_steps", "2",
        "--finetune_batch_size", "2",
        "--finetune_max_length", "64",
        "--finetune_vocab_size", "1000",
        "--warmup_steps", "1",
        "--isolate", "false",
        "--output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "bench.json").read_text())["finetune"]
    runs = report["runs"]
    assert report["data"]["vocab_size"] == 1000 and report["data"]["examples"] >= 8
    trl, sft, lora = runs["trl"], runs["sft"], runs["lora"]
    # the same examples, batches and labels: the same real and trained tokens on every SFT path
    assert trl["real_tokens"] == sft["real_tokens"] == lora["real_tokens"] > 0
    assert trl["trained_tokens"] == sft["trained_tokens"] == lora["trained_tokens"] > 0
    assert sft["trained_tokens"] < sft["real_tokens"]  # the prompt tokens carry no loss
    assert runs["pretrain"]["trained_tokens"] == runs["pretrain"]["real_tokens"]
    assert trl["first_loss"] == pytest.approx(sft["first_loss"], rel=1e-4)  # same model, same first batch
    assert sft["vs_trl"] == pytest.approx(sft["tokens_per_second"] / trl["tokens_per_second"], rel=0.02)
    assert lora["vs_pretrain"] == pytest.approx(
        lora["tokens_per_second"] / runs["pretrain"]["tokens_per_second"], rel=0.02
    )
    assert "fine-tuning suite" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="finetune_paths"):
        main(["--suite", "finetune", "--finetune_paths", "sft,dpo"])
