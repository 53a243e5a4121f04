"""Every benchmark figure keeps its text inside: titles, suptitles and axis labels.

Each benchmark's plot function draws its committed full result (the largest
figure it makes; the quick runs of the other tests draw tiny ones), and
``_common.save_figure``, the one way the benchmarks save a figure, must leave
every title and label inside the figure's box, measured with the figure's own
renderer (``text.get_window_extent()`` within ``fig.bbox``).
"""

import inspect
import json
import pathlib

import matplotlib.pyplot as plt
import pytest

# Draws every benchmark's full figure: left out of the fast loop
# (`pytest -m "not slow"`), as the quick benchmarks are.
pytestmark = [pytest.mark.slow, pytest.mark.bench]

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
# Every benchmark that draws a figure (a ``plot`` function).
FIGURES = sorted(p.stem for p in BENCHMARKS.glob("*.py") if "\ndef plot(" in p.read_text())


@pytest.fixture(scope="module")
def common(load_bench):
  return load_bench("_common")


def _texts(common, fig):
  return [t.get_text() for t in common.figure_texts(fig)]


def test_the_benchmarks_that_draw_are_found():
  assert {"bng_cnn", "bng_mlp_digits", "step_overhead"} <= set(FIGURES)


@pytest.mark.parametrize("name", FIGURES)
def test_saved_figure_text_fits(name, load_bench, common, tmp_path, monkeypatch):
  if not (RESULTS / f"{name}.json").exists():
    pytest.skip(f"no committed result to draw: benchmarks/results/{name}.json")
  mod = load_bench(name)
  payload = json.loads((RESULTS / f"{name}.json").read_text())
  saved = []
  save = common.save_figure

  def spy(fig, path, **kw):
    out = save(fig, path, **kw)  # plt.close is held off below: measure after saving
    saved.append((fig, common.text_outside(fig), _texts(common, fig)))
    return out

  monkeypatch.setattr(common, "save_figure", spy)
  close = plt.close
  monkeypatch.setattr(plt, "close", lambda fig=None: None)
  if len(inspect.signature(mod.plot).parameters) == 2:  # plot(data, path) saves itself
    mod.plot(payload, tmp_path / "fig.png")
  else:
    spy(mod.plot(payload), tmp_path / "fig.png")
  [(fig, outside, texts)] = saved
  assert (tmp_path / "fig.png").stat().st_size > 0
  assert texts, "the figure has a title or labels"
  assert outside == [], outside
  close(fig)


def test_fit_figure_wraps_a_title_too_wide_for_the_figure(common, tmp_path):
  """The demo's suptitle at the demo's size: clipped by tight_layout alone
  ("... plain (blue) vs bloc"), inside after fit_figure, words kept."""
  title = ("Deep sigmoid MLPs on digits, each optimizer at its tuned step size (mean "
           "of 5 seeds): plain (blue) vs block-normalized (red); dotted = chance")
  axis_title = "12 hidden layers: sgd_momentum vs sgd_ng and some more words"

  def draw():
    fig, axes = plt.subplots(2, 1, figsize=(4.7, 6), squeeze=False)
    for ax in axes.flat:
      ax.plot([0, 1], [0, 1])
      ax.set_title(axis_title)
      ax.set_ylabel("cross-entropy")
    fig.suptitle(title, fontsize=10)
    return fig

  fig = draw()
  fig.tight_layout()
  assert set(common.text_outside(fig)) == {title, axis_title}
  plt.close(fig)

  fig = draw()
  common.fit_figure(fig)
  assert common.text_outside(fig) == []
  texts = _texts(common, fig)
  assert " ".join(texts[0].split()) == title and "\n" in texts[0]
  plt.close(fig)

  path = common.save_figure(draw(), tmp_path / "demo.png")
  assert path.stat().st_size > 0


def test_fit_figure_raises_when_text_cannot_fit(common):
  fig, ax = plt.subplots(figsize=(1.0, 1.0))
  ax.set_ylabel("\n".join(["line"] * 60))  # taller than the figure at any wrap
  with pytest.raises(ValueError, match="does not fit"):
    common.fit_figure(fig, tries=2)
  plt.close(fig)
