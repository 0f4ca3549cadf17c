"""MkDocs hooks: the CLI reference generated from the stages' parsers, and the measured JSON and figures of
`benchmarks/results/` published next to the results pages (their links work on GitHub and on the site)."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ and benchmarks/ live in the checkout, not in the package

from scripts.cli_reference import render  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REPO_LINK = "../../benchmarks/results/"  # how a results page links a JSON or figure (right on GitHub)
SITE_DIR = "results/data/"


def on_files(files, config):
    files.append(File.generated(config, "reference/cli.md", content=render()))
    for path in sorted(RESULTS.iterdir()):
        if path.suffix in (".json", ".png"):
            files.append(File.generated(config, SITE_DIR + path.name, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri.startswith("results/"):
        markdown = markdown.replace(REPO_LINK, "data/")
    return markdown
