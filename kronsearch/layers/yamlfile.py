"""Bounded reading of YAML files that may come from anywhere: search spaces and pattern plans.

A file is read only if it is a regular file of at most MAX_FILE_BYTES, UTF-8, safe YAML without
anchors or aliases (no 'billion laughs'), at most MAX_DEPTH levels deep and without a key given
twice in one mapping (YAML would silently keep the last one). Every problem is a ValueError of the
caller's class whose message starts with the file's path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 32  # YAML nesting; real space files are 4-5 levels deep


class _BoundedLoader(yaml.SafeLoader):
    """Safe YAML without aliases, without deep nesting and without duplicated keys."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in {self.kind}s "
                                 f"(line {event.start_mark.line + 1})")
        depth = getattr(self, "_depth", 0)
        if depth >= MAX_DEPTH:  # PyYAML composes recursively: stop long before a RecursionError
            raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep "
                                 f"(line {self.peek_event().start_mark.line + 1})")
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.YAMLError(f"key {str(key)[:60]!r} is given twice (lines {seen[key]} and {line}); "
                                         f"keep one")
            except TypeError:  # an unhashable key: SafeLoader refuses it below
                break
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: str | os.PathLike, kind: str, error: type[ValueError]) -> tuple[Any, bytes]:
    """Parse a YAML file within the bounds above; returns (document, the file's bytes).

    kind names the file in messages ("space file"); problems raise `error`.
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a device (/dev/zero) or a FIFO never ends or never answers
            raise error(f"{path}: not a regular file; a {kind} is a YAML file")
        if info.st_size > MAX_FILE_BYTES:
            raise error(f"{path}: {info.st_size} bytes; {kind}s are limited to {MAX_FILE_BYTES} bytes")
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows meanwhile
        if len(data) > MAX_FILE_BYTES:
            raise error(f"{path}: more than {MAX_FILE_BYTES} bytes; {kind}s are limited to that")
    except OSError as err:
        raise error(f"{path}: cannot read the {kind}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start}); {kind}s are UTF-8 YAML") from None
    loader = type("Loader", (_BoundedLoader,), {"kind": kind})
    try:
        document = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        raise marked_error(error, path, err) from None
    except (yaml.YAMLError, ValueError) as err:  # ValueError: e.g. an integer of more than 4300 digits
        raise error(f"{path}: invalid YAML: {str(err)[:2000]}") from None
    except RecursionError:  # a backstop: the loader's depth limit comes first
        raise error(f"{path}: invalid YAML: nested too deeply") from None
    return document, data


def marked_error(error: type[ValueError], path: Path, err: yaml.MarkedYAMLError) -> ValueError:
    """'FILE:LINE:COL: invalid YAML: problem (context at line L, column C)', then the line and a caret under
    the column, as PyYAML marks them (unless the mark is past the last line). The error's `keeps_layout` tells
    the command line not to join its lines."""
    mark = err.problem_mark or err.context_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = err.problem or err.context or "unreadable"
    context = ""
    if err.problem and err.context:
        at = err.context_mark
        start = f" that starts at line {at.line + 1}, column {at.column + 1}" if at is not None else ""
        context = f" ({err.context}{start})"
    snippet = mark.get_snippet(indent=2, max_length=100) if mark is not None else None
    if snippet and not snippet.splitlines()[0].strip():  # the end of the file: nothing to point at
        snippet = None
    exc = error(f"{where}: invalid YAML: {str(problem)[:500]}{context}" + (f"\n{snippet}" if snippet else ""))
    exc.keeps_layout = True  # type: ignore[attr-defined]
    return exc
