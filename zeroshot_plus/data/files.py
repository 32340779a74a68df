"""Output files that appear only once complete."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from ..errors import InputError


@contextmanager
def atomic_output(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """A stream to ``path``: written to a hidden temporary file beside it, flushed to disk and
    renamed into place when the block ends without an error, removed otherwise."""
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"output folder '{target.parent}' does not exist.")
    temporary = target.with_name(f".{target.name}.partial")
    try:
        with (open(temporary, "wb") if binary
              else open(temporary, "w", newline="", encoding="utf-8")) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
