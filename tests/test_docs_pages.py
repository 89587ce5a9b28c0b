"""The documentation's shape and examples: a README of a few screens, pages that open with what they are for, the
API page's example run as written, and the space file examples accepted as they are."""

from __future__ import annotations

import re

import torch
import yaml

import kronsearch
from kronsearch.space import load_space
from tests.docblocks import ROOT, code_blocks, doc_pages


def test_the_readme_is_at_most_200_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def test_every_docs_page_opens_with_what_it_is_for():
    openings = {}
    for page in doc_pages()[1:]:
        paragraphs = (ROOT / page).read_text(encoding="utf-8").split("\n\n")
        openings[page] = paragraphs[0].startswith("# ") and paragraphs[1].startswith("This page")
    assert [page for page, ok in openings.items() if not ok] == []


def test_the_api_page_layers_example_runs_as_written():
    (code,) = code_blocks("docs/api.md", "python")
    scope: dict = {}
    exec(compile(code, "docs/api.md", "exec"), scope)  # noqa: S102 - the docs' own code
    assert scope["y"].shape == (32, 192)
    assert sum(isinstance(m, kronsearch.KronLinear) for m in scope["model"].modules()) == 8
    assert isinstance(scope["model"].head, torch.nn.Linear)


def test_the_space_file_page_example_is_a_valid_space_file(tmp_path):
    (example,) = code_blocks("docs/spaces.md", "yaml")
    (tmp_path / "example.yaml").write_text(example, encoding="utf-8")
    space = load_space(tmp_path / "example.yaml")
    assert (space.name, space.search["strategy"]) == ("vit-digits", "one_round")


def test_the_ray_page_backend_keys_are_valid_in_a_space_file(tmp_path):
    (example,) = code_blocks("docs/spaces.md", "yaml")
    (backend,) = code_blocks("docs/ray.md", "yaml")
    space = {**yaml.safe_load(example), **yaml.safe_load(backend)}
    (tmp_path / "ray.yaml").write_text(yaml.safe_dump(space), encoding="utf-8")
    assert load_space(tmp_path / "ray.yaml").backend["name"] == "ray"


def test_every_link_of_the_readme_and_benchmarks_pointer_reaches_a_file():
    """The site's own links are checked by `mkdocs build --strict` (.ci/docs); these two files are outside it."""
    broken = []
    for page in ("README.md", "BENCHMARKS.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / page).read_text(encoding="utf-8")):
            if "://" not in target and not (ROOT / target).is_file():
                broken.append(f"{page}: {target}")
    assert broken == []


def test_the_benchmark_summary_numbers_are_on_the_pages_it_links():
    """Every number of a summary row appears on the page it links: a loose check (0.95 is also in "0.95-1.61"), it
    catches a number quoted from nowhere or a table renamed, not every edit on one side."""
    summary = (ROOT / "docs" / "benchmarks" / "index.md").read_text(encoding="utf-8")
    rows = [line for line in summary.splitlines() if line.startswith("| ") and "](" in line]
    assert len(rows) >= 10
    unquoted = []
    for row in rows:
        page = re.search(r"\]\(([\w-]+\.md)", row).group(1)
        text = (ROOT / "docs" / "benchmarks" / page).read_text(encoding="utf-8")
        numbers = re.findall(r"[-+]?\d[\d,]*\.?\d*(?: ± \d+\.\d+)?", row.split("|")[2])
        unquoted += [f"{page}: {n}" for n in numbers if n not in text]
    assert unquoted == []
