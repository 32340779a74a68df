"""Print scikit-learn's check_estimator table: per estimator, the checks passed and the
expected failures with their one-line reasons (zeroshot_plus.evaluation.conformance holds
the list of estimators; add a row there for a new one).

    python benchmarks/conformance.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zeroshot_plus.evaluation.conformance import ESTIMATORS, run_checks  # noqa: E402


def main() -> int:
    print("| estimator | checks | passed | expected failures | unexpected |")
    print("|---|---|---|---|---|")
    reasons: dict[str, list[str]] = {}
    status = 0
    for name, factory, expected, api_only in ESTIMATORS:
        outcome = run_checks(factory(), expected, api_only)
        total = len(outcome.passed) + len(outcome.expected) + len(outcome.unexpected) \
            + len(outcome.not_failing)
        trouble = [f"{c}: {e}" for c, e in outcome.unexpected.items()] + \
            [f"{c}: passed, expected to fail" for c in outcome.not_failing]
        print(f"| {name} | {'API only' if api_only else 'all'} ({total}) | "
              f"{len(outcome.passed)} | {len(outcome.expected)} | {len(trouble)} |")
        for reason in sorted(set(outcome.expected.values())):
            checks = sorted(c for c, r in outcome.expected.items() if r == reason)
            reasons.setdefault(reason, []).append(f"{name}: {', '.join(checks)}")
        for line in trouble:
            print(f"|   {line} | | | | |")
        status |= not outcome.ok
    print("\nexpected failures, by reason:")
    for reason, rows in reasons.items():
        print(f"- {reason}")
        for row in rows:
            print(f"    {row}")
    return status


if __name__ == "__main__":
    sys.exit(main())
