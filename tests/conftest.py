"""Shared fixtures: ``load_bench`` imports a script of ``benchmarks/`` as a module."""

import importlib.util
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load_bench(name):
  """``benchmarks/<name>.py`` as the module ``name`` (loaded once per session).

  ``benchmarks/`` goes on ``sys.path`` so that the script's ``import _common``
  works, and the module is registered in ``sys.modules`` because Flax Linen
  modules are dataclasses that look their module up there.
  """
  if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
  path = BENCHMARKS / f"{name}.py"
  module = sys.modules.get(name)
  if module is not None and pathlib.Path(getattr(module, "__file__", "")) == path:
    return module
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def load_bench():
  """``load_bench(name)`` -> the module of ``benchmarks/<name>.py``."""
  return _load_bench
