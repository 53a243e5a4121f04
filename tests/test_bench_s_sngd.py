"""benchmarks/s_sngd.py: quick run, schedules as configured, and its JSON."""

import json
import math
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  mod = load_bench("s_sngd")
  out = tmp_path_factory.mktemp("s_sngd")
  mod.main(["--quick", "--quiet", "--out", str(out)])
  with open(out / "s_sngd.json") as f:
    return mod, out, json.load(f)


def test_quick_writes_json_table_and_plot(quick):
  mod, out, payload = quick
  cfg = payload["config"]
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  assert set(payload["results"]) == set(cfg["models"])
  for per in payload["results"].values():
    assert list(per) == cfg["methods"]
    for res in per.values():
      for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        arr = np.asarray(res[key])
        assert arr.shape == (cfg["seeds"], n_points)
        assert np.all(np.isfinite(arr))
  assert (out / "s_sngd.png").stat().st_size > 10_000
  assert "| S-SNGD stagewise |" in (out / "s_sngd.md").read_text()


def test_quick_runs_train_from_a_shared_start(quick):
  _, _, payload = quick
  for per in payload["results"].values():
    first = [np.asarray(r["train_loss"])[:, 0] for r in per.values()]
    for f in first[1:]:
      np.testing.assert_allclose(f, first[0], rtol=1e-6)
    for name in ("SNGD large", "S-SNGD multistep", "S-SNGD stagewise"):
      loss = np.asarray(per[name]["train_loss"])
      assert np.all(loss[:, -1] < 0.5 * loss[:, 0])


def test_schedules_follow_the_configuration(load_bench):
  mod = load_bench("s_sngd")
  steps = 600
  sched = mod.schedules(steps)
  rates = mod.STAGE_RATES
  # Algorithm 2: stage t lasts ceil(S / alpha_t) steps; the stages fill the run.
  stage_length = steps / sum(1.0 / a for a in rates)
  lengths = [math.ceil(stage_length / a) for a in rates]
  assert abs(sum(lengths) - steps) <= len(rates)
  starts = np.cumsum([0] + lengths[:-1])
  for t0, m, a in zip(starts, lengths, rates):
    assert float(sched["S-SNGD stagewise"](t0)) == pytest.approx(a)
    assert float(sched["S-SNGD stagewise"](t0 + m - 1)) == pytest.approx(a)
  big = mod.ALPHA_LARGE
  assert float(sched["S-SNGD poly"](steps // 2)) == pytest.approx(
      big * 0.5**mod.POLY_POWER, rel=1e-5)
  assert float(sched["S-SNGD poly"](steps)) == pytest.approx(0.0, abs=1e-8)
  for t, factor in ((steps // 2 - 1, 1.0), (steps // 2, 0.1),
                    ((3 * steps) // 4, 0.01)):
    assert float(sched["S-SNGD multistep"](t)) == pytest.approx(big * factor)
  assert float(sched["SNGD small"](123)) == pytest.approx(mod.ALPHA_SMALL)


def test_sngd_methods_take_steps_of_the_scheduled_length(load_bench):
  import jax.numpy as jnp
  import optax

  mod = load_bench("s_sngd")
  g = {"a": {"w": jnp.full((3, 2), 5.0)}, "b": {"w": jnp.full((4,), -2.0)}}
  for name, tx in mod.methods(100).items():
    u, _ = tx.update(g, tx.init(g))
    expected = float(mod.schedules(100)[name](0))
    if name.startswith("SGD"):
      expected *= float(optax.tree.norm(g))
    assert float(optax.tree.norm(u)) == pytest.approx(expected, rel=1e-5)


def test_committed_full_results_are_consistent(load_bench):
  path = ROOT / "benchmarks" / "results" / "s_sngd.json"
  if not path.exists():
    pytest.skip("full results not committed yet")
  mod = load_bench("s_sngd")
  payload = json.loads(path.read_text())
  cfg = payload["config"]
  assert cfg["models"] == ["mlp", "cnn"]
  # Produced on the benchmarks' one digits split.
  assert cfg["data"] == load_bench("_common").DIGITS_CONVENTION
  assert (cfg["n_train"], cfg["n_test"]) == (1437, 360)
  assert cfg["stage_rates"] == pytest.approx(list(mod.STAGE_RATES))
  # Stage t starts where Algorithm 2 says: cumulative ceil(S / alpha_t).
  bounds = np.cumsum([math.ceil(cfg["stage_length"] / a)
                      for a in cfg["stage_rates"][:-1]]).tolist()
  assert cfg["stage_boundaries"] == bounds
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  for per in payload["results"].values():
    assert list(per) == cfg["methods"]
    for res in per.values():
      arr = np.asarray(res["train_loss"])
      assert arr.shape == (cfg["seeds"], n_points)
      assert np.all(np.isfinite(arr))
