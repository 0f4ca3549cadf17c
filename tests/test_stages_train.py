"""Pretraining end to end on a tiny model: loss drops, resume is exact, output loads, bad input fails fast."""

import json
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tinystories.core import ConfigError
from tinystories.stages import train as pretrain

TINY = [
    "--max_train_samples", "600", "--max_eval_samples", "60",
    "--train_tokenizer", "true", "--vocab_size", "512",
    "--hidden_size", "32", "--num_layers", "2", "--block_size", "64",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--gradient_accumulation_steps", "1", "--global_batch_size", "8", "--learning_rate", "3e-3",
    "--logging_steps", "5", "--report_to", "none", "--use_cpu", "true",
    "--dataloader_num_workers", "0", "--seed", "7",
]  # fmt: skip


def run(sample_txt, out, *extra):
    argv = ["--data", str(sample_txt), "--output_dir", str(out), *TINY, *extra]
    assert pretrain.main(argv) == 0
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


# the GPT-Neo run both tests below read: 50 steps, checkpoints at 25 and 50, evaluated at 0, 25 and 50
GPT_NEO_RUN = (
    "--max_steps", "50", "--eval_steps", "25", "--save_steps", "25", "--learning_rate", "6e-3", "--eval_on_start", "true",
)  # fmt: skip


@pytest.fixture(scope="module")
def gpt_neo_run(tmp_path_factory, sample_txt):
    """(output folder, log history) of one finished GPT-Neo run; read-only: copy a checkpoint to resume it."""
    out = tmp_path_factory.mktemp("gpt_neo") / "run"
    return out, run(sample_txt, out, *GPT_NEO_RUN)


def test_eval_loss_drops_and_result_generates(gpt_neo_run):
    out, history = gpt_neo_run
    evals = [h for h in history if "eval_loss" in h]
    first, last = evals[0], evals[-1]
    # step 50 is scored once: the final evaluation reuses it (the weights are the same)
    assert [h["step"] for h in evals] == [0, 25, 50]
    assert first["eval_loss"] > 5.5  # ~ln(512) for an untrained model
    assert last["eval_loss"] < first["eval_loss"] - 1.0, (first, last)  # the stated margin: 1 nat in 50 steps
    assert 0 < last["eval_bits_per_byte"] < first["eval_bits_per_byte"]

    # the final save: safetensors (no pickle), tokenizer, generation config with eos, plot, card
    for name in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "generation_config.json",
        "loss_curve.png",
        "README.md",
    ]:
        assert (out / name).is_file(), name
    assert not (out / "pytorch_model.bin").exists()
    gen = json.loads((out / "generation_config.json").read_text())
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert gen["eos_token_id"] is not None and gen["max_length"] == 512
    results = json.loads((out / "all_results.json").read_text())
    assert results["num_input_tokens_seen"] == 50 * 8 * 64
    assert results["eval_loss"] == last["eval_loss"]
    assert tok["eos_token"] == "<|endoftext|>"

    from transformers import pipeline

    generator = pipeline("text-generation", model=str(out), device="cpu")
    text = generator("Once upon a time", max_new_tokens=20, do_sample=False)[0]["generated_text"]
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, sample_txt, gpt_neo_run):
    full, history_full = gpt_neo_run
    # a run that was stopped after its step-25 checkpoint: only that checkpoint (and its tokenizer) exists
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-25", resumed / "checkpoint-25")
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(full / name, resumed / name)
    # `make train` again resumes by itself (checkpoint-25 is not scored again: the full run scored it at 25)
    history_resumed = run(sample_txt, resumed, *GPT_NEO_RUN[:-1], "false")
    assert any(h.get("step") == 50 for h in history_resumed)

    def last(history, key):
        return [h[key] for h in history if key in h][-1]

    assert last(history_resumed, "eval_loss") == pytest.approx(last(history_full, "eval_loss"), abs=1e-5)
    assert last(history_resumed, "loss") == pytest.approx(last(history_full, "loss"), abs=1e-5)
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


def test_max_minutes_stops_a_time_boxed_run(tmp_path, sample_txt):
    out = tmp_path / "boxed"  # a budget shorter than one step: stops after the first, evaluates, saves
    history = run(sample_txt, out, "--max_steps", "500", "--eval_steps", "100", "--max_minutes", "1e-6")
    steps = [h["step"] for h in history if "eval_loss" in h]
    assert steps and set(steps) == {1}, history
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 1
    assert (out / "model.safetensors").is_file()
    with pytest.raises(
        ConfigError, match=r"--max_minutes -1.0: must be greater than 0; pass a positive number of minutes"
    ):
        run(sample_txt, tmp_path / "bad", "--max_steps", "5", "--max_minutes", "-1")


def test_finished_run_is_not_overwritten(tmp_path, sample_txt):
    out = tmp_path / "done"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="already holds a finished model"):
        pretrain.main(["--data", str(sample_txt), "--output_dir", str(out), *TINY, "--max_steps", "1"])
    assert (out / "model.safetensors").read_bytes() == b"weights"


def test_bad_input_fails_fast(tmp_path, sample_txt, monkeypatch):
    with pytest.raises(ConfigError, match="unknown size '5M'.*1M, 3M, 8M, 28M, 33M, 1L-21M, 2L-33M"):
        pretrain.main(["--size", "5M", "--data", str(sample_txt), "--output_dir", str(tmp_path / "x")])
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("size: 1M\nlearning_rat: 0.001\n")
    with pytest.raises(ConfigError, match="learning_rat.*did you mean learning_rate"):
        pretrain.main(["--config", str(recipe)])
    with pytest.raises(ConfigError, match="does not exist"):
        pretrain.main(
            [
                "--size",
                "1M",
                "--data",
                str(tmp_path / "nope.txt"),
                "--output_dir",
                str(tmp_path / "y"),
            ]
        )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        pretrain.main(["--size", "1M", "--data", str(empty), "--output_dir", str(tmp_path / "z")])
    # a push at the end of training is checked before any data is read
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    with pytest.raises(ConfigError, match="no Hugging Face token found"):  # before the stories are read
        pretrain.main(
            [
                "--size",
                "1M",
                "--data",
                str(sample_txt),
                "--output_dir",
                str(tmp_path / "w"),
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "me/m",
            ]
        )


def test_make_train_rejects_unknown_size(repo_root):
    proc = subprocess.run(
        ["make", "-s", "train", "SIZE=5M"], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "unknown SIZE=5M; valid sizes:" in proc.stderr
    for name in ["1M", "3M", "8M", "28M", "33M", "1L-21M", "2L-33M"]:
        assert name in proc.stderr


# ------------------------------------------------------------------- Llama blocks and Muon (issue 22)
LLAMA = ("--architecture", "llama", "--num_heads", "4")  # hidden 32: 4 heads of 8, one key/value head


def test_llama_architecture_trains_saves_reloads_and_generates(tmp_path, sample_txt):
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from tinystories.models.sizes import count_non_embedding_params, llama_non_embedding_params

    out = tmp_path / "llama"
    history = run(
        sample_txt, out, *LLAMA, "--max_steps", "30", "--eval_steps", "30", "--save_steps", "30",
        "--learning_rate", "6e-3", "--eval_on_start", "true",
    )  # fmt: skip
    evals = [h for h in history if "eval_loss" in h]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[0]["eval_loss"] > 5.5 and evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.75, evals
    assert 0 < evals[-1]["eval_bits_per_byte"] < evals[0]["eval_bits_per_byte"]

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True and config["max_position_embeddings"] == 64  # the block
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 1, 8)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model) is LlamaForCausalLM
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "lm_head.weight" not in load_file(out / "model.safetensors")  # tied: stored once
    n_non_emb = llama_non_embedding_params(32, 2, 4, config["intermediate_size"])
    assert count_non_embedding_params(model) == n_non_emb
    info = json.loads((out / "card_info.json").read_text())
    assert info["num_non_embedding_parameters"] == n_non_emb and info["config"]["model_type"] == "llama"
    assert info["hyperparameters"]["optimizer"] == "adamw_torch_fused"
    card = (out / "README.md").read_text()
    assert "Llama-architecture" in card and "GPT-Neo" not in card and "- llama" in card

    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("Once upon a time", return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(
            **prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
        again = model.generate(
            **prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    assert ids.shape[1] > prompt.input_ids.shape[1] and torch.equal(ids, again)
    assert tokenizer.decode(ids[0]).startswith("Once upon a time")


def test_muon_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, sample_txt):
    """`--optim muon` on Llama blocks: the run record says muon, the loss drops, and a run stopped after its
    step-8 checkpoint resumes to step 16 with the uninterrupted run's losses and weights (the Muon momentum
    and Adam moments come back from optimizer.pt: without it the resumed run ends elsewhere)."""
    args = (
        *LLAMA, "--optim", "muon", "--muon_learning_rate", "0.03", "--max_steps", "16", "--eval_steps", "8",
        "--save_steps", "8", "--attn_implementation", "eager", "--eval_on_start", "true",
    )  # fmt: skip
    full = tmp_path / "full"
    history_full = run(sample_txt, full, *args)
    info = json.loads((full / "card_info.json").read_text())
    hparams = info["hyperparameters"]
    assert hparams["optimizer"] == "muon" and hparams["muon_learning_rate"] == 0.03
    assert hparams["muon_momentum"] == 0.95 and hparams["learning_rate"] == 3e-3
    assert "| `optimizer` | muon |" in (full / "README.md").read_text()
    evals = [h["eval_loss"] for h in history_full if "eval_loss" in h]
    assert len(evals) >= 3 and evals[-1] < evals[0] - 0.5, evals
    assert (full / "checkpoint-8" / "optimizer.pt").is_file()

    def resume(name, drop_optimizer=False):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copytree(full / "checkpoint-8", folder / "checkpoint-8")
        if drop_optimizer:
            (folder / "checkpoint-8" / "optimizer.pt").unlink()
        for file in ["tokenizer.json", "tokenizer_config.json"]:
            shutil.copy(full / file, folder / file)
        # no evaluation of checkpoint-8 at the start: the full run's step-8 evaluation already scored it
        return run(sample_txt, folder, *args, "--eval_on_start", "false"), load_file(
            folder / "model.safetensors"
        )

    def last(history, key):
        return [h[key] for h in history if key in h][-1]

    history_resumed, resumed = resume("resumed")
    assert any(h.get("step") == 16 for h in history_resumed)
    assert last(history_resumed, "eval_loss") == pytest.approx(last(history_full, "eval_loss"), abs=1e-5)
    assert last(history_resumed, "loss") == pytest.approx(last(history_full, "loss"), abs=1e-5)
    reference = load_file(full / "model.safetensors")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=1e-5, rtol=0)
    _, cold = resume("cold", drop_optimizer=True)  # fresh Muon momentum and Adam moments at step 8
    assert max((cold[k] - reference[k]).abs().max().item() for k in reference) > 1e-3
