"""Sphinx configuration for the normopt documentation.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (the
``docs`` extra installs what it needs). The build needs no network: there is
no intersphinx, and the notebooks are rendered with their stored outputs,
not executed.
"""

import json
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import normopt  # noqa: E402  (after the path is set)

# -- Files that live outside docs/ -------------------------------------------
# The notebooks and the benchmark plots stay where they are in the repository;
# each build copies them into docs/_generated/ (ignored by git), so that
# Sphinx sees them as ordinary sources and images. No symlinks.

GENERATED = DOCS / "_generated"


def _write_if_changed(path: pathlib.Path, data: bytes) -> None:
  """Writes ``data`` unless ``path`` holds it already.

  An unchanged copy keeps its mtime, so an incremental build does not re-read
  it.
  """
  if path.exists() and path.read_bytes() == data:
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def _ipython_lexer(data: bytes) -> bytes:
  """Highlights a notebook's code as IPython (its ``!git`` and ``%pip`` lines).

  The notebooks' metadata names the language ``python`` without a Pygments
  lexer, and a shell-escape line fails plain Python highlighting.
  """
  nb = json.loads(data)
  info = nb.setdefault("metadata", {}).setdefault("language_info", {})
  info["pygments_lexer"] = "ipython3"
  return (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode()


def _sync(src_dir, pattern, dst_dir, transform=lambda data: data):
  """Mirrors ``src_dir/pattern`` into ``dst_dir`` (stale copies removed)."""
  wanted = {p.name: p for p in sorted(src_dir.glob(pattern))}
  if dst_dir.exists():
    for old in dst_dir.glob(pattern):
      if old.name not in wanted:
        old.unlink()
  for name, src in wanted.items():
    _write_if_changed(dst_dir / name, transform(src.read_bytes()))


_sync(ROOT / "notebooks", "*.ipynb", GENERATED / "notebooks", _ipython_lexer)
_sync(ROOT / "benchmarks" / "results", "*.png", GENERATED / "results")

# The papers table and the results live once, in README.md; the pages
# papers.md and results.md include these sections, cut out at build time.


def _escape_code_pipes(line: str) -> str:
  """In a table row, escapes ``|`` inside code spans (GFM splits cells on it)."""
  parts = line.split("`")
  for i in range(1, len(parts), 2):
    parts[i] = parts[i].replace("|", "\\|")
  return "`".join(parts)


def _readme_section(heading: str) -> str:
  """README's ``## heading`` section without its heading, one level up.

  Subsections (``###``) become ``##``, image paths point at the copies in
  ``_generated/results/``. Raises if the heading is missing, so a renamed
  README section fails the build instead of leaving an empty page.
  """
  lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
  try:
    start = lines.index(f"## {heading}") + 1
  except ValueError as e:
    raise RuntimeError(f"README.md has no '## {heading}' section") from e
  end = next(
      (i for i in range(start, len(lines)) if lines[i].startswith("## ")),
      len(lines),
  )
  out = []
  for line in lines[start:end]:
    if line.startswith("### "):
      line = line[1:]
    if line.startswith("|"):
      line = _escape_code_pipes(line)
    out.append(line.replace("](benchmarks/results/", "](results/"))
  return "\n".join(out).strip() + "\n"


_write_if_changed(
    GENERATED / "readme_papers.md",
    _readme_section("The papers and their names in normopt").encode(),
)
_RESULTS = _readme_section("Results")
_UNSHOWN = [
    p.name
    for p in sorted((ROOT / "benchmarks" / "results").glob("*.png"))
    if f"](results/{p.name})" not in _RESULTS
]
if _UNSHOWN:
  _RESULTS += "\n## More plots\n\nPlots that the sections above do not show.\n"
  for name in _UNSHOWN:
    _RESULTS += f"\n![{name}](results/{name})\n"
_write_if_changed(GENERATED / "readme_results.md", _RESULTS.encode())

# -- Project information -----------------------------------------------------

project = "normopt"
author = "normopt contributors"
copyright = "normopt contributors"  # the name Sphinx reads
release = normopt.__version__
version = release

# -- General configuration ---------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",  # Markdown pages and the .ipynb notebooks (includes myst_parser)
]

master_doc = "index"
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "_generated/*.md",  # included by papers.md and results.md, not pages
]

# -- autodoc / autosummary / napoleon ----------------------------------------

autosummary_generate = False  # the API pages list their entries by hand
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# The modules use ``from __future__ import annotations``: annotations are
# strings, and these names are shown as written instead of expanded.
autodoc_type_aliases = {
    "BlockSpec": "normopt.BlockSpec",
    "StackedSpec": "normopt.StackedSpec",
    "VectorAxes": "normopt.VectorAxes",
    "_spherical.VectorAxes": "normopt.VectorAxes",
    "ScalarOrSchedule": "optax.ScalarOrSchedule",
}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- MyST / myst-nb ------------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the stored outputs; never run a kernel

# -- HTML ----------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"normopt {release}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path: list[str] = []
