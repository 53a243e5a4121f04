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


def test_sources_have_no_control_characters():
  # A lost backslash (e.g. "\b" written into a non-raw docstring) shows up
  # as a control character and garbles the rendered math.
  import pathlib
  import re
  root = pathlib.Path(normopt.__file__).parent
  for path in root.glob("*.py"):
    bad = re.findall(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", path.read_text())
    assert not bad, f"{path.name} has control characters {bad!r}"
