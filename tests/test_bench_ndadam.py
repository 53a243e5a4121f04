"""benchmarks/ndadam.py: quick run (tuning records, paired seeds, claims),
the committed full results, and the model's conv."""

import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  mod = load_bench("ndadam")
  out = tmp_path_factory.mktemp("ndadam")
  mod.main(["--quick", "--out", str(out), "--quiet"])
  with open(out / "ndadam.json") as f:
    return mod, out, json.load(f)


def _check_tuning(mod, payload, max_widen):
  common = mod._common
  assert set(payload["tuning"]) == set(payload["results"])
  for key, t in payload["tuning"].items():
    opt = payload["results"][key]["optimizer"]
    grid = t["grid"]
    assert len(grid) >= 5 and grid == sorted(grid)
    # The initial grid is the 5-value log grid about the official step size,
    # and neighbours stay about sqrt(10) apart after widening.
    assert set(common.log_grid(mod.GRID_CENTERS[opt])) <= set(grid)
    ratios = np.asarray(grid[1:]) / np.asarray(grid[:-1])
    np.testing.assert_allclose(ratios, math.sqrt(10), rtol=2e-3)
    assert t["seeds"] == list(common.SELECT_SEEDS)
    assert t["final_seeds"] == list(common.FINAL_SEEDS)
    assert np.asarray(t["val_loss"], float).shape == (len(grid), len(t["seeds"]))
    means = [np.inf if m is None else m for m in t["mean_val_loss"]]
    assert t["chosen"] == grid[int(np.argmin(means))]
    assert payload["results"][key]["lr"] == t["chosen"]
    i = grid.index(t["chosen"])
    assert t["interior"] == (0 < i < len(grid) - 1)
    assert t["interior"] or t["widened"] == max_widen
    assert 0 <= t["widened"] <= max_widen


def _check_claims(mod, payload):
  res = payload["results"]
  err = {k: np.asarray(r["test_err"]) for k, r in res.items()}
  assert payload["claims"]
  for c in payload["claims"]:
    a = err[c["method_a"]]
    if c["claim"].startswith("ND-Adam closes"):
      sm = c["group"]
      b = (err[f"adam/{sm}"] + err[f"sgdm/{sm}"]) / 2
    else:
      b = err[c["method_b"]]
    mean, lo, hi = mod._common.paired_ci(a, b)
    np.testing.assert_allclose([c["diff"], *c["ci"]], [mean, lo, hi], atol=1e-12)
    assert c["n"] == len(mod._common.FINAL_SEEDS) and c["lower_is_better"]
    want = "holds" if hi < 0 else "reversed" if lo > 0 else "within noise"
    assert c["verdict"] == want
    assert c["paper"] and c["group"]


def test_quick_tuning_records(quick):
  mod, _, payload = quick
  assert payload["quick"] is True
  cfg = mod.QUICK
  assert set(payload["results"]) == {f"{o}/{s}" for o in cfg["optimizers"]
                                     for s in cfg["softmaxes"]}
  _check_tuning(mod, payload, cfg["max_widen"])
  c = payload["config"]
  assert c["tuning_rule"] == mod._common.TUNING_RULE
  assert c["verdict_rule"] == mod._common.VERDICT_RULE
  assert c["machine"] and c["data"]


def test_quick_results_are_paired_over_the_final_seeds(quick):
  mod, _, payload = quick
  seeds = list(mod._common.FINAL_SEEDS)
  for r in payload["results"].values():
    assert r["seeds"] == seeds
    err = np.asarray(r["test_err"])
    assert err.shape == (len(seeds),) and np.all((err >= 0) & (err <= 1))
    assert np.asarray(r["train_ce"]).shape == (len(seeds), mod.QUICK["epochs"])
    eff = np.asarray(r["eff_lr"])
    assert eff.shape == (payload["config"]["steps"],)
    assert np.all(np.isfinite(eff)) and np.all(eff > 0)
  # Same seed => same initialization and batch order, whatever the config:
  # two identical configs in one vmapped call agree exactly, seed by seed
  # (the call has the final runs' shape, so it reuses their compiled program).
  cfg = mod.QUICK
  full = mod._common.load_digits(images=True, n_train=cfg["n_train"],
                                 n_test=cfg["n_test"])
  run, _ = mod.make_run("adam", full, cfg)
  out = run([(1e-3, "plain")] * len(cfg["softmaxes"]), seeds)
  np.testing.assert_array_equal(out["test_loss"][0], out["test_loss"][1])
  assert len(set(out["test_loss"][0].tolist())) > 1  # seeds do differ


def test_quick_claims_follow_the_verdict_rule(quick):
  mod, out, payload = quick
  _check_claims(mod, payload)
  groups = {(c["claim"], c["group"]) for c in payload["claims"]}
  assert ("ND-Adam beats Adam", "plain") in groups
  assert ("bn_softmax beats plain", "ndadam") in groups
  md = (out / "ndadam.md").read_text()
  assert "| ND-Adam, bn_softmax |" in md and "| claim | group |" in md
  assert mod._common.TUNING_RULE in md and mod._common.VERDICT_RULE in md
  assert (out / "ndadam_efflr.png").stat().st_size > 1000


def test_quick_ndadam_first_step_moves_by_the_vector_step_size(quick):
  mod, _, payload = quick
  # ND-Adam moves unit vectors: ‖Δw‖/‖w‖ of the first step is about the
  # vector step size (the projected first Adam step has unit norm per vector).
  r = payload["results"]["ndadam/bn_softmax"]
  assert 0.3 * r["lr"] < r["eff_lr"][0] < 1.5 * r["lr"]


def test_quick_never_writes_into_the_committed_results(quick):
  mod = quick[0]
  results = mod._common.RESULTS_DIR
  with pytest.raises(SystemExit):  # refused before anything runs
    mod.main(["--quick", "--out", str(results)])
  with pytest.raises(SystemExit):  # a partial run neither
    mod.main(["--epochs", "1", "--out", str(results)])


def test_committed_results_follow_the_protocol(quick):
  mod = quick[0]
  with open(mod._common.RESULTS_DIR / "ndadam.json") as f:
    payload = json.load(f)
  assert payload["quick"] is False and payload["partial"] is False
  full = mod.FULL
  assert set(payload["results"]) == {f"{o}/{s}" for o in full["optimizers"]
                                     for s in full["softmaxes"]}
  _check_tuning(mod, payload, full["max_widen"])
  for r in payload["results"].values():
    assert len(r["test_err"]) == 5 and r["seeds"] == list(mod._common.FINAL_SEEDS)
  assert payload["config"]["epochs"] == full["epochs"]
  _check_claims(mod, payload)
  # Per softmax: ND-Adam vs Adam, SGDM vs Adam, the half-gap claim; per
  # optimizer: logit_l2 and bn_softmax vs plain.
  assert len(payload["claims"]) == 3 * 3 + 3 * 2


def test_conv3x3_equals_flax_conv(quick):
  mod = quick[0]
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  m = mod.Conv3x3(5)
  v = m.init(jax.random.key(1), x)
  ref = nn.Conv(5, (3, 3), use_bias=False).apply(v, x)
  np.testing.assert_allclose(m.apply(v, x), ref, rtol=1e-5, atol=1e-5)
