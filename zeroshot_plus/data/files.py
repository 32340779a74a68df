"""The one way the project writes a file: whole or not at all, and one sentence on failure.

``atomic_output`` writes to a temporary file of its own (``tempfile.mkstemp``, so two runs
writing the same path never share one) in the target's folder, flushes it to disk and renames
it over the target; on any failure, Ctrl-C included, the temporary file is removed and the
previous file is left as it was. Every file the library and the command line write goes
through it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from ..errors import InputError

_UMASK = os.umask(0o022)
os.umask(_UMASK)

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "no space left on device (file size limit reached)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a part of its path is not a directory",
    errno.ENOENT: "its folder does not exist",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def os_error_cause(exc: OSError) -> str:
    """The cause of an OSError in a few words ("no space left on device", ...)."""
    return _CAUSES.get(exc.errno) or (exc.strerror or str(exc)).lower()


def write_error(path: str | os.PathLike, exc: OSError) -> InputError:
    """The one-sentence error for a file that could not be written."""
    return InputError(f"cannot write '{path}': {os_error_cause(exc)}.")


@contextmanager
def atomic_output(path: str | os.PathLike, binary: bool = False) -> Iterator[IO]:
    """A stream to ``path`` that appears there only once complete (see the module).

    Raises InputError naming the file and the cause when it cannot be written. An OSError
    that names another file (the block reading something) passes through unchanged.
    """
    target = Path(path)
    if target.is_dir():
        raise write_error(target, IsADirectoryError(errno.EISDIR, "is a directory"))
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                             suffix=".partial")
    except FileNotFoundError:
        raise InputError(f"output folder '{target.parent}' does not exist.") from None
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp's 0600 is for the temporary name only
        with (open(handle, "wb") if binary
              else open(handle, "w", newline="", encoding="utf-8")) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        if exc.filename not in (None, temporary, str(target)):
            raise
        raise write_error(target, exc) from None
    finally:
        Path(temporary).unlink(missing_ok=True)
