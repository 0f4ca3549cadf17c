"""Docs that cannot drift: every path, `make` target and `tinystories <stage> --flag` that README.md and docs/ name
exists; results tables equal their JSON; no page narrates its own history; the README stays short."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import yaml

from scripts import results_table
from tinystories.cli import STAGES, stage_parser
from tinystories.core.config import ALIASES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
TOP_LEVEL = ("recipes/", "src/", "scripts/", "benchmarks/", "tests/", "docs/", "accelerate_configs/")
TOP_LEVEL += ("data_generation/", "demo/", "metrics/", ".ci/")
GENERATED = {
    "docs/reference/cli.md",
    "demo/web/dist",
    "benchmarks/gpu",
}  # by `make docs`, `make web-demo`, `make gpu-check`
ROOT_FILES = {"Makefile", "pyproject.toml", "README.md", "ARCHITECTURE.md", "CONTRIBUTING.md", "mkdocs.yml"}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
HISTORY = [
    r"\bnow\b",
    r"\bthe recipe before\b",
    r"\buntil\b.*\bbelow\b",
    r"\b20\d\d-\d\d-\d\d\b",
    r"\bissue\s+#?\d+",
    r"(?<![\w/&])#\d+\b",
]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _code(text: str) -> list[str]:
    """The code of a page: each fenced block's logical lines (continuations joined) and each inline code span."""
    chunks = []
    for block in FENCE.findall(text):
        chunks += block.replace("\\\n", " ").splitlines()
    chunks += SPAN.findall(FENCE.sub("", text))
    return chunks


def _prose(text: str) -> list[str]:
    """Lines outside code blocks and tables."""
    return [line for line in FENCE.sub("", text).splitlines() if not line.lstrip().startswith("|")]


@functools.cache
def _dests(stage: str) -> frozenset[str]:
    return frozenset(a.dest for a in stage_parser(stage)._actions)


def _flag_error(stage: str, flag: str) -> str | None:
    if flag == "config":  # every stage reads a recipe
        return None
    if flag in ALIASES:
        return f"--{flag} is an old name: use --{ALIASES[flag]}"
    dests = _dests(stage)
    if flag in dests or any(new == flag and old in dests for old, new in ALIASES.items()):
        return None
    return f"`tinystories {stage}` has no --{flag}"


def _commands(chunk: str):
    """(stage, flag text) of every `tinystories <stage> ...` and `make <stage target> ... ARGS="..."` in a chunk."""
    make_stage = {s.make: name for name, s in STAGES.items()}
    for part in re.split(r"[;|#]|&&", chunk):
        if (m := re.search(r"\btinystories (\w+)\b(.*)", part)) and m.group(1) in STAGES:
            yield m.group(1), m.group(2)
        if (m := re.search(r"\bmake ([\w-]+)\b(.*)", part)) and m.group(1) in make_stage:
            for args in re.findall(r"ARGS=\"([^\"]*)\"", m.group(2)):
                yield make_stage[m.group(1)], args


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


def test_readme_is_short_and_its_prose_lines_are_not_too_long():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for page in PAGES:
        long = [line[:60] for line in _prose(page.read_text()) if len(line) > 240]
        assert long == [], f"{_rel(page)}: prose lines over 240 characters"


def test_results_tables_are_generated_from_their_json():
    stale = [_rel(p) for p, (old, new) in results_table.rendered().items() if old != new]
    assert stale == [], f"{stale}: run python scripts/results_table.py"


@pytest.mark.parametrize("name", results_table.STUDIES)
def test_every_study_has_a_dated_page_with_its_command_and_json(name):
    study = results_table.load_study(name)
    assert re.fullmatch(r"20\d\d-\d\d-\d\d", study["date"])
    page = ROOT / study["page"]
    text = page.read_text()
    assert f"](../../benchmarks/results/{name}.json)" in text, f"{study['page']} must link its JSON"
    assert "**Question.**" in text and "**Conclusion.**" in text
    assert re.search(r"^```bash\n(tinystories|make|python) ", text, re.M), (
        f"{study['page']} must show its command"
    )
    assert study["date"] in text
    for n, _ in enumerate(study["tables"]):
        assert f"<!-- table:start {name} {n} -->" in text, f"{study['page']} does not show table {n}"


def test_every_page_is_in_the_nav():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(nav))
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk - listed == set()
    assert listed - on_disk == {"reference/cli.md"}  # generated when the site is built (docs/hooks.py)


def _paths(page: Path) -> list[tuple[str, Path]]:
    text = page.read_text()
    found = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:|#", target):
            found.append((target, page.parent / target.split("#")[0]))
    for chunk in _code(text):
        for word in re.findall(r"[\w./<>*-]+", chunk):
            word = word.rstrip(".,:")
            if word.startswith(TOP_LEVEL) or word in ROOT_FILES:
                found.append((word, ROOT / word))
    return found


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_repo_path_named_exists(page):
    missing = []
    for name, path in _paths(page):
        if page.parent == DOCS / "reference" or "<" in str(path) or "*" in str(path):
            pattern = re.sub(r"<[^>]*>", "*", str(path.resolve().relative_to(ROOT)))
            if not list(ROOT.glob(pattern)) and not pattern.startswith(tuple(GENERATED)):
                missing.append(name)
        elif not path.exists() and not str(path.resolve().relative_to(ROOT)).startswith(tuple(GENERATED)):
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_make_target_named_exists(page):
    targets = _make_targets()
    named = {t for chunk in _code(page.read_text()) for t in re.findall(r"\bmake ([a-z][\w-]*)", chunk)}
    assert named - targets == set()


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_flag_named_exists_under_its_new_name(page):
    errors = [
        error
        for chunk in _code(page.read_text())
        for stage, rest in _commands(chunk)
        for flag in re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", rest)
        if (error := _flag_error(stage, flag))
    ]
    assert errors == []


def test_no_page_narrates_its_history_or_names_an_issue():
    found = []
    for page in PAGES:
        if page.is_relative_to(DOCS / "results"):
            continue
        text = page.read_text()
        if page == README:  # the generated results table dates its studies
            text = re.sub(r"<!-- results:start -->.*<!-- results:end -->", "", text, flags=re.S)
        for pattern in HISTORY:
            found += [f"{_rel(page)}: {m.group(0)!r}" for m in re.finditer(pattern, text, re.I)]
    assert found == []


def test_recipe_comments_say_why_not_when():
    found = []
    for recipe in sorted((ROOT / "recipes").rglob("*.yaml")):
        comments = " ".join(line.partition("#")[2] for line in recipe.read_text().splitlines() if "#" in line)
        for pattern in [*HISTORY, r"\breplaced\b", r"\bREADME\b"]:
            found += [f"{_rel(recipe)}: {m.group(0)!r}" for m in re.finditer(pattern, comments, re.I)]
    assert found == []
