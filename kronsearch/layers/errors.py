"""kronsearch's one error hierarchy: every error it raises on purpose is a KronsearchError.

It lives in layers/, the self-contained core, so that the layers raise the same classes as the rest
of the package without importing anything above them; `kronsearch.errors` re-exports it. The CLI
maps the two branches to its exit codes: BadInput -> 2, RunFailure -> 1.
"""


class KronsearchError(Exception):
    """Base of every error kronsearch raises on purpose."""


class BadInput(KronsearchError, ValueError):
    """Input that cannot work (a space or plan file, a block, a name, an option); the message names
    what is wrong and what is allowed. A ValueError, so `except ValueError` keeps catching it."""


class RunFailure(KronsearchError, RuntimeError):
    """A run that could not finish through no fault of its input: storage, training, export."""
