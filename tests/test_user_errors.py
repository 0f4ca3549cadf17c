"""Probes of issue 32: what a user gets for a rerun, bad data, outputs on inputs and local names in uploads.

Every case goes through the real CLI (`tinystories.cli.main`, in-process; a subprocess where a second process is
the point) and checks the exit code, that the message names the flag or file and the fix, that it came within
seconds, and that nothing already written changed (the folders are hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tinystories import cli
from tinystories.data.loading import load_stories

# Flag names in one place (one name per concept in every stage)
DATA = "--data"
EVAL_DATA = "--eval_data"
TOKENIZER = "--tokenizer"
DEDUP_IN = "--data"
SOURCE_DATA = "--data"
OUT = "--output_dir"
SECONDS = 30  # "within seconds" on a shared 2-core machine: the refusals below take 3-10 s there

TRAIN = [
    "--hidden_size", "32", "--num_layers", "2", "--num_heads", "4", "--block_size", "64",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
    "--gradient_accumulation_steps", "1", "--global_batch_size", "4", "--learning_rate", "3e-3",
    "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2", "--logging_steps", "1",
    "--max_eval_samples", "8", "--report_to", "none", "--use_cpu", "true",
    "--dataloader_num_workers", "0", "--seed", "7",
]  # fmt: skip


def digest(*paths: Path) -> str:
    """One hash of every file under `paths` (names and bytes)."""
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            h.update(str(p.relative_to(root.parent)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def run_cli(capsys, *argv: str) -> tuple[int, str, float]:
    """(exit code, stdout + stderr, seconds) of `tinystories <argv>`."""
    capsys.readouterr()
    start = time.perf_counter()
    code = cli.main([str(a) for a in argv])
    seconds = time.perf_counter() - start
    out = capsys.readouterr()
    return code, out.out + out.err, seconds


def refused(capsys, *argv, names: tuple[str, ...], unchanged: tuple[Path, ...] = ()) -> str:
    """Run, and check: exit 2, one `error:` naming each of `names`, in seconds, `unchanged` folders intact."""
    before = digest(*unchanged)
    code, out, seconds = run_cli(capsys, *argv)
    error = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 2 and error, out
    for name in names:
        assert name in error[-1], (name, error[-1])
    assert seconds < SECONDS, seconds
    assert digest(*unchanged) == before
    return error[-1]


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def corpus(tmp_path_factory, stories):
    folder = tmp_path_factory.mktemp("corpus")
    data = folder / "stories.txt"
    data.write_text("\n<|endoftext|>\n".join(stories[:120]) + "\n", encoding="utf-8")
    from tiny import train_tiny_tokenizer

    train_tiny_tokenizer(stories[:300]).save_pretrained(folder / "tok")
    return {"data": data, "tokenizer": folder / "tok"}


def train_argv(corpus, out: Path, *extra: str) -> list[str]:
    return ["train", DATA, corpus["data"], TOKENIZER, corpus["tokenizer"], OUT, out, *TRAIN, *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus):
    """A finished 2-step run (final weights + its step-2 checkpoint); copy it before changing it."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert cli.main([str(a) for a in train_argv(corpus, out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-2").is_dir()
    return out


# ------------------------------------------------------------------------------- 1. finished runs are safe
def test_same_command_on_a_finished_run_is_done(capsys, corpus, finished_run):
    before = digest(finished_run)
    code, out, seconds = run_cli(capsys, *train_argv(corpus, finished_run))
    assert code == 0 and "nothing to do" in out and "step 2" in out, out
    assert seconds < SECONDS and digest(finished_run) == before


def test_other_settings_on_a_finished_run_are_refused(capsys, corpus, finished_run):
    argv = train_argv(corpus, finished_run, "--max_steps", "4", "--learning_rate", "1e-3")
    message = refused(
        capsys,
        *argv,
        names=(
            "already holds a finished model",
            "--learning_rate",
            "--max_steps",
            "--overwrite_output_dir true",
        ),
        unchanged=(finished_run,),
    )
    assert f"--resume_from_checkpoint {finished_run / 'checkpoint-2'}" in message


def test_another_model_shape_is_refused_before_the_data(capsys, corpus, finished_run, tmp_path):
    message = refused(
        capsys,
        *train_argv(corpus, finished_run, "--hidden_size", "64"),
        names=("--hidden_size 32 -> 64", "--overwrite_output_dir true"),
        unchanged=(finished_run,),
    )
    assert "--resume_from_checkpoint" not in message  # its checkpoint cannot go on as another shape
    # an interrupted run (checkpoint, no final weights): resumed only with its model and data settings
    interrupted = tmp_path / "interrupted"
    shutil.copytree(finished_run, interrupted)
    (interrupted / "model.safetensors").unlink()
    for argv, name in (
        (train_argv(corpus, interrupted, "--hidden_size", "64"), "--hidden_size 32 -> 64"),
        (train_argv(corpus, interrupted, "--block_size", "32"), "--block_size 64 -> 32"),
    ):
        message = refused(capsys, *argv, names=(name, "checkpoint-2"), unchanged=(interrupted,))
        assert "size mismatch" not in message


def test_interrupted_run_resumes_and_a_finished_one_goes_on_on_purpose(
    capsys, corpus, finished_run, tmp_path
):
    interrupted = tmp_path / "interrupted"
    shutil.copytree(finished_run, interrupted)
    (interrupted / "model.safetensors").unlink()
    code, out, _ = run_cli(capsys, *train_argv(corpus, interrupted, "--max_steps", "3"))
    assert code == 0, out
    assert json.loads((interrupted / "trainer_state.json").read_text())["global_step"] == 3
    # on purpose: --resume_from_checkpoint continues a finished run with new training settings
    code, out, _ = run_cli(
        capsys,
        *train_argv(
            corpus, interrupted, "--max_steps", "4", "--resume_from_checkpoint", interrupted / "checkpoint-3"
        ),
    )
    assert code == 0, out
    assert json.loads((interrupted / "trainer_state.json").read_text())["global_step"] == 4


# ------------------------------------------------------------------------------ 3. data files read robustly
def test_whitespace_only_and_separator_less_files_are_named(capsys, corpus, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t \n")
    refused(
        capsys, *train_argv(corpus, tmp_path / "o1"), DATA, blank, names=(str(blank), "white space"),
        unchanged=(blank,),
    )  # fmt: skip
    one = tmp_path / "one.txt"
    one.write_text("Tom had a ball.\n\nSue had a cat.\n\nThey played all day.\n")
    refused(
        capsys, *train_argv(corpus, tmp_path / "o2"), DATA, one, names=("one.txt", "<|endoftext|>"),
        unchanged=(one,),
    )  # fmt: skip


def test_undecodable_bytes_name_file_story_and_offset(capsys, corpus, stories, tmp_path):
    text = "\n<|endoftext|>\n".join(stories[:40]).encode()
    at = 5000
    bad = tmp_path / "bad.txt"
    bad.write_bytes(text[:at] + b"\xff" + text[at:])
    story = text[:at].count(b"<|endoftext|>") + 1
    message = refused(
        capsys,
        *train_argv(corpus, tmp_path / "o"),
        DATA,
        bad,
        names=("bad.txt", f"story {story}", f"byte {at}", "--on_decode_error skip", "replace"),
        unchanged=(bad,),
    )
    assert "UnicodeDecodeError" not in message
    skipped = load_stories(str(bad), on_decode_error="skip", validation_fraction=0.1)
    replaced = load_stories(str(bad), on_decode_error="replace", validation_fraction=0.1)
    assert sum(map(len, skipped.values())) == 39 and sum(map(len, replaced.values())) == 40
    assert any("\ufffd" in t for split in replaced.values() for t in split["text"])
    refused(
        capsys,
        *train_argv(corpus, tmp_path / "o"),
        "--on_decode_error",
        "ignore",
        names=("--on_decode_error",),
    )


def test_recipe_with_a_yaml_tag_is_one_line(capsys, tmp_path):
    recipe = tmp_path / "tagged.yaml"
    recipe.write_text("size: 1M\nlearning_rate: !!python/object/apply:os.system ['true']\n")
    message = refused(
        capsys, "train", "--config", recipe, names=("tagged.yaml", "line 2", "tag"), unchanged=(recipe,)
    )
    assert "\n" not in message and "Traceback" not in message


def test_eval_is_capped_in_tokens(capsys, corpus, stories, tmp_path):
    long_story = tmp_path / "long.txt"  # one ~600 KB story as the eval data: ~150K tokens uncapped
    long_story.write_text(" ".join(stories[:40]) * 12 + "\n<|endoftext|>\n" + stories[41], encoding="utf-8")
    out = tmp_path / "capped"
    argv = train_argv(corpus, out, EVAL_DATA, long_story, "--max_eval_tokens", "256", "--max_steps", "1")
    code, text, seconds = run_cli(capsys, *argv, "--save_steps", "1")
    assert code == 0, text
    info = json.loads((out / "card_info.json").read_text())
    validation = info["data_stats"]["validation"]
    assert validation["long_stories"] >= 1 and validation["capped_tokens"] > 100_000, validation
    state = json.loads((out / "trainer_state.json").read_text())
    assert [h for h in state["log_history"] if "eval_loss" in h]
    assert seconds < 3 * SECONDS


# ---------------------------------------------------------------------------- 4. outputs never on inputs
def test_dedup_output_on_its_input_is_refused(capsys, corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    data = folder / "stories.txt"
    shutil.copy(corpus["data"], data)
    cases = [
        (folder, folder, "is the input"),
        (data, data, "is the input"),
        (folder, folder / "deduped", "lies inside the input"),
        (data, folder, "contains the input"),
    ]
    for source, out, relation in cases:
        refused(
            capsys, "dedup", DEDUP_IN, source, OUT, out, names=(relation, DEDUP_IN, "--output_dir (OUT)"),
            unchanged=(folder,),
        )  # fmt: skip
    assert not (folder / "deduped").exists()


def test_stage_outputs_on_inputs_are_refused(capsys, tiny_model_dir, corpus, tmp_path):
    model = tmp_path / "runs" / "model"
    shutil.copytree(tiny_model_dir, model)
    # push: a STAGE_DIR that holds the model would be emptied first
    refused(
        capsys, "push", "--model", model, "--repo", "alice/m", "--dry_run", "true", "--stage_dir", model.parent,
        names=("STAGE_DIR", "contains the input"), unchanged=(model,),
    )  # fmt: skip
    refused(
        capsys,
        "export",
        "--model",
        model,
        OUT,
        model,
        names=("--output_dir", "is the input"),
        unchanged=(model,),
    )
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(corpus["data"], source / "stories.txt")
    refused(
        capsys, "data", "--backend", "stories", "--mode", "instruct", SOURCE_DATA, source, OUT, source,
        names=("--output_dir", SOURCE_DATA, "is the input"), unchanged=(source,),
    )  # fmt: skip


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(capsys, corpus, tmp_path):
    out = tmp_path / "deduped"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from tinystories.core.paths import output_lock
                with output_lock({str(out)!r}):
                    print("locked", flush=True)
                    time.sleep(600)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused(
            capsys, "dedup", DEDUP_IN, corpus["data"], OUT, out,
            names=("being written by another run", f"pid {holder.pid}", "--output_dir (OUT)"),
        )  # fmt: skip
        assert not (out / "data").exists()
    finally:
        holder.kill()  # killed mid-write: the kernel drops its lock
        holder.wait()
    code, text, _ = run_cli(capsys, "dedup", DEDUP_IN, corpus["data"], OUT, out, "--num_proc", "1")
    assert code == 0 and (out / "dedup_stats.json").is_file(), text


# ---------------------------------------------------------------------- 5. no local path or host uploaded
ROOTS = ("/lustre/proj/bob/run", "/nfs/home/bob/data/x.txt", "/fsx/team/ckpt", "/gpfs/u/bob/tok")
HOST = "gpu-node-17.cluster.example.org"


def test_staged_upload_holds_no_local_path_or_host(capsys, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    monkeypatch.setattr(socket, "getfqdn", lambda *a: HOST)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    planted = " ".join([*ROOTS, "C:\\Users\\bob\\m", "file:///gpfs/u/bob/y.txt", f"on {HOST} (gpu-node-17)"])
    info = {"stage": "pretrain", "model_name": "m", "datasets": list(ROOTS), "notes": planted, "host": HOST}
    (model / "card_info.json").write_text(json.dumps(info))
    (model / "notes.json").write_text(json.dumps({"where": planted, "paths": list(ROOTS)}))
    for suffix in (".jsonl", ".txt", ".yaml", ".yml", ".csv", ".py", ".cfg", ".j2", ".md"):
        (model / f"planted{suffix}").write_text(f"trained at {planted}\n")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "_name_or_path": ROOTS[0], "host": HOST}))
    stage = tmp_path / "stage"
    code, out, _ = run_cli(
        capsys, "push", "--model", model, "--repo", "alice/m", "--dry_run", "true", "--stage_dir", stage
    )
    assert code == 0, out
    files = [p for p in stage.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    texts = {p.name: p.read_text(encoding="utf-8") for p in files if p.suffix != ".safetensors"}
    assert {"card_info.json", "notes.json", "config.json", "README.md", "planted.txt", "planted.py"} <= set(
        texts
    )
    for name, text in texts.items():
        for leak in ("/lustre", "/nfs/", "/fsx", "/gpfs", "bob/", "C:\\", "file://", HOST, "gpu-node-17"):
            assert leak not in text, (name, leak)
    json.loads(texts["notes.json"]), json.loads(texts["card_info.json"])  # still JSON


# ------------------------------------------------------------- 6. every bad input refused before work starts
@pytest.fixture(scope="module")
def short_model(tmp_path_factory, gpt_neo_tokenizer_dir):
    """The tiny GPT-Neo trained (so to speak) at a 16-token context: a capped story is 15 tokens, fast."""
    from tiny import make_tiny_model_dir

    folder = tmp_path_factory.mktemp("short") / "m16"
    return make_tiny_model_dir(folder, gpt_neo_tokenizer_dir, max_positions=16, window_size=8)


def test_export_of_a_missing_model_names_the_model(capsys, tmp_path):
    missing = tmp_path / "runs" / "never-trained"
    message = refused(capsys, "export", "--model", missing, names=("--model", str(missing), "Hub id"))
    assert "tokenizer" not in message  # it was blamed before
    assert not missing.exists() and not (tmp_path / "outputs").exists()
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    message = refused(capsys, "export", "--model", empty, names=(str(empty), "config.json", "MODEL="))
    assert "tokenizer" not in message and not (empty / "onnx-export").exists()


def test_generate_refuses_unknown_features_and_empty_words(capsys, tiny_model_dir):
    refused(
        capsys, "generate", "--model", tiny_model_dir, "--features", "Dialogue", "NotAFeature",
        names=("--features NotAFeature", "unknown feature", "Dialogue", "Twist", "MoralValue", "Conflict"),
        unchanged=(tiny_model_dir,),
    )  # fmt: skip
    for words in (",", " "):
        refused(
            capsys, "generate", "--model", tiny_model_dir, "--words", words,
            names=("--words", "holds no word", "--words dog ball happy"),
        )  # fmt: skip
    refused(
        capsys, "generate", "--model", tiny_model_dir, "--features", ",", names=("--features", "no feature")
    )


def test_more_new_tokens_than_the_context_are_capped_with_one_warning(
    capsys, caplog, short_model, tmp_path, monkeypatch
):
    from tinystories.evaluation import generation

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "is capped at" in r.getMessage()]

    monkeypatch.setattr(generation, "_capped", set())
    argv = ["generate", "--model", short_model, "--prompt", "Once", "--max_new_tokens", "100000"]
    code, out, seconds = run_cli(capsys, *argv)
    assert (
        code == 0
        and seconds < SECONDS
        and warnings()
        == [
            "--max_new_tokens 100000 is capped at 15 new tokens: the prompt (1 token(s)) and the story must fit in the "
            "16-token context the model was trained at (past it, quality falls apart); pass --max_new_tokens 15 or "
            "less to silence this"
        ]
    ), out
    # eval (a new command: nothing said yet): three prompts in three batches, one warning
    caplog.clear()
    monkeypatch.setattr(generation, "_capped", set())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("Once", "Tom had", "A big cat")))
    argv = ["eval", "--model", short_model, "--skip_loss", "true", "--prompts", prompts]
    argv += ["--generation_batch_size", "1", "--instruct_eval", "false", "--write_card", "false"]
    code, out, _ = run_cli(capsys, *argv, "--output_dir", tmp_path / "e", "--max_new_tokens", "100000")
    assert code == 0 and len(warnings()) == 1, out
    caplog.clear()
    monkeypatch.setattr(generation, "_capped", set())
    code, out, _ = run_cli(capsys, *argv, "--output_dir", tmp_path / "f", "--max_new_tokens", "10")
    assert code == 0 and not warnings(), out


MISSING = "{tmp}/no/such/stories.txt"
NO_MODEL = "{tmp}/folder-without-config"
# (stage, argv, words the one-line message must hold): the flag, the value, the rule or the fix
BAD_INPUTS = [
    ("data", ["--num_shards", "0"], ["--num_shards 0", "at least 1"]),
    ("data", ["--top_p", "1.5"], ["--top_p 1.5", "(0, 1]"]),
    ("data", ["--backend", "stories", "--mode", "instruct", "--data", MISSING], ["--data", MISSING, "Hub dataset id"]),
    ("data", ["--request_timeout", "0"], ["--request_timeout 0", "greater than 0"]),
    ("dedup", ["--data", "{data}", "--threshold", "1.5"], ["--threshold 1.5", "(0, 1]"]),
    ("dedup", ["--data", "{data}", "--num_perm", "1"], ["--num_perm 1", "at least 2"]),
    ("dedup", ["--data", MISSING], ["--data", MISSING, "does not exist"]),
    ("dedup", ["--data", "{data}", "--decontaminate_against", MISSING], ["--decontaminate_against", MISSING]),
    ("tokenizer", ["--data", "{data}", "--vocab_size", "1"], ["--vocab_size 1", "at least 2"]),
    ("tokenizer", ["--data", MISSING], ["--data", MISSING]),
    ("train", ["--hidden_size", "0"], ["--hidden_size 0", "at least 1"]),
    ("train", ["--adam_beta2", "1.5"], ["--adam_beta2 1.5", "[0, 1)"]),
    ("train", ["--seed", "-1"], ["--seed -1", "4294967295"]),
    ("train", ["--data", MISSING], ["--data", MISSING, "DATA="]),
    ("train", ["--base_model", NO_MODEL + "/missing"], ["--base_model", "does not exist"]),
    ("train", ["--config", "{tmp}/recipe.yaml"], ["recipe", "recipe.yaml", "--config"]),
    ("sft", ["--use_peft", "true", "--lora_r", "0"], ["--lora_r 0", "--lora_r 16"]),
    ("sft", ["--base_model", MISSING], ["--base_model", MISSING, "BASE="]),
    ("sft", ["--max_length", "8"], ["--max_length 8", "at least 16"]),
    ("lora", ["--lora_dropout", "1.5"], ["--lora_dropout 1.5", "[0, 1)"]),
    ("lora", ["--eval_data", MISSING], ["--eval_data", MISSING]),
    ("generate", ["--temperature", "-1"], ["--temperature -1", "greedy"]),
    ("generate", ["--model", MISSING], ["--model", MISSING, "MODEL="]),
    ("generate", ["--model", NO_MODEL], ["folder-without-config", "config.json", "MODEL="]),
    ("generate", ["--model", "{model}", "--tokenizer", MISSING], ["--tokenizer", MISSING]),
    ("eval", ["--data", MISSING], ["--data", MISSING]),
    ("eval", ["--model", NO_MODEL, "--skip_loss", "true", "--generate", "false"], ["folder-without-config", "config.json"]),
    ("eval", ["--judge_timeout", "0"], ["--judge_timeout 0", "greater than 0"]),
    ("eval", ["--max_eval_tokens", "0"], ["--max_eval_tokens 0", "at least 1"]),
    ("eval", ["--on_decode_error", "ignore"], ["--on_decode_error 'ignore'", "fail, skip, replace"]),
    ("eval", ["--compare_base", MISSING], ["--compare_base", MISSING]),
    ("analyze", ["--data", MISSING], ["--data", MISSING]),
    ("analyze", ["--top_neurons", "0"], ["--top_neurons 0", "at least 1"]),
    ("sweep", ["--hidden_sizes", "64", "-8"], ["--hidden_sizes -8", "--hidden_sizes 64 128"]),
    ("sweep", ["--train_config", "{tmp}/grid.yaml"], ["grid.yaml", "--train_config"]),
    ("push", ["--model", MISSING, "--repo", "alice/m", "--dry_run", "true"], ["--model", MISSING]),
    ("pull", ["--model", "{tmp}/stories260K.bin"], ["--model", "stories260K.bin"]),
    ("export", ["--model", "{model}", "--opset", "3"], ["--opset 3", "from 14 to 23"]),
    ("bench", ["--steps", "0"], ["--steps 0", "at least 1"]),
    ("bench", ["--data", MISSING], ["--data", MISSING]),
]  # fmt: skip
OUTPUT_STAGES = {
    "data",
    "dedup",
    "tokenizer",
    "train",
    "sft",
    "lora",
    "eval",
    "analyze",
    "sweep",
    "export",
    "bench",
}


@pytest.mark.parametrize(
    "stage,argv,words",
    BAD_INPUTS,
    ids=[f"{s}:{[a for a in argv if a.startswith('--')][-1]}" for s, argv, _ in BAD_INPUTS],
)
def test_bad_inputs_are_refused_before_work(
    capsys, stage, argv, words, tiny_model_dir, corpus, tmp_path, monkeypatch
):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # bench runs from the checkout
    (tmp_path / "folder-without-config").mkdir()
    values = {"tmp": str(tmp_path), "data": str(corpus["data"]), "model": str(tiny_model_dir)}
    out = tmp_path / "out"
    extra = ["--output_dir", str(out)] if stage in OUTPUT_STAGES else []
    extra += ["--use_cpu", "true"] if stage in ("train", "sft", "lora") else []
    argv = [a.format(**values) for a in argv] + extra
    message = refused(
        capsys, stage, *argv, names=tuple(w.format(**values) for w in words),
        unchanged=(tiny_model_dir, corpus["data"]),
    )  # fmt: skip
    assert "Traceback" not in message and not out.exists()


def test_eval_caps_tokens_and_reads_bad_bytes_as_asked(capsys, short_model, corpus, stories, tmp_path):
    long_story = tmp_path / "long.txt"  # one very long story first: the cap cuts it, the rest is left out
    long_story.write_text(" ".join(stories[:30]) + "\n<|endoftext|>\n" + stories[31], encoding="utf-8")
    argv = [
        "eval",
        "--model",
        short_model,
        "--data",
        long_story,
        "--generate",
        "false",
        "--write_card",
        "false",
    ]
    code, out, seconds = run_cli(capsys, *argv, "--output_dir", tmp_path / "e", "--max_eval_tokens", "300")
    assert code == 0, out
    results = json.loads((tmp_path / "e" / "eval_results.json").read_text())
    assert (
        results["max_eval_tokens"] == 300 and results["num_stories"] == 1 and results["capped_stories"] == 2
    )
    assert 290 <= results["num_tokens"] <= 310 and results["capped_tokens"] > 3000, results
    assert seconds < SECONDS
    text = "\n<|endoftext|>\n".join(stories[:6]).encode()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(text[:700] + b"\xff" + text[700:])
    argv = ["eval", "--model", short_model, "--data", bad, "--generate", "false", "--write_card", "false"]
    refused(
        capsys, *argv, "--output_dir", tmp_path / "b", names=("bad.txt", "byte 700", "--on_decode_error skip"),
        unchanged=(bad,),
    )  # fmt: skip
    assert not (tmp_path / "b" / "eval_results.json").exists()
    code, out, _ = run_cli(capsys, *argv, "--output_dir", tmp_path / "b", "--on_decode_error", "skip")
    assert code == 0, out
    assert json.loads((tmp_path / "b" / "eval_results.json").read_text())["num_stories"] == 5


def test_training_output_on_its_data_is_refused_and_locked(capsys, corpus, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    data = folder / "stories.txt"
    shutil.copy(corpus["data"], data)
    for out, relation in ((folder, "is the input"), (folder / "run", "lies inside the input")):
        argv = ["train", DATA, folder, TOKENIZER, corpus["tokenizer"], OUT, out, *TRAIN]
        refused(capsys, *argv, names=(relation, "--data", "--output_dir"), unchanged=(folder,))
    argv = [
        "sft",
        DATA,
        data,
        "--base_model",
        "roneneldan/TinyStories-33M",
        OUT,
        tmp_path,
        "--use_cpu",
        "true",
    ]
    refused(capsys, *argv, names=("contains the input --data", "stories.txt"), unchanged=(folder,))
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from tinystories.core.paths import output_lock\nimport time\n"
         f"with output_lock({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused(
            capsys, *train_argv(corpus, out), names=("being written by another run", f"pid {holder.pid}"),
            unchanged=(out,),
        )  # fmt: skip
        assert not (out / "run_settings.json").exists()
    finally:
        holder.kill()
        holder.wait()
