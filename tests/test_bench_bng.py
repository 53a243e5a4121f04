"""Quick runs of the BNG benchmarks (benchmarks/bng_cnn.py, bng_lstm.py).

Each benchmark runs once in ``--quick`` mode into a temporary directory; the
tests check the JSON it wrote. The LSTM model is also checked against a
float64 NumPy reference written from the LSTM equations.
"""

import json
import math

import chex
import jax
import numpy as np
import pytest


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


def test_cnn_quick_writes_outputs(cnn_result):
  out, res = cnn_result
  for ext in ("json", "png", "md"):
    assert (out / f"bng_cnn.{ext}").stat().st_size > 0
  cfg = res["config"]
  assert cfg["quick"] is True
  assert set(res["methods"]) == {"SGDM", "SGDM-NG"}
  assert [c["claim"] for c in res["claims"]] == ["SGDM-NG beats SGDM"]


def test_cnn_quick_trains(cnn_result):
  _, res = cnn_result
  cfg = res["config"]
  for name, r in res["methods"].items():
    loss = np.asarray(r["train_loss"])
    err = np.asarray(r["test_error"])
    assert loss.shape == err.shape == (cfg["seeds"], cfg["epochs"]), name
    assert np.all(np.isfinite(loss)), name
    # Mean training loss of the last epoch is below the first one's, and far
    # below the loss of a uniform guess over 10 classes.
    assert np.all(loss[:, -1] < loss[:, 0]), name
    assert np.all(loss[:, -1] < 0.8 * math.log(10)), name
    assert np.all((err >= 0) & (err <= 1)), name
    assert r["final_test_error"] == err[:, -1].tolist()


def test_lstm_quick_writes_outputs(lstm_result):
  out, res = lstm_result
  for ext in ("json", "png", "md"):
    assert (out / f"bng_lstm.{ext}").stat().st_size > 0
  assert res["config"]["quick"] is True
  assert list(res["runs"]) == [str(l) for l in res["config"]["lengths"]]
  for runs in res["runs"].values():
    assert set(runs) == {"Adam", "AdamNG"}
  assert res["claims"][0]["better"] == "AdamNG"


def test_lstm_quick_lowers_validation_loss(lstm_result):
  _, res = lstm_result
  cfg = res["config"]
  for runs in res["runs"].values():
    for name, r in runs.items():
      val = r["val_loss"]
      assert len(val) == cfg["steps"] // cfg["eval_every"] + 1
      assert all(v is not None and math.isfinite(v) for v in val), name
      # At initialisation the model is near a uniform guess; training helps.
      assert abs(val[0] - math.log(cfg["vocab_size"])) < 0.5, name
      assert val[-1] < val[0] - 0.3, name


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


def test_lstm_text_split(load_bench):
  bench = load_bench("bng_lstm")
  train, val, vocab = bench.load_text()
  assert len(vocab) == len(set(vocab)) > 50
  assert 8 * len(val) < len(train) < 10 * len(val)
  assert train.max() < len(vocab) and val.max() < len(vocab)
