"""SimpleStories models load as they are on the Hub, by repo id, offline.

The stand-in has the layout of `SimpleStories/SimpleStories-*` (transformers `LlamaForCausalLM`: `config.json`,
`model.safetensors`, `generation_config.json`, `tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`) and the tokenizer of the family (github.com/danbraunai/simple_stories_train,
`tokenizer/simplestories-4096.json`): WordPiece with `[UNK]` = 0 and `[EOS]` = 1, no BOS, a lowercasing normalizer,
Whitespace + Punctuation + Digits pre-tokenizers, and a post-processor that appends `[EOS]` (stories are trained
with `[EOS]` after each). Trained here on real stories at a small vocabulary; the model is a tiny random Llama.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tinystories.data.tokenizer import load_tokenizer, story_boundary_ids
from tinystories.evaluation.generation import _prompt_ids, generate_story
from tinystories.evaluation.metrics import score_texts
from tinystories.models.loading import context_limit, load_model

REPO_ID = "SimpleStories/SimpleStories-35M"


def simplestories_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation("isolated"), pre_tokenizers.Digits(True)]
    )
    trainer = trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=["[UNK]", "[EOS]"], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", 1)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", model_max_length=512
    )


def test_simplestories_load_by_id_and_score_their_own_end_of_story(hub_cache, tmp_path, stories):
    folder = tmp_path / "SimpleStories-35M"
    tokenizer = simplestories_tokenizer(stories[:500])
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, eos_token_id=1,
        bos_token_id=1, tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    # as on the Hub (SimpleStories/SimpleStories-11M generation_config.json): bos_token_id 1, eos_token_id 1
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    hub_cache.add(REPO_ID, folder)

    model, tokenizer = load_model(REPO_ID), load_tokenizer(REPO_ID)
    assert type(model).__name__ == "LlamaForCausalLM" and context_limit(model) == 512
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id) == (1, None)
    assert tokenizer("Once upon a time")["input_ids"][-1] == 1  # as on the Hub: [EOS] appended by default
    assert story_boundary_ids(tokenizer, model.generation_config) == (1, 1)

    texts = stories[:6]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    scores = score_texts(model, tokenizer, texts, 512, progress=False)
    assert scores["num_tokens"] == sum(len(i) + 1 for i in ids)  # [EOS, *story, EOS]: one [EOS] target each
    assert scores["num_bytes"] == sum(len(t.encode()) for t in texts)  # the raw text, not the lowercased one

    prompt_ids, stops = _prompt_ids(model.generation_config, tokenizer, ["Once upon a time"])
    assert prompt_ids == [tokenizer("Once upon a time", add_special_tokens=False)["input_ids"]] and stops == [
        1
    ]
    assert isinstance(
        generate_story(model, tokenizer, "Once upon a time", max_new_tokens=8, temperature=0), str
    )
