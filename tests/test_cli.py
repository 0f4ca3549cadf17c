"""The command line as users script against it: every stage's --help, every recipe, one name per concept."""

from __future__ import annotations

import argparse
import inspect
import logging
from collections import Counter
from pathlib import Path

import pytest

from tinystories import cli
from tinystories.core import ConfigError, config
from tinystories.core.config import ALIASES, parse_args

ROOT = Path(__file__).resolve().parents[1]

# concept -> the one flag every stage uses for it
CONCEPTS = {
    "the stories or records a stage reads": "data",
    "the tokenizer": "tokenizer",
    "the model a stage reads": "model",
    "the model a stage fine-tunes or continues": "base_model",
    "where results go": "output_dir",
    "numeric precision": "precision",
    "the random seed": "seed",
    "the text column of the data": "text_column",
}
# which concepts each stage takes (its parser must spell them as CONCEPTS says)
STAGE_CONCEPTS = {
    "data": {"data", "model", "output_dir", "seed", "text_column"},
    "dedup": {"data", "output_dir", "seed", "text_column"},
    "data-report": {"data", "tokenizer", "output_dir", "seed", "text_column"},
    "tokenizer": {"data", "tokenizer", "output_dir", "text_column"},
    "train": {"data", "tokenizer", "base_model", "output_dir", "precision", "seed", "text_column"},
    "sft": {"data", "tokenizer", "base_model", "output_dir", "precision", "seed", "text_column"},
    "lora": {"data", "tokenizer", "base_model", "output_dir", "precision", "seed", "text_column"},
    "generate": {"model", "tokenizer", "precision", "seed"},
    "eval": {"data", "model", "tokenizer", "output_dir", "precision", "seed", "text_column"},
    "leaderboard": {"data", "model", "output_dir", "precision", "seed", "text_column"},
    "analyze": {"data", "model", "tokenizer", "output_dir", "precision", "seed", "text_column"},
    "sweep": {"data", "tokenizer", "output_dir", "precision", "text_column"},
    "push": {"model"},
    "pull": {"model", "tokenizer", "output_dir"},
    "export": {"model", "tokenizer", "output_dir"},
    "bench": {"output_dir"},
}


def _visible_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions if a.help != argparse.SUPPRESS and a.dest != "help"}


def test_the_concept_table_covers_every_stage():
    assert set(STAGE_CONCEPTS) == set(cli.STAGES)
    assert set().union(*STAGE_CONCEPTS.values()) == set(CONCEPTS.values())


@pytest.mark.parametrize("stage", list(cli.STAGES))
def test_help_works_and_spells_each_concept_one_way(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([stage, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: " in out and "--help" in out and "%%" not in out
    flags = _visible_flags(cli.stage_parser(stage))
    missing = STAGE_CONCEPTS[stage] - flags
    assert not missing, f"{stage}: no --{', --'.join(sorted(missing))}"
    old = {name for name in ALIASES if name in flags}
    assert not old, f"{stage} still shows old names {sorted(old)}: use {[ALIASES[n] for n in sorted(old)]}"


def _argument_classes():
    seen = {}
    for stage in cli.STAGES:
        module = cli._import_stage(stage)
        for top in module.ARGUMENTS:
            for klass in top.__mro__:
                if klass.__module__.startswith(("tinystories", "benchmarks")):
                    seen[f"{klass.__module__}.{klass.__qualname__}"] = klass
    return seen


def test_no_field_is_declared_in_more_than_two_argument_classes():
    counts = Counter()
    where: dict[str, list[str]] = {}
    for name, klass in _argument_classes().items():
        for fld in inspect.get_annotations(klass):
            counts[fld] += 1
            where.setdefault(fld, []).append(name)
    repeated = {f: where[f] for f, n in counts.items() if n > 2}
    assert not repeated, f"declared in more than two argument classes: {repeated}"


def _owner(path: Path, folder: str) -> str:
    """The stage a recipe is parsed by: the stage it is named after (dedup.yaml, leaderboard.yaml) when that stage
    reads this folder, else the folder's first stage (recipes/data/: data, recipes/eval/: eval)."""
    if path.stem in cli.STAGES and cli.STAGES[path.stem].recipes == folder:
        return path.stem
    return next(stage for stage, spec in cli.STAGES.items() if spec.recipes == folder)


def _recipes():
    for stage, spec in cli.STAGES.items():
        if spec.recipes is None:
            continue
        for path in sorted((ROOT / "recipes" / spec.recipes).glob("*.yaml")):
            if _owner(path, spec.recipes) == stage:
                yield pytest.param(stage, path, id=f"{stage}:{path.name}")


@pytest.mark.parametrize("stage,path", list(_recipes()))
def test_every_recipe_parses_with_the_new_names(stage, path, caplog, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(config, "_warned", set())
    module = cli._import_stage(stage)
    with caplog.at_level(logging.WARNING, logger="tinystories.core.config"):
        parsed = parse_args(
            module.ARGUMENTS,
            ["--config", str(path), "--output_dir", str(tmp_path)],
            getattr(module, "DEFAULTS", None),
            check_paths=False,  # a pipeline's recipe names the outputs of its earlier stages
        )
    assert parsed and all(p is not None for p in parsed)
    assert "old name" not in caplog.text, f"{path.name} uses an old key: {caplog.text}"


def test_old_flag_names_still_work_and_warn_once(caplog, tmp_path, monkeypatch):
    monkeypatch.setattr(config, "_warned", set())
    module = cli._import_stage("train")
    argv = [
        "--dataset_name",
        "stories.txt",
        "--tokenizer_name",
        "tok",
        "--output_dir",
        str(tmp_path),
        "--use_cpu",
        "true",
    ]
    with caplog.at_level(logging.WARNING, logger="tinystories.core.config"):
        _, data_args, _ = parse_args(module.ARGUMENTS, argv, module.DEFAULTS, check_paths=False)
        parse_args(module.ARGUMENTS, argv, module.DEFAULTS, check_paths=False)
    assert (data_args.data, data_args.tokenizer) == ("stories.txt", "tok")
    assert caplog.text.count("--dataset_name is an old name of --data") == 1
    assert caplog.text.count("--tokenizer_name is an old name of --tokenizer") == 1


def test_model_name_or_path_is_routed_to_base_model_in_fine_tuning(tmp_path):
    module = cli._import_stage("sft")
    args, _, model_config = parse_args(
        module.ARGUMENTS,
        ["--model_name_or_path", "me/base", "--output_dir", str(tmp_path), "--use_cpu", "true"],
        module.DEFAULTS,
    )
    assert args.base_model == "me/base" and model_config.model_name_or_path is None


@pytest.mark.parametrize(
    "stage,argv,flag",
    [
        ("generate", ["--max_new_tokens", "0"], "--max_new_tokens"),
        ("generate", ["--top_p", "1.5"], "--top_p"),
        ("eval", ["--batch_size", "0"], "--batch_size"),
        ("eval", ["--validation_fraction", "1.5"], "--validation_fraction"),
        ("eval", ["--precision", "fp8"], "--precision"),
        (
            "train",
            ["--per_device_train_batch_size", "0", "--use_cpu", "true"],
            "--per_device_train_batch_size",
        ),
        ("train", ["--learning_rate", "-1", "--use_cpu", "true"], "--learning_rate"),
        ("train", ["--max_steps", "0", "--use_cpu", "true"], "--max_steps"),
        ("train", ["--block_size", "1", "--use_cpu", "true"], "--block_size"),
        ("sft", ["--feature_min_share", "2", "--use_cpu", "true"], "--feature_min_share"),
        ("sft", ["--global_batch_size", "0", "--use_cpu", "true"], "--global_batch_size"),
    ],
)
def test_bad_numbers_are_refused_where_they_are_declared(stage, argv, flag, tmp_path):
    module = cli._import_stage(stage)
    if "output_dir" in _visible_flags(cli.stage_parser(stage)):
        argv = [*argv, "--output_dir", str(tmp_path)]
    with pytest.raises(ConfigError, match=flag):
        parse_args(module.ARGUMENTS, argv, getattr(module, "DEFAULTS", None))
