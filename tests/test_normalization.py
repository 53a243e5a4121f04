"""BNG / SNGD / CLIP transformations and aliases vs float64 NumPy references."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
import np_ref
import trees

MODES = ["leaf", "layer", "global", "unit"]
STEPS = 5


def _grads(seed, n=STEPS):
  rng = np.random.default_rng(seed)
  # Magnitudes vary by orders between steps and between layers.
  return [trees.flax_tree(rng, scale=10.0 ** rng.uniform(-3, 3)) for _ in range(n)]


def _unflatten(like, leaves):
  return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(x, jnp.float32) for x in leaves])


def _run_jax(tx, params, grads):
  state = tx.init(params)
  step = jax.jit(tx.update)
  traj = []
  for g in grads:
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    traj.append(params)
  return traj


def _run_np(update, params, grads, needs_params=False):
  """update(g_leaves_with_paths, w_leaves_with_paths) -> list of update arrays."""
  w = np_ref.flat(params)
  traj = []
  for g in grads:
    u = update(np_ref.flat(g), w)
    w = [(p, x + d) for (p, x), d in zip(w, u, strict=True)]
    traj.append(_unflatten(params, [x for _, x in w]))
  return traj


def _assert_traj(got, want, rtol=1e-5, atol=1e-6):
  for g, w in zip(got, want, strict=True):
    chex.assert_trees_all_close(g, w, rtol=rtol, atol=atol)


@pytest.mark.parametrize("blocks", MODES)
def test_block_normalize_reference(blocks):
  grads = _grads(0)
  tx = normopt.block_normalize(blocks)
  for g in grads:
    got, _ = jax.jit(tx.update)(g, tx.init(g))
    chex.assert_trees_all_close(
        got, _unflatten(g, np_ref.normalize(np_ref.flat(g), blocks)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("blocks", MODES)
def test_ngadap_scale_reference(blocks):
  rng = np.random.default_rng(1)
  w = trees.flax_tree(rng, scale=0.3)
  tx = normopt.ngadap_scale(alpha=0.05, blocks=blocks)
  for g in _grads(1):
    got, _ = jax.jit(tx.update)(g, tx.init(w), w)
    want = np_ref.ngadap(np_ref.flat(g), np_ref.flat(w), blocks, alpha=0.05)
    chex.assert_trees_all_close(got, _unflatten(g, want), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("blocks", MODES)
def test_clip_block_norm_reference(blocks):
  tx = normopt.clip_block_norm(2.0, blocks=blocks)
  for g in _grads(2):
    got, _ = jax.jit(tx.update)(g, tx.init(g))
    chex.assert_trees_all_close(
        got, _unflatten(g, np_ref.clip(np_ref.flat(g), blocks, 2.0)), rtol=1e-5, atol=1e-7)


def test_clip_leaves_small_blocks_unchanged():
  g = {"a": {"w": jnp.full(4, 0.1)}, "b": {"w": jnp.full(4, 30.0)}}
  tx = normopt.clip_block_norm(1.0)
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(u["a"]["w"], g["a"]["w"])
  np.testing.assert_allclose(float(jnp.linalg.norm(u["b"]["w"])), 1.0, rtol=1e-6)


# --- Optimizers over several steps, every block mode -----------------------

def _np_alias(kind, blocks, lr, **hp):
  """A NumPy optimizer: (g leaves, w leaves) -> update arrays."""
  if kind in ("sgd_ng", "sgd_ngadap"):
    base = np_ref.SGDM(lr, hp["momentum"], hp.get("nesterov", False))
  elif kind in ("adam_ng", "adam_ngadap"):
    base = np_ref.Adam(lr, hp["b1"], hp["b2"], hp["eps"])
  elif kind == "adagrad_ng":
    base = np_ref.AdaGrad(lr, hp["initial_accumulator_value"], hp["eps"])
  elif kind == "adagrad_bng":
    opt = np_ref.AdaGradBNG(lr, blocks, hp["delta"])
    return lambda g, w: opt(g)
  elif kind == "sngd":
    return lambda g, w: [-lr * x for x in np_ref.normalize(g, "global")]
  if kind.endswith("ngadap"):
    return lambda g, w: base(np_ref.ngadap(g, w, blocks, hp["alpha"]))
  return lambda g, w: base(np_ref.normalize(g, blocks))


ALIASES = [
    ("sgd_ng", dict(momentum=0.9)),
    ("sgd_ng", dict(momentum=0.5, nesterov=True)),
    ("adam_ng", dict(b1=0.9, b2=0.99, eps=1e-8)),
    ("adagrad_ng", dict(initial_accumulator_value=0.1, eps=1e-7)),
    ("sgd_ngadap", dict(momentum=0.9, alpha=0.02)),
    ("adam_ngadap", dict(b1=0.8, b2=0.999, eps=1e-8, alpha=0.05)),
    ("adagrad_bng", dict(delta=1e-8)),
]


@pytest.mark.fast_cases("sgd_ng-0-leaf", "adam_ng-2-layer", "adagrad_ng-3-unit",
                        "sgd_ngadap-4-global", "adam_ngadap-5-unit", "adagrad_bng-6-layer")
@pytest.mark.parametrize("blocks", MODES)
@pytest.mark.parametrize("kind,hp", ALIASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(ALIASES)])
def test_alias_reference_several_steps(kind, hp, blocks):
  params = trees.flax_tree(np.random.default_rng(3), scale=0.5)
  grads = _grads(4)
  tx = getattr(normopt, kind)(0.01, blocks=blocks, **hp)
  _assert_traj(_run_jax(tx, params, grads),
               _run_np(_np_alias(kind, blocks, 0.01, **hp), params, grads))


def test_sngd_reference():
  params = trees.flax_tree(np.random.default_rng(5))
  grads = _grads(6)
  _assert_traj(_run_jax(normopt.sngd(0.1), params, grads),
               _run_np(_np_alias("sngd", "global", 0.1), params, grads))


def test_s_sngd_follows_stagewise_steps():
  # Stages of ceil(0.25/0.1)=3 steps at 0.1, then ceil(0.25/0.05)=5 at 0.05,
  # then 0.01 forever: each step moves by exactly the stage's rate.
  params = {"w": jnp.zeros(3)}
  tx = normopt.s_sngd([0.1, 0.05, 0.01], stage_length=0.25)
  state = tx.init(params)
  rng = np.random.default_rng(7)
  sizes = []
  for _ in range(12):
    u, state = tx.update({"w": jnp.asarray(rng.normal(size=3), jnp.float32)}, state)
    sizes.append(float(jnp.linalg.norm(u["w"])))
  np.testing.assert_allclose(sizes, [0.1] * 3 + [0.05] * 5 + [0.01] * 4, rtol=1e-6)


# --- With normalization switched off, each alias equals its optax base -----

def _unit_block_grads(seed, blocks):
  """Gradients whose blocks already have unit norm: normalization is identity."""
  out = []
  for g in _grads(seed):
    out.append(_unflatten(g, np_ref.normalize(np_ref.flat(g), blocks)))
  return out


BASES = [
    (functools.partial(normopt.sgd_ng, momentum=0.9), functools.partial(optax.sgd, momentum=0.9)),
    (functools.partial(normopt.sgd_ng, momentum=0.9, nesterov=True),
     functools.partial(optax.sgd, momentum=0.9, nesterov=True)),
    (normopt.adam_ng, optax.adam),
    (normopt.adagrad_ng, optax.adagrad),
]


@pytest.mark.fast_cases("layer-adam", "unit-sgd_nesterov")
@pytest.mark.parametrize("ours,base", BASES, ids=["sgd", "sgd_nesterov", "adam", "adagrad"])
@pytest.mark.parametrize("blocks", ["layer", "unit"])
def test_alias_equals_optax_base_when_blocks_have_unit_norm(ours, base, blocks):
  params = trees.flax_tree(np.random.default_rng(8))
  grads = _unit_block_grads(9, blocks)
  _assert_traj(_run_jax(ours(0.05, blocks=blocks), params, grads),
               _run_jax(base(0.05), params, grads))


def test_sngd_equals_sgd_on_unit_global_norm():
  params = trees.flax_tree(np.random.default_rng(10))
  grads = _unit_block_grads(11, "global")
  _assert_traj(_run_jax(normopt.sngd(0.05), params, grads),
               _run_jax(optax.sgd(0.05), params, grads))


def test_ngadap_equals_base_when_grad_norm_is_alpha_w_norm():
  # A gradient whose layer norms already equal alpha*||w_b|| passes unchanged.
  params = trees.flax_tree(np.random.default_rng(12), scale=2.0)
  alpha = 0.05
  wn = np_ref.block_norms(np_ref.flat(params), "layer")
  grads = []
  for g in _unit_block_grads(13, "layer"):
    grads.append(_unflatten(
        g, [alpha * n * x for (_, x), n in zip(np_ref.flat(g), wn, strict=True)]))
  tx = normopt.ngadap_scale(alpha)
  for g in grads:
    u, _ = tx.update(g, tx.init(params), params)
    chex.assert_trees_all_close(u, g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("blocks", MODES)
@pytest.mark.parametrize("min_param_norm", [0.0, 1.0])
def test_ngadap_paper_rule_small_and_zero_blocks(blocks, min_param_norm):
  # Blocks with ‖w_b‖ well below 1 (the paper's rule scales by it, the
  # floor-1 ablation does not) and one all-zero block (falls back to 1).
  rng = np.random.default_rng(15)
  w = trees.flax_tree(rng, scale=0.01)
  layers = w["params"]
  first, other = sorted(layers)[:2]
  layers[first] = jax.tree.map(jnp.zeros_like, layers[first])
  tx = normopt.ngadap_scale(alpha=0.05, blocks=blocks, min_param_norm=min_param_norm)
  for g in _grads(16):
    got, _ = jax.jit(tx.update)(g, tx.init(w), w)
    want = np_ref.ngadap(np_ref.flat(g), np_ref.flat(w), blocks, alpha=0.05,
                         min_param_norm=min_param_norm)
    chex.assert_trees_all_close(got, _unflatten(g, want), rtol=1e-5, atol=1e-7)
  # The zero block steps by alpha: a unit-norm direction times 0.05.
  if blocks == "layer":
    np.testing.assert_allclose(float(optax.tree.norm(got["params"][first])), 0.05, rtol=1e-5)
    wn = float(optax.tree.norm(layers[other]))
    assert 0 < wn < 1.0
    np.testing.assert_allclose(float(optax.tree.norm(got["params"][other])),
                               0.05 * max(wn, min_param_norm), rtol=1e-5)


def test_ngadap_rejects_negative_floor():
  with pytest.raises(ValueError, match="min_param_norm must be >= 0"):
    normopt.ngadap_scale(min_param_norm=-1.0)


# --- Bad input --------------------------------------------------------------

def test_ngadap_zero_initialized_bias_still_trains_with_leaf_blocks():
  # Fit y = x @ w + b with b initialized to zero; b's own block has norm 0.
  rng = np.random.default_rng(14)
  x = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)
  y = x @ jnp.array([1.0, -2.0, 0.5]) + 3.0
  params = {"w": jnp.asarray(rng.normal(size=3), jnp.float32), "b": jnp.zeros(())}
  loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
  tx = normopt.sgd_ngadap(optax.cosine_decay_schedule(1.0, 400), momentum=0.9, blocks="leaf",
                          alpha=0.1)
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  l0 = loss(params)
  for _ in range(400):
    params, state = step(params, state)
  np.testing.assert_allclose(float(params["b"]), 3.0, atol=0.05)
  assert loss(params) < 1e-3 * l0


@pytest.mark.parametrize(
    "make", [normopt.ngadap_scale, functools.partial(normopt.adam_ngadap, 0.1)])
def test_params_none_raises_value_error_naming_transformation(make):
  tx = make()
  g = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match="ngadap_scale"):
    tx.update(g, tx.init(g), None)


def test_mismatched_trees_raise_clear_error():
  tx = normopt.ngadap_scale()
  params = {"a": {"w": jnp.ones(3)}, "b": {"w": jnp.ones(2)}}
  with pytest.raises(
      ValueError, match="ngadap_scale: updates and params have different tree structures"):
    tx.update({"a": {"w": jnp.ones(3)}}, tx.init(params), params)
