"""Every name in the repository's Python resolves, and nothing is imported or assigned for nothing.

pyflakes reads the source without running it, so a function that lost a helper in a merge fails here in
seconds rather than when a benchmark stage or a rarely taken branch first calls it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from pyflakes import api, messages, reporter

REPO = Path(__file__).resolve().parents[1]
TREES = ("lib", "bench", "tests", "jobs", "tools", "scripts")
CHECKED = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport,
           messages.UnusedImport, messages.UnusedVariable, messages.ImportStarUsed)


class _Collect(reporter.Reporter):
    def __init__(self) -> None:
        self.found: list[str] = []

    def flake(self, message: messages.Message) -> None:
        if isinstance(message, CHECKED):
            self.found.append(str(message))

    def syntaxError(self, filename: str, msg: str, lineno: int, offset: int, text: str) -> None:
        self.found.append(f"{filename}:{lineno}: {msg}")

    def unexpectedError(self, filename: str, msg: str) -> None:
        self.found.append(f"{filename}: {msg}")


def _sources() -> list[Path]:
    return sorted(p for tree in TREES if (REPO / tree).is_dir() for p in (REPO / tree).rglob("*.py"))


def test_the_checker_sees_an_undefined_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return _gone(1)\n")
    found = _Collect()
    api.checkPath(str(bad), found)
    assert any("undefined name '_gone'" in f for f in found.found)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_names_resolve(path: Path) -> None:
    found = _Collect()
    api.checkPath(str(path), found)
    assert not found.found, "\n".join(found.found)
