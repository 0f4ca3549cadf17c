"""`benchmarks/gpu_check.py` (`make gpu-check`) on a CPU: arguments, the no-GPU exit, the MFU arithmetic, the report.

The measurements themselves need a CUDA GPU; `python -m benchmarks.gpu_check --cpu_smoke` runs every section
on the CPU (minutes, not part of the test suite).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

from benchmarks import gpu_check, gpu_sections
from tinystories.models.sizes import build_config
from tinystories.training.throughput import flops_per_token, mfu, peak_flops

REPO = gpu_check.REPO


@pytest.fixture
def inputs(tmp_path):
    """Existing --data and --tokenizer paths (the checks look at the file system only)."""
    (tmp_path / "stories.txt").write_text("Once upon a time.<|endoftext|>")
    (tmp_path / "tok").mkdir()
    return ["--data", str(tmp_path / "stories.txt"), "--tokenizer", str(tmp_path / "tok")]


# ------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--sections", "pretrain,bogus"],
            "--sections takes a subset of pretrain, precision, eval_memory, lora",
        ),
        (["--steps", "5", "--warmup_steps", "5"], "--steps (5) must exceed --warmup_steps (5)"),
        (["--chunk_sizes", "1024,abc"], "--chunk_sizes takes integers"),
        (["--chunk_sizes", "0"], "must be > 0"),
        (["--section_seconds", "lora=-1"], "must be > 0"),
        (["--section_seconds", "bogus=3"], "--section_seconds: the sections are pretrain"),
        (["--max_minutes", "0"], "must be > 0"),
        (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
        (["--data", "/nope/stories.txt"], "--data '/nope/stories.txt' not found: pass --data"),
        (["--tokenizer", "./no-such-tokenizer"], "--tokenizer './no-such-tokenizer' not found"),
        (["--wheels", "/nope/wheels"], "--wheels '/nope/wheels': not a folder of wheels"),
    ],
)
def test_a_bad_argument_exits_2_naming_the_fix(inputs, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_arguments([*inputs, *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_arguments_parse_into_sections_chunks_and_budgets(inputs):
    args = gpu_check.parse_arguments(
        [*inputs, "--sections", "lora, pretrain", "--section_seconds", "lora=60"]
    )
    assert args.sections == ["lora", "pretrain"]
    assert args.chunk_sizes == [1024, 4096, 8192]
    assert args.budgets == {
        "pretrain": 170,
        "precision": 50,
        "eval_memory": 25,
        "lora": 60.0,
        "multi_gpu": 110,
    }
    assert sum(gpu_check.SECTIONS.values()) < 7.5 * 60  # the default budgets fit the default --max_minutes
    plan = gpu_check.make_plan(args, gpus=8)
    assert (plan.size, plan.block_size, plan.precision_steps, plan.eval_blocks, plan.gpus) == (
        "33M",
        512,
        30,
        32,
        8,
    )
    assert plan.eval_blocks * plan.block_size == 32 * 512 and plan.output_dir == str(
        REPO / "benchmarks" / "gpu"
    )
    smoke = gpu_check.make_plan(gpu_check.parse_arguments([*inputs, "--cpu_smoke"]), gpus=0)
    assert (smoke.device, smoke.size, smoke.gpus, smoke.launch["ZeRO-2"]) == (
        "cpu",
        "1M",
        2,
        "cpu_deepspeed_zero2",
    )


# ------------------------------------------------------------------------------------------------ no GPU
def test_without_a_gpu_the_script_exits_2_at_once():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, on any machine
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert time.monotonic() - started < 10
    assert proc.returncode == 2
    assert "no CUDA GPU is visible (CUDA_VISIBLE_DEVICES='')" in proc.stderr
    assert "run `make gpu-check` on a machine with an NVIDIA GPU" in proc.stderr


def test_without_a_gpu_nothing_heavy_is_imported_and_nothing_installed(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    code = (
        "import sys; from benchmarks import gpu_check as g; rc = g.main(['--wheels', sys.argv[1]]); "
        "print(rc, [m for m in ('torch', 'transformers', 'datasets', 'trl', 'peft', 'deepspeed', "
        "'tinystories') if m in sys.modules])"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(wheels)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.stdout.strip() == "2 []", proc.stdout + proc.stderr
    assert "pip" not in proc.stdout + proc.stderr


def test_gpu_count_follows_nvidia_smi_and_the_mask(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-b)'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_check.visible_gpu_count() == (2, "nvidia-smi")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpu_check.visible_gpu_count()[0] == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpu_check.visible_gpu_count() == (0, "CUDA_VISIBLE_DEVICES='-1'")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(gpu_check.glob, "glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidia1"])
    assert gpu_check.visible_gpu_count()[0] == 2  # no nvidia-smi in a container: its device files
    monkeypatch.setattr(gpu_check.glob, "glob", lambda pattern: [])
    assert gpu_check.visible_gpu_count() == (0, "no nvidia-smi, no /dev/nvidia*")


# ------------------------------------------------------------------------------------------------ wheels
def test_wheels_install_offline_everything_pinned_but_torch(tmp_path):
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    project, pinned = gpu_check.pip_commands("py", "/w", "/c.txt")
    offline = ["py", "-m", "pip", "install", "--no-index", "--find-links", "/w"]
    assert project == [*offline, "--no-deps", "-e", str(REPO)]
    assert pinned[:9] == [*offline, "-c", "/c.txt"] and pinned[9:] == [
        d for d in deps if not d.startswith("torch=")
    ]
    assert len(pinned[9:]) == len(deps) - 1 and "transformers==5.23.0" in pinned
    fake = tmp_path / "pyproject.toml"
    fake.write_text(
        '[project]\ndependencies = ["torch>=2.4", "torchvision==0.1", "Torch[cuda]==2", "a==1"]\n'
    )
    assert gpu_check.pinned_requirements(fake) == ["torchvision==0.1", "a==1"]


def test_wheels_are_installed_then_the_script_restarts(inputs, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(gpu_check, "visible_gpu_count", lambda: (1, "nvidia-smi"))
    monkeypatch.setattr(gpu_check, "install_wheels", lambda folder: calls.append(folder))
    monkeypatch.delenv("GPU_CHECK_INSTALLED", raising=False)

    def execv(path, argv):
        raise SystemExit(argv)

    monkeypatch.setattr(gpu_check.os, "execv", execv)
    argv = [*inputs, "--wheels", str(tmp_path)]
    with pytest.raises(SystemExit) as restarted:
        gpu_check.main(argv)
    assert calls == [str(tmp_path)] and os.environ["GPU_CHECK_INSTALLED"] == "1"
    assert restarted.value.code == [sys.executable, "-m", "benchmarks.gpu_check", *argv]
    monkeypatch.delenv("GPU_CHECK_INSTALLED")
    monkeypatch.setattr(gpu_check, "install_wheels", lambda folder: "pip failed: no wheels")
    assert gpu_check.main(argv) == 3


# ------------------------------------------------------------------------------------------------ MFU
def test_flops_per_token_of_33m_is_the_hand_count():
    config = build_config("33M")  # hidden 768, 4 layers (global, local, global, local), window 256
    matmuls = 6 * (4 * 12 * 768**2 + 50257 * 768)  # 6 × (blocks + LM head)
    assert matmuls == 401_453_568
    attention_512 = 2 * 6 * 2 * 768 * 512 // 2 + 2 * 6 * 2 * 768 * 256 // 2  # causal: half the keys
    assert flops_per_token(config, 512) == matmuls + attention_512 == 408_531_456
    assert flops_per_token(config, 256) == matmuls + 4 * 6 * 2 * 768 * 256 // 2 == 406_172_160


def test_mfu_is_tokens_times_flops_over_the_bf16_peak():
    config = build_config("33M")
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA GH200 480GB") == 989e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert mfu(400_000, config, 512, "NVIDIA H100 80GB HBM3") == pytest.approx(400_000 * 408_531_456 / 989e12)
    assert mfu(400_000, config, 512, "NVIDIA H100 80GB HBM3") == pytest.approx(0.165230, abs=1e-6)
    assert mfu(400_000, config, 512, "Tesla K80") is None and peak_flops(None) is None
    assert mfu(0, config, 512, "NVIDIA H200") is None


# ------------------------------------------------------------------------------------------------ plan
def test_pretraining_variants_are_the_issue_list():
    default = {"attention": "sdpa", "fused_ce": True, "bf16": True, "packing": True}
    stock = {"attention": "eager", "fused_ce": False, "bf16": False, "packing": False}
    variants = gpu_sections.pretrain_variants(default, stock, 4096, [1024, 4096, 8192])
    names = ["default", "stock", "plain logits", "fused chunk 1024", "fused chunk 8192", "flex attention"]
    assert [v[0] for v in variants] == names
    assert [v[2] for v in variants] == [4096, 4096, 4096, 1024, 8192, 4096]
    specs = {name: spec for name, spec, _ in variants}
    assert specs["plain logits"] == {**default, "fused_ce": False} and specs["stock"] is stock
    assert specs["flex attention"] == {**default, "attention": "flex"} and default["attention"] == "sdpa"


def test_sections_run_under_budgets_and_errors_do_not_stop_the_run():
    seen = {}

    def slow(deadline):
        while True:
            time.sleep(0.01)

    def boom(deadline):
        raise ValueError("boom")

    sections = {"pretrain": lambda d: seen.setdefault("pretrain", d) and {"rows": []}, "precision": boom}
    sections |= {"eval_memory": slow, "lora": lambda d: seen.setdefault("lora", d) and {"ok": 1}}
    budgets = {**gpu_check.SECTIONS, "eval_memory": 0.3}
    started = time.monotonic()
    out = gpu_check.run_sections(sections, budgets, started + 100)
    assert seen["pretrain"] == pytest.approx(
        started + 100, abs=1
    )  # 170 s budget, capped by the run's deadline
    assert seen["lora"] == pytest.approx(started + 0.3 + 80, abs=1)  # its own 80 s budget
    assert out["pretrain"]["rows"] == [] and out["precision"]["error"] == "ValueError: boom"
    assert out["eval_memory"]["error"] == "SectionTimeout: the eval_memory section ran past its 0.3 s budget"
    assert out["eval_memory"]["seconds"] < 1.5 and out["lora"]["ok"] == 1
    late = gpu_check.run_sections({"lora": lambda d: {"ok": 1}}, budgets, time.monotonic() - 1)
    assert late == {"lora": {"skipped": "skipped: --max_minutes spent before this section", "seconds": 0}}


# ------------------------------------------------------------------------------------------------ report
REPORT = {
    "machine": {
        "gpu": "NVIDIA H200", "gpu_count": 1, "driver": "570.86.15", "cuda": "12.8", "torch": "2.11.0+cu128",
        "python": "3.11.9", "gpu_memory_gb": 139.8, "cpu_count": 16,
        "packages": {"transformers": "5.17.0", "bitsandbytes": None},
    },
    "started": "2026-12-01 12:00", "seconds": 401.2, "size": "33M", "smoke": False,
    "sections": {
        "pretrain": {"rows": [
            {"name": "default", "attention": "sdpa", "loss": "fused", "chunk": 4096, "precision": "bf16",
             "tokens_per_second": 612345.6, "vs_stock": 3.1, "mfu": 0.41234, "peak_gpu_mb": 12345.6,
             "last_loss": 9.8123},
            {"name": "stock", "attention": "eager", "loss": "plain logits", "chunk": None, "precision": "fp32",
             "tokens_per_second": 197530.0, "vs_stock": 1.0, "mfu": 0.133, "peak_gpu_mb": 40960.0,
             "last_loss": 9.9},
            {"name": "flex attention", "error": "RuntimeError: no | kernel\nfor this", "traceback": "..."},
            {"name": "fused chunk 8192", "skipped": "skipped: section time budget spent"},
        ], "steps": 20, "seconds": 95.0},
        "precision": {"steps": 30, "tokens_per_step": 4096, "final_bf16": 7.1235, "final_fp32": 7.1,
                      "final_difference": 0.0235, "max_abs_difference": 0.05,
                      "curves": {"bf16": [10.9, 7.1235], "fp32": [10.9, 7.1]}},
        "eval_memory": {"rows": [
            {"name": "fused", "peak_gpu_mb": 700.0, "increase_mb": 200.0, "eval_loss": 10.8,
             "logits_materialised": False},
            {"name": "plain logits", "peak_gpu_mb": 3900.4, "increase_mb": 3400.4, "eval_loss": 10.8,
             "logits_materialised": True},
        ], "tokens": 16384, "batch_size": 16},
        "lora": {"rows": [
            {"name": "lora", "steps_per_second": 4.567, "tokens_per_second": 40000.0, "peak_gpu_mb": 3000.0,
             "trainable_parameters": 884736, "last_loss": 9.1},
            {"name": "qlora", "skipped": "skipped: bitsandbytes not installed"},
        ], "recipe": "recipes/lora/33M.yaml", "base": "fresh 33M, random weights"},
        "multi_gpu": {"skipped": "skipped: 1 GPU", "seconds": 0.0},
    },
}  # fmt: skip


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_the_markdown_names_the_machine_and_tabulates_every_section():
    lines = gpu_check.format_markdown(REPORT).splitlines()
    assert lines[0] == "### NVIDIA H200 × 1 (driver 570.86.15, CUDA 12.8, torch 2.11.0+cu128)"
    assert (
        "401 s in all, model 33M; Python 3.11.9, transformers 5.17.0, bitsandbytes not installed." in lines[2]
    )
    table = lines[lines.index(next(x for x in lines if x.startswith("| pretraining variant"))) :][:6]
    assert _cells(table[0]) == ["pretraining variant", "attention", "loss", "chunk", "precision",
                                "tokens/s per GPU", "× stock", "MFU", "peak MB", "final loss"]  # fmt: skip
    assert _cells(table[2]) == ["default", "sdpa", "fused", "4,096", "bf16", "612,346", "3.10×", "41.2%",
                                "12,346", "9.812"]  # fmt: skip
    assert _cells(table[3]) == ["stock", "eager", "plain logits", "–", "fp32", "197,530", "1.00×", "13.3%",
                                "40,960", "9.900"]  # fmt: skip
    assert _cells(table[4])[:2] == ["flex attention", "error: RuntimeError: no \\| kernel for this"]
    assert _cells(table[5])[:2] == ["fused chunk 8192", "skipped: section time budget spent"]
    assert all(len(_cells(row)) == 10 for row in table)
    text = "\n".join(lines)
    assert (
        "30 steps of 4,096 tokens, same data, seed: final loss bf16 7.1235, fp32 7.1000, diff. +0.0235"
        in text
    )
    assert (
        "| eval, 16,384 tokens, batch 16 | peak MB | over the weights MB | eval loss | logits built |" in text
    )
    assert (
        "| fused | 700 | 200 | 10.800 | no |" in text
        and "| plain logits | 3,900 | 3,400 | 10.800 | yes |" in text
    )
    assert "| lora | 4.57 | 40,000 | 3,000 | 884,736 | 9.100 |" in text
    assert "| qlora | skipped: bitsandbytes not installed |  |  |  |  |" in text
    assert lines[-1] == "**multi_gpu**: skipped: 1 GPU" and "CPU smoke" not in text
    assert "CPU smoke run" in gpu_check.format_markdown({**REPORT, "smoke": True})


def test_the_report_files_are_named_after_the_gpu_and_round_trip(tmp_path):
    json_path, md_path = gpu_check.write_report(REPORT, str(tmp_path / "gpu"))
    assert (json_path, md_path) == (
        tmp_path / "gpu" / "nvidia-h200.json",
        tmp_path / "gpu" / "nvidia-h200.md",
    )
    assert json.loads(json_path.read_text()) == REPORT
    assert md_path.read_text() == gpu_check.format_markdown(REPORT)
    assert (
        gpu_check.output_stem({"gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 8}) == "nvidia-h100-80gb-hbm3-x8"
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_gpu_check_needs_no_install_and_takes_the_python_given():
    def dry_run(*variables: str) -> str:
        # a clean make: under `make test` the outer make's MAKEFLAGS (its ARGS=..., -w) would reach this one
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")}
        proc = subprocess.run(
            ["make", "-n", "gpu-check", *variables], cwd=REPO, capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        return " ".join(proc.stdout.replace("\\\n", " ").split())

    assert (
        dry_run("PY=python3", "WHEELS=/w", "DATA=/d.txt")
        == "python3 -m benchmarks.gpu_check --wheels /w --data /d.txt"
    )
    assert dry_run("PY=python3", "PYTHON_GPU=/opt/py", "ARGS=--sections lora").startswith(
        "/opt/py -m benchmarks.gpu"
    )
    assert "pip install" not in dry_run() and "venv" not in dry_run("PY=python3")
