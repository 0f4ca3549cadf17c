"""SFT of the Instruct variant: exact prompt masking, EOS, packing, config errors, a real run from a Hub id."""

from __future__ import annotations

import json

import pytest
import torch

from tiny import TINY_HUB_ID, publish_tiny_model, write_instruct_txt
from tinystories.core import ConfigError
from tinystories.data.instruct import split_prompt_completion
from tinystories.stages.sft import SFTScriptArguments
from tinystories.training.finetune.arguments import (
    FinetuneModelConfig,
    TinyStoriesSFTConfig,
    validate_training_args,
)
from tinystories.training.finetune.data import prepare_data
from tinystories.training.finetune.trainer import build_trainer, load_base, load_base_tokenizer

FAST = {
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 8,
    "report_to": "none",
    "save_strategy": "no",
}


def _prepared_trainer(tiny_model_dir, instruct_txt, tmp_path, **overrides):
    args = SFTScriptArguments(base_model=str(tiny_model_dir), data=str(instruct_txt), max_train_samples=40)
    training_args = TinyStoriesSFTConfig(output_dir=str(tmp_path / "out"), **{**FAST, **overrides})
    data, _ = prepare_data(args)
    model, tokenizer = load_base(args, FinetuneModelConfig())
    return build_trainer(training_args, model, tokenizer, data), data, tokenizer


def test_prompt_tokens_masked_story_and_eos_trained(tiny_model_dir, instruct_txt, tmp_path):
    trainer, data, tok = _prepared_trainer(tiny_model_dir, instruct_txt, tmp_path)
    eos = tok.eos_token_id
    prepared = trainer.train_dataset
    assert len(prepared) == len(data["train"]) == 40
    source = instruct_txt.read_text().split("<|endoftext|>")
    for row, example in zip(prepared, data["train"], strict=True):
        prompt_ids = tok(example["prompt"])["input_ids"]
        story_ids = tok(example["completion"])["input_ids"]
        n = len(prompt_ids)
        assert row["input_ids"] == prompt_ids + story_ids + [eos]  # the whole example, EOS after the story
        assert row["labels"][:n] == [-100] * n  # every prompt token is masked ...
        assert row["labels"][n:] == [*story_ids, eos]  # ... and no story token, nor the EOS
        # the released files' layout: the prompt ends with the `Story: ` line, the completion is the blank line
        # and the story (token-exact: prompt + completion tokenize as the record does)
        assert example["prompt"].endswith("Story: \n") and example["completion"].startswith("\n")
        assert not example["completion"].startswith(("\n\n", "\n "))
    # the split is the one the Instruct format defines
    first = next(t for t in source if t.strip())
    assert split_prompt_completion(first)[0].startswith(
        ("Features:", "Words:", "Summary:", "Random sentence:")
    )


def test_wrapped_packing_keeps_the_masks(tiny_model_dir, instruct_txt, tmp_path):
    trainer, data, tok = _prepared_trainer(
        tiny_model_dir, instruct_txt, tmp_path, packing=True, max_length=128
    )
    packed = trainer.train_dataset
    lengths = [len(r) for r in packed["input_ids"]]
    assert set(lengths[:-1]) == {128} and 0 < lengths[-1] <= 128  # wrapped: full blocks, the rest in the last
    n_masked = sum(lab == -100 for row in packed["labels"] for lab in row)
    n_eos = sum(lab == tok.eos_token_id for row in packed["labels"] for lab in row)
    prompts, stories = list(data["train"]["prompt"]), list(data["train"]["completion"])
    prompt_tokens = sum(len(tok(p)["input_ids"]) for p in prompts)
    all_tokens = sum(len(tok(p + c)["input_ids"]) + 1 for p, c in zip(prompts, stories, strict=True))
    # packing only concatenates and cuts: every prompt token stays masked, every story EOS stays trained
    assert sum(lengths) == all_tokens
    assert n_masked == prompt_tokens
    assert n_eos == len(prompts)


def test_config_errors_before_work(tiny_model_dir, sample_txt, tmp_path):
    with pytest.raises(ConfigError, match="packing_strategy wrapped"):
        validate_training_args(
            TinyStoriesSFTConfig(output_dir=str(tmp_path), packing=True, packing_strategy="bfd")
        )
    # a recipe's max_length longer than the base's context is clamped to it (a 256-token base trains at 256)
    too_long = TinyStoriesSFTConfig(output_dir=str(tmp_path), max_length=1024)
    validate_training_args(too_long, model_context=256)
    assert too_long.max_length == 256
    with pytest.raises(ConfigError, match="precision"):
        TinyStoriesSFTConfig(output_dir=str(tmp_path), precision="fp8")
    # plain stories are not Instruct data: say so and name the fix
    with pytest.raises(ConfigError, match="data_format stories"):
        prepare_data(SFTScriptArguments(base_model=str(tiny_model_dir), data=str(sample_txt)))
    # on a CPU, precision auto is fp32 (TRL alone would turn bf16 on)
    cfg = TinyStoriesSFTConfig(output_dir=str(tmp_path), use_cpu=True)
    assert not cfg.bf16 and not cfg.fp16
    assert not cfg.activation_checkpointing and not cfg.gradient_checkpointing  # TRL alone defaults to on
    assert TinyStoriesSFTConfig(
        output_dir=str(tmp_path), activation_checkpointing=True
    ).gradient_checkpointing


def test_sft_from_hub_id_lowers_eval_loss(tmp_path, hub_cache, gpt_neo_tokenizer_dir, stories, monkeypatch):
    """`tinystories sft` with the default DATA (the Hub Instruct dataset, .txt files) and BASE given as a Hub id."""
    from tinystories.stages.sft import main
    from tinystories.training.finetune.arguments import DEFAULT_INSTRUCT_DATA

    base_id = publish_tiny_model(hub_cache, tmp_path, gpt_neo_tokenizer_dir)
    data_dir = tmp_path / "instruct-repo"
    data_dir.mkdir()
    write_instruct_txt(stories[:240], data_dir / "TinyStories-Instruct-train.txt", n=240)
    write_instruct_txt(stories[2000:2040], data_dir / "TinyStories-Instruct-valid.txt", n=40, seed=1)
    hub_cache.add(DEFAULT_INSTRUCT_DATA, data_dir, repo_type="dataset")
    monkeypatch.chdir(tmp_path)

    out = tmp_path / "outputs" / "sft"
    argv = ["--base_model", base_id, "--output_dir", str(out), "--max_steps", "8", "--learning_rate", "1e-2"]
    argv += ["--per_device_train_batch_size", "4", "--max_length", "96", "--max_eval_samples", "12"]
    argv += [
        "--eval_on_start",
        "true",
        "--eval_strategy",
        "no",
        "--logging_steps",
        "4",
        "--save_strategy",
        "no",
    ]
    argv += ["--num_samples", "1", "--sample_max_new_tokens", "8"]
    assert main(argv) == 0

    state = json.loads((out / "trainer_state.json").read_text())
    evals = [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h]
    results = json.loads((out / "all_results.json").read_text())
    assert evals[0] > 10.0  # a random 50257-way model starts near ln(50257) = 10.8
    assert results["eval_loss"] < evals[0] - 0.5  # fine-tuning lowered the held-out story loss
    assert results["eval_bits_per_byte"] > 0
    # the shared tail saved weights, tokenizer, generation config (EOS set, within 512) and the card
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 50256 and gen["max_length"] <= 512
    card = (out / "README.md").read_text()
    assert f"base_model: {TINY_HUB_ID}" in card and DEFAULT_INSTRUCT_DATA in card and "sft" in card
    assert str(tmp_path) not in card
    info = json.loads((out / "card_info.json").read_text())
    assert info["stage"] == "sft" and info["samples"][0]["prompt"].startswith(("Features", "Words"))


def test_sft_with_muon_trains_the_hidden_matrices_and_lora_refuses_it(tiny_model_dir, instruct_txt, tmp_path):
    """`--optim muon` in SFT (the quickstart's recipe): Muon + AdamW, the held-out story loss goes down."""
    from tinystories.training.finetune.arguments import FinetuneModelConfig as ModelConfig
    from tinystories.training.finetune.pipeline import run
    from tinystories.training.optimizers import MuonWithAdamW, muon_parameter_names

    trainer, _, _ = _prepared_trainer(
        tiny_model_dir, instruct_txt, tmp_path, optim="muon", muon_learning_rate=0.02, learning_rate=3e-3,
        max_steps=12, eval_strategy="no",
    )  # fmt: skip
    assert trainer.args.muon and trainer.args.muon_learning_rate == 0.02
    before = trainer.evaluate()["eval_loss"]
    hidden = muon_parameter_names(trainer.model)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in hidden}
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, MuonWithAdamW)
    muon_params = {id(p) for g in trainer.optimizer.optimizer.muon.param_groups for p in g["params"]}
    assert muon_params == {id(p) for n, p in trainer.model.named_parameters() if n in hidden} != set()
    assert all(not torch.equal(p, start[n]) for n, p in trainer.model.named_parameters() if n in hidden)
    assert trainer.evaluate()["eval_loss"] < before - 0.3

    lora = SFTScriptArguments(base_model=str(tiny_model_dir), data=str(instruct_txt))
    config = TinyStoriesSFTConfig(output_dir=str(tmp_path / "lora"), optim="muon", **FAST)
    with pytest.raises(ConfigError, match="drop --optim muon for LoRA"):
        run(lora, config, ModelConfig(use_peft=True))
    assert not (tmp_path / "lora").exists()  # refused before any work


def test_drop_long_examples_keeps_exactly_those_trl_would_not_truncate(
    tiny_model_dir, instruct_txt, tmp_path
):
    """The length `drop_long_examples` counts is the one TRL trains on (prompt + story + EOS): with max_length at
    the median, the examples kept are exactly those TRL tokenizes to at most max_length tokens."""
    trainer, data, _ = _prepared_trainer(tiny_model_dir, instruct_txt, tmp_path, max_length=4096)
    lengths = [len(row["input_ids"]) for row in trainer.train_dataset]
    limit = sorted(lengths)[len(lengths) // 2]
    fits = {c for c, n in zip(data["train"]["completion"], lengths, strict=True) if n <= limit}
    assert 0 < len(fits) < len(lengths)
    args = SFTScriptArguments(
        base_model=str(tiny_model_dir), data=str(instruct_txt), max_train_samples=40, drop_long_examples=True
    )
    kept, _ = prepare_data(args, load_base_tokenizer(args), limit)
    assert set(kept["train"]["completion"]) == fits and len(kept["train"]) == len(fits)
    assert len(kept["validation"]) == len(data["validation"])  # held-out examples are all scored
