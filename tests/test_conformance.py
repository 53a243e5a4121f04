"""One conformance suite over every method listed in methods_registry.METHODS.

The fast loop runs its compiled checks on ``methods_registry.FAST`` (one
method per module); the full suite on every method.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from methods_registry import fast_first
from methods_registry import METHODS
import normopt

IDS = [m.name for m in METHODS]
SHAPES = {
    "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "dense": {"kernel": (5, 4), "bias": (4,)},
    "head": {"kernel": (4, 3)},
    "scale": (3,),
}


def _tree(rng, dtype, scale=1.0):
  return jax.tree.map(
      lambda shape: jnp.asarray(scale * rng.normal(size=shape), dtype),
      SHAPES,
      is_leaf=lambda x: isinstance(x, tuple),
  )


def _params(method, rng, dtype=jnp.float32):
  params = _tree(rng, dtype)
  if method.params_kind == "sphere":
    params = normopt.normalize_vectors(params)
  return params


def _run(tx, params, grads, jit=True):
  """Applies tx to a list of gradients; returns (params, state, updates)."""
  state = tx.init(params)
  step = tx.update
  if jit:
    step = jax.jit(tx.update)
  updates = None
  for g in grads:
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state, updates


@pytest.mark.parametrize("method", fast_first())
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_finite_shapes_dtypes_and_single_compile(method, dtype):
  rng = np.random.default_rng(0)
  params = _params(method, rng, dtype)
  tx = method.make(**method.kwargs)
  state = tx.init(params)
  step = jax.jit(tx.update)
  p = params
  for i in range(3):
    g = _tree(rng, dtype, scale=10.0 ** (i - 1))
    u, state = step(g, state, p)
    p = optax.apply_updates(p, u)
    chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
    chex.assert_tree_all_finite(u)
    chex.assert_tree_all_finite(state)
  assert step._cache_size() == 1, "update recompiled on a later call"
  # The update must actually move the parameters.
  moved = jax.tree.map(lambda a, b: jnp.any(a != b), p, params)
  assert any(jax.tree.leaves(moved))


@pytest.mark.parametrize("method", fast_first())
def test_inject_hyperparams_traces_numeric_and_matches(method):
  rng = np.random.default_rng(1)
  params = _params(method, rng)
  grads = [_tree(rng, jnp.float32) for _ in range(3)]
  direct = method.make(**method.kwargs)
  injected = optax.inject_hyperparams(method.make)(**method.kwargs)
  p_direct, _, _ = _run(direct, params, grads)
  p_injected, state, _ = _run(injected, params, grads)
  for name in method.kwargs:
    assert name in state.hyperparams, f"{name} was not injected"
    assert isinstance(state.hyperparams[name], jax.Array)
  chex.assert_trees_all_close(p_injected, p_direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", fast_first())
def test_multisteps_equals_mean_gradient(method):
  rng = np.random.default_rng(2)
  params = _params(method, rng)
  grads = [_tree(rng, jnp.float32) for _ in range(4)]
  tx = method.make(**method.kwargs)
  multi = optax.MultiSteps(tx, every_k_schedule=2)
  p_multi, _, _ = _run(multi, params, grads)
  means = [
      jax.tree.map(lambda a, b: (a + b) / 2, grads[0], grads[1]),
      jax.tree.map(lambda a, b: (a + b) / 2, grads[2], grads[3]),
  ]
  p_ref, _, _ = _run(tx, params, means)
  chex.assert_trees_all_close(p_multi, p_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", fast_first())
def test_zero_gradient_after_nonzero_is_finite(method):
  rng = np.random.default_rng(3)
  params = _params(method, rng)
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads = [_tree(rng, jnp.float32), zeros, zeros]
  p, state, u = _run(method.make(**method.kwargs), params, grads)
  chex.assert_tree_all_finite((p, state, u))
  # The very first zero gradient of a stateless normalizer is a zero update.
  _, _, u0 = _run(method.make(**method.kwargs), params, [zeros])
  chex.assert_tree_all_finite(u0)


@pytest.mark.parametrize("method", [m for m in METHODS if m.needs_params], ids=lambda m: m.name)
def test_params_none_raises_naming_transformation(method):
  rng = np.random.default_rng(4)
  params = _params(method, rng)
  tx = method.make(**method.kwargs)
  state = tx.init(params)
  with pytest.raises(ValueError) as err:
    tx.update(_tree(rng, jnp.float32), state, None)
  assert "params" in str(err.value)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_all_methods_are_exported(method):
  # Every registered method is reachable from the package namespace (a
  # variant is named "<export>:<variant>").
  name = method.name.removesuffix("_unit").split(":")[0]
  assert name in normopt.__all__
