"""optax's conventions, checked for every registry method in ONE test.

A method joins by being listed in ``tests/methods_registry.py``; it cannot
skip any of these:

* ``update`` accepts and ignores keyword arguments it does not use (optax's
  ``GradientTransformationExtraArgs``), e.g. ``value=loss``;
* ``init`` accepts ``jax.ShapeDtypeStruct``s;
* the state has one tree structure (and leaf shapes and dtypes) whether the
  hyperparameters are numbers or arrays that ``optax.inject_hyperparams``
  made of them, and after ``update`` as after ``init``: a checkpoint written
  with one restores into the other;
* every method that takes ``blocks=`` or ``vector_axes=`` takes ``stacked=``;
* (``slow``: a subprocess with 4 virtual devices) state types are stable:
  ``jax.typeof`` of every state leaf from ``init``, from ``jax.jit(init)``
  and after an update agree, for float16, bfloat16 and float32 params split
  along their first axis, their last axis, replicated, and stacked with the
  stack axis split, on an Explicit mesh inside ``jax.set_mesh``, and in
  float32 outside it and on an Auto mesh (``init`` works in all four
  contexts, eagerly and under ``jit`` wherever ``optax.adam``'s does;
  ``tests/conventions_checks.py``, run once in a subprocess).
"""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from methods_registry import fast_first
from methods_registry import METHODS
import normopt
from subproc import run_json

ALIASES = (
    "sgd_ng", "adam_ng", "adagrad_ng", "sgd_ngadap", "adam_ngadap", "adagrad_bng",
    "sngd", "s_sngd", "nd_adam", "adam_norm", "diffgrad", "diffgrad_norm",
    "radam_norm", "adabelief_norm",
)


@pytest.fixture(scope="module")
def explicit_types():
  return run_json("conventions_checks.py", timeout=600)


def _tree(rng):
  return {
      "dense": {"kernel": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
      "scale": jnp.asarray(rng.normal(size=3), jnp.float32),
  }


def _params(method, rng):
  p = _tree(rng)
  return normopt.normalize_vectors(p) if method.params_kind == "sphere" else p


IDS = [m.name for m in METHODS]


@pytest.mark.parametrize("method", fast_first())
def test_optax_conventions(method):
  rng = np.random.default_rng(0)
  params = _params(method, rng)
  grads = _tree(rng)
  tx = method.make(**method.kwargs)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  # Extra keyword arguments are accepted and ignored.
  state = tx.init(params)
  u1, s1 = tx.update(grads, state, params)
  u2, s2 = tx.update(grads, state, params, value=jnp.asarray(1.5), unused_arg="x")
  chex.assert_trees_all_equal((u1, s1), (u2, s2))
  # Through optax.chain too (which forwards extra args to its members).
  chained = optax.chain(tx, optax.scale(1.0))
  u3, _ = chained.update(grads, chained.init(params), params, value=jnp.asarray(1.5))
  chex.assert_trees_all_equal(u3, u1)
  # init on abstract params gives the state that init on arrays gives.
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  got, want = tx.init(abstract), tx.init(params)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
  # stacked= wherever blocks= or vector_axes= is taken.
  sig = inspect.signature(method.make).parameters
  if "blocks" in sig or "vector_axes" in sig:
    assert "stacked" in sig


def _state_layout(tree):
  """A state's tree structure and its leaves' (shape, dtype, weak type)."""
  return jax.tree.structure(tree), [
      (x.shape, x.dtype, x.weak_type) for x in jax.tree.leaves(tree)
  ]


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_state_structure_is_the_same_under_inject_hyperparams(method):
  # inject_hyperparams makes every numeric hyperparameter an array (the
  # defaults too, e.g. weight_decay=0.0): the wrapped state's inner_state
  # must be the plain state, after init and after an update, so that a
  # checkpoint written with one restores into the other. Traced only
  # (jax.eval_shape): nothing compiles.
  rng = np.random.default_rng(5)
  params, grads = _params(method, rng), _tree(rng)
  plain = method.make(**method.kwargs)
  injected = optax.inject_hyperparams(method.make)(**method.kwargs)
  layouts = {}
  for name, tx, inner in (("plain", plain, lambda s: s),
                          ("injected", injected, lambda s: s.inner_state)):
    state = jax.eval_shape(tx.init, params)
    after = jax.eval_shape(lambda s, tx=tx: tx.update(grads, s, params)[1], state)
    layouts[f"{name} init"] = _state_layout(inner(state))
    layouts[f"{name} after update"] = _state_layout(inner(after))
  want = layouts["plain init"]
  differ = {k: v for k, v in layouts.items() if v != want}
  assert not differ, (want, differ)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_state_types_are_stable_under_sharding(method, explicit_types):
  # On an Explicit mesh (every dtype and layout), outside set_mesh and on an
  # Auto mesh: one subprocess with 4 virtual devices for all methods.
  assert method.name in explicit_types
  assert explicit_types[method.name] == {}, explicit_types[method.name]


@pytest.mark.parametrize("name", ALIASES)
def test_every_alias_takes_stacked_and_keyword_only_extras(name):
  sig = inspect.signature(getattr(normopt, name)).parameters
  assert "stacked" in sig and sig["stacked"].kind is inspect.Parameter.KEYWORD_ONLY
  for arg in ("gamma", "eps_norm", "axis_name", "mu_dtype", "eps_root", "min_param_norm"):
    if arg in sig:
      assert sig[arg].kind is inspect.Parameter.KEYWORD_ONLY, (name, arg)


def test_keyword_only_order_is_shared_by_aliases():
  order = ("gamma", "blocks", "stacked", "eps_norm", "axis_name", "weight_decay",
           "weight_decay_mask", "mu_dtype")
  for name in ALIASES:
    sig = inspect.signature(getattr(normopt, name)).parameters
    kw = [k for k, p in sig.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY and k in order]
    assert kw == [k for k in order if k in kw], (name, kw)
    # Every alias takes decoupled weight decay, off by default.
    assert sig["weight_decay"].default == 0.0, name
    assert sig["weight_decay_mask"].default is None, name


def test_adam_family_aliases_take_mu_dtype():
  for name in ("adam_ng", "adam_ngadap", "nd_adam", "adam_norm", "diffgrad",
               "diffgrad_norm", "radam_norm", "adabelief_norm"):
    tx = getattr(normopt, name)(1e-3, mu_dtype=jnp.bfloat16)
    p = normopt.normalize_vectors({"w": jnp.ones((3, 2)), "b": jnp.ones(2)})
    mus = [x for x in jax.tree.leaves(tx.init(p)) if x.dtype == jnp.bfloat16]
    assert len(mus) == 2, name  # the first moment of both leaves


@pytest.mark.parametrize("name", ["sgd_ng", "adam_ng", "sngd"])
def test_normalizing_aliases_forward_the_block_norm(name):
  sig = inspect.signature(getattr(normopt, name)).parameters
  assert list(sig)[-3:] == ["norm", "ns_steps", "ns_coeffs"], name
  g = _tree(np.random.default_rng(1))
  blocks = "global" if name == "sngd" else "layer"
  for norm in ("sign", "rms"):
    tx = getattr(normopt, name)(0.1, norm=norm)
    u, _ = tx.update(g, tx.init(g))
    d, _ = normopt.block_normalize(blocks, norm=norm).update(g, optax.EmptyState())
    base = {"sgd_ng": optax.sgd(0.1, momentum=0.9), "adam_ng": optax.adam(0.1),
            "sngd": optax.sgd(0.1)}[name]
    u_want, _ = base.update(d, base.init(g))
    chex.assert_trees_all_close(u, u_want, rtol=1e-6)
