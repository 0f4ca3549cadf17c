"""Shared fixtures: offline data, tokenizers and tiny models.

Everything here runs offline on a CPU in seconds. `../shared/data` (real TinyStories text and the
byte-exact GPT-Neo tokenizer) is used when present; the `tiny_tokenizer` fixture trains a small
byte-level BPE on the fly so tests also run without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network in tests
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_TXT = SHARED_DATA / "tinystories" / "TinyStories-train.sample.txt"
GPT_NEO_TOKENIZER = SHARED_DATA / "tokenizer-gpt-neo"


@pytest.fixture(autouse=True)
def _restore_accelerate_environment():
    """Training configs export the resolved precision (ACCELERATE_MIXED_PRECISION) into os.environ, as they must
    for `accelerate`; a test must not hand its precision to the next test's subprocesses."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("ACCELERATE_")}
    yield
    for key in [k for k in os.environ if k.startswith("ACCELERATE_") and k not in saved]:
        del os.environ[key]
    os.environ.update(saved)


def read_sample_stories(n: int | None = None) -> list[str]:
    text = SAMPLE_TXT.read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()]
    return stories[:n] if n else stories


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_txt() -> Path:
    if not SAMPLE_TXT.is_file():
        pytest.skip("../shared/data is not present")
    return SAMPLE_TXT


@pytest.fixture(scope="session")
def stories() -> list[str]:
    if not SAMPLE_TXT.is_file():
        pytest.skip("../shared/data is not present")
    return read_sample_stories()


@pytest.fixture(scope="session")
def gpt_neo_tokenizer_dir() -> Path:
    if not GPT_NEO_TOKENIZER.is_dir():
        pytest.skip("../shared/data/tokenizer-gpt-neo is not present")
    return GPT_NEO_TOKENIZER


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gpt_neo_tokenizer_dir):
    """The tiny GPT-Neo (hidden 32, 2 layers, the real GPT-Neo tokenizer) as a saved model folder; read-only."""
    from tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", gpt_neo_tokenizer_dir)


PRETRAIN_TINY = [
    "--train_tokenizer", "true", "--vocab_size", "512", "--hidden_size", "32", "--num_layers", "2",
    "--block_size", "64", "--max_train_samples", "600", "--per_device_train_batch_size", "8",
    "--global_batch_size", "8", "--gradient_accumulation_steps", "1", "--learning_rate", "6e-3",
    "--max_eval_samples", "40", "--eval_steps", "1000", "--save_steps", "1000", "--logging_steps", "1000",
    "--report_to", "none", "--use_cpu", "true", "--dataloader_num_workers", "0", "--seed", "7",
]  # fmt: skip


@pytest.fixture(scope="session")
def pretrained_tiny(tmp_path_factory, sample_txt):
    """`pretrained_tiny(steps)`: the folder of a tiny GPT-Neo (own 512-token BPE, hidden 32, 2 layers, block 64)
    pretrained `steps` steps by `tinystories train` on the real stories, trained once a session per step count
    (the ONNX export and inference bench tests share it); read-only: write exports elsewhere."""
    from tinystories.stages import train as pretrain

    runs: dict[int, Path] = {}

    def get(steps: int) -> Path:
        if steps not in runs:
            run = tmp_path_factory.mktemp(f"pretrained-{steps}") / "run"
            argv = [
                "--data",
                str(sample_txt),
                "--output_dir",
                str(run),
                "--max_steps",
                str(steps),
                *PRETRAIN_TINY,
            ]
            saved = {k: v for k, v in os.environ.items() if k.startswith("ACCELERATE_")}
            try:
                assert pretrain.main(argv) == 0
            finally:  # the run exports its precision to os.environ: keep it from the tests that follow
                for key in [k for k in os.environ if k.startswith("ACCELERATE_") and k not in saved]:
                    del os.environ[key]
                os.environ.update(saved)
            runs[steps] = run
        return runs[steps]

    return get


@pytest.fixture(scope="session")
def instruct_txt(tmp_path_factory, stories):
    """300 Instruct records built from real stories, in the released `.txt` layout; read-only."""
    from tiny import write_instruct_txt

    return write_instruct_txt(stories, tmp_path_factory.mktemp("instruct") / "instruct.txt", n=300)


@pytest.fixture(scope="session")
def gpt_neo_tokenizer(gpt_neo_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gpt_neo_tokenizer_dir)


def make_hub_cache(
    cache_dir: Path, repo_id: str, folder: Path, repo_type: str = "model", revision: str = "main"
) -> Path:
    """Lay `folder` out as the real HF cache of `repo_id@revision`: `refs/<revision>` holds a commit hash,
    `snapshots/<hash>/<file>` are symlinks into `blobs/` (a `refs/pr/1` revision is `refs/refs/pr/1`, as
    huggingface_hub writes it).

    Loading `repo_id` (with `revision=`) with HF_HUB_CACHE=cache_dir and HF_HUB_OFFLINE=1 then takes the same
    code path a user with the Hub takes, without the network.
    """
    import hashlib
    import os
    import shutil

    prefix = {"model": "models", "dataset": "datasets", "space": "spaces"}[repo_type]
    root = Path(cache_dir) / f"{prefix}--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1((repo_id if revision == "main" else f"{repo_id}@{revision}").encode()).hexdigest()
    ref = root / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    snapshot = root / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for src in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = src.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / src.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty offline HF cache: `hub_cache.add(repo_id, folder[, revision=])` publishes a folder under a repo id.

    HF_HUB_CACHE is set for subprocesses and patched in-process (huggingface_hub reads it at import).
    """
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    class _Cache:
        path = cache

        @staticmethod
        def add(repo_id: str, folder: Path, repo_type: str = "model", revision: str = "main") -> Path:
            return make_hub_cache(cache, repo_id, folder, repo_type, revision)

    return _Cache()


def publish_tinystories_dataset(hub_cache, tmp_path: Path, stories: list[str]) -> dict:
    """Lay out `roneneldan/TinyStories` in the offline cache with the real repo's files, from real stories.

    `data/train-0000{0..3}-of-00004-<hash>.parquet` and `data/validation-00000-of-00001-<hash>.parquet`
    (column `text`), `TinyStories-{train,valid}.txt` and `TinyStoriesV2-GPT4-{train,valid}.txt` (stories
    between `<|endoftext|>` lines), `Evaluation prompts.yaml` (a YAML list of 44 story beginnings, cut
    mid-sentence like the paper's) and `README.md`. Returns what the parts hold: {"train", "validation",
    "prompts", "snapshot"}; the `.txt` files hold other stories than the parquet, so a test sees which it read.
    """
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    train, validation, txt_only = stories[:160], stories[160:200], stories[200:260]
    prompts = [" ".join(s.split()[: 8 + i % 7]) for i, s in enumerate(stories[260:304])]
    folder = tmp_path / "roneneldan--TinyStories"
    (folder / "data").mkdir(parents=True)

    def shard(split: str, index: int, count: int, texts: list[str]) -> None:
        digest = hashlib.sha1(f"{split}-{index}".encode()).hexdigest()[:16]
        name = f"{split}-{index:05d}-of-{count:05d}-{digest}.parquet"
        pq.write_table(pa.table({"text": texts}), folder / "data" / name)

    for i in range(4):
        shard("train", i, 4, train[i * 40 : (i + 1) * 40])
    shard("validation", 0, 1, validation)
    for name, texts in (
        ("TinyStories-train.txt", txt_only[:20]),
        ("TinyStories-valid.txt", txt_only[20:30]),
        ("TinyStoriesV2-GPT4-train.txt", txt_only[30:50]),
        ("TinyStoriesV2-GPT4-valid.txt", txt_only[50:]),
    ):
        (folder / name).write_text("\n<|endoftext|>\n".join(texts) + "\n", encoding="utf-8")
    (folder / "Evaluation prompts.yaml").write_text(yaml.safe_dump(prompts, width=1000), encoding="utf-8")
    (folder / "README.md").write_text(
        "---\nlicense: cdla-sharing-1.0\ntask_categories:\n- text-generation\nlanguage:\n- en\n---\n"
        "Dataset containing synthetically generated (by GPT-3.5 and GPT-4) short stories that only use a "
        "small vocabulary.\n",
        encoding="utf-8",
    )
    snapshot = hub_cache.add("roneneldan/TinyStories", folder, repo_type="dataset")
    return {"train": train, "validation": validation, "prompts": prompts, "snapshot": snapshot}
