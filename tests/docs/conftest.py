"""The docs examples' own line in pytest's summary: how many examples ran, and each skip with its reason."""

from __future__ import annotations

from collections import Counter

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if "test_doc_example[" not in getattr(report, "nodeid", "") or report.when not in ("call", "setup"):
                continue
            if outcome == "skipped":
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
                reasons[reason.removeprefix("Skipped: ")] += 1
            if outcome != "passed" or report.when == "call":
                counts[outcome] += 1
    if not counts:
        return
    terminalreporter.section("docs examples (README.md and docs/)")
    terminalreporter.write_line(f"{counts['passed']} ran and passed, {counts['failed'] + counts['error']} failed, "
                                f"{counts['skipped']} skipped")
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"  skipped {n}×: {reason}")
