"""Fair units across model families: each family is scored on predicting its own end-of-story token (EOS for
GPT-Neo, BOS for llama2.c's stream), bits per byte divides by the same UTF-8 bytes whatever the tokenizer, and
each model keeps the context it was trained at."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, GPTNeoConfig, LlamaConfig

from conftest import SHARED_DATA
from tinystories.data.packing import num_utf8_bytes
from tinystories.data.tokenizer import load_tokenizer, story_boundary_ids
from tinystories.evaluation.metrics import score_texts, story_windows
from tinystories.models.loading import context_limit, load_model
from tinystories.stages import pull

L2C = SHARED_DATA / "llama2c-stories260K"


@pytest.fixture(scope="module")
def llama2c_dir(tmp_path_factory):
    if not (L2C / "stories260K.bin").is_file():
        pytest.skip("../shared/data/llama2c-stories260K is not present")
    out = tmp_path_factory.mktemp("units") / "stories260K"
    return pull.convert_llama2c(str(L2C / "stories260K.bin"), str(L2C / "tok512.bin"), str(out))


def test_two_tokenizers_same_stories_same_bytes(llama2c_dir, tiny_model_dir, stories):
    texts = stories[:12]
    neo = score_texts(
        load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)), texts, 512, progress=False
    )
    l2c = score_texts(
        load_model(str(llama2c_dir)), load_tokenizer(str(llama2c_dir)), texts, 512, progress=False
    )
    assert neo["num_bytes"] == l2c["num_bytes"] == num_utf8_bytes(texts) == 8_526
    assert neo["num_tokens"] != l2c["num_tokens"]  # 512 tokens vs 50,257: different counts, same denominator
    assert l2c["bits_per_byte"] == pytest.approx(l2c["total_nll"] / (0.6931471805599453 * 8_526))


def test_each_family_predicts_its_own_end_of_story(llama2c_dir, gpt_neo_tokenizer):
    l2c_tok, l2c_model = load_tokenizer(str(llama2c_dir)), load_model(str(llama2c_dir))
    assert story_boundary_ids(gpt_neo_tokenizer) == (50256, 50256)
    assert story_boundary_ids(l2c_tok, l2c_model.generation_config) == (
        1,
        1,
    )  # llama2.c: the next story's BOS
    assert story_boundary_ids(l2c_tok, GenerationConfig(eos_token_id=2)) == (1, 2)  # a Llama 2 style model
    texts = ["Tom had a red ball.", "Sue ran home. She was happy."]
    windows = story_windows(l2c_tok, texts, 512, 256, 512, l2c_model.generation_config)
    ids = l2c_tok(texts, add_special_tokens=False)["input_ids"]
    assert [w for _, w, _ in windows] == [[1, *ids[0], 1], [1, *ids[1], 1]]
    scores = score_texts(l2c_model, l2c_tok, texts, 512, progress=False)
    expected = 0.0
    for seq in ([1, *i, 1] for i in ids):  # every target after BOS, the closing BOS included
        with torch.no_grad():
            logits = l2c_model(torch.tensor([seq])).logits[0, :-1]
        expected += torch.nn.functional.cross_entropy(logits, torch.tensor(seq[1:]), reduction="sum").item()
    assert scores["num_tokens"] == sum(len(i) + 1 for i in ids)
    assert scores["total_nll"] == pytest.approx(expected, rel=1e-5)


def test_the_trained_context_is_respected():
    assert (
        context_limit(GPTNeoConfig(max_position_embeddings=2048)) == 512
    )  # the released repos: trained at 512
    assert context_limit(LlamaConfig(max_position_embeddings=256)) == 256  # llama2.c stories15M
    assert context_limit(LlamaConfig(max_position_embeddings=1024)) == 1024  # llama2.c stories110M
