"""The fenced code blocks of the documentation (README.md, docs/), for the tests that run them as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)


def code_blocks(page: str, language: str) -> list[str]:
    """The bodies of `page`'s fenced blocks tagged `language`, in order; page is relative to the repository root."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [body for tag, body in FENCE.findall(text) if tag == language]
