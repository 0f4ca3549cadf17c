"""Every local data format loads the same stories; packing is exact."""

import json

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from tinystories.core import ConfigError
from tinystories.data.loading import hub_data_files, iter_txt_stories, load_split, load_stories
from tinystories.data.packing import PACK_BATCH_SIZE, pack_dataset

STORIES = [
    "Once upon a time, there was a cat.\nThe cat was happy.",
    "Tom had a red ball. He liked it.",
    "   ",
    'Sue saw a big tree. "Wow!" she said.',
    "The sun was hot. Ben ate ice cream.",
    "",
    "A bird sang a song.",
]
NON_EMPTY = [s for s in STORIES if s.strip()]


def write_all_formats(tmp_path):
    paths = {}
    paths["txt"] = tmp_path / "stories.txt"
    paths["txt"].write_text("<|endoftext|>\n".join(STORIES) + "<|endoftext|>\n")
    paths["jsonl"] = tmp_path / "stories.jsonl"
    paths["jsonl"].write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(STORIES)))
    paths["json"] = tmp_path / "stories.json"
    paths["json"].write_text(json.dumps([{"text": s} for s in STORIES]))
    paths["parquet"] = tmp_path / "stories.parquet"
    Dataset.from_dict({"text": STORIES}).to_parquet(str(paths["parquet"]))
    paths["disk"] = tmp_path / "saved"
    Dataset.from_dict({"text": STORIES}).save_to_disk(str(paths["disk"]))
    paths["disk_dict"] = tmp_path / "saved_dict"
    DatasetDict(
        train=Dataset.from_dict({"text": STORIES[:5]}), validation=Dataset.from_dict({"text": STORIES[5:]})
    ).save_to_disk(str(paths["disk_dict"]))
    return paths


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "parquet", "disk"])
def test_each_local_format_loads(tmp_path, fmt):
    path = write_all_formats(tmp_path)[fmt]
    data, stats = load_stories(str(path), validation_fraction=0.2, seed=0, return_stats=True)
    got = sorted(list(data["train"]["text"]) + list(data["validation"]["text"]))
    assert got == sorted(s.strip() if fmt == "txt" else s for s in NON_EMPTY)
    assert stats.dropped_empty == len(STORIES) - len(NON_EMPTY)
    assert stats.validation == 1 and stats.train == 4  # 20% of 5 stories, seeded
    assert stats.validation_from == "held_out_fraction"


def test_held_out_split_is_seeded(tmp_path):
    path = write_all_formats(tmp_path)["jsonl"]
    a = load_stories(str(path), validation_fraction=0.4, seed=1)["validation"]["text"]
    b = load_stories(str(path), validation_fraction=0.4, seed=1)["validation"]["text"]
    assert a == b


def test_saved_dataset_dict_keeps_its_validation_split(tmp_path):
    path = write_all_formats(tmp_path)["disk_dict"]
    data, stats = load_stories(str(path), return_stats=True)
    assert stats.validation_from == "split"
    assert list(data["validation"]["text"]) == ["A bird sang a song."]  # the empty one is dropped


def test_real_sample_txt(sample_txt):
    stories = list(iter_txt_stories(sample_txt))
    assert len(stories) == 2316 and all(s.strip() for s in stories)
    assert stories[0].startswith("One day, a little girl named Lily")


def test_bad_input_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*DATA="):
        load_stories(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_stories(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("  <|endoftext|>\n \n<|endoftext|>")
    with pytest.raises(ConfigError, match="no non-empty stories"):
        load_stories(str(blank))
    wrong_col = tmp_path / "wrong.jsonl"
    wrong_col.write_text(json.dumps({"story": "x"}) + "\n")
    with pytest.raises(ConfigError, match="--text_column"):
        load_stories(str(wrong_col))


def test_unreachable_hub_without_local_path_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(ConfigError, match="roneneldan/TinyStories.*pass DATA="):
        load_stories("roneneldan/TinyStories")


class CharTokenizer:
    """A transparent tokenizer (one id per character) so expected packing is computable by hand."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_packing_is_exact():
    texts = [f"story {i} " + "x" * (i % 17) for i in range(300)]
    block = 16
    packed, stats = pack_dataset(
        Dataset.from_dict({"text": texts}), CharTokenizer(), block, return_stats=True
    )
    stream = [t for s in texts for t in [*map(ord, s), 0]]  # EOS after every story
    n_blocks = len(stream) // block  # one map batch: only the final tail is dropped
    assert len(texts) < PACK_BATCH_SIZE
    assert stats.tokens == len(stream) and stats.stories == 300
    assert stats.blocks == len(packed) == n_blocks
    assert stats.dropped_tokens == len(stream) - n_blocks * block
    assert stats.bytes == sum(len(s.encode()) for s in texts)
    got = np.array(packed["input_ids"])
    assert got.shape == (n_blocks, block)
    np.testing.assert_array_equal(got.ravel(), np.array(stream[: n_blocks * block]))
    # EOS positions: exactly one per story, right after its last character
    ends = np.cumsum([len(s) + 1 for s in texts]) - 1
    eos_positions = np.flatnonzero(got.ravel() == 0)
    np.testing.assert_array_equal(eos_positions, ends[ends < n_blocks * block])


def test_hub_file_names_give_the_splits(hub_cache, tmp_path):
    def publish(repo_id: str, files: dict[str, str]) -> None:
        folder = tmp_path / repo_id.replace("/", "--")
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        hub_cache.add(repo_id, folder, repo_type="dataset")

    row = json.dumps({"text": "Tom had a red ball."}) + "\n"
    publish("a/jsonl", {"data/train.jsonl": row, "data/dev.jsonl": row, "config.json": "{}", "README.md": ""})
    assert hub_data_files("a/jsonl") == {"train": ["data/train.jsonl"], "validation": ["data/dev.jsonl"]}
    assert load_split("a/jsonl", "validation")["text"] == ["Tom had a red ball."]
    publish("a/configs", {"en/train-00000-of-00001.parquet": "x", "fr/train-00000-of-00001.parquet": "x"})
    assert hub_data_files("a/configs") is None  # configs: left to datasets.load_dataset
    publish("a/txt", {"TinyStories-train.txt": "A.", "TinyStoriesV2-GPT4-train.txt": "B."})
    with pytest.raises(ConfigError, match="several .txt files per split"):
        hub_data_files("a/txt")
    assert hub_data_files("a/not-cached") is None
