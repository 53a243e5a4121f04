"""normopt works at the dependency floors that pyproject.toml declares.

A fresh ``uv`` virtual environment gets normopt (editable) and the test tools
this subset needs, resolved with ``--resolution lowest-direct``: every
requirement named directly (normopt's runtime dependencies and those test
tools, as declared in pyproject.toml) at its declared minimum, everything else
at what resolves. The test checks that the installed versions are exactly the
declared floors, then runs a fast subset of the suite there in a subprocess.

Each floor is where a test failed one release below it (see CHANGELOG.md):
``optax.tree.size`` (optax 0.2.6, which needs jax 0.5.3), ``jax.enable_x64``
(jax 0.8.0) and ``jax.lax.pcast`` (jax 0.8.2, used by the ``shard_map`` checks),
and jax >= 0.7 needs numpy >= 2.0 and Python >= 3.11. Raise a floor rather than
add a compatibility shim.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
import pytest

import uv_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Test-extra tools the subset uses (pytest-xdist: the `-n` of pyproject's addopts);
# installed at their declared floors too.
TOOLS = ("pytest", "pytest-xdist", "chex", "flax")
# The subset, run with `-m "not slow"` as the fast loop is: the conformance suite
# on one method per module (methods_registry.FAST; issue 30), every doctest (each
# alias and transformation trains something small, so every alias still runs at
# the floors), the NumPy references that need float64 (jax.enable_x64) and the
# ND-Adam state-size tests (optax.tree.size).
SUBSET = [
    "tests/test_conformance.py",
    "normopt",
    "tests/test_adanorm.py::test_norm_optimizer_matches_numpy_reference",
    "tests/test_spherical.py::test_state_is_smaller_than_adams",
    "tests/test_spherical.py::test_nd_adam_state_is_smaller_than_adams_and_matches_init_types",
]


def _floor(req: Requirement) -> str:
  floors = [s.version for s in req.specifier if s.operator == ">="]
  assert len(floors) == 1, f"{req}: declare exactly one '>=' floor"
  return floors[0]


def _declared() -> dict[str, tuple[Requirement, str]]:
  """Runtime dependencies and TOOLS: canonical name -> (requirement, floor)."""
  reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
  test_extra = {
      canonicalize_name(r.name): r
      for r in map(Requirement, PYPROJECT["project"]["optional-dependencies"]["test"])
  }
  reqs += [test_extra[canonicalize_name(t)] for t in TOOLS]
  return {canonicalize_name(r.name): (r, _floor(r)) for r in reqs}


def test_every_runtime_dependency_declares_a_floor():
  for r in PYPROJECT["project"]["dependencies"]:
    _floor(Requirement(r))


@pytest.mark.slow  # a fresh environment and a subset run: not in the fast loop
def test_subset_passes_at_the_declared_floors(tmp_path):
  declared = _declared()
  python = uv_env.make_venv(tmp_path / "venv")
  uv_env.pip_install(
      python,
      ["--resolution", "lowest-direct", "-e", str(ROOT),
       *(str(declared[canonicalize_name(t)][0]) for t in TOOLS)],
  )

  probe = subprocess.run(
      [python, "-c",
       "import importlib.metadata as m, json, sys;"
       "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))", *declared],
      capture_output=True, text=True, timeout=60, check=False,
  )
  assert probe.returncode == 0, probe.stderr
  installed = json.loads(probe.stdout)
  wrong = {
      name: f"installed {installed[name]}, declared >={floor}"
      for name, (_, floor) in declared.items()
      if Version(installed[name]) != Version(floor)
  }
  assert not wrong, wrong

  env = dict(os.environ)
  env.pop("VIRTUAL_ENV", None)
  env["JAX_PLATFORMS"] = "cpu"
  # XLA_FLAGS: this session's cheap-compile flags (conftest), inherited; the
  # floor's jaxlib takes them too. One process (-n0): the suite's other
  # worker keeps the second core busy, and two more workers importing JAX
  # cost 7 CPU-s more (84 against 77 CPU-s for this test alone).
  proc = subprocess.run(
      [python, "-m", "pytest", "-q", "-x", "-n0", "-p", "no:cacheprovider", "-m", "not slow",
       *SUBSET],
      cwd=ROOT, capture_output=True, text=True, timeout=900, env=env, check=False,
  )
  assert proc.returncode == 0, (
      f"tests failed at the declared floors {installed}:\n{proc.stdout[-6000:]}\n"
      f"{proc.stderr[-3000:]}"
  )
