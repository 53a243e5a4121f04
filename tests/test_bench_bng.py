"""The BNG benchmarks (benchmarks/bng_cnn.py, bng_lstm.py) and their results.

Each benchmark runs once in ``--quick`` mode into a temporary directory; the
tests check the JSON it wrote: the tuning records of the protocol of issue
#14, paired seeds, and claims whose verdicts follow their confidence
intervals. The committed full results are checked for the protocol's shape
(>= 5 step sizes per method, an interior choice or a widened-out grid, 5
final seeds). The LSTM model is also checked against a float64 NumPy
reference written from the LSTM equations.
"""

import copy
import json
import math
import pathlib

import chex
import jax
import numpy as np
import pytest

# A quick benchmark run: left out of the fast loop (`pytest -m "not slow"`).
pytestmark = [pytest.mark.slow, pytest.mark.bench]

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def common(load_bench):
  return load_bench("_common")


@pytest.fixture(scope="module")
def cnn_result(tmp_path_factory, load_bench):
  out = tmp_path_factory.mktemp("bng_cnn")
  load_bench("bng_cnn").main(["--quick", "--quiet", "--out", str(out)])
  with open(out / "bng_cnn.json") as f:
    return out, json.load(f)


@pytest.fixture(scope="module")
def lstm_result(tmp_path_factory, load_bench):
  out = tmp_path_factory.mktemp("bng_lstm")
  load_bench("bng_lstm").main(["--quick", "--quiet", "--out", str(out)])
  with open(out / "bng_lstm.json") as f:
    return out, json.load(f)


def _check_tuning(rec, common, max_widen):
  """One tune_lr record: a sqrt(10) log grid of >= 5 values, two selection
  seeds, the choice the lowest mean validation loss, interior unless the
  widening ran out."""
  grid = np.asarray(rec["grid"])
  assert len(grid) >= 5
  np.testing.assert_allclose(grid[1:] / grid[:-1], common.GRID_STEP, rtol=1e-3)
  assert rec["seeds"] == list(common.SELECT_SEEDS)
  assert np.asarray(rec["val_loss"], dtype=float).shape == (
      len(grid), len(common.SELECT_SEEDS))
  means = [np.inf if m is None else m for m in rec["mean_val_loss"]]
  assert rec["chosen"] == grid[int(np.argmin(means))]
  assert rec["interior"] == (0 < int(np.argmin(means)) < len(grid) - 1)
  assert rec["interior"] or rec["widened"] == max_widen
  assert len(grid) == 5 + rec["widened"]


def _check_claims(claims, common, n_seeds):
  """Each verdict follows from its CI, and the CI holds its mean."""
  assert claims
  for c in claims:
    lo, hi = c["ci"]
    assert c["n"] == n_seeds, c["claim"]
    assert lo <= c["diff"] <= hi, c["claim"]
    expected = ("holds" if hi < 0 else "reversed" if lo > 0 else
                "within noise")
    assert c["verdict"] == expected, c["claim"]
    assert "group" in c and "paper" in c, c["claim"]


def test_cnn_quick_writes_outputs(cnn_result):
  out, res = cnn_result
  for ext in ("json", "png", "md"):
    assert (out / f"bng_cnn.{ext}").stat().st_size > 0
  cfg = res["config"]
  assert cfg["quick"] is True
  assert "tuning_rule" in cfg and "verdict_rule" in cfg
  assert set(res["methods"]) == set(res["tuning"]) == {"SGDM", "SGDM-NG"}
  assert [c["claim"] for c in res["claims"]] == ["SGDM-NG beats SGDM"]


def test_cnn_quick_tuning_and_claims(cnn_result, common):
  _, res = cnn_result
  cfg = res["config"]
  for name, rec in res["tuning"].items():
    _check_tuning(rec, common, cfg["max_widen"])
    assert rec["final_seeds"] == cfg["final_seeds"]
    assert res["methods"][name]["lr"] == rec["chosen"]
    # Paired: every method ran the same final seeds, none of them a
    # selection seed.
    assert res["methods"][name]["seeds"] == cfg["final_seeds"]
    assert not set(cfg["final_seeds"]) & set(cfg["select_seeds"])
  _check_claims(res["claims"], common, len(cfg["final_seeds"]))
  c = res["claims"][0]
  again = common.claim(c["claim"], res["methods"]["SGDM-NG"]["final_test_error"],
                       res["methods"]["SGDM"]["final_test_error"])
  np.testing.assert_allclose([again["diff"], *again["ci"]],
                             [c["diff"], *c["ci"]])


def test_cnn_quick_trains(cnn_result):
  _, res = cnn_result
  cfg = res["config"]
  for name, r in res["methods"].items():
    loss = np.asarray(r["train_loss"])
    err = np.asarray(r["test_error"])
    assert loss.shape == err.shape == (len(cfg["final_seeds"]), cfg["epochs"])
    assert np.all(np.isfinite(loss)), name
    # The last epoch's mean training loss is below the first one's, and far
    # below the loss of a uniform guess over 10 classes.
    assert np.all(loss[:, -1] < loss[:, 0]), name
    assert np.all(loss[:, -1] < 0.8 * math.log(10)), name
    assert np.all((err >= 0) & (err <= 1)), name
    assert r["final_test_error"] == err[:, -1].tolist()


def test_lstm_quick_writes_outputs(lstm_result):
  out, res = lstm_result
  for ext in ("json", "png", "md"):
    assert (out / f"bng_lstm.{ext}").stat().st_size > 0
  cfg = res["config"]
  assert cfg["quick"] is True
  assert "tuning_rule" in cfg and "verdict_rule" in cfg
  assert list(res["runs"]) == [str(l) for l in cfg["lengths"]]
  for runs in res["runs"].values():
    assert set(runs) == {"Adam", "AdamNG"}
  assert {c["better"] for c in res["claims"]} == {"AdamNG"}
  assert {c["when"] for c in res["claims"]} == {"final",
                                                "after 25% of updates"}


def test_lstm_quick_tuning_and_claims(lstm_result, common):
  _, res = lstm_result
  cfg = res["config"]
  for length, runs in res["runs"].items():
    for name, r in runs.items():
      rec = res["tuning"][length][name]
      _check_tuning(rec, common, cfg["max_widen"])
      assert r["lr"] == rec["chosen"]
      assert r["seeds"] == rec["final_seeds"] == cfg["final_seeds"]
    # Paired: a seed sets the same initialization for every optimizer, so
    # the loss before the first update agrees.
    first = [np.asarray(r["val_loss"])[:, 0] for r in runs.values()]
    for f in first[1:]:
      np.testing.assert_allclose(f, first[0], rtol=1e-6)
  _check_claims(res["claims"], common, len(cfg["final_seeds"]))


def test_lstm_quick_lowers_validation_loss(lstm_result):
  _, res = lstm_result
  cfg = res["config"]
  for runs in res["runs"].values():
    for name, r in runs.items():
      val = np.asarray(r["val_loss"], dtype=float)
      assert val.shape == (len(cfg["final_seeds"]),
                           cfg["steps"] // cfg["eval_every"] + 1)
      assert np.all(np.isfinite(val)), name
      # At initialisation the model is near a uniform guess; training helps.
      assert np.all(abs(val[:, 0] - math.log(cfg["vocab_size"])) < 0.5), name
      assert np.all(val[:, -1] < val[:, 0] - 0.3), name


def _split(res, key, names):
  """``res`` as one part per method (as ``--methods`` runs would write)."""
  parts = []
  for name in names:
    part = copy.deepcopy(res)
    if key == "methods":
      part["methods"] = {name: res["methods"][name]}
      part["tuning"] = {name: res["tuning"][name]}
      part["config"]["grid_centres"] = {name: res["config"]["grid_centres"][name]}
    else:
      part["runs"] = {l: {name: r[name]} for l, r in res["runs"].items()}
      part["tuning"] = {l: {name: t[name]} for l, t in res["tuning"].items()}
    parts.append(part)
  return parts[::-1]


@pytest.mark.parametrize("bench,key", [("bng_cnn", "methods"),
                                       ("bng_lstm", "runs")])
def test_merge_of_parts_gives_the_whole(bench, key, cnn_result, lstm_result,
                                        load_bench):
  _, res = cnn_result if bench == "bng_cnn" else lstm_result
  names = (list(res["methods"]) if key == "methods"
           else list(next(iter(res["runs"].values()))))
  merged, complete = load_bench(bench).merge(_split(res, key, names))
  assert not complete  # a quick run never makes a full result
  assert merged["claims"] == res["claims"]
  assert merged["tuning"] == res["tuning"]
  assert merged[key] == res[key]
  assert len(merged["config"]["parts"]) == len(names)
  bad = _split(res, key, names)
  bad[0]["config"]["final_seeds"] = [7, 8]
  with pytest.raises(ValueError):
    load_bench(bench).merge(bad)


def _committed(name):
  path = RESULTS / f"{name}.json"
  if not path.exists():
    pytest.skip(f"no committed {path.name}")
  with open(path) as f:
    return json.load(f)


@pytest.mark.parametrize("name", ["bng_cnn", "bng_lstm"])
def test_committed_results_follow_the_protocol(name, common):
  res = _committed(name)
  cfg = res["config"]
  assert cfg["quick"] is False
  assert cfg["tuning_rule"] == common.TUNING_RULE
  assert cfg["verdict_rule"] == common.VERDICT_RULE
  assert cfg["final_seeds"] == list(common.FINAL_SEEDS)
  tuning = (res["tuning"] if name == "bng_cnn" else
            {f"{l} {m}": r for l, t in res["tuning"].items()
             for m, r in t.items()})
  assert len(tuning) == (10 if name == "bng_cnn" else 12)
  for rec in tuning.values():
    _check_tuning(rec, common, max_widen=3)
    assert rec["final_seeds"] == list(common.FINAL_SEEDS)
  _check_claims(res["claims"], common, len(common.FINAL_SEEDS))
  groups = {c["group"] for c in res["claims"]}
  if name == "bng_cnn":
    assert groups == {"paper", "ablation"}
    assert len(res["claims"]) == 8
  else:
    assert groups == {"BPTT 40", "BPTT 400", "BPTT length"}
    assert len(res["claims"]) == 2 * 4 * 2 + 3


def _np_lstm_loss(params, seq):
  """float64 NumPy reference: embed -> LSTM -> LSTM -> softmax CE."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  sig = lambda z: 1 / (1 + np.exp(-z))
  x = p["embed"]["embedding"][seq[:, :-1]]  # (batch, time, embed)
  for layer in ("lstm_0", "lstm_1"):
    kernel, bias = p[layer]["kernel"], p[layer]["bias"]
    hidden = kernel.shape[1] // 4
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros((x.shape[0], hidden))
    hs = []
    for t in range(x.shape[1]):
      z = np.concatenate([x[:, t], h], axis=1) @ kernel + bias
      i, f, g, o = np.split(z, 4, axis=1)
      c = sig(f) * c + sig(i) * np.tanh(g)
      h = sig(o) * np.tanh(c)
      hs.append(h)
    x = np.stack(hs, axis=1)
  logits = x @ p["out"]["kernel"] + p["out"]["bias"]
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = seq[:, 1:]
  return -np.take_along_axis(logp, targets[..., None], -1).mean()


def test_lstm_model_matches_numpy_reference(load_bench):
  bench = load_bench("bng_lstm")
  rng = np.random.default_rng(0)
  vocab, embed, hidden = 7, 3, 5
  params = bench.init_params(jax.random.PRNGKey(1), vocab, embed, hidden)
  # Non-trivial biases so that every term of the cell is exercised.
  params = jax.tree.map(
      lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(np.float32),
      params)
  seq = rng.integers(0, vocab, size=(4, 9)).astype(np.int32)
  got = jax.jit(bench.loss_fn)(params, seq)
  chex.assert_trees_all_close(
      np.float64(got), _np_lstm_loss(params, seq), rtol=1e-5)


def test_lstm_text_splits(load_bench, common):
  bench = load_bench("bng_lstm")
  train, val, vocab = bench.load_text()
  assert len(vocab) == len(set(vocab)) > 50
  assert 8 * len(val) < len(train) < 10 * len(val)
  assert train.max() < len(vocab) and val.max() < len(vocab)
  # Selection trains on a prefix of the training text and scores on its
  # tail: the reported validation text is never seen while choosing.
  sel_train, sel_val = bench.selection_text(train)
  np.testing.assert_array_equal(np.concatenate([sel_train, sel_val]), train)
  assert len(sel_val) == pytest.approx(common.VAL_FRACTION * len(train), abs=1)
