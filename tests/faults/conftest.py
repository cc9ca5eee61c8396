"""The fault suite prints its figures at the end of the run (``pytest tests/faults -q``)."""

from __future__ import annotations

import pytest

FIGURES: list[str] = []


@pytest.fixture
def figures():
    """Append one line per measured fault; they are printed in the terminal summary."""
    return FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("fault figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
