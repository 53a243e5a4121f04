"""benchmarks/_common.py: the one digits split, the statistics and the --quick policy."""

import pathlib

import numpy as np
import pytest

# The benchmarks' shared module (digits, statistics, vmapped runs): left out
# of the fast loop (`pytest -m "not slow"`), as the quick benchmarks are.
pytestmark = [pytest.mark.slow, pytest.mark.bench]


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


# --- The tuning protocol and the verdict rule ---------------------------------

def test_log_grid_is_centred_and_sqrt10_apart(common):
  grid = common.log_grid(1e-3)
  assert len(grid) == 5 and grid[2] == pytest.approx(1e-3)
  np.testing.assert_allclose(np.diff(np.log10(grid)), 0.5, atol=1e-3)
  assert len(common.log_grid(0.1, n=7)) == 7


def _bowl(best, calls=None):
  """Validation loss (lrs, seeds): a bowl in log10(lr), minimum at ``best``;
  a step size above 100 * best diverges (nan)."""
  def evaluate(lrs, seeds):
    if calls is not None:
      calls.append(list(lrs))
    lrs = np.asarray(lrs)[:, None]
    loss = (np.log10(lrs) - np.log10(best)) ** 2 + 0.01 * np.asarray(seeds)[None]
    return np.where(lrs > 100 * best, np.nan, loss)
  return evaluate


def test_tune_lr_chooses_the_lowest_mean_and_widens_at_an_edge(common):
  calls = []
  rec = common.tune_lr(_bowl(0.03, calls), common.log_grid(1e-3), seeds=[0, 1])
  # 0.03 lies beyond the grid's top (0.01): one widening step reaches 0.0316.
  assert calls[0] == sorted(common.log_grid(1e-3)) and len(calls) == 3
  assert all(len(c) == 1 for c in calls[1:])
  assert rec["chosen"] == pytest.approx(0.03162, rel=1e-3)
  assert rec["interior"] and rec["widened"] == 2
  assert rec["grid"] == sorted(rec["grid"]) and len(rec["grid"]) == 7
  assert rec["chosen"] == rec["grid"][int(np.argmin(rec["mean_val_loss"]))]
  assert rec["seeds"] == [0, 1]
  # An interior choice needs no widening; a diverged run counts as infinite.
  rec = common.tune_lr(_bowl(1e-3), common.log_grid(1e-3))
  assert rec["widened"] == 0 and rec["chosen"] == pytest.approx(1e-3)
  rec = common.tune_lr(_bowl(1e-5), common.log_grid(1e-3, n=5), max_widen=1)
  assert rec["widened"] == 1 and not rec["interior"]
  assert rec["chosen"] == min(rec["grid"])
  nan_rec = common.tune_lr(_bowl(1e-6), [1.0, 1e-4, 1e-2])
  assert nan_rec["val_loss"][-1] == [None, None]  # 1.0 diverged: recorded as null
  with pytest.raises(ValueError, match="shape"):
    common.tune_lr(lambda lrs, seeds: np.zeros(len(lrs)), [1e-3, 1e-2, 1e-1])


def test_paired_ci_excludes_zero_exactly_when_the_paired_t_test_rejects(common):
  from scipy import stats

  rng = np.random.default_rng(0)
  for shift in (0.0, 0.3, 1.0, -2.0):
    a = rng.normal(size=5) + shift
    b = a - shift + 0.5 * rng.normal(size=5)
    mean, lo, hi = common.paired_ci(a, b)
    assert mean == pytest.approx(np.mean(a - b)) and lo < mean < hi
    assert mean - lo == pytest.approx(hi - mean)
    p = stats.ttest_rel(a, b).pvalue
    assert (lo > 0 or hi < 0) == (p < 0.05)
  with pytest.raises(ValueError, match="2 seeds"):
    common.paired_ci([1.0], [2.0])


def test_claim_verdicts_follow_the_papers_direction(common):
  better = [1.0, 1.1, 0.9, 1.05, 0.95]
  worse = [2.0, 2.2, 1.9, 2.1, 2.0]
  assert common.claim("a<b", better, worse)["verdict"] == "holds"
  assert common.claim("a<b", worse, better)["verdict"] == "reversed"
  assert common.claim("a>b", worse, better, lower_is_better=False)["verdict"] == "holds"
  noisy = common.claim("x", [1.0, 2.0, 1.0, 2.0, 1.5], [2.0, 1.0, 2.0, 1.0, 1.5])
  assert noisy["verdict"] == "within noise" and noisy["ci"][0] < 0 < noisy["ci"][1]
  c = common.claim("t", better, worse, metric="loss", paper="p", group="g")
  assert (c["metric"], c["paper"], c["group"], c["n"]) == ("loss", "p", "g", 5)
  assert common.format_ci(c, scale=100, digits=1).startswith("-")


def test_selection_split_validates_on_the_validation_split(common):
  v = common.load_digits(val_fraction=common.VAL_FRACTION)
  s = common.selection_split(v)
  np.testing.assert_array_equal(s.x_test, v.x_val)
  np.testing.assert_array_equal(s.x_train, v.x_train)
  assert s.x_val is None
  with pytest.raises(ValueError, match="val_fraction"):
    common.selection_split(common.load_digits())


def _tiny_mlp():
  def init(rng):
    return {"w": (0.1 * rng.standard_normal((64, 10))).astype(np.float32),
            "b": np.zeros(10, np.float32)}

  def loss(p, x, y):
    import optax
    return optax.softmax_cross_entropy_with_integer_labels(x @ p["w"] + p["b"], y).mean()

  def metrics(p, x, y):
    logits = x @ p["w"] + p["b"]
    return loss(p, x, y), (logits.argmax(-1) == y).mean()
  return init, loss, metrics


def test_vmapped_lr_grid_equals_one_run_per_step_size(common):
  import optax

  init, loss, metrics = _tiny_mlp()
  data = common.load_digits(n_train=300, n_test=100)
  args = (init, loss, metrics, data, 20, 10, 50)
  grid = common.make_vmapped_run(lambda lr: optax.sgd(lr, momentum=0.9), *args)
  lrs, seeds = [0.01, 0.1], [3, 4]
  curves = grid(seeds, lrs=lrs)
  assert curves.shape == (2, 2, 3, 4)
  for i, lr in enumerate(lrs):
    one = common.make_vmapped_run(optax.sgd(lr, momentum=0.9), *args)(seeds)
    np.testing.assert_allclose(curves[i], one, rtol=2e-5, atol=2e-6)
  # Paired: a seed starts every step size from the same point.
  np.testing.assert_array_equal(curves[0, :, 0], curves[1, :, 0])
  assert np.all(curves[1, :, -1, 0] < curves[1, :, 0, 0])  # it trains


def test_vmapped_run_in_fixed_calls_and_on_other_data(common):
  """``pairs_per_call`` (quick runs) pads and splits the pairs without
  changing their results; ``data=`` runs other data of the same shapes in
  the same program, as a run made for those data would."""
  import optax

  init, loss, metrics = _tiny_mlp()
  data, sel = common.tuning_data(n_train=300, n_eval=100)  # equal shapes
  make_tx = lambda lr: optax.sgd(lr, momentum=0.9)
  args = (init, loss, metrics, sel, 20, 10, 50)
  lrs, seeds = [0.01, 0.1, 0.3], [3, 4]
  whole = common.make_vmapped_run(make_tx, *args)(seeds, lrs=lrs)
  run = common.make_vmapped_run(make_tx, *args, pairs_per_call=4)
  np.testing.assert_allclose(run(seeds, lrs=lrs), whole, rtol=2e-5, atol=2e-6)
  other = common.make_vmapped_run(make_tx, *args[:3], data, *args[4:])(seeds, [0.1])
  np.testing.assert_allclose(run(seeds, [0.1], data=data), other, rtol=2e-5,
                             atol=2e-6)
  with pytest.raises(ValueError, match="shapes"):
    run(seeds, [0.1], data=common.load_digits(n_train=200, n_test=100))


def test_flax_vmapped_run_equals_one_run_per_step_size(common):
  import flax.linen as nn
  import jax.numpy as jnp
  import optax

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.Dense(16)(x.reshape(x.shape[0], -1))
      x = nn.BatchNorm(use_running_average=not train)(x)
      return nn.Dense(10)(nn.relu(x))

  data = common.load_digits(images=True, n_train=256, n_test=64)
  metrics = lambda loss, grads, state: jnp.stack([loss, optax.tree.norm(grads)])
  # SGD, not Adam: Adam's early sign-like steps amplify the rounding
  # differences between a vmapped and a single run far above float32 noise.
  lrs, seeds = [0.01, 0.1], [0, 1, 2]
  cheap = common.QUICK_CHEAP_COMPILE_OPTIONS  # compiling dominates this test
  grid = common.make_flax_vmapped_run(Net(), lambda lr: optax.sgd(lr, 0.9), data, 64, 3,
                                      step_metrics=metrics, compiler_options=cheap)
  run = grid(seeds, lrs=lrs)
  assert run.per_step.shape == (2, 3, 12, 2) and run.per_epoch.shape == (2, 3, 3, 2)
  assert run.evaluation.shape == (2, 3, 3)
  np.testing.assert_allclose(run.per_epoch[..., 0, :], run.per_step[..., :4, :].mean(-2),
                             rtol=1e-6)
  for i, lr in enumerate(lrs):
    one = common.make_flax_vmapped_run(Net(), optax.sgd(lr, 0.9), data, 64, 3,
                                       step_metrics=metrics, compiler_options=cheap)(seeds)
    np.testing.assert_allclose(run.per_step[i], one.per_step, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(run.evaluation[i], one.evaluation, atol=1 / 64 + 1e-6)
  # Paired: the first step's loss is the same for every step size.
  np.testing.assert_allclose(run.per_step[0, :, 0, 0], run.per_step[1, :, 0, 0], rtol=1e-6)
  assert np.all(run.per_epoch[1, :, -1, 0] < run.per_epoch[1, :, 0, 0])
