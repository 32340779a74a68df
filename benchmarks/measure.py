"""Run a command in its own process and measure its wall time and its own peak RSS; and the
sample of ImageNet photos the TPT benchmarks share (``imagenet_photos``).

Linux carries a process's peak RSS over fork + exec, so a command started straight from a large
benchmark process would report that process's peak. A small launcher process forks the command
instead and reports the command's own figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np


def imagenet_photos(folder: str | Path, n: int) -> tuple[list, list[str]]:
    """(n decoded photos drawn with seed 0, every class name) from the ImageNet sample photos in
    ``folder``, whose file names end with their class name (``n01440764_tench.JPEG``)."""
    from zeroshot_plus.data.images import open_image

    paths = sorted(Path(folder).glob("*.JPEG"))
    if not paths:
        raise SystemExit(f"no .JPEG photos in {folder}")
    names = [p.stem.split("_", 1)[1].replace("_", " ") for p in paths]
    chosen = np.random.default_rng(0).choice(paths, n, replace=False)
    return [open_image(p) for p in chosen], names


_LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"{time.perf_counter() - start} {usage.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: list[str]) -> tuple[float, float, str, str]:
    """Run ``argv``; return (wall seconds, peak RSS in MiB, its stdout, its stderr). Exits on
    failure."""
    result = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"command failed ({result.returncode}): {' '.join(argv)}\n{result.stderr}")
    *lines, measured = result.stderr.strip().splitlines()
    wall, peak = measured.split()
    return float(wall), float(peak) / 1024, result.stdout, "\n".join(lines)
