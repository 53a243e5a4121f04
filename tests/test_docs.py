"""Every public function is documented: math, Args, Returns, an example, a reference."""

import inspect

import pytest

import normopt

FUNCTIONS = [n for n in normopt.__all__ if inspect.isfunction(getattr(normopt, n))]


def test_all_names_resolve():
  for name in normopt.__all__:
    assert hasattr(normopt, name), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_public_function_docstring_is_complete(name):
  doc = inspect.getdoc(getattr(normopt, name)) or ""
  for part in ("Args:", "Returns:", ">>> ", "Reference"):
    assert part in doc, f"{name}: docstring lacks {part!r}"
