"""normopt in the JAX ecosystem: Flax Linen, Flax NNX, Equinox, optax combinators.

Every training test asserts that the loss falls; every combinator test
compares values with the same normopt method applied by hand.
"""

import functools

import chex
import equinox as eqx
from flax import linen as nn
from flax import nnx
from flax.core import FrozenDict
from flax.core import unfreeze
import jax
import jax.numpy as jnp
import numpy as np
import optax

import normopt


@functools.cache
def _digits(n=256):
  """A fixed batch of scikit-learn digits: (x in [0, 1], integer labels)."""
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  return jnp.asarray(x[:n] / 16.0, jnp.float32), jnp.asarray(y[:n], jnp.int32)


def _xent(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ----------------------------------------------------------------- Flax Linen


class _LinenMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


def _train_linen(params, tx, steps=25):
  model = _LinenMLP()
  x, y = _digits()

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(lambda p: _xent(model.apply(p, x), y))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = tx.init(params)
  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return params, losses


def test_flax_linen_dict_and_frozendict_train_identically():
  x, _ = _digits()
  variables = unfreeze(_LinenMLP().init(jax.random.key(0), x[:1]))
  tx = normopt.adam_ng(3e-2)
  p_dict, losses_dict = _train_linen(variables, tx)
  p_frozen, losses_frozen = _train_linen(FrozenDict(variables), tx)
  assert losses_dict[-1] < 0.5 * losses_dict[0], losses_dict
  assert isinstance(p_frozen, FrozenDict)
  chex.assert_trees_all_close(unfreeze(p_frozen), p_dict, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(losses_frozen, losses_dict, rtol=1e-6)


def test_flax_linen_layer_blocks_are_modules():
  x, _ = _digits()
  variables = _LinenMLP().init(jax.random.key(0), x[:1])
  part = normopt.block_partition(variables, "layer")
  assert sorted(part.values()) == [
      ["['params']['Dense_0']['bias']", "['params']['Dense_0']['kernel']"],
      ["['params']['Dense_1']['bias']", "['params']['Dense_1']['kernel']"],
  ]


# ------------------------------------------------------------------ Flax NNX


class _NNXMLP(nnx.Module):

  def __init__(self, rngs):
    self.l1 = nnx.Linear(64, 32, rngs=rngs)
    self.l2 = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.l2(nnx.relu(self.l1(x)))


def test_nnx_layer_and_unit_blocks_resolve_to_kernel_and_bias():
  state = nnx.state(_NNXMLP(nnx.Rngs(0)), nnx.Param)
  part = normopt.block_partition(state, "layer")
  # one block per Linear, holding its kernel and bias, keyed by the module
  # path without the Variable's ``.value`` wrapper.
  assert list(part) == [("layer", (jax.tree_util.DictKey(k),)) for k in ("l1", "l2")]
  assert list(part.values()) == [
      [f"['{k}']['bias'].value", f"['{k}']['kernel'].value"] for k in ("l1", "l2")
  ]
  # Norms on the NNX state equal those on the plain dict, for every mode.
  pure = nnx.to_pure_dict(state)
  for blocks in ("leaf", "layer", "global", "unit"):
    chex.assert_trees_all_close(
        nnx.to_pure_dict(normopt.block_norms(state, blocks)),
        normopt.block_norms(pure, blocks),
        rtol=1e-6,
    )
  unit = nnx.to_pure_dict(normopt.block_norms(state, "unit"))
  assert unit["l1"]["kernel"].shape == (1, 32)  # one norm per output unit
  np.testing.assert_allclose(
      unit["l1"]["kernel"][0], np.linalg.norm(pure["l1"]["kernel"], axis=0), rtol=1e-6
  )


def test_nnx_optimizer_matches_plain_dict_and_trains():
  x, y = _digits()
  model = _NNXMLP(nnx.Rngs(0))
  tx = normopt.adam_ng(3e-2, blocks="layer")
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  p0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  def loss_fn(model):
    return _xent(model(x), y)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss, grads

  loss0, grads0 = step(model, optimizer)
  # The same step on a plain dict of the same parameters.
  g = nnx.to_pure_dict(grads0)
  u, _ = tx.update(g, tx.init(p0), p0)
  chex.assert_trees_all_close(
      nnx.to_pure_dict(nnx.state(model, nnx.Param)), optax.apply_updates(p0, u),
      rtol=1e-6, atol=1e-7,
  )
  losses = [float(loss0)] + [float(step(model, optimizer)[0]) for _ in range(24)]
  assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------ Equinox


def _eqx_rows(path, leaf):
  """Equinox Linear weights are (out, in): a unit is a row, reduce axis 1."""
  del path
  return (1,) if jnp.ndim(leaf) == 2 else None


def test_equinox_filter_training_adam_ng_and_nd_adam():
  x, y = _digits()
  model = eqx.nn.MLP(64, 10, 32, depth=1, key=jax.random.key(0))
  # blocks="unit" reduces all axes but the last, i.e. Equinox's input axis:
  # one norm per input feature (column), not per output unit.
  assert normopt.block_norms(model.layers[0].weight, "unit").shape == (1, 64)
  # ND-Adam keeps each unit's incoming weights on the sphere. Equinox stores
  # Linear weights as (out, in), so the default "unit" rule (reduce all axes
  # but the last) would take columns: pass vector_axes.
  model = eqx.tree_at(
      lambda m: [l.weight for l in m.layers],
      model,
      [normopt.normalize_vectors(l.weight, lambda p, w: (1,)) for l in model.layers],
  )
  for tx in (normopt.adam_ng(3e-2), normopt.nd_adam(0.05, 3e-2, vector_axes=_eqx_rows)):
    params, static = eqx.partition(model, eqx.is_array)
    state = tx.init(params)

    @jax.jit
    def step(params, state, static=static, tx=tx):
      def loss_fn(p):
        m = eqx.combine(p, static)
        return _xent(jax.vmap(m)(x), y)

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, state = tx.update(grads, state, params)
      return eqx.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(25):
      params, state, loss = step(params, state)
      losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0], losses
  # ND-Adam's rows are still unit vectors after training.
  for layer in eqx.combine(params, static).layers:
    np.testing.assert_allclose(np.linalg.norm(layer.weight, axis=1), 1.0, rtol=1e-5)


# -------------------------------------------------------------- combinators


def _tree(rng):
  return {
      "dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=3), jnp.float32)},
      "head": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
               "bias": jnp.asarray(rng.normal(size=2), jnp.float32)},
  }


def _steps(tx, params, grads_list):
  state = tx.init(params)
  step = jax.jit(tx.update)
  out = []
  for g in grads_list:
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(u)
  return params, state, out


def test_masked_leaves_untouched_and_rest_normalized():
  rng = np.random.default_rng(0)
  params = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  mask = {"dense": {"kernel": True, "bias": False}, "head": {"kernel": True, "bias": False}}
  _, _, us = _steps(optax.masked(normopt.adam_ng(0.1), mask), params, grads)
  # Reference: adam_ng on the kernels alone (each kernel is its own layer).
  kern = lambda t: {k: {"kernel": v["kernel"]} for k, v in t.items()}
  _, _, ref = _steps(normopt.adam_ng(0.1), kern(params), [kern(g) for g in grads])
  for u, r, g in zip(us, ref, grads, strict=True):
    for k in ("dense", "head"):
      np.testing.assert_array_equal(u[k]["bias"], g[k]["bias"])  # untouched
      np.testing.assert_allclose(u[k]["kernel"], r[k]["kernel"], rtol=1e-6)


def test_partition_applies_each_optimizer_to_its_leaves():
  rng = np.random.default_rng(1)
  params = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  labels = {"dense": {"kernel": "ng", "bias": "ng"}, "head": {"kernel": "sgd", "bias": "sgd"}}
  tx = optax.partition({"ng": normopt.sgd_ng(0.1), "sgd": optax.sgd(0.1)}, labels)
  _, _, us = _steps(tx, params, grads)
  _, _, ref_ng = _steps(normopt.sgd_ng(0.1), {"dense": params["dense"]},
                        [{"dense": g["dense"]} for g in grads])
  for u, r, g in zip(us, ref_ng, grads, strict=True):
    chex.assert_trees_all_close(u["dense"], r["dense"], rtol=1e-6)
    chex.assert_trees_all_close(u["head"], jax.tree.map(lambda x: -0.1 * x, g["head"]), rtol=1e-6)
  # the "ng" part really is block-normalized: its layer norm is lr * 1 at step 1.
  np.testing.assert_allclose(float(optax.tree.norm(us[0]["dense"])), 0.1, rtol=1e-5)


def test_inject_hyperparams_changes_learning_rate_mid_training():
  rng = np.random.default_rng(2)
  params = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  tx = optax.inject_hyperparams(normopt.adam_ng)(learning_rate=0.1, b1=0.9)
  state = tx.init(params)
  step = jax.jit(tx.update)
  _, _, ref = _steps(normopt.adam_ng(0.1, b1=0.9), params, grads[:2])
  u0, state = step(grads[0], state, params)
  chex.assert_trees_all_close(u0, ref[0], rtol=1e-4)  # traced b1: f32 rounding
  state.hyperparams["learning_rate"] = jnp.asarray(0.05)
  u1, state = step(grads[1], state, params)
  chex.assert_trees_all_close(u1, jax.tree.map(lambda r: 0.5 * r, ref[1]), rtol=1e-4)


def test_multisteps_accumulates_then_applies_mean_gradient():
  rng = np.random.default_rng(3)
  params = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  tx = optax.MultiSteps(normopt.sgd_ng(0.1), every_k_schedule=3)
  _, _, us = _steps(tx, params, grads)
  for u in us[:2]:
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u))
  mean = jax.tree.map(lambda *g: sum(g) / 3, *grads)
  _, _, ref = _steps(normopt.sgd_ng(0.1), params, [mean])
  chex.assert_trees_all_close(us[2], ref[0], rtol=1e-5)


def test_apply_if_finite_skips_nan_step_and_keeps_state():
  rng = np.random.default_rng(4)
  params = _tree(rng)
  g0, g1 = _tree(rng), _tree(rng)
  bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), g0)
  tx = optax.apply_if_finite(normopt.adam_ng(0.1), max_consecutive_errors=3)
  state = tx.init(params)
  step = jax.jit(tx.update)
  u, state = step(g0, state, params)
  inner_before = state.inner_state
  u_bad, state = step(bad, state, params)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(u_bad))
  assert int(state.notfinite_count) == 1 and int(state.total_notfinite) == 1
  chex.assert_trees_all_equal(state.inner_state, inner_before)
  u_next, state = step(g1, state, params)
  _, _, ref = _steps(normopt.adam_ng(0.1), params, [g0, g1])
  chex.assert_trees_all_close(u_next, ref[1], rtol=1e-6)
  assert int(state.notfinite_count) == 0


def test_named_chain_equals_alias():
  rng = np.random.default_rng(5)
  params = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  tx = optax.named_chain(
      ("normalize", normopt.block_normalize("layer")),
      ("adam", optax.adam(0.1)),
  )
  _, state, us = _steps(tx, params, grads)
  _, _, ref = _steps(normopt.adam_ng(0.1), params, grads)
  assert set(state) == {"normalize", "adam"}
  for u, r in zip(us, ref, strict=True):
    chex.assert_trees_all_close(u, r, rtol=1e-6)
