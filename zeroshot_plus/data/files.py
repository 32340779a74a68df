"""The one way the project writes a file: whole or not at all, and one sentence on failure;
and the one way it reads a user's text or JSON file (``read_text``, ``read_json``).

``atomic_output`` writes to a temporary file of its own (``tempfile.mkstemp``, so two runs
writing the same path never share one) in the target's folder, flushes it to disk and renames
it over the target; on any failure, Ctrl-C included, the temporary file is removed and the
previous file is left as it was. Every file the library and the command line write goes
through it; ``atomic_directory`` does the same for a folder of files written together (a
compiled model and its weights).

A process killed with SIGKILL cannot remove its temporary file. Temporary names carry the
writer's host and process id (``.NAME.HOST.PID.XXXXXXXX.partial``), so the next successful write
of the same target, in any process, removes the ones left by processes of this host that are
gone (``remove_stale_partials``); a live writer's file, or one of another host, is left alone.
Temporary folders are named and removed the same way.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from ..errors import InputError

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_NAME_PART = 100  # of the target's name in a temporary name: the whole stays under 255 bytes

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
        handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".partial",
                                             prefix=f"{_partial_prefix(target.name)}{os.getpid()}.")
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
        remove_stale_partials(target.parent, target.name)
    except OSError as exc:
        if exc.filename not in (None, temporary, str(target)):
            raise
        raise write_error(target, exc) from None
    finally:
        Path(temporary).unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; once the block ends, its files are flushed
    to disk and the folder is renamed to ``path``, so ``path`` holds all of them or does not
    exist. On any failure the temporary folder is removed. When another process made ``path``
    meanwhile, theirs is kept and ours dropped.

    Raises OSError when the folder cannot be made or renamed (the caller decides whether that
    fails its job).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=target.parent, suffix=".partial",
                                      prefix=f"{_partial_prefix(target.name)}{os.getpid()}."))
    try:
        yield temporary
        for entry in temporary.iterdir():
            with open(entry, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(temporary, 0o777 & ~_UMASK)  # mkdtemp's 0700 is for the temporary name only
        try:
            os.rename(temporary, target)
        except OSError as exc:
            if not target.is_dir() or exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        remove_stale_partials(target.parent, target.name)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _partial_prefix(name: str) -> str:
    return f".{name[:_NAME_PART]}.{_HOST}."


def remove_stale_partials(folder: str | os.PathLike, name: str | None = None) -> int:
    """Remove the temporary files and folders in ``folder`` (of target ``name``, or of any
    target) that processes of this host which no longer run left behind; the number removed.

    Files whose writer still runs, this process's own, and those of other hosts are kept.
    """
    head = _partial_prefix(name) if name is not None else "."
    pattern = re.compile(rf"\.{re.escape(_HOST)}\.(\d+)\.[^.]+\.partial$")
    try:
        entries = os.listdir(folder)
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        found = pattern.search(entry) if entry.startswith(head) else None
        if found is None or int(found[1]) == os.getpid() or _running(int(found[1])):
            continue
        stale = os.path.join(folder, entry)
        try:
            if os.path.isdir(stale):
                shutil.rmtree(stale)
            else:
                os.unlink(stale)
            removed += 1
        except OSError:
            pass  # removed by another process meanwhile, or not ours to remove
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone; a number no process can have
        return False
    except PermissionError:  # another user's process
        return True
    return True


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of a user's UTF-8 file (a byte-order mark allowed); InputError, one sentence
    naming the file, when it is missing or a folder, cannot be read or is not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder, not a file.")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{what} '{path}' does not exist.") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} '{path}': {os_error_cause(exc)}.") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise InputError(f"{what} '{path}' is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                         f"on line {line}); save it as UTF-8.") from None


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON value in a user's file (``read_text``).

    what : how errors name the file, e.g. "descriptor file".
    Raises InputError, one sentence naming the file, as ``read_text`` does, and when it is
    not JSON (or nests too deeply), repeats a key in one object,
    or holds a string that is not text (a lone surrogate escape such as "\\udcff").
    """
    text = read_text(path, what)
    try:
        data = json.loads(text, object_pairs_hook=lambda pairs: _unique_keys(pairs, what, path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} '{path}' is not valid JSON: {exc.msg} (line {exc.lineno}).") \
            from None
    except RecursionError:
        raise InputError(f"{what} '{path}' nests arrays or objects too deeply.") from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} '{path}' holds a string that is not text (a lone surrogate "
                         f"escape such as \"\\udcff\").") from None
    return data


def _unique_keys(pairs: list[tuple[str, Any]], what: str, path: Path) -> dict:
    data = dict(pairs)
    if len(data) < len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise InputError(f"{what} '{path}' names '{repeated}' twice in one object; keep one "
                         f"entry per key.")
    return data
