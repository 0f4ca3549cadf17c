"""Top-K trimming keeps the training text lossless; the own BPE trains and reloads."""

import json

import pytest
from transformers import AutoTokenizer

from tinystories.core import ConfigError
from tinystories.data.loading import load_stories
from tinystories.data.tokenizer import prepare_tokenizer, select_trimmed_vocab, train_bpe_tokenizer


@pytest.fixture(scope="module")
def sample_stories(sample_txt):
    return load_stories(str(sample_txt), seed=0)


@pytest.fixture(scope="module")
def trimmed_dir(tmp_path_factory, sample_stories, gpt_neo_tokenizer_dir):
    out = tmp_path_factory.mktemp("trimmed")
    prepare_tokenizer(str(gpt_neo_tokenizer_dir), sample_stories["train"], out, vocab_size=3000)
    return out


def test_trimmed_tokenizer_round_trips_training_text(trimmed_dir, sample_stories):
    tok = AutoTokenizer.from_pretrained(trimmed_dir)
    assert len(tok) == 3000
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 2999  # EOS keeps the last id
    texts = list(sample_stories["train"]["text"])[:400] + list(sample_stories["validation"]["text"])[:100]
    for text in texts:
        assert tok.decode(tok(text)["input_ids"]) == text
    # text with characters never seen in training still round-trips (all 256 bytes are kept)
    odd = "Zyxquor 🦄 naïve façade — 漢字"
    assert tok.decode(tok(odd)["input_ids"]) == odd


def test_kept_tokens_tokenize_exactly_like_gpt_neo(trimmed_dir, gpt_neo_tokenizer):
    tok = AutoTokenizer.from_pretrained(trimmed_dir)
    meta = json.loads((trimmed_dir / "trimmed_vocab.json").read_text())
    new_to_base = meta["new_to_base_id"]
    text = "Once upon a time, there was a little girl named Lily. She liked to play with her ball."
    new_ids = tok(text)["input_ids"]
    assert [new_to_base[i] for i in new_ids] == gpt_neo_tokenizer(text)["input_ids"]
    assert meta["coverage_of_training_tokens"] > 0.9


def test_trimmed_word_is_spelled_with_kept_pieces(trimmed_dir, gpt_neo_tokenizer):
    tok = AutoTokenizer.from_pretrained(trimmed_dir)
    word = " Zyxquorbanth"
    base_pieces = gpt_neo_tokenizer.tokenize(word)
    pieces = tok.tokenize(word)
    assert "".join(pieces) == "".join(base_pieces)  # same bytes
    assert len(pieces) >= len(base_pieces)


def test_trim_selection_is_closed_under_merges(gpt_neo_tokenizer):
    import numpy as np

    base_json = json.loads(gpt_neo_tokenizer.backend_tokenizer.to_str())
    counts = np.zeros(len(gpt_neo_tokenizer), dtype=np.int64)
    counts[gpt_neo_tokenizer.convert_tokens_to_ids("Ġhappily")] = 100  # needs its merge ancestors
    result = select_trimmed_vocab(base_json, counts, 300)
    vocab = base_json["model"]["vocab"]
    kept = {t for t, i in vocab.items() if i in set(result.kept_ids)}
    assert "Ġhappily" in kept
    parents = {}
    for merge in base_json["model"]["merges"]:
        a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
        parents.setdefault(a + b, (a, b))
    for token in kept:  # every kept token is reachable: its merge parents are kept too
        if token in parents:
            assert set(parents[token]) <= kept, token
    assert len(kept) > 257  # bytes + EOS + happily and its ancestors
    assert len(result.kept_ids) <= 300
    with pytest.raises(ConfigError, match="too small"):
        select_trimmed_vocab(base_json, counts, 100)


def test_own_bpe(tmp_path, sample_stories):
    texts = list(sample_stories["train"]["text"])[:500]
    train_bpe_tokenizer(texts, 512, tmp_path / "bpe")
    tok = AutoTokenizer.from_pretrained(tmp_path / "bpe")
    assert len(tok) == 512 and tok.eos_token_id is not None
    assert tok.decode(tok(texts[0])["input_ids"]) == texts[0]
    assert len(tok(texts[0])["input_ids"]) < len(texts[0]) / 2  # it learned merges
