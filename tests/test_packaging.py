"""normopt builds into a wheel and an sdist that PyPI would accept, and the wheel
installs and imports in a clean environment with the version it declares.

``python -m build`` builds the sdist, then the wheel from the sdist (so a file
missing from the sdist breaks the wheel), without build isolation: setuptools
comes with the ``test`` extra. ``twine check --strict`` validates the metadata
and the README rendering. The clean environment is a ``uv`` virtual environment;
installing normopt's dependencies there needs the package index (or ``uv``'s
cache), and the install test skips, saying so, when neither has them.
"""

from __future__ import annotations

import email
import pathlib
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

import uv_env

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _source_version() -> str:
  """``__version__`` in normopt/__init__.py, read as text (the one source)."""
  text = (ROOT / "normopt" / "__init__.py").read_text(encoding="utf-8")
  m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
  assert m, "normopt/__init__.py has no literal __version__"
  return m.group(1)


def _run(*args: str | pathlib.Path, **kw) -> subprocess.CompletedProcess[str]:
  return subprocess.run(
      [str(a) for a in args], capture_output=True, text=True, timeout=300,
      check=False, **kw,
  )


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
  pytest.importorskip("build", reason="`build` comes with the test extra")
  out = tmp_path_factory.mktemp("dist")
  proc = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT)
  assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout}\n{proc.stderr}"
  wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
  assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
  return wheels[0], sdists[0]


def test_pyproject_takes_the_version_from_normopt():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
  assert "version" not in project["project"]
  assert "version" in project["project"]["dynamic"]
  attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
  assert attr == "normopt.__version__"


@pytest.mark.slow  # builds the wheel and sdist
def test_twine_accepts_wheel_and_sdist(dist):
  pytest.importorskip("twine", reason="`twine` comes with the test extra")
  proc = _run(sys.executable, "-m", "twine", "check", "--strict", *dist)
  assert proc.returncode == 0, f"twine check failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.slow  # builds the wheel and sdist
def test_wheel_metadata_and_contents(dist):
  wheel, sdist = dist
  version = _source_version()
  assert wheel.name.startswith(f"normopt-{version}-"), wheel.name
  assert sdist.name == f"normopt-{version}.tar.gz", sdist.name
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    info = f"normopt-{version}.dist-info"
    meta = email.message_from_bytes(z.read(f"{info}/METADATA"))
  assert meta["Version"] == version
  assert meta["License-Expression"] == "Apache-2.0"
  assert meta.get_all("License-File") == ["LICENSE"]
  assert f"{info}/licenses/LICENSE" in names
  assert "normopt/py.typed" in names  # PEP 561: annotations are part of the API
  assert {"normopt/__init__.py", "normopt/blocks.py"} <= names
  assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
  with tarfile.open(sdist) as t:
    snames = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
  assert {"LICENSE", "README.md", "pyproject.toml", "normopt/py.typed"} <= snames


@pytest.mark.slow  # builds the wheel and sdist
def test_wheel_installs_in_a_clean_env_with_its_version(dist, tmp_path):
  wheel, _ = dist
  python = uv_env.make_venv(tmp_path / "venv")
  uv_env.pip_install(python, [str(wheel)])
  proc = _run(
      python, "-c",
      "import importlib.metadata as m, normopt; print(normopt.__version__, m.version('normopt'))",
      cwd=tmp_path,  # not ROOT: import the installed wheel, not the source tree
  )
  assert proc.returncode == 0, proc.stderr
  imported, installed = proc.stdout.split()
  assert imported == installed == _source_version()
