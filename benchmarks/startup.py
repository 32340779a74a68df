"""How fast the command line answers before any model is needed.

Times `zeroshot-plus --help`, `zeroshot-plus predict --help` and an argument error (a missing
IMAGES path) beside `python -c "import torch"`, each in its own process, several runs each,
and prints the median and the range. The command line is run as ``python -m zeroshot_plus.cli``
from this checkout.

    python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default: 5)")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(  # this checkout, not an installed copy
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    cli = [sys.executable, "-m", "zeroshot_plus.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            'python -c "import torch"': [sys.executable, "-c", "import torch"],
            "zeroshot-plus --help": [*cli, "--help"],
            "zeroshot-plus predict --help": [*cli, "predict", "--help"],
            "zeroshot-plus embed MISSING (error)": [
                sys.executable, "-c", "import sys; from zeroshot_plus.cli import main; "
                "sys.exit(main(sys.argv[1:]) != 2)", "embed", f"{tmp}/missing",
                "--out", f"{tmp}/e.npz"],
        }
        print(f"| command | median wall s | min-max s ({args.runs} runs) |\n|---|---|---|")
        for name, argv in commands.items():
            walls = [run_measured(argv)[0] for _ in range(args.runs)]
            print(f"| {name} | {statistics.median(walls):.2f} | "
                  f"{min(walls):.2f}-{max(walls):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
