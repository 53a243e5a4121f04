"""benchmarks/_common.py: the one digits split, the statistics and the --quick policy."""

import pathlib

import numpy as np
import pytest


@pytest.fixture(scope="module")
def common(load_bench):
  return load_bench("_common")


def test_digits_split_is_stratified_80_20_and_standardized(common):
  d = common.load_digits()
  assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
  assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
  assert d.x_val is None and d.y_val is None
  # Stratified: every class holds the same share of train and test (±1 image).
  for c in range(10):
    assert abs(np.sum(d.y_test == c) - 0.2 * np.sum(np.r_[d.y_train, d.y_test] == c)) <= 1
  # One scalar mean and std of the training pixels.
  assert abs(float(d.x_train.mean())) < 1e-5
  assert abs(float(d.x_train.std()) - 1.0) < 1e-5
  # Images hold the same numbers; the split is the same on every call.
  im = common.load_digits(images=True)
  assert im.x_train.shape == (1437, 8, 8, 1)
  np.testing.assert_array_equal(im.x_train.reshape(-1, 64), d.x_train)
  np.testing.assert_array_equal(im.y_test, d.y_test)


def test_digits_validation_split_is_carved_from_train(common):
  d = common.load_digits()
  v = common.load_digits(val_fraction=0.25)
  np.testing.assert_array_equal(v.y_test, d.y_test)  # the test set never changes
  assert len(v.y_train) + len(v.y_val) == len(d.y_train)
  assert v.x_val.shape == (len(v.y_val), 64) and abs(len(v.y_val) - 0.25 * 1437) <= 1
  assert abs(float(v.x_train.mean())) < 1e-5  # statistics of the remaining train part
  q = common.load_digits(images=True, n_train=100, n_test=50)
  assert q.x_train.shape == (100, 8, 8, 1) and q.y_test.shape == (50,)


def test_mean_std_is_the_sample_std(common):
  assert common.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
  assert common.mean_std([5.0]) == (5.0, 0.0)
  m, s = common.mean_std([[1.0, 2.0], [3.0, 6.0]], axis=0)
  np.testing.assert_allclose(m, [2.0, 4.0])
  np.testing.assert_allclose(s, [np.sqrt(2.0), np.sqrt(8.0)])
  diff, se = common.diff_se([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
  assert diff == pytest.approx(1.0)
  assert se == pytest.approx(np.sqrt(1.0 / 3 + 3.0 / 3))
  assert common.verdict(-0.5, 0.1) == "holds"
  assert common.verdict(0.5, 0.1) == "does not hold"
  assert common.verdict(0.05, 0.1) == "within noise"
  assert common.verdict(0.5, 0.1, lower_is_better=False) == "holds"


def _args(common, argv):
  parser = common.make_parser("A test benchmark.\n\nMore.")
  return parser, parser.parse_args(argv)


def test_quick_and_partial_runs_never_write_into_results(common, tmp_path):
  results = common.RESULTS_DIR
  assert results == pathlib.Path(common.__file__).resolve().parent / "results"
  # A full run writes into benchmarks/results by default, or to --out.
  assert common.output_dir(*_args(common, []), "x") == results
  assert common.output_dir(*_args(common, ["--out", str(tmp_path)]), "x") == tmp_path
  # A quick or partial run: --out, else a fresh temporary folder...
  for argv, partial in ((["--quick"], False), ([], True)):
    out = common.output_dir(*_args(common, argv), "x", partial=partial)
    assert out.is_dir() and results not in out.parents and out != results
    out.rmdir()
    out = common.output_dir(*_args(common, argv + ["--out", str(tmp_path)]), "x",
                            partial=partial)
    assert out == tmp_path.resolve()
    # ... and never benchmarks/results or a folder inside it.
    for bad in (results, results / "sub", results / ".." / "results"):
      with pytest.raises(SystemExit):
        common.output_dir(*_args(common, argv + ["--out", str(bad)]), "x",
                          partial=partial)


def test_write_results_writes_json_markdown_and_figures(common, tmp_path):
  import matplotlib.pyplot as plt

  drawn = []

  def draw(payload):
    drawn.append(payload)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    return fig

  payload = {"config": {"data": "some digits", "machine": "a CPU"}, "a": [1, 2.5]}
  paths = common.write_results(tmp_path, "b", payload, "| x |", {"b.png": draw})
  assert [p.name for p in paths] == ["b.json", "b.md", "b.png"]
  assert (tmp_path / "b.md").read_text() == "| x |\n\nData: some digits.\n\nRan on: a CPU.\n"
  assert drawn == [payload] and (tmp_path / "b.png").stat().st_size > 0
  assert not plt.get_fignums()  # closed after saving
  common.write_results(tmp_path, "c", {"machine": "m"}, "t\n")  # top-level keys
  assert (tmp_path / "c.md").read_text() == "t\n\nRan on: m.\n"
  assert "CPU x" in common.machine_info()
  from importlib import metadata
  for pkg in ("jax", "optax", "flax", "numpy"):  # the versions behind the numbers
    assert f"{pkg} {metadata.version(pkg)}" in common.machine_info()
  assert common.machine_info(", 8 devices").endswith("8 devices")
