"""The test session's own machinery (``tests/conftest.py``): the kept JAX
compilation cache and the ``fast_cases`` mark."""

import os

import pytest

import conftest


def _cache(tmp_path, monkeypatch):
  monkeypatch.setattr(conftest, "ROOT", tmp_path)
  monkeypatch.setenv(conftest._SESSION, "")
  return tmp_path / ".jax_test_cache"


def test_kept_cache_survives_a_finished_session(tmp_path, monkeypatch):
  path = _cache(tmp_path, monkeypatch)
  assert conftest._kept_cache_dir() == str(path)
  (path / "entry-cache").write_bytes(b"x" * 10)
  assert (path / f".session-{os.getpid()}").exists()
  (path / f".session-{os.getpid()}").unlink()  # what pytest_sessionfinish does
  conftest._kept_cache_dir()
  assert (path / "entry-cache").exists()


def test_kept_cache_is_emptied_after_an_interrupted_session_or_past_its_limit(
    tmp_path, monkeypatch):
  path = _cache(tmp_path, monkeypatch)
  conftest._kept_cache_dir()
  (path / "entry-cache").write_bytes(b"x" * 10)
  # A live session's mark (this process) keeps the entries...
  conftest._kept_cache_dir()
  assert (path / "entry-cache").exists()
  # ...a mark whose process is gone (an interrupted session) empties it.
  dead = 2**22 + 12345  # above Linux's default pid_max
  (path / f".session-{dead}").touch()
  conftest._kept_cache_dir()
  assert not (path / "entry-cache").exists()
  assert not (path / f".session-{dead}").exists()
  # Past the size limit: emptied too.
  (path / f".session-{os.getpid()}").unlink()
  (path / "entry-cache").write_bytes(b"x" * 10)
  monkeypatch.setattr(conftest, "CACHE_LIMIT_BYTES", 5)
  conftest._kept_cache_dir()
  assert not (path / "entry-cache").exists()


@pytest.mark.fast_cases("kept")
@pytest.mark.parametrize("case", ["kept", "other"])
def test_fast_cases_marks_the_cases_it_does_not_name_slow(case, request):
  slow = request.node.get_closest_marker("slow") is not None
  assert slow == (case == "other")
