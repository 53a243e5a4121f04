"""normopt, its docs, tests and benchmarks lint clean with ruff; normopt
type-checks clean with mypy.

The configuration is in pyproject.toml (``[tool.ruff]``, ``[tool.mypy]``); the
tools come with the ``test`` extra.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
  return subprocess.run(
      [sys.executable, "-m", *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
  )


def test_ruff_finds_nothing():
  proc = _run("ruff", "check", "--no-cache", "--output-format", "concise",
              "normopt", "docs", "tests", "benchmarks")
  assert proc.returncode == 0, f"ruff findings:\n{proc.stdout}{proc.stderr}"


@pytest.mark.slow  # tens of seconds cold; ruff stays in the fast loop
def test_mypy_finds_nothing():
  proc = _run("mypy")  # checks the files listed in [tool.mypy]: normopt/
  assert proc.returncode == 0, f"mypy findings:\n{proc.stdout}{proc.stderr}"
