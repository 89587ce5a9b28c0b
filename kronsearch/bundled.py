"""The example search spaces shipped inside the package (kronsearch/spaces/*.yaml), runnable by name.

`kronsearch run vit` runs kronsearch/spaces/vit.yaml when no file "vit" exists: an installed package has
no clone's search_spaces/ folder (in a clone, search_spaces/ links to the same files).
`kronsearch spaces` lists them and `kronsearch spaces copy vit my.yaml` writes one out to edit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kronsearch.schema import SpaceError

SPACES_DIR = Path(__file__).resolve().parent / "spaces"


def bundled_spaces() -> dict[str, Path]:
    """name -> file of every bundled space, sorted by name ('vit' for spaces/vit.yaml)."""
    return {p.stem: p for p in sorted(SPACES_DIR.glob("*.yaml"))}


def space_summary(path: Path) -> str:
    """A bundled space's first comment line up to its first '. ', ': ' or '; ': what it trains, on what."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return re.split(r"[.:;](?:\s|$)", line.lstrip("# ").strip(), maxsplit=1)[0]
    return ""


def bundled_space(name: str) -> Path:
    """The file of bundled space `name`; SpaceError listing the bundled names otherwise."""
    spaces = bundled_spaces()
    stem = name[:-5] if name.endswith(".yaml") else name
    if stem not in spaces:
        raise SpaceError(f"{name!r} is not a bundled space; bundled: {', '.join(spaces) or 'none'} "
                         f"(`kronsearch spaces` lists them)")
    return spaces[stem]


def find_space(path: str | os.PathLike) -> Path:
    """A space file: `path` when it exists, else the bundled space of that name (a bare name, no folder).

    A missing file is a SpaceError that names it and lists the bundled spaces."""
    given = Path(path)
    if given.exists() or given.is_symlink():
        return given
    if given.parent == Path(".") and given.stem in bundled_spaces() and given.suffix in ("", ".yaml"):
        return bundled_space(given.name)
    raise SpaceError(f"{path}: no such space file, and not the name of a bundled space; bundled: "
                     f"{', '.join(bundled_spaces())} (`kronsearch spaces copy NAME FILE` copies one to edit, "
                     f"`kronsearch init FILE` writes a starting space for your own model)")


def copy_space(name: str, destination: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write bundled space `name` to `destination` (a file, or a folder to put NAME.yaml in); returns the file.

    An existing file is kept unless `overwrite`: SpaceError then."""
    source = bundled_space(name)
    target = Path(destination)
    if target.is_dir():
        target = target / source.name
    if target.exists() and not overwrite:
        raise SpaceError(f"{target} exists; pass --force to overwrite it, or name another file")
    target.write_bytes(source.read_bytes())
    return target
