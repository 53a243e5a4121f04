"""AdaNorm (adanorm_rescale, *_norm optimizers) and diffGrad against NumPy."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt

SHAPES = {
    "dense": {"kernel": (4, 3), "bias": (3,)},
    "out": {"kernel": (3, 2)},
}
# Per-step gradient scale: norms fall (the EMA overtakes them: correction on)
# and rise again (correction off).
SCALES = [1.0, 2.0, 0.05, 0.02, 3.0, 0.5, 0.01, 4.0, 0.1, 0.03]
LR = 0.1


def _grads(seed, scales=SCALES):
  rng = np.random.default_rng(seed)
  return [
      jax.tree.map(
          lambda shape, sc=sc: sc * rng.normal(size=shape),
          SHAPES,
          is_leaf=lambda x: isinstance(x, tuple),
      )
      for sc in scales
  ]


def _f32(tree, dtype=jnp.float32):
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


# --------------------------------------------------------------------------
# float64 NumPy references, written from the equations.


def _flat(tree):
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return [p for p, _ in leaves], [np.asarray(x, np.float64) for _, x in leaves], treedef


def _block_keys(paths, blocks):
  if blocks == "leaf":
    return list(range(len(paths)))
  if blocks == "layer":
    return [tuple(p[:-1]) for p in paths]
  if blocks == "global":
    return [0] * len(paths)
  raise ValueError(blocks)


def np_adanorm(grads, gamma, blocks="leaf"):
  """Reference AdaNorm correction: list of (s, fired-per-leaf, e-per-leaf)."""
  paths, _, _ = _flat(grads[0])
  keys = _block_keys(paths, blocks)
  e = {k: 0.0 for k in keys}
  out = []
  for g in grads:
    _, gl, treedef = _flat(g)
    sq = {}
    for k, x in zip(keys, gl, strict=True):
      sq[k] = sq.get(k, 0.0) + np.sum(x * x)
    norm = {k: np.sqrt(v) for k, v in sq.items()}
    for k in norm:
      e[k] = gamma * e[k] + (1 - gamma) * norm[k]
    s, fired = [], []
    for k, x in zip(keys, gl, strict=True):
      on = e[k] > norm[k]
      factor = (e[k] / norm[k] if norm[k] > 0 else 0.0) if on else 1.0
      s.append(x * factor)
      fired.append(bool(on))
    out.append((s, fired, [e[k] for k in keys], treedef))
  return out


def np_optimizer(
    kind, grads, gamma, *, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0,
    threshold=5.0, blocks="leaf", residual_uses_corrected=False,
    both_moments=False, f32_hparams=True, nesterov=False, mu_dtype=None,
):
  """Reference AdaNorm Adam/diffGrad/RAdam/AdaBelief; returns updates, fired."""
  # The JAX side computes in float32, where 0.999 is 0.99900001: use the
  # hyperparameters as float32 represents them (RAdam's rho_t near its
  # threshold amplifies the difference ~2000 times).
  if f32_hparams:
    b1, b2 = float(np.float32(b1)), float(np.float32(b2))
  corr = np_adanorm(grads, gamma, blocks)
  n = len(corr[0][0])
  m = [0.0] * n
  v = [0.0] * n
  gp = [0.0] * n
  rho_inf = 2.0 / (1.0 - b2) - 1.0
  updates, fired = [], []
  for t, (g, (s, on, _, treedef)) in enumerate(zip(grads, corr, strict=True), start=1):
    _, gl, _ = _flat(g)
    u_t = []
    for i in range(n):
      x2 = s[i] if both_moments else gl[i]
      decayed = b1 * m[i]
      if mu_dtype is not None:
        # As optax's update_moment: the Python float b1 times a bf16 moment
        # is a bf16 product, so b1 itself is rounded to bf16 (0.8984375);
        # XLA keeps the product in float32 (excess precision).
        decayed = float(np.asarray(b1, mu_dtype)) * m[i]
      m[i] = decayed + (1 - b1) * s[i]
      if kind == "adabelief":
        r = (s[i] if residual_uses_corrected else gl[i]) - m[i]
        v[i] = b2 * v[i] + (1 - b2) * r * r + eps_root
      else:
        v[i] = b2 * v[i] + (1 - b2) * x2 * x2
      mh = m[i] / (1 - b1**t)
      if mu_dtype is not None:  # stored rounded; this step used it unrounded.
        m[i] = np.asarray(m[i], mu_dtype).astype(np.float64)
      if nesterov:  # optax's form; its fresh term is s_t.
        mh = b1 * m[i] / (1 - b1 ** (t + 1)) + (1 - b1) * s[i] / (1 - b1**t)
      vh = v[i] / (1 - b2**t)
      if kind == "adabelief":
        u = mh / (np.sqrt(vh) + eps)
      else:
        u = mh / (np.sqrt(vh + eps_root) + eps)
      if kind == "radam":
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= threshold:
          rt = np.sqrt((rho - 4) * (rho - 2) * rho_inf
                       / ((rho_inf - 4) * (rho_inf - 2) * rho))
          u = rt * u
        else:
          u = mh
      if kind == "diffgrad":
        u = u / (1 + np.exp(-np.abs(gp[i] - gl[i])))
        gp[i] = gl[i]
      u_t.append(-LR * u)
    updates.append(jax.tree_util.tree_unflatten(treedef, u_t))
    fired.append(on)
  return updates, fired


# --------------------------------------------------------------------------
# Running the JAX side.


def _run(tx, grads, dtype=jnp.float32):
  """Jitted updates of tx over grads; returns (list of updates, last state)."""
  state = tx.init(_f32(grads[0], dtype))
  step = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = step(_f32(g, dtype), state)
    out.append(u)
  return out, state


def _close(actual, expected, rtol=2e-4, atol=1e-6):
  for a, e in zip(actual, expected, strict=True):
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: np.asarray(x, np.float64), a), e,
        rtol=rtol, atol=atol,
    )


def _assert_switched(fired):
  """The correction fired on some steps and not on others, for every leaf."""
  fired = np.asarray(fired)  # (steps, leaves)
  assert fired.any(axis=0).all(), fired
  assert (~fired).any(axis=0).all(), fired


ALIASES = {
    "adam": normopt.adam_norm,
    "diffgrad": normopt.diffgrad_norm,
    "radam": normopt.radam_norm,
    "adabelief": normopt.adabelief_norm,
}


@pytest.mark.parametrize("kind", list(ALIASES))
def test_norm_optimizer_matches_numpy_reference(kind):
  grads = _grads(0)
  extra = dict(eps=1e-8, eps_root=1e-12) if kind == "adabelief" else {}
  tx = ALIASES[kind](LR, gamma=0.95, **extra)
  expected, fired = np_optimizer(kind, grads, 0.95, **extra)
  _assert_switched(fired)
  # float32: what users run.
  actual, _ = _run(tx, grads)
  rtol = 2e-2 if kind == "radam" else 2e-4  # f32 rho_t near the threshold
  _close(actual, expected, rtol=rtol)
  # float64 (scoped x64): the equations to ~machine precision.
  with jax.enable_x64(True):
    actual64, _ = _run(tx, grads, jnp.float64)
  expected64, _ = np_optimizer(kind, grads, 0.95, f32_hparams=False, **extra)
  _close(actual64, expected64, rtol=1e-9, atol=1e-13)


def test_adabelief_official_residual_option():
  grads = _grads(1)
  kw = dict(eps=1e-8, eps_root=1e-12)
  official, _ = _run(
      normopt.adabelief_norm(LR, gamma=0.9, residual_uses_corrected=True, **kw),
      grads,
  )
  paper, _ = _run(normopt.adabelief_norm(LR, gamma=0.9, **kw), grads)
  exp_off, fired = np_optimizer(
      "adabelief", grads, 0.9, residual_uses_corrected=True, **kw
  )
  exp_pap, _ = np_optimizer("adabelief", grads, 0.9, **kw)
  _assert_switched(fired)
  _close(official, exp_off)
  _close(paper, exp_pap)
  # The two conventions really differ once the correction has fired.
  diff = max(
      float(jnp.max(jnp.abs(a - b)))
      for a, b in zip(jax.tree.leaves(official[-1]), jax.tree.leaves(paper[-1]), strict=True)
  )
  assert diff > 1e-4


def test_radam_norm_rectified_phase_and_layer_blocks():
  # b2 = 0.9 reaches rho_t >= 5 after a few steps, so both RAdam branches
  # run while the correction switches; one e per layer (kernel + bias).
  grads = _grads(2)
  tx = normopt.radam_norm(LR, b2=0.9, gamma=0.8, blocks="layer")
  actual, state = _run(tx, grads)
  expected, fired = np_optimizer("radam", grads, 0.8, b2=0.9, blocks="layer")
  _assert_switched(fired)
  _close(actual, expected)
  # kernel and bias of one layer share their e.
  e = state[0].e
  np.testing.assert_array_equal(
      np.ravel(e["dense"]["kernel"]), np.ravel(e["dense"]["bias"])
  )


def test_adanorm_rescale_matches_reference_and_state():
  grads = _grads(3)
  for blocks in ("leaf", "layer", "global"):
    tx = normopt.adanorm_rescale(gamma=0.9, blocks=blocks)
    state = tx.init(_f32(grads[0]))
    step = jax.jit(tx.update)
    ref = np_adanorm(grads, 0.9, blocks)
    for g, (s, _, e, treedef) in zip(grads, ref, strict=True):
      u, state = step(_f32(g), state)
      _close([u], [jax.tree_util.tree_unflatten(treedef, s)])
      e_leaves = [float(np.ravel(x)[0]) for x in jax.tree.leaves(state.e)]
      np.testing.assert_allclose(e_leaves, e, rtol=1e-5)
    _assert_switched([r[1] for r in ref])
    assert int(state.count) == len(grads)


def test_both_moments_ablation_is_rescale_then_stock_adam():
  grads = _grads(4)
  tx = optax.chain(normopt.adanorm_rescale(0.9), optax.adam(LR))
  actual, _ = _run(tx, grads)
  expected, fired = np_optimizer("adam", grads, 0.9, both_moments=True)
  _assert_switched(fired)
  _close(actual, expected)


@pytest.mark.parametrize("kind", ["adam", "radam", "adabelief"])
def test_nesterov_with_correction_matches_numpy_reference(kind):
  grads = _grads(8)
  tx = ALIASES[kind](LR, gamma=0.95, nesterov=True)
  defaults = dict(eps=1e-16, eps_root=1e-16) if kind == "adabelief" else {}
  expected, fired = np_optimizer(kind, grads, 0.95, nesterov=True, **defaults)
  _assert_switched(fired)
  with jax.enable_x64(True):
    actual64, _ = _run(tx, grads, jnp.float64)
  expected64, _ = np_optimizer(
      kind, grads, 0.95, nesterov=True, f32_hparams=False, **defaults
  )
  _close(actual64, expected64, rtol=1e-9, atol=1e-13)
  actual, _ = _run(tx, grads)
  _close(actual, expected, rtol=2e-2 if kind == "radam" else 2e-4)


@pytest.mark.parametrize("kind", ["adam", "diffgrad"])
def test_mu_dtype_stores_first_moment_in_that_dtype(kind):
  grads = _grads(9)
  tx = ALIASES[kind](LR, gamma=0.95, mu_dtype=jnp.bfloat16)
  actual, state = _run(tx, grads)
  mu = state[0].mu
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(mu))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[0].nu))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(actual))
  expected, _ = np_optimizer(kind, grads, 0.95, mu_dtype=jnp.bfloat16)
  _close(actual, expected)


def test_diffgrad_matches_reference_and_has_friction():
  grads = _grads(5)
  actual, _ = _run(normopt.diffgrad(LR), grads)
  # gamma=0 in the reference: no correction (e = ||g|| never exceeds it).
  expected, fired = np_optimizer("diffgrad", grads, 0.0)
  assert not np.asarray(fired).any()
  _close(actual, expected)
  # Friction is on: diffGrad differs from Adam (xi < 1).
  adam, _ = _run(optax.adam(LR), grads)
  assert not np.allclose(jax.tree.leaves(adam[-1])[0], jax.tree.leaves(actual[-1])[0])


BASES = [
    ("adam", functools.partial(normopt.adam_norm, gamma=0.0), optax.adam, {}),
    ("adam_nesterov", functools.partial(normopt.adam_norm, gamma=0.0, nesterov=True),
     functools.partial(optax.adam, nesterov=True), {}),
    ("radam", functools.partial(normopt.radam_norm, gamma=0.0), optax.radam, {}),
    ("radam_b2", functools.partial(normopt.radam_norm, gamma=0.0, b2=0.9),
     functools.partial(optax.radam, b2=0.9), {}),
    ("adabelief", functools.partial(normopt.adabelief_norm, gamma=0.0), optax.adabelief, {}),
    ("adabelief_official", functools.partial(
        normopt.adabelief_norm, gamma=0.0, residual_uses_corrected=True), optax.adabelief, {}),
    ("diffgrad", functools.partial(normopt.diffgrad_norm, gamma=0.0), normopt.diffgrad, {}),
]


@pytest.mark.parametrize("name,mine,base,kw", BASES, ids=[b[0] for b in BASES])
def test_gamma_zero_equals_base(name, mine, base, kw):
  del name
  grads = _grads(6)
  a, _ = _run(mine(LR, **kw), grads)
  b, _ = _run(base(LR, **kw), grads)
  for x, y in zip(a, b, strict=True):
    chex.assert_trees_all_close(x, y, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind", list(ALIASES))
def test_zero_gradient_after_nonzero_stays_finite(kind):
  grads = _grads(7, scales=[1.0, 2.0, 0.0, 0.0, 1.0])
  tx = ALIASES[kind](LR)
  updates, state = _run(tx, grads)
  for u in updates:
    chex.assert_tree_all_finite(u)
  chex.assert_tree_all_finite(state)
  # e keeps the history (decays, is not reset) through the zero steps.
  assert all(float(np.ravel(x)[0]) > 0 for x in jax.tree.leaves(state[0].e))


def test_zero_gradient_is_finite_under_jax_grad():
  tx = normopt.adanorm_rescale(0.9)
  g0 = _f32(_grads(8, scales=[1.0])[0])
  _, state = jax.jit(tx.update)(g0, tx.init(g0))
  zeros = jax.tree.map(jnp.zeros_like, g0)

  def f(g):
    u, _ = tx.update(g, state)
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(u))

  u, _ = jax.jit(tx.update)(zeros, state)
  chex.assert_trees_all_equal(u, zeros)
  chex.assert_tree_all_finite(jax.jit(jax.grad(f))(zeros))


@pytest.mark.parametrize("eps", [1e-12, 0.0, 1e-2])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_correction_edge_norms(eps, dtype):
  # The factor comes from one rsqrt of the block's sum of squares: check it
  # against 1/max(n, eps) from the exact norm, for norms below eps, zero
  # blocks (factor 0: s = 0, no NaN) and an infinite block (factor 1, e inf).
  tx = normopt.adanorm_rescale(gamma=0.5, eps=eps)
  g = {"a": jnp.full(3, 2.0, dtype), "b": jnp.full(2, 1e-3, dtype),
       "z": jnp.zeros(4, dtype)}
  s0 = tx.init(g)
  e_prev = {"a": 4.0, "b": 1.0, "z": 1.0}
  state = s0._replace(e={k: jnp.asarray(v, jnp.float32) for k, v in e_prev.items()})
  s, state = jax.jit(tx.update)(g, state)
  for k, x in g.items():
    xf = np.asarray(x, np.float64)
    n = float(np.sqrt(np.sum(xf * xf)))
    e = 0.5 * e_prev[k] + 0.5 * n
    if e > n:
      f = e * (0.0 if n == 0 else 1.0 / max(n, eps))
    else:
      f = 1.0
    np.testing.assert_allclose(float(state.e[k]), e, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(s[k], np.float64), xf * f, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)
    assert s[k].dtype == dtype
  chex.assert_trees_all_equal(s["z"], jnp.zeros(4, dtype))
  inf = {"a": jnp.array([jnp.inf, 1.0], jnp.float32)}
  tx = normopt.adanorm_rescale(gamma=0.5, eps=eps)
  s, state = jax.jit(tx.update)(inf, tx.init(inf))
  assert float(state.e["a"]) == np.inf
  chex.assert_trees_all_equal(s["a"], inf["a"])


def test_gamma_under_inject_hyperparams():
  grads = [_f32(g) for g in _grads(9)]
  injected = optax.inject_hyperparams(normopt.adam_norm)(
      learning_rate=LR, gamma=0.95
  )
  step = jax.jit(injected.update)
  state = injected.init(grads[0])
  assert isinstance(state.hyperparams["gamma"], jax.Array)
  # Switch gamma to 0 mid-run: from then on the EMA tracks ||g|| exactly and
  # the correction is off; compare with the direct optimizers step by step.
  direct = normopt.adam_norm(LR, gamma=0.95)
  d_state = direct.init(grads[0])
  d_step = jax.jit(direct.update)
  for i, g in enumerate(grads):
    if i == 5:
      state.hyperparams["gamma"] = jnp.zeros_like(state.hyperparams["gamma"])
    u, state = step(g, state)
    if i < 5:
      du, d_state = d_step(g, d_state)
      # Traced b1/b2 are float32 arrays, the direct ones Python floats: the
      # bias corrections differ in the last bits (optax.adam does the same).
      chex.assert_trees_all_close(u, du, rtol=1e-4, atol=1e-6)
  assert step._cache_size() == 1
  # With gamma = 0, e is the current leaf norm.
  inner = state.inner_state[0]
  norms = normopt.block_norms(grads[-1], "leaf")
  chex.assert_trees_all_close(
      jax.tree.map(jnp.ravel, inner.e), jax.tree.map(jnp.ravel, norms), rtol=1e-6
  )


def test_bad_kind_and_blocks_raise():
  with pytest.raises(ValueError, match="kind"):
    normopt.scale_by_adanorm_moments("sgd")
  with pytest.raises(ValueError, match="adanorm_rescale"):
    normopt.adanorm_rescale(blocks="nope")
