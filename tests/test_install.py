"""Package data: found through importlib.resources, and every file of it listed for a non-editable install."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path

from tinystories import core
from tinystories.synthesis.prompts import Vocabulary

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_data_generation_resolves_through_importlib_resources():
    files = resources.files("tinystories.data_generation")
    assert Path(str(files)).resolve() == core.DATA_GENERATION_DIR
    for name in ("nouns.txt", "verbs.txt", "adjectives.txt", "features.yaml", "eval_prompts.jsonl"):
        assert files.joinpath(name).is_file(), name
    assert files.joinpath("templates", "story.jinja").is_file()
    assert core.EVAL_PROMPTS_FILE.is_file()
    assert Vocabulary().data_dir == core.DATA_GENERATION_DIR


def test_every_package_is_listed():
    """`packages` is a list (find cannot see the mapped data package): a new subpackage must be added."""
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    listed = set(SETUPTOOLS["packages"])
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert SETUPTOOLS["package-dir"]["tinystories.data_generation"] == "data_generation"


def _shipped(package_dir: Path, package: str) -> set[str]:
    shipped = set()
    for pkg, patterns in SETUPTOOLS["package-data"].items():
        if pkg == package or pkg.startswith(package + "."):
            sub = package_dir.joinpath(*pkg.split(".")[len(package.split(".")) :])
            shipped |= {
                p.relative_to(package_dir).as_posix()
                for pattern in patterns
                for p in sub.glob("*")
                if fnmatch(p.name, pattern)
            }
    return shipped


def test_every_data_file_ships():
    """Each data file a stage reads is covered by package-data, so `pip install .` carries it."""
    data_dir = ROOT / "data_generation"
    needed = {
        p.relative_to(data_dir).as_posix()
        for p in data_dir.rglob("*")
        if p.is_file() and p.suffix in {".txt", ".yaml", ".jsonl", ".jinja"}
    }
    assert needed and needed <= _shipped(data_dir, "tinystories.data_generation")
    templates = {p.name for p in (ROOT / "src" / "tinystories" / "hub" / "templates").glob("*.j2")}
    assert templates and {f"hub/templates/{t}" for t in templates} <= _shipped(
        ROOT / "src" / "tinystories", "tinystories"
    )
