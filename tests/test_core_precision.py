"""The precision rule (native bf16 only, fp16 on Turing), precision reaching accelerate, DDP and data defaults."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import yaml

from tinystories.core.runtime import choose_precision, resolve_precision
from tinystories.training.finetune.arguments import TinyStoriesSFTConfig
from tinystories.training.pretraining import PretrainConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_precision_from_device_facts():
    assert choose_precision("auto", False, cuda_available=True, bf16_native=True) == (
        True,
        False,
    )  # A100, H100
    assert choose_precision("auto", False, cuda_available=True, bf16_native=False) == (
        False,
        True,
    )  # T4, RTX 20xx
    assert choose_precision("auto", False, cuda_available=False, bf16_native=False) == (False, False)  # CPU
    assert choose_precision("auto", True, cuda_available=True, bf16_native=True) == (False, False)  # use_cpu
    assert choose_precision("fp32", False, cuda_available=True, bf16_native=True) == (False, False)
    assert choose_precision("bf16", False, cuda_available=False, bf16_native=False) == (True, False)


def test_emulated_bf16_does_not_count(monkeypatch):
    """torch.cuda.is_bf16_supported() says True on Turing (emulation): the rule asks for native support."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto") == (False, True)


@pytest.mark.parametrize("config", [PretrainConfig, TinyStoriesSFTConfig])
def test_fp32_under_a_bf16_accelerate_config_trains_in_fp32(config, monkeypatch, tmp_path):
    monkeypatch.setenv(
        "ACCELERATE_MIXED_PRECISION", "bf16"
    )  # what `accelerate launch` exports from the config
    args = config(output_dir=str(tmp_path), precision="fp32", use_cpu=True, report_to="none")
    assert (args.bf16, args.fp16, args.mixed_precision) == (False, False, "no")


@pytest.mark.parametrize("config", [PretrainConfig, TinyStoriesSFTConfig])
def test_ddp_defaults(config, tmp_path):
    args = config(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.ddp_find_unused_parameters is False  # every parameter gets a gradient
    assert args.ddp_broadcast_buffers is False  # the constant attention masks stay put
    assert args.ddp_timeout >= 3 * 3600  # ranks wait while the main process tokenizes 2.12M stories
    assert args.data_cache_shared is True


def test_recipes_keep_the_ddp_defaults():
    for path in RECIPES.rglob("*.yaml"):
        recipe = yaml.safe_load(path.read_text()) or {}
        assert recipe.get("ddp_find_unused_parameters") in (None, False), path
        assert recipe.get("ddp_broadcast_buffers") in (None, False), path


def test_data_is_prepared_once_by_the_global_main_process(tmp_path, sample_txt, monkeypatch):
    """`--prepare_only`: tokenize into the cache and exit; the data step runs global-main-process first."""
    from tinystories.stages import train

    seen = []

    @contextlib.contextmanager
    def first(self, local=True, desc="work"):
        seen.append(local)
        yield

    monkeypatch.setattr(PretrainConfig, "main_process_first", first)
    out = tmp_path / "run"
    argv = ["--data", str(sample_txt), "--output_dir", str(out), "--max_train_samples", "200"]
    argv += ["--train_tokenizer", "true", "--vocab_size", "300", "--hidden_size", "32", "--num_layers", "2"]
    argv += ["--block_size", "64", "--use_cpu", "true", "--report_to", "none", "--prepare_only", "true"]
    assert train.main(argv) == 0
    assert seen == [False]  # global: one tokenization for a shared cache, not one per node
    assert not (out / "model.safetensors").exists() and not (out / "trainer_state.json").exists()
