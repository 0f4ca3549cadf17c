"""`tinystories export --format gguf`: a Llama-architecture model through llama.cpp's own converter, and
llama.cpp's greedy continuation equal to PyTorch's. Needs `make gguf-tools` (llama-cpp-python built from
source; about 10 minutes of compiling on 2 cores, which CI does not spend: there the parity test is skipped)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinystories import cli
from tinystories.core import ConfigError
from tinystories.models.export.gguf import find_converter, llama_cpp_greedy, torch_greedy
from tinystories.stages import export as export_stage

try:
    find_converter()
    TOOLS = importlib.util.find_spec("llama_cpp") is not None
except ConfigError:
    TOOLS = False
needs_tools = pytest.mark.skipif(not TOOLS, reason="llama.cpp tools missing: run `make gguf-tools`")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, gpt_neo_tokenizer_dir):
    """A tiny Llama (hidden 32, 2 layers, 4 heads, one key/value head) with weights large enough (std 0.2) that
    greedy decoding has clear winners, and the real GPT-Neo tokenizer (the converter hashes it)."""
    from tiny import make_varied_model_dir

    folder = make_varied_model_dir(
        tmp_path_factory.mktemp("gguf") / "llama", gpt_neo_tokenizer_dir, architecture="llama"
    )
    return folder


@needs_tools
def test_gguf_export_and_llama_cpp_greedy_equal_pytorch(llama_dir, tmp_path):
    out = tmp_path / "gguf"
    assert cli.main(["export", "--model", str(llama_dir), "--format", "gguf", "--output_dir", str(out)]) == 0
    info = json.loads((out / "gguf_info.json").read_text())
    assert info["file"] == "model-f32.gguf" and (out / info["file"]).stat().st_size > 4 * 1_600_000
    assert info["parity"]["greedy_prefix_equal_pytorch"] == info["parity"]["greedy_tokens"] == 32

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    prompt = AutoTokenizer.from_pretrained(llama_dir)("The dog ran to the park and saw a big red ball.")[
        "input_ids"
    ]
    expected = torch_greedy(model, prompt, 48)
    assert len(set(expected)) > 4  # a real continuation, not one token repeated
    assert llama_cpp_greedy(out / info["file"], prompt, 48) == expected


def test_gguf_export_refuses_gpt_neo_and_bad_types(tmp_path, gpt_neo_tokenizer_dir, monkeypatch):
    from tiny import make_tiny_model_dir

    gpt_neo = make_tiny_model_dir(tmp_path / "neo", gpt_neo_tokenizer_dir)
    monkeypatch.setenv("LLAMA_CPP_CONVERTER", str(tmp_path / "nowhere.py"))
    with pytest.raises(ConfigError, match="make gguf-tools"):  # before any model is loaded
        export_stage.main(["--model", str(gpt_neo), "--format", "gguf"])
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text("raise SystemExit(3)\n")
    monkeypatch.setenv("LLAMA_CPP_CONVERTER", str(converter))
    with pytest.raises(ConfigError, match="ARCH=llama"):
        export_stage.main(["--model", str(gpt_neo), "--format", "gguf"])
    with pytest.raises(ConfigError, match="q8_0"):
        export_stage.main(["--model", str(gpt_neo), "--format", "gguf", "--gguf_type", "q4"])
    with pytest.raises(ConfigError, match="--format .tflite.: unknown value; use one of onnx, gguf"):
        export_stage.main(["--model", str(gpt_neo), "--format", "tflite"])
