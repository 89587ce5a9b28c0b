"""The documentation's shape: a README of a few screens, pages that open with what they are for, and the
API page's example run as written."""

from __future__ import annotations

import torch

import kronsearch
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
