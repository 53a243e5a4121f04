"""benchmarks/scanned_lm.py: quick run, its outputs, and the scanned model."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import normopt

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scanned_lm.py"
NAMES = ["adam", "adam_ng(stacked)", "adam_ng"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory, load_bench):
  mod = load_bench("scanned_lm")
  out = tmp_path_factory.mktemp("scanned_lm")
  assert mod.main(["--quick", "--out", str(out), "--quiet"]) == 0
  with open(out / "scanned_lm.json") as f:
    return mod, out, json.load(f)


@pytest.fixture(scope="module")
def tiny(quick):
  """The quick config's scanned and unrolled models and scanned params."""
  mod = quick[0]
  cfg = mod.QUICK
  scanned, unrolled = mod.make_models(cfg, vocab=quick[2]["config"]["vocab"])
  params = jax.jit(lambda: mod.init_params(scanned, 0, cfg))()
  return mod, cfg, scanned, unrolled, params


def test_quick_writes_json_table_and_plot(quick):
  mod, out, payload = quick
  cfg = payload["config"]
  assert payload["quick"] is True
  assert list(payload["results"]) == NAMES
  n_points = cfg["steps"] // cfg["eval_every"]
  assert payload["steps"] == [cfg["eval_every"] * (i + 1)
                              for i in range(n_points)]
  for res in payload["results"].values():
    for key in ("train_loss", "val_loss", "batch_loss"):
      arr = np.asarray(res[key])
      assert arr.shape == (cfg["seeds"], n_points)
      assert np.all(np.isfinite(arr))
    change = np.asarray(res["layer_change_norm"])
    assert change.shape == (cfg["seeds"], cfg["layers"])
    assert np.all(change > 0)
  assert (out / "scanned_lm.png").stat().st_size > 10_000
  table = (out / "scanned_lm.md").read_text()
  for name in NAMES:
    assert f"| {name} |" in table
  assert "scanned / unrolled" in table
  assert not (mod.__file__ and str(out).startswith(
      str(ROOT / "benchmarks" / "results")))


def test_quick_losses_start_at_chance_and_fall(quick):
  _, _, payload = quick
  chance = math.log(payload["config"]["vocab"])
  first = [np.asarray(r["initial_loss"]) for r in payload["results"].values()]
  for f in first[1:]:  # same seeds: same initial parameters and first batch
    np.testing.assert_allclose(f, first[0], rtol=1e-5)
  assert np.all(np.abs(first[0] - chance) < 0.5)
  for res in payload["results"].values():
    start = np.asarray(res["initial_loss"])
    assert np.all(np.asarray(res["final_train_loss"]) < start - 0.5)
    assert np.all(np.asarray(res["final_val_loss"]) < start - 0.5)
    batch = np.asarray(res["batch_loss"])
    assert np.all(batch[:, -1] < batch[:, 0])


def test_quick_stacked_moves_layers_differently(quick):
  _, _, payload = quick
  stacked = np.asarray(payload["results"]["adam_ng(stacked)"]
                       ["layer_change_norm"])
  whole = np.asarray(payload["results"]["adam_ng"]["layer_change_norm"])
  assert not np.allclose(stacked, whole, rtol=1e-3)


def test_quick_timing_ratios(quick):
  _, _, payload = quick
  t = payload["timing"]
  for o in ("adam", "adam_ng(stacked)"):
    for kind in ("compile", "step"):
      r = t["scanned_over_unrolled"][o][kind]
      assert math.isfinite(r["median"]) and r["median"] > 0
  for m in ("scanned", "unrolled"):
    assert t["ng_over_adam"][m]["compile"]["median"] > 0
  assert set(t["update_compile_s_median"]) == set(NAMES)
  assert len(t["step_s"]["scanned/adam"]) == payload["config"]["timing_reps"]


def test_quick_and_partial_runs_never_write_into_results(quick):
  mod = quick[0]
  results = str(ROOT / "benchmarks" / "results")
  for argv in (["--quick", "--out", results], ["--steps", "3", "--out", results]):
    with pytest.raises(SystemExit):
      mod.main(argv)


def test_to_unrolled_gives_the_same_forward(tiny):
  mod, cfg, scanned, unrolled, params = tiny
  p_unroll = mod.to_unrolled(params, cfg["layers"])
  assert mod.STACK not in p_unroll
  assert {f"{mod.STACK}_{i}" for i in range(cfg["layers"])} <= set(p_unroll)
  tokens = jax.random.randint(jax.random.key(1), (3, cfg["context"]), 0,
                              scanned.vocab)
  a = jax.jit(scanned.apply)({"params": params}, tokens)
  b = jax.jit(unrolled.apply)({"params": p_unroll}, tokens)
  assert float(jnp.std(a)) > 0.1
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_stacked_adam_ng_equals_unrolled_and_unstacked_does_not(tiny):
  """Three steps on gradients whose per-layer norms vary from step to step."""
  mod, cfg, _, _, params = tiny
  opts = mod.make_optimizers()
  txs = {n: opts[n]() for n in ("adam_ng(stacked)", "adam_ng")}
  p_unroll = mod.to_unrolled(params, cfg["layers"])
  states = {n: tx.init(params) for n, tx in txs.items()}
  state_u = txs["adam_ng"].init(p_unroll)
  update = {n: jax.jit(tx.update) for n, tx in txs.items()}
  update_u = jax.jit(txs["adam_ng"].update)
  rng = np.random.default_rng(0)
  for _ in range(3):
    scales = 10.0 ** rng.uniform(-2, 2, cfg["layers"])
    grads = jax.tree.map(
        lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    grads[mod.STACK] = jax.tree.map(
        lambda g, scales=scales: g * scales.reshape((-1,) + (1,) * (g.ndim - 1)),
        grads[mod.STACK])
    ups = {}
    for n in txs:
      ups[n], states[n] = update[n](grads, states[n], params)
    up_u, state_u = update_u(
        mod.to_unrolled(grads, cfg["layers"]), state_u, p_unroll)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
      mod.to_unrolled(ups["adam_ng(stacked)"], cfg["layers"]), up_u)
  whole = mod.to_unrolled(ups["adam_ng"], cfg["layers"])
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(whole), jax.tree.leaves(up_u), strict=True))
  assert diff > 1e-4 * mod.LR["adam_ng"]


def test_stacked_blocks_are_the_unrolled_blocks(tiny):
  mod, cfg, _, _, params = tiny
  stacked = normopt.block_partition(params, "layer", stacked=mod._stacked())
  whole = normopt.block_partition(params, "layer")
  unrolled = normopt.block_partition(mod.to_unrolled(params, cfg["layers"]),
                                     "layer")
  assert len(stacked) == len(unrolled)
  per_layer = len(params[mod.STACK])  # sublayers: ln, qkv, out, ln, mlp x2
  assert len(stacked) - len(whole) == per_layer * (cfg["layers"] - 1)


def test_committed_full_results_are_consistent():
  path = ROOT / "benchmarks" / "results" / "scanned_lm.json"
  if not path.exists():
    pytest.skip("full results not committed yet")
  payload = json.loads(path.read_text())
  cfg = payload["config"]
  assert payload["quick"] is False
  assert (cfg["layers"], cfg["d_model"], cfg["steps"], cfg["seeds"]) == (
      8, 128, 1500, 3)
  assert list(payload["results"]) == NAMES
  for res in payload["results"].values():
    arr = np.asarray(res["val_loss"])
    assert arr.shape == (3, len(payload["steps"]))
    assert np.all(np.isfinite(arr))
  t = payload["timing"]
  assert len(t["compile_s"]["scanned/adam"]) == cfg["compile_reps"]
  assert t["ng_over_adam"]["scanned"]["compile"]["median"] > 0
