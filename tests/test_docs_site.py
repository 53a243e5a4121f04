"""The documentation site builds with warnings as errors and covers the public API.

``test_docs_build`` runs ``sphinx-build -W --keep-going`` (a few seconds plus
the import of normopt); the coverage tests only read ``docs/api/*.rst``.
"""

from __future__ import annotations

import importlib
import pathlib
import re
import subprocess
import sys

import pytest

import normopt

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_PAGES = sorted((DOCS / "api").glob("*.rst"))

_DIRECTIVE = re.compile(r"^\.\. (\w+)::\s*(\S*)")
_AUTO_OBJECT = ("autofunction", "autoclass", "autodata")


def _api_entries():
  """Per API page: the qualified names in its autosummary tables, its
  ``auto{function,class,data}`` entries and its ``automodule`` modules."""
  pages = {}
  for page in API_PAGES:
    module = None
    summary, objects, modules = set(), set(), set()
    in_summary = False
    for line in page.read_text(encoding="utf-8").splitlines():
      m = _DIRECTIVE.match(line)
      if m:
        directive, arg = m.groups()
        in_summary = directive == "autosummary"
        if directive == "currentmodule":
          module = arg
        elif directive == "automodule":
          modules.add(arg)
        elif directive in _AUTO_OBJECT:
          objects.add(arg if "." in arg else f"{module}.{arg}")
        continue
      if in_summary:
        stripped = line.strip()
        if line and not line[0].isspace():
          in_summary = False  # the table ended at unindented text
        elif stripped and not stripped.startswith(":"):
          summary.add(stripped if "." in stripped else f"{module}.{stripped}")
    pages[page.name] = (summary, objects, modules)
  return pages


def _resolve(qualified):
  """The object a dotted name documents: a module, or an attribute of one."""
  try:
    return importlib.import_module(qualified)
  except ImportError:
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _public_names(module_name):
  module = importlib.import_module(module_name)
  return {f"{module_name}.{n}" for n in module.__all__}


def test_api_pages_exist():
  names = {p.stem for p in API_PAGES}
  for topic in ("blocks", "normalization", "adanorm", "spherical", "schedules",
                "aliases", "losses"):
    assert topic in names, f"docs/api/{topic}.rst is missing"


def test_every_public_name_is_documented():
  documented, modules = set(), set()
  for summary, objects, mods in _api_entries().values():
    documented |= summary | objects
    modules |= mods
  expected = set()
  for name in normopt.__all__:
    obj = getattr(normopt, name)
    if isinstance(obj, type(normopt)):  # a submodule, e.g. normopt.losses
      assert obj.__name__ in modules, f"no API page has automodule:: {obj.__name__}"
      expected |= _public_names(obj.__name__)
    else:
      expected.add(f"normopt.{name}")
  expected |= _public_names("normopt.flax_losses")
  missing = sorted(expected - documented)
  assert not missing, f"public names missing from docs/api/*.rst: {missing}"


def test_every_documented_name_exists_and_is_public():
  for page, (summary, objects, modules) in _api_entries().items():
    for qualified in sorted(summary | objects):
      module, _, name = qualified.rpartition(".")
      public = getattr(importlib.import_module(module), "__all__", ())
      assert name in public, f"{page}: {qualified} is not in {module}.__all__"
      _resolve(qualified)
    for module in modules:
      importlib.import_module(module)
    # The summary table and the entries list the same names, so every row
    # of the table links to an entry on its page.
    assert summary == objects, (
        f"{page}: only in autosummary {sorted(summary - objects)}, "
        f"only in auto* entries {sorted(objects - summary)}"
    )


def test_names_in_prose_exist():
  """``normopt.X`` (and ``normopt.mod.X``) written in the hand-written pages."""
  pattern = re.compile(r"\bnormopt((?:\.[A-Za-z_]\w*)+)")
  for page in sorted(DOCS.glob("*.md")):
    for match in pattern.finditer(page.read_text(encoding="utf-8")):
      parts = match.group(1).strip(".").split(".")
      obj = normopt
      for i, part in enumerate(parts):
        if not hasattr(obj, part):
          try:
            obj = importlib.import_module("normopt." + ".".join(parts[: i + 1]))
            continue
          except ImportError:
            pytest.fail(f"{page.name}: normopt{match.group(1)} does not exist")
        obj = getattr(obj, part)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
  out = tmp_path_factory.mktemp("docs")
  cmd = [
      sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
      "-d", str(out / "doctrees"), str(DOCS), str(out / "html"),
  ]
  proc = subprocess.run(
      cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
  )
  assert proc.returncode == 0, (
      f"sphinx-build failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
  )
  return out / "html"


@pytest.mark.slow  # the sphinx build
def test_docs_build(built_site):
  for page in ("index", "guide", "papers", "results", "design", "notebooks"):
    assert (built_site / f"{page}.html").is_file(), page
  for nb in ("quickstart", "paper_claims"):
    assert (built_site / "_generated" / "notebooks" / f"{nb}.html").is_file(), nb
  assert "adam_ng" in (built_site / "api" / "aliases.html").read_text(encoding="utf-8")
  assert "stacked_under" in (built_site / "api" / "blocks.html").read_text(encoding="utf-8")


@pytest.mark.slow  # the sphinx build
def test_every_public_name_has_an_entry(built_site):
  """Each documented name got an object entry (an anchor), not just a mention."""
  html = "".join(
      p.read_text(encoding="utf-8") for p in (built_site / "api").glob("*.html")
  )
  for summary, _, _ in _api_entries().values():
    for qualified in sorted(summary):
      assert f'id="{qualified}"' in html, f"no entry for {qualified} in the built API pages"


@pytest.mark.slow  # the sphinx build
def test_results_page_shows_every_plot(built_site):
  html = (built_site / "results.html").read_text(encoding="utf-8")
  for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
    assert png.name in html, f"results page lacks {png.name}"
