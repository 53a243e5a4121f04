"""Quick run of benchmarks/adanorm_cnn.py into a temporary directory."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  out = tmp_path_factory.mktemp("adanorm_cnn")
  load_bench("adanorm_cnn").main(["--quick", "--quiet", "--out", str(out)])
  with open(out / "adanorm_cnn.json") as f:
    return out, json.load(f)


def test_quick_writes_outputs(quick):
  out, res = quick
  for name in ("adanorm_cnn.json", "adanorm_cnn.md", "adanorm_cnn_fig3.png"):
    assert (out / name).stat().st_size > 0
  assert res["config"]["quick"] is True
  assert set(res["methods"]) == {"Adam", "AdamNorm"}
  (claim,) = res["claims"]
  assert (claim["base"], claim["norm"]) == ("Adam", "AdamNorm")
  assert "| Adam |" in (out / "adanorm_cnn.md").read_text()


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
