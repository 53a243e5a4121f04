"""Optimizer states of every registry method survive checkpoints exactly.

State after two steps goes through ``flax.serialization`` (msgpack) and orbax;
training resumed from the restored state must be bit-identical to training
that never stopped. All methods step in one jitted function (one compile).
"""

from flax import serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from methods_registry import fast_first
from methods_registry import METHODS
import normopt

SHAPES = {
    "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "dense": {"kernel": (5, 4), "bias": (4,)},
    "head": {"kernel": (4, 3)},
}
STEPS_BEFORE, STEPS_AFTER = 2, 2


def _tree(rng, scale=1.0):
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.normal(size=s), jnp.float32),
      SHAPES,
      is_leaf=lambda x: isinstance(x, tuple),
  )


def _setup(method):
  rng = np.random.default_rng(0)
  params = _tree(rng)
  if method.params_kind == "sphere":
    params = normopt.normalize_vectors(params)
  grads = [_tree(rng) for _ in range(STEPS_BEFORE + STEPS_AFTER)]
  return method.make(**method.kwargs), params, grads


def _assert_bitwise(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert jnp.result_type(x) == jnp.result_type(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _selected_methods(request):
  """The methods this session's ``test_msgpack_round_trip`` items check (the
  fast loop selects ``methods_registry.FAST``); every method if none."""
  names = set()
  for item in request.session.items:
    callspec = getattr(item, "callspec", None)
    if getattr(item, "module", None) is request.module and callspec is not None:
      names.add(callspec.params["method"].name)
  return [m for m in METHODS if m.name in names] or METHODS


@pytest.fixture(scope="module")
def runs(request):
  """The selected methods at once (one compilation): params/state after
  ``STEPS_BEFORE`` steps, and after ``STEPS_AFTER`` more without a stop."""
  setups = {m.name: _setup(m) for m in _selected_methods(request)}
  txs = {n: s[0] for n, s in setups.items()}

  @jax.jit
  def step_all(params, states, grads):
    out_p, out_s = {}, {}
    for n, tx in txs.items():
      u, out_s[n] = tx.update(grads[n], states[n], params[n])
      out_p[n] = optax.apply_updates(params[n], u)
    return out_p, out_s

  def train(params, states, first, last):
    for t in range(first, last):
      params, states = step_all(params, states, {n: s[2][t] for n, s in setups.items()})
    return params, states

  params0 = {n: s[1] for n, s in setups.items()}
  states0 = jax.jit(lambda p: {n: txs[n].init(p[n]) for n in txs})(params0)
  mid = train(params0, states0, 0, STEPS_BEFORE)
  end = train(*mid, STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER)
  resume = lambda p, s: train(p, s, STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER)
  templates = {n: {"params": params0[n], "opt_state": states0[n]} for n in setups}
  return dict(mid=mid, end=end, resume=resume, templates=templates)


@pytest.mark.parametrize("method", fast_first())
def test_msgpack_round_trip(method, runs):
  p_mid, s_mid = (t[method.name] for t in runs["mid"])
  blob = serialization.to_bytes({"params": p_mid, "opt_state": s_mid})
  # Restore into a fresh template (what a new process has), not into s_mid.
  restored = serialization.from_bytes(runs["templates"][method.name], blob)
  _assert_bitwise(restored["opt_state"], s_mid)
  _assert_bitwise(restored["params"], p_mid)


def test_msgpack_resume_is_bit_identical(runs):
  p_mid, s_mid = runs["mid"]
  blob = serialization.to_bytes({"params": p_mid, "opt_state": s_mid})
  template = {
      "params": {n: t["params"] for n, t in runs["templates"].items()},
      "opt_state": {n: t["opt_state"] for n, t in runs["templates"].items()},
  }
  restored = serialization.from_bytes(template, blob)
  resumed = runs["resume"](restored["params"], restored["opt_state"])
  for n in runs["templates"]:
    _assert_bitwise((resumed[0][n], resumed[1][n]), (runs["end"][0][n], runs["end"][1][n]))
    # the run did move: the check is not comparing two no-ops.
    assert not np.array_equal(runs["end"][0][n]["dense"]["kernel"], p_mid[n]["dense"]["kernel"]), n


def test_orbax_round_trip_and_bit_identical_resume(tmp_path, runs):
  ocp = pytest.importorskip("orbax.checkpoint")
  p_mid, s_mid = runs["mid"]
  path = tmp_path / "ckpt"
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, {"params": p_mid, "opt_state": s_mid})
    checkpointer.wait_until_finished()
    template = {
        "params": {n: t["params"] for n, t in runs["templates"].items()},
        "opt_state": {n: t["opt_state"] for n, t in runs["templates"].items()},
    }
    restored = checkpointer.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, template))
  _assert_bitwise(restored["opt_state"], s_mid)
  resumed = runs["resume"](restored["params"], restored["opt_state"])
  for n in runs["templates"]:
    _assert_bitwise((resumed[0][n], resumed[1][n]), (runs["end"][0][n], runs["end"][1][n]))
