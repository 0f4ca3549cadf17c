"""One Hub-id-or-path predicate, one precision rule, one device rule: every stage decides the same way."""

from __future__ import annotations

import pytest
import torch

from tinystories.core import ConfigError
from tinystories.core.paths import display_path, is_hub_id, looks_like_path, public_name, resolve_hub_id
from tinystories.core.runtime import resolve_device, resolve_dtype, resolve_precision
from tinystories.hub.card_format import sanitize
from tinystories.training.finetune.arguments import TinyStoriesSFTConfig
from tinystories.training.pretraining import PretrainConfig


@pytest.mark.parametrize(
    "name",
    ["outputs/run", "./x", "/abs/dir", "~/m", "a/b/c", "stories.txt", "data.parquet", "C:\\models\\m"],
)
def test_paths(name):
    assert looks_like_path(name) and not is_hub_id(name) and resolve_hub_id(name) is None


@pytest.mark.parametrize("name", ["roneneldan/TinyStories-33M", "EleutherAI/gpt-neo-125M", "gpt2"])
def test_hub_ids(name):
    assert not looks_like_path(name)
    assert is_hub_id(name) == ("/" in name)


def test_existing_folder_is_a_path_and_urls_are_neither(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alice" / "model").mkdir(parents=True)
    assert looks_like_path("alice/model") and not is_hub_id("alice/model")  # exists here: local
    assert display_path(tmp_path / "alice" / "model") == "alice/model"
    assert public_name(str(tmp_path / "alice" / "model")) == "model"
    assert not looks_like_path("https://github.com/org/repo")
    assert not looks_like_path("x" * 5000)  # too long for the file system: not an error


def test_one_precision_rule_for_pretraining_and_finetuning(tmp_path):
    cpu = torch.cuda.is_available() is False
    assert resolve_precision("fp32") == (False, False) and resolve_precision("bf16") == (True, False)
    assert resolve_precision("fp16") == (False, True)
    if cpu:
        assert resolve_precision("auto") == (False, False)
    pretrain = PretrainConfig(output_dir=str(tmp_path / "p"), use_cpu=True, report_to=[])
    sft = TinyStoriesSFTConfig(output_dir=str(tmp_path / "s"), use_cpu=True, report_to=[])
    assert (pretrain.bf16, pretrain.fp16) == (sft.bf16, sft.fp16) == resolve_precision("auto", use_cpu=True)
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8")


def test_device_and_dtype_rules():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("auto") is torch.float32 and resolve_dtype(None) is torch.float32
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu:7")
    with pytest.raises(ConfigError, match="--precision"):
        resolve_dtype("int3")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_story_text_is_never_taken_for_a_path():
    """Card samples are sanitized for local paths: a story that starts with '.' or has slashes stays as it is."""
    sample = ". Then Lily said: the park/zoo/beach was fun." + " and then" * 800
    assert not looks_like_path(sample) and resolve_hub_id(sample) is None
    assert sanitize({"samples": [{"completion": sample}]}) == {"samples": [{"completion": sample}]}
    assert resolve_hub_id("." + "x" * 5000) is None  # a name too long for the file system: not an error
