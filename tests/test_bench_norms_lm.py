"""benchmarks/norms_lm.py: quick run, tuning records, paired seeds, claims, merge, JSON."""

import json
import pathlib

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "norms_lm.json"


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  mod = load_bench("norms_lm")
  out = tmp_path_factory.mktemp("norms_lm")
  mod.main(["--quick", "--quiet", "--out", str(out)])
  with open(out / "norms_lm.json") as f:
    return mod, out, json.load(f)


def _check_tuning(payload, common, committed):
  cfg = payload["config"]
  assert cfg["tuning_rule"] == common.TUNING_RULE
  assert cfg["verdict_rule"] == common.VERDICT_RULE
  assert list(payload["tuning"]) == cfg["methods"]
  for name, rec in payload["tuning"].items():
    grid = rec["grid"]
    assert len(grid) >= (5 if committed else 2) and grid == sorted(grid)
    assert rec["seeds"] == list(common.SELECT_SEEDS)
    assert rec["final_seeds"] == list(common.FINAL_SEEDS)
    assert np.asarray(rec["val_loss"], float).shape == (len(grid), 2)
    means = [np.inf if v is None else v for v in rec["mean_val_loss"]]
    assert grid[int(np.argmin(means))] == rec["chosen"]
    assert rec["interior"] == (0 < grid.index(rec["chosen"]) < len(grid) - 1)
    assert rec["interior"] or rec["widened"] == 3, name
    np.testing.assert_allclose(np.diff(np.log10(grid)), 0.5, atol=2e-3)
    # The selection curves end at the recorded selection losses.
    sel = payload["selection_curves"][name]
    assert set(sel) == {f"{lr:g}" for lr in grid}
    for lr, row in zip(grid, rec["val_loss"], strict=True):
      last = np.asarray(sel[f"{lr:g}"]["val_loss"])[:, -1]
      np.testing.assert_allclose(last, np.asarray(row, float))


def _check_claims(payload, common):
  final = payload["final"]
  assert payload["claims"]
  for c in payload["claims"]:
    a, b = final[c["method_a"]], final[c["method_b"]]
    assert len(a["val_loss"]) == len(b["val_loss"]) == c["n"] == len(
        common.FINAL_SEEDS)
    mean, lo, hi = common.paired_ci(a["val_loss"], b["val_loss"])
    assert c["diff"] == pytest.approx(mean)
    assert c["ci"] == pytest.approx([lo, hi])
    assert c["lower_is_better"]
    assert c["verdict"] == ("holds" if hi < 0 else "reversed" if lo > 0
                            else "within noise")
    t_mean, t_lo, t_hi = common.paired_ci(a["train_loss"], b["train_loss"])
    assert c["train_diff"] == pytest.approx(t_mean)
    assert c["train_ci"] == pytest.approx([t_lo, t_hi])
    d = np.asarray(a["val_loss"]) - np.asarray(b["val_loss"])
    assert c["max_abs_seed_diff"] == pytest.approx(np.abs(d).max())
    assert c["paper"]
  # The final values are the last point of the reported curves.
  for name, r in payload["results"].items():
    for key in ("train_loss", "val_loss"):
      np.testing.assert_allclose(np.asarray(r[key])[:, -1], final[name][key])


def test_quick_writes_json_table_and_plot(quick, load_bench):
  mod, out, payload = quick
  cfg = payload["config"]
  assert cfg["methods"] == list(mod.QUICK_METHODS)
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  assert payload["steps"] == list(range(0, cfg["steps"] + 1, cfg["eval_every"]))
  for res in payload["results"].values():
    for key in ("train_loss", "val_loss"):
      arr = np.asarray(res[key])
      assert arr.shape == (len(cfg["final_seeds"]), n_points)
      assert np.all(np.isfinite(arr))
  assert (out / "norms_lm.png").stat().st_size > 10_000
  md = (out / "norms_lm.md").read_text()
  assert "| muon (normopt) |" in md and "| verdict |" in md
  _check_tuning(payload, load_bench("_common"), committed=False)


def test_quick_claims_follow_the_verdict_rule(quick, load_bench):
  _, _, payload = quick
  _check_claims(payload, load_bench("_common"))
  assert [c["claim"] for c in payload["claims"]] == [quick[0].CLAIMS[0][0]]


def test_quick_runs_are_paired(quick):
  """Seed i: the same start for every method and every step size."""
  _, _, payload = quick
  first = [np.asarray(r["val_loss"])[:, 0] for r in payload["results"].values()]
  for f in first[1:]:
    np.testing.assert_allclose(f, first[0], rtol=1e-6)
  starts = [np.asarray(c["val_loss"])[:, 0]
            for sel in payload["selection_curves"].values() for c in sel.values()]
  for s in starts[1:]:
    np.testing.assert_allclose(s, starts[0], rtol=1e-6)


def test_merge_of_parts_is_the_whole(quick):
  mod, _, payload = quick
  names = payload["config"]["methods"]
  parts = []
  for subset in (names[:1], names[1:]):
    part = dict(payload, config=dict(payload["config"], methods=subset))
    for key in ("tuning", "selection_curves", "results", "final", "method_seconds"):
      part[key] = {n: payload[key][n] for n in subset}
    part["claims"] = mod.make_claims(part["final"])
    parts.append(part)
  merged, complete = mod.merge(parts[::-1])
  assert not complete  # a quick run's methods, not all of them
  assert merged["config"]["methods"] == names
  assert merged["final"] == payload["final"]
  assert merged["claims"] == payload["claims"]
  bad = dict(parts[1], config=dict(parts[1]["config"], steps=1))
  with pytest.raises(ValueError, match="steps"):
    mod.merge([parts[0], bad])


def test_masks_and_norms_pick_the_layers(load_bench):
  import optax

  mod = load_bench("norms_lm")
  scanned_lm = load_bench("scanned_lm")
  cfg = mod.QUICK
  model, _ = scanned_lm.make_models(cfg, 20)
  params = jax.eval_shape(lambda: scanned_lm.init_params(model, 0, cfg))
  flat = {"/".join(k.key for k in path): v for path, v in
          jax.tree_util.tree_leaves_with_path(mod.hidden_mask(params))}
  assert {k for k, v in flat.items() if v} == {
      f"layers/{d}/kernel" for d in ("qkv", "attn_out", "mlp_in", "mlp_out")}
  dims = mod.optax_dimension_numbers(params)
  assert dims["layers"]["qkv"]["kernel"] == optax.contrib.MuonDimensionNumbers(1, 2)
  assert dims["embed"]["embedding"] is None and dims["head"]["kernel"] is None
  norms = {"/".join(k.key for k in path): mod.scion_norm(path, v) for path, v in
           jax.tree_util.tree_leaves_with_path(params)}
  assert norms["head/kernel"] == "sign"
  assert norms["embed/embedding"] == norms["pos"] == "col"
  assert norms["layers/mlp_in/kernel"] == "spectral"
  assert norms["head/bias"] == norms["layers/ln_attn/scale"] == "bias_rms"
  # The two Muons, as the benchmark builds them, take the same step.
  rng = np.random.default_rng(0)
  params, grads = (jax.tree.map(
      lambda x: rng.standard_normal(x.shape).astype(np.float32), params)
      for _ in range(2))
  opts = mod.make_optimizers(params)
  steps = []
  for name in ("muon (normopt)", "muon (optax)"):
    tx = opts[name](0.02)
    steps.append(jax.jit(lambda g, p, tx=tx: tx.update(g, tx.init(p), p)[0])(
        grads, params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               *steps)
  radius = mod.scion_radius(params)
  assert radius["head"]["kernel"] == mod.SCION_RADIUS_HEAD
  assert radius["layers"]["qkv"]["kernel"] == mod.SCION_RADIUS_HIDDEN


def test_committed_full_results_follow_the_protocol(load_bench):
  if not RESULT.exists():
    pytest.skip("full results not committed yet")
  mod, common = load_bench("norms_lm"), load_bench("_common")
  payload = json.loads(RESULT.read_text())
  cfg = payload["config"]
  assert not payload["quick"]
  assert cfg["methods"] == list(mod.METHODS)
  assert {k: cfg[k] for k in mod.FULL} == mod.FULL
  assert cfg["grid_centers"] == mod.GRID_CENTERS
  n_points = cfg["steps"] // cfg["eval_every"] + 1
  for res in payload["results"].values():
    for key in ("train_loss", "val_loss"):
      arr = np.asarray(res[key])
      assert arr.shape == (5, n_points) and np.all(np.isfinite(arr))
  _check_tuning(payload, common, committed=True)
  _check_claims(payload, common)
  assert [c["claim"] for c in payload["claims"]] == [t for t, *_ in mod.CLAIMS]
