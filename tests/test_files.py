"""The one atomic writer: full disks, wrong paths, interrupts and concurrent writers, on real
files (the tests run as root, so file permissions cannot make a write fail)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from zeroshot_plus import GDAClassifier, InputError
from zeroshot_plus.data.files import atomic_directory, atomic_output

REPO_DIR = Path(__file__).resolve().parents[1]

# a child process whose files may not grow past LIMIT bytes: writes then fail with EFBIG, as
# on a full disk (SIGXFSZ is ignored so that the write returns the error instead of killing)
LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def _python(code: str, limit: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    prelude = LIMITED.format(limit=limit) if limit is not None else ""
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO_DIR,
                          capture_output=True, text=True, timeout=300, **kwargs)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_full_disk_keeps_the_previous_file_byte_identical(tmp_path):
    target = tmp_path / "out.csv"
    target.write_bytes(b"the earlier output\n")
    result = _python(f"""
        from zeroshot_plus.data.files import atomic_directory, atomic_output
        from zeroshot_plus import InputError
        try:
            with atomic_output({str(target)!r}) as handle:
                handle.write("x" * 100_000)
        except InputError as exc:
            print(exc)
        """, limit=4096)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"cannot write '{target}': no space left on device " \
                                    f"(file size limit reached)."
    assert target.read_bytes() == b"the earlier output\n"
    assert _names(tmp_path) == ["out.csv"]


def test_a_saved_classifier_survives_a_failed_save(tmp_path):
    path = tmp_path / "gda.npz"
    X = np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)
    GDAClassifier(alpha=1.0).fit(X[:4, :8], ["a", "a", "b", "b"]).save(path)
    before = path.read_bytes()
    result = _python(f"""
        import numpy as np
        from zeroshot_plus import GDAClassifier
        X = np.random.default_rng(0).normal(size=(40, 64)).astype(np.float32)
        GDAClassifier(alpha=1.0).fit(X, ["a", "b"] * 20).save({str(path)!r})
        """, limit=len(before) + 1000)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (f"zeroshot_plus.errors.InputError: cannot write "
                                              f"'{path}': no space left on device (file size "
                                              f"limit reached).")
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["gda.npz"]


def test_wrong_paths_are_one_sentence_and_touch_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"cannot write '.*file/out.csv': a part of its path "
                                         r"is not a directory\."):
        with atomic_output(blocker / "out.csv") as handle:
            handle.write("never")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(InputError, match=r"cannot write '.*folder': it is a directory\."):
        with atomic_output(folder) as handle:
            handle.write("never")
    assert _names(tmp_path) == ["file", "folder"] and not list(folder.iterdir())
    assert blocker.read_text() == "x"


def test_ctrl_c_inside_the_block_leaves_no_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target) as handle:
            handle.write("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and _names(tmp_path) == ["out.json"]


def test_an_interrupted_writer_process_leaves_no_stray_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    started = tmp_path / "started"
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from zeroshot_plus.data.files import atomic_directory, atomic_output
        with atomic_output({str(target)!r}) as handle:
            handle.write("half")
            pathlib.Path({str(started)!r}).touch()
            time.sleep(60)
        """)], cwd=REPO_DIR, stderr=subprocess.DEVNULL,
        # a shell starts background jobs with Ctrl-C ignored, which children inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_names(tmp_path)) == 3  # the target, the marker and the writer's temporary file
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) != 0
    assert target.read_text() == "old" and _names(tmp_path) == ["out.csv", "started"]


def test_two_processes_writing_one_output_each_leave_a_whole_file(tmp_path):
    """Both writers hold their temporary file open at once; each exits 0 and the file is
    the complete output of one of them."""
    target = tmp_path / "out.csv"
    writer = """
        import pathlib, sys, time
        from zeroshot_plus.data.files import atomic_directory, atomic_output
        me, other = sys.argv[1], sys.argv[2]
        with atomic_output({target!r}) as handle:
            for row in range(2000):
                handle.write(f"{{me}},{{row}}\\n")
                if row == 1000:
                    pathlib.Path({folder!r}, me).touch()
                    while not pathlib.Path({folder!r}, other).exists():
                        time.sleep(0.01)
        """
    code = textwrap.dedent(writer.format(target=str(target), folder=str(tmp_path)))
    processes = [subprocess.Popen([sys.executable, "-c", code, me, other], cwd=REPO_DIR,
                                  stderr=subprocess.PIPE, text=True)
                 for me, other in (("first", "second"), ("second", "first"))]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    lines = target.read_text().splitlines()
    winner = lines[0].split(",")[0]
    assert lines == [f"{winner},{row}" for row in range(2000)]
    assert _names(tmp_path) == ["first", "out.csv", "second"]


def test_written_files_have_the_usual_permissions(tmp_path):
    """Not the 0600 of a temporary file: what the umask gives any new file."""
    umask = os.umask(0o022)
    os.umask(umask)
    with atomic_output(tmp_path / "out.txt") as handle:
        handle.write("x")
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def _hold_partial(target: Path, marker: Path) -> subprocess.Popen:
    """A process that writes part of ``target`` and then waits (to be killed) inside the block."""
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, time
        from zeroshot_plus.data.files import atomic_directory, atomic_output
        with atomic_output({str(target)!r}) as handle:
            handle.write("half")
            handle.flush()
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(120)
        """)], cwd=REPO_DIR, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the writer never started"
        time.sleep(0.01)
    return process


def _partials(folder: Path) -> list[str]:
    return [n for n in _names(folder) if n.endswith(".partial")]


def test_the_next_write_removes_what_a_killed_writer_left_not_a_live_writers_file(tmp_path):
    target, other = tmp_path / "out.csv", tmp_path / "other.csv"
    killed = _hold_partial(target, tmp_path / "m1")
    killed.kill()  # SIGKILL: the writer cannot clean up
    killed.wait(timeout=30)
    (left,) = _partials(tmp_path)
    assert f".{killed.pid}." in left and target.name in left
    live = _hold_partial(target, tmp_path / "m2")
    stranger = _hold_partial(other, tmp_path / "m3")
    stranger.kill()
    stranger.wait(timeout=30)
    try:
        with atomic_output(target) as handle:
            handle.write("whole")
        remaining = _partials(tmp_path)
        # the dead writer's file is gone; the live writer's and another target's are kept
        assert left not in remaining and len(remaining) == 2
        assert any(f".{live.pid}." in n and n.startswith(".out.csv.") for n in remaining)
        assert any(f".{stranger.pid}." in n and n.startswith(".other.csv.") for n in remaining)
        assert target.read_text() == "whole"
    finally:
        live.kill()
        live.wait(timeout=30)
    with atomic_output(other) as handle:
        handle.write("whole")
    with atomic_output(target) as handle:
        handle.write("again")
    assert _partials(tmp_path) == []


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as building:
            (building / "a.bin").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    # a folder a killed builder left (its process id is no longer running) goes with the next build
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32]
    left = tmp_path / f".model.{host}.{dead.pid}.abc.partial"
    left.mkdir()
    (left / "a.bin").write_bytes(b"half")
    with atomic_directory(target) as building:
        (building / "a.bin").write_bytes(b"whole")
        (building / "b.bin").write_bytes(b"too")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (target / "a.bin").read_bytes() == b"whole" and (target / "b.bin").exists()
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    # a folder another process completed meanwhile is kept, ours dropped
    with atomic_directory(target) as building:
        (building / "a.bin").write_bytes(b"ours")
    assert (target / "a.bin").read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
