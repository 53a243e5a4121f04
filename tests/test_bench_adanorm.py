"""benchmarks/adanorm_cnn.py: a quick run into a temporary directory, and the
committed full results (tuning protocol, paired seeds, verdicts)."""

import json
import math
import pathlib

import numpy as np
import pytest

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]

RESULTS = (pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
           / "results" / "adanorm_cnn.json")
PAIRS = ("Adam", "diffGrad", "RAdam", "AdaBelief")


@pytest.fixture(scope="module")
def bench(load_bench):
  return load_bench("adanorm_cnn")


@pytest.fixture(scope="module")
def quick(tmp_path_factory, bench):
  out = tmp_path_factory.mktemp("adanorm_cnn")
  bench.main(["--quick", "--quiet", "--out", str(out)])
  with open(out / "adanorm_cnn.json") as f:
    return out, json.load(f)


def check_tuning(res, common, n_grid=5):
  """Every method: its own grid, chosen by validation loss, final seeds."""
  cfg = res["config"]
  assert cfg["select_seeds"] == list(common.SELECT_SEEDS)
  assert cfg["final_seeds"] == list(common.FINAL_SEEDS)
  assert cfg["n_selection_train"] + cfg["n_val"] == cfg["n_train"]
  assert cfg["tuning_rule"] == common.TUNING_RULE
  assert cfg["verdict_rule"] == common.VERDICT_RULE
  assert set(res["tuning"]) == set(res["methods"])
  for name, t in res["tuning"].items():
    grid = t["grid"]
    assert len(grid) >= n_grid, name
    assert grid == sorted(grid)
    np.testing.assert_allclose(np.diff(np.log10(grid)), 0.5, atol=2e-3)
    assert len(t["val_loss"]) == len(t["mean_val_loss"]) == len(grid)
    assert all(len(row) == len(common.SELECT_SEEDS) for row in t["val_loss"])
    assert t["seeds"] == list(common.SELECT_SEEDS)
    assert t["final_seeds"] == list(common.FINAL_SEEDS)
    means = [math.inf if m is None else m for m in t["mean_val_loss"]]
    best = int(np.argmin(means))
    assert t["chosen"] == grid[best]
    assert t["interior"] == (0 < best < len(grid) - 1)
    assert t["interior"] or t["widened"] == cfg["max_widen"], name
    assert len(grid) == len(cfg["grid_start"]) + t["widened"]
    # The reported runs used the chosen step size and the fresh seeds only.
    r = res["methods"][name]
    assert r["lr"] == t["chosen"]
    assert r["seeds"] == list(common.FINAL_SEEDS)
    for key in ("final_test_acc", "final_test_loss", "final_train_loss"):
      assert len(r[key]) == len(common.FINAL_SEEDS)
    assert not set(t["seeds"]) & set(r["seeds"])


def check_claims(res, common, pairs):
  """Two claims per pair (test accuracy, train loss), recomputed from the
  per-seed values; each verdict is what its CI says."""
  claims = res["claims"]
  assert len(claims) == 2 * len(pairs)
  for c in claims:
    base, norm = c["base"], c["norm"]
    assert base in pairs and norm == base + "Norm"
    assert c["claim"] == f"{norm} beats {base}"
    assert c["n"] == len(common.FINAL_SEEDS)
    assert c["paper"]
    acc = c["metric"] == "final test accuracy"
    key = "final_test_acc" if acc else "final_train_loss"
    assert acc or c["metric"].startswith("final train loss")
    assert c["lower_is_better"] is (not acc)
    mean, lo, hi = common.paired_ci(res["methods"][norm][key],
                                    res["methods"][base][key])
    np.testing.assert_allclose([c["diff"], *c["ci"]], [mean, lo, hi],
                               rtol=1e-9, atol=1e-12)
    assert lo <= mean <= hi
    better, worse = (hi < 0, lo > 0) if not acc else (lo > 0, hi < 0)
    assert c["verdict"] == ("holds" if better else
                            "reversed" if worse else "within noise")
  metrics = [(c["base"], c["metric"] == "final test accuracy") for c in claims]
  assert sorted(metrics) == sorted((p, a) for p in pairs for a in (True, False))


def test_quick_writes_outputs(quick):
  out, res = quick
  for name in ("adanorm_cnn.json", "adanorm_cnn.md", "adanorm_cnn_fig3.png"):
    assert (out / name).stat().st_size > 0
  assert res["config"]["quick"] is True
  assert set(res["methods"]) == {"Adam", "AdamNorm"}
  md = (out / "adanorm_cnn.md").read_text()
  assert "| Adam |" in md and "| AdamNorm beats Adam |" in md
  assert "95% Student-t" in md  # the verdict rule is quoted


def test_quick_tuning_records(quick, bench):
  _, res = quick
  check_tuning(res, bench._common)


def test_quick_claims_match_cis(quick, bench):
  _, res = quick
  check_claims(res, bench._common, ("Adam",))


def test_quick_paired_seeds(quick):
  """Seed i of Adam and of AdamNorm share the initialization and the batch
  order: at one step size they differ only by the norm correction, which
  barely acts in one epoch (e grows from 0), so each seed's loss matches."""
  _, res = quick
  base, norm = res["methods"]["Adam"], res["methods"]["AdamNorm"]
  assert base["seeds"] == norm["seeds"]
  if base["lr"] == norm["lr"]:
    np.testing.assert_allclose(norm["final_train_loss"],
                               base["final_train_loss"], rtol=1e-3)
  # while different seeds do differ
  assert np.ptp(base["final_train_loss"]) > 1e-3


def test_quick_first_moment_norms(quick):
  _, res = quick
  steps = res["config"]["epochs"] * res["config"]["steps_per_epoch"]
  base, norm = res["methods"]["Adam"], res["methods"]["AdamNorm"]
  for r in (base, norm):
    assert len(r["raw_norm_mean"]) == steps
    assert np.all(np.isfinite(r["final_train_loss"]))
  # A base optimizer's first moment sees g itself.
  np.testing.assert_array_equal(base["first_moment_norm_mean"],
                                base["raw_norm_mean"])
  assert base["corrected_fraction"] is None
  # AdaNorm lifts, never lowers: ||s|| = max(e, ||g||) per tensor.
  s = np.asarray(norm["first_moment_norm_mean"])
  g = np.asarray(norm["raw_norm_mean"])
  assert np.all(s >= g * (1 - 1e-6))
  assert 0.0 <= norm["corrected_fraction"] <= 1.0
  # Where a step had corrected tensors, its mean norm went up.
  assert (norm["corrected_fraction"] > 0) == bool(np.any(s > g * (1 + 1e-6)))


def test_patch_conv_is_nn_conv(bench):
  """The im2col convolution is nn.Conv(3x3, SAME, no bias): same init, same
  output, strides 1 and 2."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 2)),
                  jnp.float32)
  for stride in (1, 2):
    ref = nn.Conv(5, (3, 3), stride, use_bias=False)
    mine = bench.PatchConv(5, stride)
    v_ref = ref.init(jax.random.PRNGKey(1), x)
    v_mine = mine.init(jax.random.PRNGKey(1), x)
    np.testing.assert_array_equal(v_ref["params"]["kernel"],
                                  v_mine["params"]["kernel"])
    np.testing.assert_allclose(mine.apply(v_ref, x), ref.apply(v_ref, x),
                               atol=1e-5)


def test_committed_full_results(bench):
  """The committed full run: all eight optimizers tuned by the protocol (>= 5
  step sizes, an interior choice or the grid widened to its limit), five
  final seeds each, and verdicts that match their CIs."""
  with open(RESULTS) as f:
    res = json.load(f)
  common = bench._common
  assert res["config"]["quick"] is False
  assert res["config"]["epochs"] == bench.EPOCHS
  assert res["config"]["max_widen"] == 3
  names = {p + s for p in PAIRS for s in ("", "Norm")}
  assert set(res["methods"]) == names
  check_tuning(res, common)
  check_claims(res, common, PAIRS)
  for r in res["methods"].values():
    assert not r["diverged"]
