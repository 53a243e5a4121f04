"""Decoupled weight decay on every alias, against float64 NumPy references.

Each alias's step with ``weight_decay=λ`` is ``−lr·(d + λ·w)``: the step
without decay plus ``−lr·λ·w`` on the leaves the mask selects, and no moment,
norm or accumulator sees the decay (DESIGN.md §3, "Weight decay").
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from methods_registry import fast_param
import normopt
import np_ref
from test_adanorm import np_optimizer
import trees

WD = 0.1
STEPS = 6
ALIASES = (
    "sgd_ng", "adam_ng", "adagrad_ng", "sgd_ngadap", "adam_ngadap", "adagrad_bng",
    "sngd", "s_sngd", "nd_adam", "adam_norm", "diffgrad", "diffgrad_norm",
    "radam_norm", "adabelief_norm",
)

# Masks over trees.FLAX_SHAPES (Conv_0, Dense_0, LayerNorm_0, Dense_1): a
# pytree prefix, and a callable params -> tree of bools.
MASK_PREFIX = {"params": {
    "Conv_0": True, "Dense_0": {"kernel": True, "bias": False},
    "LayerNorm_0": False, "Dense_1": True,
}}


def mask_fn(params):
  """Every leaf but the LayerNorm's."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "LayerNorm" not in jax.tree_util.keystr(path), params)


MASKS = {"none": None, "prefix": MASK_PREFIX, "callable": mask_fn}


def np_mask(name, path):
  """1.0 where the leaf at ``path`` (a string) decays, written from the masks."""
  if name == "prefix":
    return float(not ("LayerNorm_0" in path or path.endswith("['Dense_0']['bias']")))
  if name == "callable":
    return float("LayerNorm_0" not in path)
  return 1.0


def _grads(seed):
  rng = np.random.default_rng(seed)
  return [trees.flax_tree(rng, scale=10.0 ** rng.uniform(-2, 1)) for _ in range(STEPS)]


def _params(name):
  p = trees.flax_tree(np.random.default_rng(7), scale=0.5)
  return normopt.normalize_vectors(p) if name == "nd_adam" else p


# --------------------------------------------------------------------------
# NumPy steps WITHOUT decay: ``step(g, w, t) -> updates`` on flat float64
# leaves ((path, array) lists), ``t`` from 0. The decay is added in _np_run.


class NDAdam:
  """ND-Adam Algorithm 1 on vector leaves (ndim >= 2), Adam on the others."""

  def __init__(self, lr_v, lr_s, b1=0.9, b2=0.999, eps=1e-8):
    self.lr_v, self.lr_s, self.b1, self.b2, self.eps = lr_v, lr_s, b1, b2, eps
    self.m = self.v = None

  def __call__(self, g_leaves, w_leaves, t):
    b1, b2, eps = self.b1, self.b2, self.eps
    g = [x for _, x in g_leaves]
    w = [x for _, x in w_leaves]
    axes = [tuple(range(x.ndim - 1)) if x.ndim >= 2 else None for x in w]
    if self.m is None:
      self.m = [np.zeros_like(x) for x in w]
      self.v = [np.zeros_like(x) if a is None else np.zeros_like(np.sum(x, a, keepdims=True))
                for x, a in zip(w, axes, strict=True)]
    out = []
    for i, (x, gi, a) in enumerate(zip(w, g, axes, strict=True)):
      if a is None:
        self.m[i] = b1 * self.m[i] + (1 - b1) * gi
        self.v[i] = b2 * self.v[i] + (1 - b2) * gi * gi
        mh, vh = self.m[i] / (1 - b1 ** (t + 1)), self.v[i] / (1 - b2 ** (t + 1))
        out.append(-self.lr_s * mh / (np.sqrt(vh) + eps))
      else:
        xh = x / np.sqrt(np.sum(x * x, a, keepdims=True))
        gb = gi - np.sum(gi * xh, a, keepdims=True) * xh
        self.m[i] = b1 * self.m[i] + (1 - b1) * gb
        self.v[i] = b2 * self.v[i] + (1 - b2) * np.sum(gb * gb, a, keepdims=True)
        mh, vh = self.m[i] / (1 - b1 ** (t + 1)), self.v[i] / (1 - b2 ** (t + 1))
        wb = x - self.lr_v * mh / (np.sqrt(vh) + eps)
        out.append(wb / np.sqrt(np.sum(wb * wb, a, keepdims=True)) - x)
    return out


def _adanorm_steps(kind, grads, **hp):
  """test_adanorm's reference (its LR, 0.1); its updates do not depend on w."""
  updates, _ = np_optimizer(kind, grads, hp.pop("gamma", 0.95), **hp)
  return lambda g, w, t: [x for _, x in np_ref.flat(updates[t])]


def _s_sngd_lr(t):  # learning_rates (0.1, 0.05), stage_length 0.2: 2 steps at 0.1
  return 0.1 if t < 2 else 0.05


def _np_family(name, grads):
  """``(alias kwargs, np step, lr_at(t) of the decay term)`` of one alias."""
  lr = 0.05
  norm = functools.partial(np_ref.normalize, blocks="layer")
  if name == "sgd_ng":
    base = np_ref.SGDM(lr, 0.9)
    return {}, lambda g, w, t: base(norm(g)), lambda t: lr
  if name == "adam_ng":
    base = np_ref.Adam(lr)
    return {}, lambda g, w, t: base(norm(g)), lambda t: lr
  if name == "adagrad_ng":
    base = np_ref.AdaGrad(lr, 0.1, 1e-7)
    return {}, lambda g, w, t: base(norm(g)), lambda t: lr
  if name in ("sgd_ngadap", "adam_ngadap"):
    base = np_ref.SGDM(lr, 0.9) if name == "sgd_ngadap" else np_ref.Adam(lr)
    step = lambda g, w, t: base(np_ref.ngadap(g, w, "layer", 0.02))
    return {}, step, lambda t: lr
  if name == "adagrad_bng":
    base = np_ref.AdaGradBNG(lr, "layer")
    return {}, lambda g, w, t: base(g), lambda t: lr
  if name == "sngd":
    return {}, lambda g, w, t: [-lr * x for x in np_ref.normalize(g, "global")], lambda t: lr
  if name == "s_sngd":
    step = lambda g, w, t: [-_s_sngd_lr(t) * x for x in np_ref.normalize(g, "global")]
    return {}, step, _s_sngd_lr
  if name == "nd_adam":
    return {}, NDAdam(0.05, 0.01), lambda t: 0.01
  # AdaNorm family and diffGrad: learning rate 0.1 (test_adanorm.LR).
  kind = {"adam_norm": "adam", "diffgrad_norm": "diffgrad", "radam_norm": "radam",
          "adabelief_norm": "adabelief", "diffgrad": "diffgrad"}[name]
  hp = {}
  if kind == "radam":  # rho_t is 4.0 and 5.0 at t = 4, 5: keep off the threshold
    hp = dict(threshold=4.5)
  if kind == "adabelief":
    hp = dict(eps=1e-8, eps_root=1e-12)
  kw = dict(hp, gamma=0.0) if name == "diffgrad" else dict(hp, gamma=0.95)
  alias_kw = {k: v for k, v in kw.items() if name != "diffgrad" or k != "gamma"}
  return alias_kw, _adanorm_steps(kind, grads, **kw), lambda t: 0.1


def _make(name, **kw):
  if name == "s_sngd":
    return normopt.s_sngd([0.1, 0.05], 0.2, **kw)
  if name == "nd_adam":
    return normopt.nd_adam(0.05, 0.01, **kw)
  lr = 0.1 if name in ("adam_norm", "diffgrad", "diffgrad_norm", "radam_norm",
                       "adabelief_norm") else 0.05
  return getattr(normopt, name)(lr, **kw)


def _np_run(name, step, lr_at, params, grads, mask, wd_at=lambda t: WD):
  """``w ← w + step(g, w) − lr·λ·mask·w``; nd_adam's vectors never decay."""
  w = np_ref.flat(params)
  traj = []
  for t, g in enumerate(grads):
    u = step(np_ref.flat(g), w, t)
    new = []
    for (p, x), d in zip(w, u, strict=True):
      m = np_mask(mask, p) * (name != "nd_adam" or x.ndim < 2)
      new.append((p, x + d - lr_at(t) * wd_at(t) * m * x))
    w = new
    traj.append(jax.tree.unflatten(jax.tree.structure(params), [x for _, x in w]))
  return traj


def _jax_run(tx, params, grads):
  state = tx.init(params)

  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  traj = []
  for g in grads:
    params, state = step(params, state, g)
    traj.append(params)
  return traj


def _assert_traj(got, want, rtol, atol):
  for g, w in zip(got, want, strict=True):
    chex.assert_trees_all_close(g, w, rtol=rtol, atol=atol)


# One mask per alias, taking turns; adam_ng with all three.
CASES = [(n, list(MASKS)[i % 3]) for i, n in enumerate(ALIASES)]
CASES += [("adam_ng", m) for m in MASKS if ("adam_ng", m) not in CASES]


@pytest.mark.parametrize("name,mask", [fast_param(n, m, name=n, id=f"{n}-{m}") for n, m in CASES])
def test_decay_matches_numpy_reference(name, mask):
  params, grads = _params(name), _grads(1)
  kw, step, lr_at = _np_family(name, grads)
  tx = _make(name, weight_decay=WD, weight_decay_mask=MASKS[mask], **kw)
  want = _np_run(name, step, lr_at, params, grads, mask)
  adanorm = name.endswith("_norm") or name == "diffgrad"
  rtol, atol = (2e-4, 5e-6) if adanorm else (2e-5, 2e-6)
  rtol = 2e-2 if name == "radam_norm" else rtol  # f32 rho_t near 4 (as test_adanorm)
  _assert_traj(_jax_run(tx, params, grads), want, rtol, atol)


@pytest.mark.parametrize("name", ["adam_ng", "nd_adam"])
def test_weight_decay_schedule(name):
  params, grads = _params(name), _grads(2)
  kw, step, lr_at = _np_family(name, grads)
  sched = optax.linear_schedule(WD, 0.0, STEPS)
  tx = _make(name, weight_decay=sched, weight_decay_mask=MASK_PREFIX, **kw)
  wd_at = lambda t: WD * (1 - t / STEPS)
  want = _np_run(name, step, lr_at, params, grads, "prefix", wd_at)
  _assert_traj(_jax_run(tx, params, grads), want, 2e-5, 2e-6)


@pytest.mark.parametrize("name", [fast_param(n, name=n) for n in ALIASES])
def test_step_is_undecayed_step_plus_decay_and_zero_is_the_old_alias(name):
  params = _params(name)
  g = trees.flax_tree(np.random.default_rng(3))
  kw = {"eps": 1e-8, "eps_root": 1e-12} if name == "adabelief_norm" else {}
  old = _make(name, **kw)
  zero = _make(name, weight_decay=0.0, weight_decay_mask=MASK_PREFIX, **kw)
  decayed = _make(name, weight_decay=WD, weight_decay_mask=mask_fn, **kw)
  # weight_decay=0: the old alias exactly (state, updates; no params needed
  # unless the alias itself needs them).
  needs_params = name in ("sgd_ngadap", "adam_ngadap", "nd_adam")
  p = params if needs_params else None
  s_old, s_zero = old.init(params), zero.init(params)
  assert jax.tree.structure(s_old) == jax.tree.structure(s_zero)
  u_old, s_old = old.update(g, s_old, p)
  u_zero, s_zero = zero.update(g, s_zero, p)
  chex.assert_trees_all_equal((u_zero, s_zero), (u_old, s_old))
  # weight_decay=λ: the same step plus -lr·λ·w on the masked leaves.
  u_dec, _ = decayed.update(g, decayed.init(params), params)
  lr = 0.1 if name in ("s_sngd", "adam_norm", "diffgrad", "diffgrad_norm", "radam_norm",
                       "adabelief_norm") else 0.05
  lr = 0.01 if name == "nd_adam" else lr
  flat_w = np_ref.flat(params)
  term = [-lr * WD * np_mask("callable", path) * (name != "nd_adam" or x.ndim < 2) * x
          for path, x in flat_w]
  want = jax.tree.map(lambda u, d: np.asarray(u, np.float64) + d, u_old,
                      jax.tree.unflatten(jax.tree.structure(params), term))
  chex.assert_trees_all_close(u_dec, want, rtol=1e-5, atol=1e-7)


def test_decay_sees_no_moment_and_needs_params():
  params = _params("adam_ng")
  g = trees.flax_tree(np.random.default_rng(4))
  tx0, tx = normopt.adam_ng(0.05), normopt.adam_ng(0.05, weight_decay=WD)
  (_, s0), (_, s) = tx0.update(g, tx0.init(params)), tx.update(g, tx.init(params), params)
  chex.assert_trees_all_equal(s0[1], s[1])  # Adam's moments: the same without decay
  with pytest.raises(ValueError):
    tx.update(g, tx.init(params))


@pytest.mark.parametrize("name", ["adam_ng", "adam_norm", "nd_adam"])
def test_weight_decay_under_inject_hyperparams(name):
  params, grads = _params(name), _grads(5)[:3]
  make = {"adam_ng": normopt.adam_ng, "adam_norm": normopt.adam_norm,
          "nd_adam": functools.partial(normopt.nd_adam, 0.05)}[name]
  lr_kw = {"learning_rate_scalar": 0.01} if name == "nd_adam" else {"learning_rate": 0.05}
  injected = optax.inject_hyperparams(make)(
      **lr_kw, weight_decay=WD, weight_decay_mask=MASK_PREFIX)
  direct = make(**lr_kw, weight_decay=WD, weight_decay_mask=MASK_PREFIX)
  state = injected.init(params)
  assert isinstance(state.hyperparams["weight_decay"], jax.Array)
  # Traced float32 hyperparameters round differently (test_conformance's tolerance).
  _assert_traj(_jax_run(injected, params, grads), _jax_run(direct, params, grads), 1e-5, 1e-6)
  # The rate is a traced value: set to 0 in the state, it is the alias without decay.
  state.hyperparams["weight_decay"] = jnp.zeros([])
  u, _ = jax.jit(injected.update)(grads[0], state, params)
  u_old, _ = make(**lr_kw).update(grads[0], make(**lr_kw).init(params), params)
  chex.assert_trees_all_close(u, u_old, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["adam_ng", "adam_norm", "diffgrad"])
def test_injected_default_rate_needs_no_params(name):
  # inject_hyperparams binds the default weight_decay=0.0 as a traced array:
  # an update without params still works and is the alias without decay.
  params = _params(name)
  g = trees.flax_tree(np.random.default_rng(6))
  injected = optax.inject_hyperparams(getattr(normopt, name))(learning_rate=0.05)
  assert isinstance(injected.init(params).hyperparams["weight_decay"], jax.Array)
  u, _ = jax.jit(injected.update)(g, injected.init(params))
  direct = getattr(normopt, name)(0.05)
  u_old, _ = direct.update(g, direct.init(params))
  chex.assert_trees_all_close(u, u_old, rtol=1e-5, atol=1e-7)
