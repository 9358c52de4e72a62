# -*- test-case-name: tests.test_packaging -*-
"""
Run the smobility test suite and the static checks, and print one closing line.

Usage::

    python tools/runtests.py [--no-lint] [TEST_NAME ...]

Runs trial over the given test names (default: the C{tests} package), then
C{ruff check} and C{mypy} as two further checks, each one passed or one
failed.  The last line is C{N passed, N failed}.  Under C{CI=true} every
skipped test counts as failed.  The exit status is non-zero if anything
failed or no test ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""

LINT_PATHS = ("smobility", "tests", "twisted", "tools")
"""What C{ruff check} looks at (those that exist)."""


@dataclass
class TrialOutcome:
    """The counts that matter from one trial run."""

    run: int
    successes: int
    failures: int
    errors: int
    unexpectedSuccesses: int
    expectedFailures: int
    skips: list[tuple[str, str]]


@dataclass
class CheckOutcome:
    """The result of one static check (ruff or mypy)."""

    name: str
    passed: bool


def runTrial(names: Sequence[str]) -> TrialOutcome:
    """
    Run trial over C{names} with a tree reporter on stdout.

    The run happens in C{_trial_temp} under the repository root, as the
    C{trial} command does.
    """
    # Imported here so that --help works without Twisted.
    from twisted.trial import reporter, runner

    loader = runner.TestLoader()
    suite = loader.loadByNames(list(names), recurse=True)
    trialRunner = runner.TrialRunner(
        reporter.TreeReporter,
        stream=sys.stdout,
        workingDirectory=str(ROOT / "_trial_temp"),
    )
    result = trialRunner.run(suite)
    # TrialRunner returns the reporter it made; these are its counters.
    rep = cast(reporter.Reporter, result)
    return TrialOutcome(
        run=rep.testsRun,
        successes=rep.successes,
        failures=len(rep.failures),
        errors=len(rep.errors),
        unexpectedSuccesses=len(rep.unexpectedSuccesses),
        expectedFailures=len(rep.expectedFailures),
        skips=[(str(test.id()), str(reason)) for test, reason in rep.skips],
    )


def runCheck(name: str, argv: Sequence[str]) -> CheckOutcome:
    """Run one static check from the repository root; it passes on exit status 0."""
    print(f"\n== {name}: {' '.join(argv)}", flush=True)
    try:
        status = subprocess.call(list(argv), cwd=ROOT)
    except OSError as e:
        print(f"{name}: cannot run: {e}", flush=True)
        return CheckOutcome(name, False)
    print(f"{name}: {'ok' if status == 0 else f'FAILED (exit status {status})'}", flush=True)
    return CheckOutcome(name, status == 0)


def lintChecks() -> list[CheckOutcome]:
    """
    Run C{ruff check} and C{mypy} with this interpreter.

    mypy checks the C{files} named in pyproject.toml: C{smobility}, C{tools}
    and the plugin file.
    """
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    return [
        runCheck("ruff", [sys.executable, "-m", "ruff", "check", *paths]),
        runCheck("mypy", [sys.executable, "-m", "mypy"]),
    ]


def summarize(trial: TrialOutcome, checks: Sequence[CheckOutcome], ci: bool) -> tuple[int, int]:
    """
    Print what failed and return C{(passed, failed)}.

    Skips are failures under CI; otherwise they are only reported.
    """
    passed = trial.successes + sum(1 for c in checks if c.passed)
    failed = (
        trial.failures
        + trial.errors
        + trial.unexpectedSuccesses
        + sum(1 for c in checks if not c.passed)
    )
    print()
    print(
        f"trial: {trial.run} run, {trial.successes} successes, {trial.failures} failures, "
        f"{trial.errors} errors, {trial.unexpectedSuccesses} unexpected successes, "
        f"{trial.expectedFailures} expected failures, {len(trial.skips)} skips"
    )
    if trial.skips:
        if ci:
            failed += len(trial.skips)
            print(f"skipped tests count as failed under CI=true ({len(trial.skips)}):")
        else:
            print(f"skipped tests ({len(trial.skips)}):")
        for testId, reason in trial.skips:
            print(f"  {testId}: {reason}")
    for check in checks:
        print(f"{check.name}: {'passed' if check.passed else 'FAILED'}")
    if trial.run == 0:
        print("no test ran")
    return passed, failed


def main(argv: Sequence[str] | None = None) -> int:
    """Run everything; return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--no-lint", action="store_true", help="skip ruff and mypy")
    parser.add_argument(
        "tests", nargs="*", help="trial test names (modules, classes, methods); default: tests"
    )
    args = parser.parse_args(argv)

    # Make the checkout importable whatever the venv holds.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)

    ci = os.environ.get("CI") == "true"
    trial = runTrial(args.tests or ["tests"])
    checks = [] if args.no_lint else lintChecks()
    passed, failed = summarize(trial, checks, ci)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed or trial.run == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
