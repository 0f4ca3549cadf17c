"""Story generation: Instruct prompt building, EOS stopping, the 512-token context cap, the CLI."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoForCausalLM

from tiny import make_tiny_model_dir, make_varied_model_dir, publish_tiny_model
from tinystories.core import TRAINED_CONTEXT
from tinystories.data.instruct import build_prompt
from tinystories.evaluation.generation import generate_story
from tinystories.models.loading import context_limit
from tinystories.stages.generate import main


def _greedy_ids(model, tokenizer, prompt: str, n: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def _swap_token_rows(model, a: int, b: int) -> None:
    """Relabel tokens a <-> b in the (tied) embedding: the model is the same function up to that relabelling."""
    with torch.no_grad():
        w = model.get_input_embeddings().weight
        w[[a, b]] = w[[b, a]]
    assert model.get_output_embeddings().weight.data_ptr() == w.data_ptr()  # tied: lm head swapped too


def test_generation_stops_at_eos(tmp_path, gpt_neo_tokenizer_dir, gpt_neo_tokenizer):
    tok = gpt_neo_tokenizer
    # seed 2: a random model whose greedy continuation changes token a few times (seed 0 repeats one token)
    model_dir = make_tiny_model_dir(tmp_path / "m", gpt_neo_tokenizer_dir, seed=2)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = "Once upon a time"
    prompt_ids = tok(prompt)["input_ids"]
    free = _greedy_ids(model, tok, prompt, 24)
    assert tok.eos_token_id not in free
    # first position k >= 1 whose token appears neither earlier in the continuation nor in the prompt
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i] and free[i] not in prompt_ids)
    _swap_token_rows(model, free[k], tok.eos_token_id)  # now the model says EOS exactly where it said free[k]

    story = generate_story(model, tok, prompt, max_new_tokens=24, temperature=0)
    assert story == tok.decode(free[:k])
    assert "<|endoftext|>" not in story
    # the raw generate call really stopped there (no padding beyond EOS in a single sequence)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(
        ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=0
    )
    assert out.shape[1] == len(prompt_ids) + k + 1 and out[0, -1].item() == tok.eos_token_id


def test_generation_capped_at_context(tmp_path, gpt_neo_tokenizer_dir, gpt_neo_tokenizer):
    from transformers import GPTNeoConfig

    # the released configs store 2048 positions but were trained at 512: generation stays within 512
    assert (
        context_limit(
            GPTNeoForCausalLM(
                GPTNeoConfig(
                    max_position_embeddings=2048,
                    hidden_size=16,
                    num_heads=2,
                    num_layers=1,
                    attention_types=[[["global"], 1]],
                    vocab_size=8,
                )
            )
        )
        == TRAINED_CONTEXT
    )

    tok = gpt_neo_tokenizer
    positions = 48  # a model with a shorter context: prompt + story must fit in it
    model_dir = make_tiny_model_dir(tmp_path / "m", gpt_neo_tokenizer_dir, max_positions=positions)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = build_prompt(words=["dog", "ball", "happy"], features=["Dialogue"])
    n_prompt = len(tok(prompt)["input_ids"])
    free = _greedy_ids(model, tok, prompt, positions - n_prompt)
    assert tok.eos_token_id not in free  # the fixed random model never says EOS on this path
    story = generate_story(model, tok, prompt, max_new_tokens=5000, temperature=0)
    assert story == tok.decode(free)  # exactly `positions - prompt` tokens were generated, not 5000

    with pytest.raises(ValueError, match="48-token"):
        generate_story(model, tok, "word " * 60, max_new_tokens=5)


def test_sampling_is_seeded(tiny_model_dir, gpt_neo_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=None)
    a = generate_story(model, gpt_neo_tokenizer, "Tom saw a cat.", seed=1, **kw)
    b = generate_story(model, gpt_neo_tokenizer, "Tom saw a cat.", seed=1, **kw)
    c = generate_story(model, gpt_neo_tokenizer, "Tom saw a cat.", seed=2, **kw)
    assert a == b and a != c


def test_cli_builds_instruct_prompt_and_prints_story(tmp_path, hub_cache, gpt_neo_tokenizer_dir, capsys):
    repo_id = publish_tiny_model(hub_cache, tmp_path, gpt_neo_tokenizer_dir)
    from tinystories.data.tokenizer import load_tokenizer
    from tinystories.models.loading import load_model

    tok, model = load_tokenizer(repo_id), load_model(repo_id)
    prompt = build_prompt(
        words=["dog", "ball", "happy"], features=["Dialogue", "Twist"], summary="A dog plays."
    )
    expected = generate_story(model, tok, prompt, max_new_tokens=8, temperature=0)

    argv = ["--model", repo_id, "--temperature", "0", "--max_new_tokens", "8", "--device", "cpu"]
    assert (
        main(
            [
                *argv,
                "--words",
                "dog,ball",
                "happy",
                "--features",
                "Dialogue",
                "Twist",
                "--summary",
                "A dog plays.",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.strip() == expected.strip()
    assert "Words:" not in out  # the story only, not the prompt

    assert main([*argv, "--prompt", "Once upon a time"]) == 0
    out = capsys.readouterr().out
    continuation = generate_story(model, tok, "Once upon a time", max_new_tokens=8, temperature=0)
    assert (
        out.strip() == ("Once upon a time" + continuation).strip()
    )  # a plain beginning is part of the story


@pytest.mark.parametrize("architecture", ["gpt_neo", "llama"])
def test_batched_generation_is_one_prompt_at_a_time(
    tmp_path, gpt_neo_tokenizer_dir, gpt_neo_tokenizer, architecture
):
    """Prompts of different lengths, left-padded into one generate call: greedy continuations are token for
    token those of each prompt alone (positions start at each prompt's first token, padding is masked)."""
    from types import SimpleNamespace

    from tinystories.evaluation.generation import generate_batch, generate_completions

    tok = gpt_neo_tokenizer
    model_dir = make_varied_model_dir(tmp_path / "m", gpt_neo_tokenizer_dir, architecture=architecture)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts = ["Tom", "Once upon a time, there was a little girl named Lily who", "The dog ran to the park"]
    assert len({len(tok(p)["input_ids"]) for p in prompts}) == 3
    alone = [generate_story(model, tok, p, max_new_tokens=12, temperature=0) for p in prompts]
    assert all(len(tok(s)["input_ids"]) >= 6 for s in alone)  # real continuations, not an early EOS
    batched = generate_batch(model, tok, prompts, max_new_tokens=12, temperature=0)
    assert [b[0] for b in batched] == alone

    # sampled: num_return_sequences per prompt, grouped by prompt, reproducible for a seed
    sampled = generate_batch(
        model, tok, prompts, max_new_tokens=8, temperature=1.0, seed=3, num_return_sequences=2
    )
    assert [len(s) for s in sampled] == [2, 2, 2]
    assert sampled == generate_batch(model, tok, prompts, 8, 1.0, seed=3, num_return_sequences=2)

    # the evaluation's rows: a batch of one is the one-prompt path seeded seed + prompt index
    args = SimpleNamespace(
        max_new_tokens=8, temperature=1.0, top_p=0.95, top_k=None, num_completions=2, seed=5,
        generation_batch_size=1,
    )  # fmt: skip
    rows = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)]
    one = generate_completions(model, tok, rows, args, "m")
    expected = [
        generate_story(model, tok, p, 8, 1.0, None, 0.95, seed=5 + i, num_return_sequences=2)
        for i, p in enumerate(prompts)
    ]
    assert [r["completion"] for r in one] == [c for pair in expected for c in pair]
    assert [r["id"] for r in one] == ["p0-0", "p0-1", "p1-0", "p1-1", "p2-0", "p2-1"]
    args.generation_batch_size = 2  # batches [p0, p1], [p2]: seeds 5 and 6
    two = generate_completions(model, tok, rows, args, "m")
    first = generate_batch(model, tok, prompts[:2], 8, 1.0, None, 0.95, seed=5, num_return_sequences=2)
    assert [r["completion"] for r in two[:4]] == [c for pair in first for c in pair]
    assert [r["prompt_id"] for r in two] == [r["prompt_id"] for r in one]
