"""The code base lints and type-checks clean, so the README's one test command also enforces both."""

from __future__ import annotations

import subprocess
import sys

from tests.support.model_repository import REPO_ROOT


def run_tool(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", *arguments]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    finished = run_tool("ruff", "check", "--no-cache", ".")
    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_mypy_strict_finds_nothing() -> None:
    # The files and the strictness come from pyproject.toml; the cache stays out of the tree.
    finished = run_tool("mypy", "--cache-dir", "/dev/null")
    assert finished.returncode == 0, finished.stdout + finished.stderr
