"""benchmarks/s_sngd.py: quick run, tuning records, schedules, claims, JSON."""

import json
import math
import pathlib

import numpy as np
import pytest

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  mod = load_bench("s_sngd")
  out = tmp_path_factory.mktemp("s_sngd")
  mod.main(["--quick", "--quiet", "--out", str(out)])
  with open(out / "s_sngd.json") as f:
    return mod, out, json.load(f)


def _check_tuning(payload, common, committed):
  cfg = payload["config"]
  assert cfg["tuning_rule"] == common.TUNING_RULE
  assert cfg["verdict_rule"] == common.VERDICT_RULE
  assert set(payload["tuning"]) == {
      f"{m}/{name}" for m in cfg["models"] for name in cfg["methods"]}
  for key, rec in payload["tuning"].items():
    grid = rec["grid"]
    assert len(grid) >= 5 and grid == sorted(grid)
    assert rec["chosen"] in grid
    assert rec["seeds"] == list(common.SELECT_SEEDS)
    assert rec["final_seeds"] == list(common.FINAL_SEEDS)
    assert np.asarray(rec["val_loss"], float).shape == (len(grid), 2)
    means = [np.inf if v is None else v for v in rec["mean_val_loss"]]
    assert grid[int(np.argmin(means))] == rec["chosen"]
    # The neighbours of the grid are sqrt(10) apart (4 significant digits).
    np.testing.assert_allclose(np.diff(np.log10(grid)), 0.5, atol=2e-3)
    assert set(payload["selection_curves"][key]) == {f"{lr:g}" for lr in grid}
    if committed:
      assert rec["interior"] or rec["widened"] == 3, key


def _check_claims(payload, common):
  cfg = payload["config"]
  claims = payload["claims"]
  assert len(claims) == len(cfg["models"]) * 3 * 4
  for c in claims:
    fin = payload["final"][c["group"]]
    key = "test_acc" if c["metric"].endswith("accuracy") else "train_loss"
    a = fin[f"S-SNGD {c['schedule']}"][key]
    b = fin[c["baseline"]][key]
    assert len(a) == len(b) == c["n"] == len(common.FINAL_SEEDS)
    assert c["lower_is_better"] == (key == "train_loss")
    mean, lo, hi = common.paired_ci(a, b)
    assert c["diff"] == pytest.approx(mean)
    assert c["ci"] == pytest.approx([lo, hi])
    good, bad = (hi < 0, lo > 0) if c["lower_is_better"] else (lo > 0, hi < 0)
    assert c["verdict"] == ("holds" if good else "reversed" if bad
                            else "within noise")
    assert c["paper"]


def test_quick_writes_json_table_and_plot(quick, load_bench):
  mod, out, payload = quick
  cfg = payload["config"]
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  assert set(payload["results"]) == set(cfg["models"])
  for per in payload["results"].values():
    assert list(per) == cfg["methods"] == list(mod.METHODS)
    for res in per.values():
      for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        arr = np.asarray(res[key])
        assert arr.shape == (len(cfg["final_seeds"]), n_points)
        assert np.all(np.isfinite(arr))
  assert (out / "s_sngd.png").stat().st_size > 10_000
  md = (out / "s_sngd.md").read_text()
  assert "| S-SNGD stagewise |" in md and "| verdict |" in md
  _check_tuning(payload, load_bench("_common"), committed=False)


def test_quick_claims_follow_the_verdict_rule(quick, load_bench):
  _check_claims(quick[2], load_bench("_common"))


def test_quick_runs_are_paired(quick):
  """Same seed, same start: every method and every step size of a grid."""
  _, _, payload = quick
  for per in payload["results"].values():
    first = [np.asarray(r["train_loss"])[:, 0] for r in per.values()]
    for f in first[1:]:
      np.testing.assert_allclose(f, first[0], rtol=1e-6)
  for kind in payload["config"]["models"]:
    starts = [np.asarray(c["test_loss"])[:, 0]
              for key, sel in payload["selection_curves"].items()
              if key.startswith(f"{kind}/") for c in sel.values()]
    for s in starts[1:]:
      np.testing.assert_allclose(s, starts[0], rtol=1e-6)


def test_schedules_follow_the_configuration(load_bench):
  import jax

  import normopt

  mod = load_bench("s_sngd")
  steps, a0 = 600, 2.5
  sched = mod.schedules(steps)
  # Algorithm 2: alpha_t = a0 / 3^t, stage t lasts M_t = ceil(S / alpha_t)
  # steps with S = a0 * steps / 40, so the stages fill the run whatever a0:
  # the boundaries are those of the unit shape (a0 = 1), exact integers here.
  rates = [a0 * r for r in mod.STAGE_SHAPE]
  s_len = mod.stage_length(steps, a0)
  assert s_len == pytest.approx(a0 * steps / 40)
  lengths = [steps * 3**t // 40 for t in range(4)]
  assert sum(lengths) == steps
  starts = np.cumsum([0] + lengths[:-1])
  assert starts[1:].tolist() == normopt.schedules.stage_boundaries(
      mod.STAGE_SHAPE, mod.stage_length(steps))
  stagewise = jax.jit(lambda lr, t: sched["S-SNGD stagewise"](lr)(t))
  for t0, m, a in zip(starts, lengths, rates, strict=True):
    assert float(stagewise(a0, t0)) == pytest.approx(a)
    assert float(stagewise(a0, t0 + m - 1)) == pytest.approx(a)
  # normopt.s_sngd's schedule with the scaled rates and S agrees, up to float
  # rounding in ceil(S / alpha_t) (a boundary may move by one step).
  ref = normopt.stagewise_schedule(rates, s_len)
  same = [float(stagewise(a0, t)) == pytest.approx(float(ref(t)), rel=1e-6)
          for t in range(steps + 5)]
  assert sum(same) >= len(same) - 3
  poly = jax.jit(lambda lr, t: sched["S-SNGD poly"](lr)(t))
  assert float(poly(a0, steps // 2)) == pytest.approx(
      a0 * 0.5**mod.POLY_POWER, rel=1e-5)
  # Training evaluates the schedule at counts 0 .. steps - 1 only (under jit
  # on XLA:CPU, 0 ** 1.1 at count = steps comes out NaN).
  assert float(poly(a0, steps - 1)) == pytest.approx(
      a0 * (1 / steps)**mod.POLY_POWER, rel=1e-4)
  assert float(sched["S-SNGD poly"](a0)(steps)) == pytest.approx(0.0, abs=1e-8)
  for name in ("S-SNGD multistep", "SGD stagewise"):
    multi = jax.jit(lambda lr, t, name=name: sched[name](lr)(t))
    for t, factor in ((steps // 2 - 1, 1.0), (steps // 2, 0.1),
                      ((3 * steps) // 4, 0.01)):
      assert float(multi(a0, t)) == pytest.approx(a0 * factor)
  assert float(sched["SNGD"](0.02)(123)) == pytest.approx(0.02)


def test_sngd_methods_take_steps_of_the_scheduled_length(load_bench):
  import jax.numpy as jnp
  import optax

  mod = load_bench("s_sngd")
  g = {"a": {"w": jnp.full((3, 2), 5.0)}, "b": {"w": jnp.full((4,), -2.0)}}
  lr = 0.7
  for name, make in mod.methods(100).items():
    tx = make(lr)
    u, _ = tx.update(g, tx.init(g))
    expected = float(mod.schedules(100)[name](lr)(0))
    assert expected == pytest.approx(lr)
    if name.startswith("SGD"):
      expected *= float(optax.tree.norm(g))
    assert float(optax.tree.norm(u)) == pytest.approx(expected, rel=1e-5)


def test_im2col_conv_is_the_same_conv(load_bench):
  import jax
  import jax.numpy as jnp

  mod = load_bench("s_sngd")
  rng = np.random.default_rng(0)
  p = mod.init_model("cnn", rng)
  x = jnp.asarray(rng.standard_normal((5, 8, 8, 1)), jnp.float32)
  for key, stride in (("conv_0", 1), ("conv_1", 2)):
    ref = jax.nn.relu(jax.lax.conv_general_dilated(
        x, p[key]["kernel"], (stride, stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p[key]["bias"])
    np.testing.assert_allclose(mod._conv_apply(p[key], x, stride), ref,
                               atol=1e-5)
    x = ref


def test_committed_full_results_are_consistent(load_bench):
  path = ROOT / "benchmarks" / "results" / "s_sngd.json"
  if not path.exists():
    pytest.skip("full results not committed yet")
  mod, common = load_bench("s_sngd"), load_bench("_common")
  payload = json.loads(path.read_text())
  if "tuning" not in payload:
    pytest.skip("committed results predate the tuning protocol")
  cfg = payload["config"]
  assert cfg["models"] == ["mlp", "cnn"]
  assert cfg["steps"] == mod.FULL["steps"] and cfg["batch"] == mod.FULL["batch"]
  # Produced on the benchmarks' one digits split.
  assert cfg["data"] == common.DIGITS_CONVENTION
  assert (cfg["n_train"], cfg["n_test"]) == (1437, 360)
  assert cfg["stage_shape"] == pytest.approx(list(mod.STAGE_SHAPE))
  # Stage t starts where Algorithm 2 says: cumulative ceil(S / alpha_t).
  bounds = np.cumsum([math.ceil(cfg["stage_length_per_alpha0"] / a)
                      for a in cfg["stage_shape"][:-1]]).tolist()
  assert cfg["stage_boundaries"] == bounds
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  for per in payload["results"].values():
    assert list(per) == cfg["methods"]
    for res in per.values():
      arr = np.asarray(res["train_loss"])
      assert arr.shape == (5, n_points)
      assert np.all(np.isfinite(arr))
  _check_tuning(payload, common, committed=True)
  _check_claims(payload, common)
