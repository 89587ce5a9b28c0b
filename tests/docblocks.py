"""The fenced code blocks of the documentation (README.md, docs/), for the tests that run them as written.

A shell block (tagged bash, sh, shell or console) says on the line before its fence whether the tests run it:
`<!-- docs-test: run -->`, or `<!-- docs-test: skip <why> -->` for one that needs what CI does not have (a GPU,
a cluster, a real dataset) or installs packages. The comment is invisible on GitHub and in the site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)
SHELL = ("bash", "sh", "shell", "console")
MARKER = re.compile(r"<!-- docs-test: (run|skip)\b\s*(.*?)\s*-->")


def doc_pages() -> list[str]:
    """README.md and every page under docs/, relative to the repository root."""
    return ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))]


def code_blocks(page: str, language: str) -> list[str]:
    """The bodies of `page`'s fenced blocks tagged `language`, in order; page is relative to the repository root."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [body for tag, body in FENCE.findall(text) if tag == language]


@dataclass(frozen=True)
class ShellBlock:
    """One shell block of a page: where it is, its marker ("run", "skip" or "" when it has none), why, its text."""

    page: str
    line: int
    marker: str
    reason: str
    body: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def shell_blocks() -> list[ShellBlock]:
    """Every shell block of every page, with the docs-test marker of the line above its fence."""
    blocks = []
    for page in doc_pages():
        text = (ROOT / page).read_text(encoding="utf-8")
        for fence in FENCE.finditer(text):
            if fence.group(1) not in SHELL:
                continue
            before = text[:fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = MARKER.fullmatch(before.strip())
            line = text.count("\n", 0, fence.start()) + 1
            blocks.append(ShellBlock(page, line, marker.group(1) if marker else "", marker.group(2) if marker else "",
                                     fence.group(2)))
    return blocks
