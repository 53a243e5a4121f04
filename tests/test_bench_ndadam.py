"""benchmarks/ndadam.py: quick run, its JSON/table/plot, and the model's conv."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  mod = load_bench("ndadam")
  out = tmp_path_factory.mktemp("ndadam")
  mod.main(["--quick", "--out", str(out), "--quiet"])
  with open(out / "ndadam.json") as f:
    return mod, out, json.load(f)


def test_quick_writes_json_table_and_plot(quick):
  mod, out, payload = quick
  cfg = mod.QUICK
  assert payload["quick"] is True
  assert set(payload["results"]) == {f"{o}/{s}" for o, s in cfg["configs"]}
  for r in payload["results"].values():
    err = np.asarray(r["test_err"])
    assert err.shape == (cfg["seeds"],) and np.all((err >= 0) & (err <= 1))
    eff = np.asarray(r["eff_lr"])
    assert eff.shape == (payload["steps"],) and np.all(np.isfinite(eff)) and np.all(eff > 0)
    assert np.asarray(r["train_ce"]).shape == (cfg["seeds"], cfg["epochs"])
  # ND-Adam moves unit vectors: ‖Δw‖/‖w‖ of the first step is about the
  # vector learning rate (the projected first Adam step has unit norm per vector).
  nd = np.asarray(payload["results"]["ndadam/bn_softmax"]["eff_lr"])
  assert 0.3 * mod.HPARAMS["nd_lr_vector"] < nd[0] < 1.5 * mod.HPARAMS["nd_lr_vector"]
  md = (out / "ndadam.md").read_text()
  assert "| ND-Adam |" in md
  assert (out / "ndadam_efflr.png").stat().st_size > 1000


def test_quick_never_writes_into_the_committed_results(quick):
  mod = quick[0]
  results = mod._common.RESULTS_DIR
  with pytest.raises(SystemExit):  # refused before anything runs
    mod.main(["--quick", "--out", str(results)])


def test_conv3x3_equals_flax_conv(quick):
  mod = quick[0]
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  m = mod.Conv3x3(5)
  v = m.init(jax.random.key(1), x)
  ref = nn.Conv(5, (3, 3), use_bias=False).apply(v, x)
  np.testing.assert_allclose(m.apply(v, x), ref, rtol=1e-5, atol=1e-5)
