"""The layout ARCHITECTURE.md describes, checked: the stage table, entry points, size limits, import hygiene."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tinystories.cli import STAGES, main, stage_table

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tinystories"
README = Path(__file__).resolve().parents[1] / "README.md"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))]


def _functions(tree: ast.Module):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_the_makefile_passes_variables_and_decides_nothing():
    """The launcher's decisions live in core/launch.py: the Makefile stays short, with few conditionals."""
    text = (PACKAGE.parents[1] / "Makefile").read_text()
    conditionals = sum(text.count(word) for word in ("$(if ", "ifeq", "ifneq", "ifdef", "ifndef"))
    assert len(text.splitlines()) <= 150 and conditionals <= 6, (len(text.splitlines()), conditionals)


def test_readme_shows_the_stage_table():
    assert stage_table() in README.read_text()


@pytest.mark.parametrize("stage", [s for s, v in STAGES.items() if v.module.startswith("tinystories")])
def test_every_stage_has_an_entry_point_and_a_make_target(stage):
    module = importlib.import_module(STAGES[stage].module)
    assert callable(module.main)
    makefile = (PACKAGE.parents[1] / "Makefile").read_text()
    assert f"\n{STAGES[stage].make}:" in makefile
    recipes = STAGES[stage].recipes
    assert recipes is None or (PACKAGE.parents[1] / "recipes" / recipes).is_dir()


def test_top_level_is_one_package_per_concern():
    """At most 14 entries, no group of modules sharing a name prefix, each package saying what it owns."""
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= 14, entries
    prefixes = [p.stem.split("_")[0] for p in PACKAGE.glob("*.py")]
    assert sorted(set(prefixes)) == sorted(prefixes), prefixes
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.splitlines()[0].strip(), (
            f"{init.parent.name}/ needs a docstring saying what it owns"
        )


@pytest.mark.parametrize("stage", [s for s, v in STAGES.items() if v.module.startswith("tinystories")])
def test_every_subcommand_has_a_module_of_its_name(stage):
    module = stage.replace("-", "_")  # `data-report` -> stages/data_report.py
    assert STAGES[stage].module == f"tinystories.stages.{module}"
    assert (PACKAGE / "stages" / f"{module}.py").is_file()


def test_tests_follow_the_packages():
    """A test file is named after the package (or top-level folder) it tests: test_<package>[_<module>].py."""
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    packages |= {"benchmarks", "scripts", "demo", "docs"}
    # the repository itself; the CLI as users meet it
    project = {"test_layout.py", "test_install.py", "test_cli.py", "test_user_errors.py"}
    tests = PACKAGE.parents[1] / "tests"
    stray = [
        p.name
        for p in tests.glob("test_*.py")
        if p.name not in project and p.stem.removeprefix("test_").split("_")[0] not in packages
    ]
    assert stray == []


def test_unknown_stage_is_an_error(capsys):
    assert main(["nope"]) == 2
    assert "valid stages" in capsys.readouterr().err


def test_size_limits():
    too_long = []
    for path, tree in _modules():
        assert len(path.read_text().splitlines()) <= 500, path
        for fn in _functions(tree):
            limit = 110 if fn.name in ("main", "run") else 60
            if fn.end_lineno - fn.lineno + 1 > limit:
                too_long.append(f"{path.name}:{fn.name}")
    assert too_long == []


def test_imports_at_the_top():
    inner = [
        f"{path.name}:{node.lineno}"
        for path, tree in _modules()
        for fn in _functions(tree)
        for node in ast.walk(fn)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    assert len(inner) <= 5, inner  # optional backends only (vLLM)


def test_lora_does_not_import_the_sft_entry_point():
    tree = ast.parse((PACKAGE / "stages" / "lora.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "tinystories.stages.sft" not in imported
    assert any(m.startswith("tinystories.training.finetune") for m in imported)


def test_core_has_no_heavy_dependencies():
    tree = ast.parse((PACKAGE / "core" / "__init__.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "importlib", "os", "pathlib"}
