"""LoRA with PEFT: exact trainable-parameter count, merged == adapter logits, reload by Hub id, data formats."""

from __future__ import annotations

import json

import pytest
import torch

from tiny import TINY_HUB_ID, make_tiny_model_dir, publish_tiny_model, write_instruct_txt
from tinystories.core import ConfigError
from tinystories.stages.lora import LoraModelConfig, LoraScriptArguments, expected_trainable_parameters
from tinystories.training.finetune.arguments import GPT_NEO_TARGET_MODULES, validate_model_config
from tinystories.training.finetune.data import prepare_data
from tinystories.training.finetune.trainer import adapter_base_name

# a few LoRA steps on a tiny model: rank 4, a high rate, 2 examples a step
TINY_LORA = [
    "--lora_r",
    "4",
    "--lora_alpha",
    "8",
    "--learning_rate",
    "1e-2",
    "--per_device_train_batch_size",
    "2",
]


@pytest.mark.parametrize("targets", [GPT_NEO_TARGET_MODULES, ["all-linear"], ["q_proj", "v_proj"]])
def test_trainable_parameter_count(tiny_model_dir, targets):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import get_peft_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_config = get_peft_config(LoraModelConfig(lora_r=4, lora_alpha=8, lora_target_modules=list(targets)))
    peft_model = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # hidden 32, 2 layers, r 4: q/k/v/out 4 x r(32+32), c_fc r(32+128), c_proj r(128+32) = 18 r h per layer
    expected = {6: 2 * 18 * 4 * 32, 2: 2 * 2 * 4 * 64}[
        len(GPT_NEO_TARGET_MODULES) if targets == ["all-linear"] else len(targets)
    ]
    assert trainable == expected == expected_trainable_parameters(model.config, 4, list(targets))
    assert peft_model.get_nb_trainable_parameters()[0] == expected


def test_33M_defaults_count():
    from tinystories.models.sizes import build_config

    # the laptop recipe: r 16 on all six projections of the 33M model (hidden 768, 4 layers)
    assert expected_trainable_parameters(build_config("33M"), 16) == 4 * 18 * 16 * 768 == 884_736


def test_qlora_needs_cuda_and_bitsandbytes():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ConfigError, match="CUDA GPU"):
        validate_model_config(LoraModelConfig(load_in_4bit=True), LoraScriptArguments())
    with pytest.raises(ConfigError, match="data_format"):
        validate_model_config(LoraModelConfig(), LoraScriptArguments(data_format="chat"))


def test_adapter_base_name_reloads_from_anywhere(tmp_path, monkeypatch, tiny_model_dir):
    assert (
        adapter_base_name(LoraScriptArguments(base_model="roneneldan/TinyStories-33M"))
        == "roneneldan/TinyStories-33M"
    )
    local = tmp_path / "outputs" / "quickstart" / "pretrain"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # a local base is recorded by its absolute path (push replaces it with a Hub id or refuses)
    assert adapter_base_name(LoraScriptArguments(base_model="outputs/quickstart/pretrain")) == str(local)
    assert adapter_base_name(LoraScriptArguments(base_model=str(tiny_model_dir))) == str(tiny_model_dir)
    explicit = LoraScriptArguments(base_model=str(local), adapter_base_name="me/TinyStories-pretrain")
    assert adapter_base_name(explicit) == "me/TinyStories-pretrain"


def test_lora_on_a_256_context_local_base_with_recipe_defaults(
    tmp_path, gpt_neo_tokenizer_dir, stories, monkeypatch, repo_root
):
    """max_length defaults to the base's context; the adapter reloads from `/`; push wants the base on the Hub."""
    from peft import AutoPeftModelForCausalLM

    from tinystories.hub import staging as hub
    from tinystories.stages.lora import main

    base = make_tiny_model_dir(tmp_path / "base", gpt_neo_tokenizer_dir, max_positions=256)
    data = tmp_path / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:60]) + "\n<|endoftext|>\n")
    out = tmp_path / "lora"
    argv = [
        "--config",
        str(repo_root / "recipes/lora/33M.yaml"),
        "--base_model",
        str(base),
        "--data",
        str(data),
    ]
    argv += ["--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2"]
    argv += ["--max_eval_samples", "4", "--save_strategy", "no", "--num_samples", "0", "--merge", "false"]
    argv += ["--report_to", "none", "--max_train_samples", "8", "--eval_strategy", "no"]
    assert main(argv) == 0  # the recipe says max_length 512: clamped to the base's 256
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_bits_per_byte"] > 0  # plain-story LoRA eval reports bits per byte
    assert json.loads((out / "generation_config.json").read_text())["max_length"] == 256
    monkeypatch.chdir("/")
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out)
    assert reloaded.peft_config["default"].base_model_name_or_path == str(base)
    with pytest.raises(ConfigError, match="not on the Hub"):
        hub.push_folder(out, "alice/lora", dry_run=True, stage_dir=tmp_path / "stage")


def test_data_format_detection(tmp_path, sample_txt, stories):
    plain, fmt = prepare_data(
        LoraScriptArguments(data=str(sample_txt), max_train_samples=20, max_eval_samples=5)
    )
    assert fmt == "stories" and plain["train"].column_names == ["text"]
    instruct = write_instruct_txt(stories, tmp_path / "instruct.txt", n=60)
    data, fmt = prepare_data(LoraScriptArguments(data=str(instruct)))
    assert fmt == "instruct" and data["train"].column_names == ["prompt", "completion"]


def test_lora_from_hub_id_merge_and_reload(
    tmp_path, hub_cache, gpt_neo_tokenizer_dir, stories, monkeypatch, capsys
):
    """`tinystories lora` from a base given by Hub id (offline cache), on plain stories; adapter + merged export."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from tinystories.stages.lora import main

    base_id = publish_tiny_model(hub_cache, tmp_path, gpt_neo_tokenizer_dir)
    data = tmp_path / "my_stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:120]) + "\n<|endoftext|>\n")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "outputs" / "lora"
    argv = ["--base_model", base_id, "--data", str(data), "--output_dir", str(out), "--max_steps", "4"]
    argv += TINY_LORA
    argv += ["--max_length", "64", "--max_eval_samples", "4", "--save_strategy", "no", "--num_samples", "1"]
    argv += ["--sample_max_new_tokens", "6", "--logging_steps", "2"]
    assert main(argv) == 0

    # the adapter: PEFT files, the Hub id as base, tokenizer + generation config + card from the shared tail
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == TINY_HUB_ID
    assert adapter_cfg["r"] == 4 and sorted(adapter_cfg["target_modules"]) == sorted(GPT_NEO_TARGET_MODULES)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    assert (out / "tokenizer.json").is_file() and (out / "all_results.json").is_file()
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and f"base_model: {TINY_HUB_ID}" in card
    info = json.loads((out / "card_info.json").read_text())
    assert info["trainable_parameters"] == 2 * 18 * 4 * 32

    # reload the adapter the way users do: the base comes from the (offline) Hub by its id
    adapter_model = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(base_id).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 3290]])
    with torch.no_grad():
        la, lm, lb = adapter_model(ids).logits, merged(ids).logits, base(ids).logits
    torch.testing.assert_close(lm, la, atol=1e-5, rtol=1e-5)  # merging changes nothing
    assert (la - lb).abs().max() > 1e-4  # ... and training did change the model
    gen = json.loads((out / "merged" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 50256 and gen["max_length"] <= 512
    assert "lora" in (out / "merged" / "README.md").read_text()

    # `tinystories generate --model <adapter dir>` merges the adapter onto its Hub base: same story as merged/
    from tinystories.data.tokenizer import load_tokenizer
    from tinystories.evaluation.generation import generate_story
    from tinystories.stages.generate import main as generate_main

    expected = generate_story(
        merged, load_tokenizer(str(out / "merged")), "Once", max_new_tokens=6, temperature=0
    )
    capsys.readouterr()
    generate_main(["--model", str(out), "--prompt", "Once", "--temperature", "0", "--max_new_tokens", "6"])
    assert capsys.readouterr().out.strip() == ("Once" + expected).strip()

    # `tinystories eval` loads the adapter dir through the same resolver: the same loss as the merged export
    from tinystories.stages import eval as evaluation

    common = ["--data", str(data), "--generate", "false", "--max_samples", "6", "--write_card", "false"]
    assert (
        evaluation.main(["--model", str(out), "--output_dir", str(tmp_path / "eval-adapter"), *common]) == 0
    )
    assert (
        evaluation.main(
            ["--model", str(out / "merged"), "--output_dir", str(tmp_path / "eval-merged"), *common]
        )
        == 0
    )
    adapter_loss = json.loads((tmp_path / "eval-adapter" / "eval_results.json").read_text())["loss"]
    merged_loss = json.loads((tmp_path / "eval-merged" / "eval_results.json").read_text())["loss"]
    assert adapter_loss == pytest.approx(merged_loss, abs=1e-5)


# ------------------------------------------------------------------------- a Llama base (issue 22)
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, gpt_neo_tokenizer_dir):
    """The tiny Llama twin: hidden 32, 2 layers, 4 heads of 8, one key/value head."""
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("llama") / "m", gpt_neo_tokenizer_dir, architecture="llama"
    )


def test_auto_targets_every_linear_of_a_llama_block(llama_dir, tiny_model_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import get_peft_config

    from tinystories.training.finetune.arguments import resolve_target_modules

    # the default, as the recipes say (TRL's ModelConfig turns a one-name list into the name)
    assert LoraModelConfig().lora_target_modules in ("auto", ["auto"])
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    config = model.config
    assert (config.num_key_value_heads, config.head_dim) == (1, 8)
    model_config = LoraModelConfig(lora_r=4, lora_alpha=8)
    resolve_target_modules(model_config, config.model_type)
    assert model_config.lora_target_modules == LLAMA_TARGETS
    peft_model = get_peft_model(model, get_peft_config(model_config))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    inner = config.intermediate_size
    # per layer: q, o r(32+32); k, v r(32+8); gate, up r(32+I); down r(I+32)
    by_hand = 2 * 4 * (2 * 64 + 2 * 40 + 3 * (32 + inner))
    assert trainable == by_hand == expected_trainable_parameters(config, 4, "auto")
    assert expected_trainable_parameters(config, 4, ["auto"]) == by_hand
    assert expected_trainable_parameters(config, 4, ["k_proj", "v_proj"]) == 2 * 2 * 4 * 40
    adapted = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(LLAMA_TARGETS)
    # a GPT-Neo base resolves to its six projections; an unknown architecture is refused with the fix
    neo = LoraModelConfig()
    resolve_target_modules(neo, AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.model_type)
    assert neo.lora_target_modules == GPT_NEO_TARGET_MODULES
    named = LoraModelConfig(lora_target_modules=["q_proj", "v_proj"])
    resolve_target_modules(named, "llama")
    assert named.lora_target_modules == ["q_proj", "v_proj"]  # explicit names are kept
    with pytest.raises(ConfigError, match="auto knows gpt_neo, llama blocks, not 'mamba'.*all-linear"):
        resolve_target_modules(LoraModelConfig(), "mamba")


def test_lora_stage_on_a_llama_base(llama_dir, tmp_path, stories):
    """`tinystories lora` with the default `auto` targets on a Llama base: the adapter names the seven Llama
    projections, its trainable count is the formula's, and merged == adapter logits."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from tinystories.stages.lora import main

    data = tmp_path / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:40]) + "\n<|endoftext|>\n")
    out = tmp_path / "lora"
    argv = ["--base_model", str(llama_dir), "--data", str(data), "--output_dir", str(out), "--max_steps", "3"]
    argv += TINY_LORA
    argv += ["--max_length", "64", "--max_eval_samples", "4", "--save_strategy", "no", "--num_samples", "0"]
    argv += ["--report_to", "none", "--max_train_samples", "12", "--eval_strategy", "no"]
    assert main(argv) == 0
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_modules"]) == sorted(LLAMA_TARGETS) and adapter_cfg["r"] == 4
    base = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    info = json.loads((out / "card_info.json").read_text())
    assert info["trainable_parameters"] == expected_trainable_parameters(base.config, 4, "auto")
    adapter = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert merged.config.model_type == "llama" and not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 3290]])
    with torch.no_grad():
        la, lm, lb = adapter(ids).logits, merged(ids).logits, base(ids).logits
    torch.testing.assert_close(lm, la, atol=1e-5, rtol=1e-5)
    assert (la - lb).abs().max() > 1e-4  # training changed the model
