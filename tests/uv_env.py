"""Throwaway virtual environments with ``uv`` for the packaging and floor tests.

``uv`` comes with the ``test`` extra. Installing needs the package index; when
the index cannot be reached, the install is retried from ``uv``'s cache
(``--offline``), and only when that fails too does the calling test skip,
saying why. Any other install failure (an unsatisfiable requirement, a build
error) fails the test.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

# What uv prints when it cannot reach the index (DNS, connect, TLS, timeouts).
_NETWORK_ERROR = re.compile(
    r"failed to fetch|error sending request|dns error|failed to lookup address"
    r"|tcp connect error|connection refused|network is unreachable|timed out"
    r"|client error \(connect\)|os error 101|os error 111",
    re.IGNORECASE,
)
_OFFLINE_MISS = re.compile(r"not found in the cache|network connectivity is disabled", re.I)


def uv_bin() -> str:
  """Path of the ``uv`` executable, or skip the test if uv is not installed."""
  try:
    import uv

    return uv.find_uv_bin()
  except (ImportError, FileNotFoundError):
    path = shutil.which("uv")
    if path is None:
      pytest.skip("uv is not installed (it comes with normopt's test extra)")
    return path


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env.pop("VIRTUAL_ENV", None)
  env["UV_PYTHON_DOWNLOADS"] = "never"  # use this interpreter, never fetch one
  env["UV_NO_PROGRESS"] = "1"
  return env


def _uv(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
  return subprocess.run(
      [uv_bin(), *args], capture_output=True, text=True, timeout=timeout,
      env=_env(), check=False,
  )


def make_venv(path: pathlib.Path) -> pathlib.Path:
  """A fresh venv at ``path`` on this interpreter; returns its python."""
  proc = _uv("venv", "--quiet", "--python", sys.executable, str(path))
  assert proc.returncode == 0, f"uv venv failed:\n{proc.stderr}"
  bindir = "Scripts" if os.name == "nt" else "bin"
  return path / bindir / ("python.exe" if os.name == "nt" else "python")


def pip_install(python: pathlib.Path, args: list[str]) -> str:
  """``uv pip install`` into ``python``'s venv; returns uv's report (stderr).

  Skips the calling test if the index cannot be reached and uv's cache does
  not hold what is needed.
  """
  base = ["pip", "install", "--python", str(python), *args]
  proc = _uv(*base)
  if proc.returncode == 0:
    return proc.stderr
  if not _NETWORK_ERROR.search(proc.stderr):
    pytest.fail(f"uv pip install {' '.join(args)} failed:\n{proc.stderr}")
  offline = _uv(*base, "--offline")
  if offline.returncode == 0:
    return offline.stderr
  if _OFFLINE_MISS.search(offline.stderr) or _NETWORK_ERROR.search(offline.stderr):
    why = [l.strip() for l in proc.stderr.splitlines() if _NETWORK_ERROR.search(l)]
    pytest.skip("the package index cannot be reached and uv's cache lacks the "
                "packages: " + " | ".join(why[:2]))
  pytest.fail(f"uv pip install --offline {' '.join(args)} failed:\n{offline.stderr}")
