"""Run a command in its own process and measure its wall time and its own peak RSS.

Linux carries a process's peak RSS over fork + exec, so a command started straight from a large
benchmark process would report that process's peak. A small launcher process forks the command
instead and reports the command's own figures.
"""

from __future__ import annotations

import subprocess
import sys

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
