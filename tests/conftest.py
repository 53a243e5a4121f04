"""Shared fixtures: ``load_bench`` imports a script of ``benchmarks/`` as a module.

The suite runs on ``pytest-xdist`` workers (``-n``/``--dist loadfile`` in
pyproject.toml): every test file runs whole on one worker, so its
module-scoped fixtures (a quick benchmark run, a check subprocess) run once.
The slowest files are scheduled first (:data:`SLOW_FIRST`) so that no long
file starts last and runs alone.

XLA:CPU compiles cheaply here (``subproc.fast_xla_flags``): the test
programs are small and their compile time dominates. XLA reads ``XLA_FLAGS``
when its backend starts, after this module is loaded; subprocesses
(notebooks, the floors run) inherit the flags, and the check scripts swap
them for ``subproc.CHECK_XLA``, cheaper for their few large programs.

One JAX persistent compilation cache serves the session and is kept for the
next one, in ``.jax_test_cache/`` at the repository root (git ignores it),
unless ``JAX_COMPILATION_CACHE_DIR`` is set. Within a session, many tests
compile the same program from a fresh transformation object (the same method
in the conformance, conventions and weight-decay suites, the same model in
several benchmark tests), which ``jax.jit``'s in-memory cache cannot see but
the persistent cache, keyed by the program itself, can. Across sessions, the
fast loop re-runs mostly unchanged programs: a second run compiles only what
changed (on the 2-core machine of issue 30 the fast loop took 110-116 s cold
and 45-59 s warm). The key holds the program (without source locations), the
compile options, ``XLA_FLAGS`` and the jax/jaxlib versions, so a stale entry
is not expected to be used. The directory is emptied when it passes
:data:`CACHE_LIMIT_BYTES`; ``NORMOPT_TEST_CACHE=fresh`` uses a temporary one,
removed at the end (a cold run, as CI's fresh clone has). The workers and
every subprocess inherit it through the environment. Benchmarks that time
compiles switch its writes off (``_common.timed_compiles``).
"""

import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

from subproc import with_fast_xla

os.environ["XLA_FLAGS"] = with_fast_xla(os.environ.get("XLA_FLAGS", ""))

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The kept cache (``.jax_test_cache/``) is emptied at a session's start when
#: it is larger than this (a full cold run of the suite writes about 60 MB).
CACHE_LIMIT_BYTES = 2 << 30
_CACHE_OWNER = "NORMOPT_TEST_CACHE_OWNER"  # a fresh cache: this pid removes it
_SESSION = "NORMOPT_TEST_CACHE_SESSION"  # the kept cache: this pid's session mark


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    pass
  return True


def _kept_cache_dir():
  """``.jax_test_cache/`` at the repository root, marked as in use by this
  session. JAX writes an entry in place (not atomically), so a session that
  was interrupted may have left a truncated one: the directory is emptied
  when a session's mark outlived its process, and when it passed
  :data:`CACHE_LIMIT_BYTES`. (JAX would only warn and recompile on a bad
  entry, but a warning can break a test that counts warnings.)"""
  path = ROOT / ".jax_test_cache"
  if path.is_dir():
    stale = any(not _alive(int(m.name.removeprefix(".session-")))
                for m in path.glob(".session-*"))
    if stale or sum(f.stat().st_size for f in path.iterdir()) > CACHE_LIMIT_BYTES:
      shutil.rmtree(path, ignore_errors=True)
  path.mkdir(exist_ok=True)
  (path / f".session-{os.getpid()}").touch()
  os.environ[_SESSION] = str(os.getpid())
  return str(path)


if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process: the controller
  if os.environ.get("NORMOPT_TEST_CACHE") == "fresh":
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="normopt-jax-cache-")
    os.environ[_CACHE_OWNER] = str(os.getpid())
  else:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _kept_cache_dir()
  # Every program, however small or quick to compile.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  if "jax" in sys.modules:  # imported before this file (a plugin): tell it too
    _jax = sys.modules["jax"]
    _jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    _jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    _jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  """The controller of a session that ran to its end (tests passed or
  failed, not interrupted) removes its mark from the kept cache."""
  del session
  done = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED,
                        pytest.ExitCode.NO_TESTS_COLLECTED)
  if done and os.environ.get(_SESSION) == str(os.getpid()):
    mark = pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"]) / f".session-{os.getpid()}"
    mark.unlink(missing_ok=True)


def pytest_unconfigure(config):
  """The process that made a ``fresh`` session's cache directory removes it."""
  del config
  if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


BENCHMARKS = ROOT / "benchmarks"

#: Test files, slowest first (``--durations`` on the 2-core machine): run
#: before the rest so that the other worker fills in around them. Most of
#: them are marked ``slow`` (``pyproject.toml``), and the fast loop,
#: ``pytest -m "not slow"``, leaves those out.
SLOW_FIRST = (
    "test_stacked.py",
    "test_floors.py",
    "test_bench_bng.py",
    "test_distributed.py",
    "test_optax_suites.py",
    "test_conventions.py",
    "test_bench_step_overhead.py",
    "test_bench_demo.py",
    "test_bench_norms_lm.py",
    "test_bench_scanned_lm.py",
    "test_bench_spectral_scale.py",
    "test_checkpoint.py",
)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items):
  """Items of the :data:`SLOW_FIRST` files first (stable otherwise); the
  cases of a ``fast_cases``-marked test that it does not name marked ``slow``."""
  for item in items:
    keep = item.get_closest_marker("fast_cases")
    callspec = getattr(item, "callspec", None)
    if keep is not None and callspec is not None and callspec.id not in keep.args:
      item.add_marker(pytest.mark.slow)
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
