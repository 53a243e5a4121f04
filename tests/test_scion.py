"""Scion (DESIGN §7) against float64 NumPy references from the paper's formulas.

Every LMO of ``normopt.scion_lmo.LMOS`` is written here in NumPy for a Flax
kernel ``(fan_in, fan_out)`` with no normopt code: the spectral ones as the
SVD polar factor ``U Vᵀ`` times their shape scales (normopt runs the
converging Newton–Schulz coefficients ``(1.5, -0.5, 0.0)`` with enough steps
for the comparison). Several steps of ``scion`` in both forms (uSCG, SCG)
are a plain NumPy loop.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
from normopt.scion_lmo import LMOS

CONVERGING = dict(ns_coeffs=(1.5, -0.5, 0.0), ns_steps=20)
EPS = 1e-8


# --- NumPy references --------------------------------------------------------


def _np_polar(m):
  u, _, vt = np.linalg.svd(m, full_matrices=False)
  return u @ vt


def _np_matrix(g):
  return g.reshape(-1, g.shape[-1])


NP_LMOS = {
    "spectral": lambda g: _np_polar(g) * np.sqrt(g.shape[1] / g.shape[0]),
    "spectral_conv": lambda g: (
        _np_polar(_np_matrix(g)).reshape(g.shape)
        * np.sqrt(g.shape[-1] / g.shape[-2]) / np.prod(g.shape[:-2])),
    "sign": lambda g: np.sign(g) / g.shape[0],
    "bias_rms": lambda g: g / (np.sqrt(np.mean(g ** 2)) + EPS),
    "col": lambda g: g / (np.sqrt(np.mean(g ** 2, axis=1, keepdims=True)) + EPS),
    "row": lambda g: g / (np.sqrt(g.shape[0]) * np.linalg.norm(g, axis=0, keepdims=True) + EPS),
}


def _np_auto(g):
  return "bias_rms" if g.ndim <= 1 else "spectral" if g.ndim == 2 else "spectral_conv"


def _well_conditioned(rng, m, n):
  """A random ``(m, n)`` matrix with singular values in [1, 3]."""
  q1, _ = np.linalg.qr(rng.normal(size=(m, m)))
  q2, _ = np.linalg.qr(rng.normal(size=(n, n)))
  k = min(m, n)
  return q1[:, :k] @ np.diag(rng.uniform(1, 3, size=k)) @ q2[:, :k].T


def _f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def _max_dev(a, b):
  return max(
      float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# --- every LMO -------------------------------------------------------------


def test_every_lmo_matches_numpy():
  rng = np.random.default_rng(0)
  conv = _well_conditioned(rng, 18, 4).reshape(3, 3, 2, 4)
  grads = {
      "spectral": {"tall": _well_conditioned(rng, 6, 4), "wide": _well_conditioned(rng, 3, 5)},
      "spectral_conv": conv,
      "sign": rng.normal(size=(5, 3)),
      "bias_rms": {"vec": rng.normal(size=5), "scalar": np.asarray(rng.normal())},
      "col": rng.normal(size=(4, 6)),
      "row": rng.normal(size=(6, 4)),
  }
  assert set(grads) == set(LMOS), "a new LMO needs a reference here"
  norms = {k: k for k in grads}
  radius = {"spectral": 2.0, "spectral_conv": 0.5, "sign": 3.0, "bias_rms": 1.5,
            "col": 0.25, "row": 4.0}
  tx = normopt.scale_by_scion(1.0, norms=norms, radius=radius, **CONVERGING)
  g32 = _f32(grads)
  u, _ = jax.jit(tx.update)(g32, tx.init(g32))
  expect = {k: jax.tree.map(lambda g, k=k: radius[k] * NP_LMOS[k](np.asarray(g, np.float64)), v)
            for k, v in jax.tree.map(np.asarray, g32).items()}
  for k in grads:
    dev = _max_dev(u[k], expect[k])
    print(f"max deviation {k}: {dev:.2e}")
    chex.assert_trees_all_close(u[k], _f32(expect[k]), atol=2e-5, rtol=1e-5)


def test_auto_is_the_reference_rule():
  """"auto" by layout kind: the reference's rule on dense, conv and vector
  leaves, and on the roles only a name or a model can tell (DESIGN §8)."""
  rng = np.random.default_rng(1)
  g = _f32({"dense": {"kernel": rng.normal(size=(6, 4)), "bias": rng.normal(size=4)},
            "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
            "conv1d": {"kernel": rng.normal(size=(3, 2, 4))},
            "embed": {"embedding": rng.normal(size=(7, 4))},
            "ln": {"scale": rng.normal(size=4)},
            "out": {"kernel": rng.normal(size=(4, 3))},
            "scalar": np.asarray(2.0)})
  conv1d = normopt.ParamLayout("conv", (0, 1), (2,), spatial=(0,))
  layout = normopt.layouts_from_shapes(g, head="out", overrides={"conv1d": conv1d})
  auto = normopt.scale_by_scion(1.0, layout=layout)
  names = {"dense": {"kernel": "spectral", "bias": "bias_rms"},
           "conv": {"kernel": "spectral_conv"}, "conv1d": {"kernel": "spectral_conv"},
           "embed": {"embedding": "col"}, "ln": {"scale": "bias_rms"},
           "out": {"kernel": "sign"}, "scalar": "bias_rms"}
  explicit = normopt.scale_by_scion(1.0, norms=names, layout=layout)
  u_auto, _ = auto.update(g, auto.init(g))
  u_explicit, _ = explicit.update(g, explicit.init(g))
  chex.assert_trees_all_equal(u_auto, u_explicit)
  plain = {k: v for k, v in g.items() if k not in ("embed", "ln", "out", "conv1d")}
  want = {k: v for k, v in names.items() if k in plain}
  assert jax.tree.map(lambda x: _np_auto(np.asarray(x)), plain) == want


def test_unknown_leaf_raises_naming_it_and_both_fixes():
  """A leaf with 3 non-stacked axes (a Conv1D, an attention kernel, a scanned
  layer) has no matrix a shape can give: "auto" raises, naming the leaf and
  both fixes; stacked= or a layout settles it."""
  g = {"conv1d": {"kernel": jnp.ones((3, 2, 4))}, "b": jnp.ones(4)}
  tx = normopt.scion(0.1)
  with pytest.raises(ValueError) as err:
    tx.update(g, tx.init(g))
  for word in ("['conv1d']['kernel']", "(3, 2, 4)", "stacked=", "param_layouts"):
    assert word in str(err.value)
  tx = normopt.scion(0.1, stacked={"conv1d": 1, "b": 0})
  u, _ = tx.update(g, tx.init(g))
  assert u["conv1d"]["kernel"].shape == (3, 2, 4)


def test_callable_and_prefix_norms_and_radius():
  rng = np.random.default_rng(2)
  g = _f32({"emb": rng.normal(size=(7, 4)), "head": rng.normal(size=(4, 3)),
            "dense": {"kernel": rng.normal(size=(4, 4)), "bias": rng.normal(size=4)}})
  radius = {"emb": 2.0, "head": 5.0, "dense": 0.5}

  def pick(path, leaf):
    key = jax.tree_util.keystr(path)
    return "col" if "emb" in key else "sign" if "head" in key else "auto"

  prefix = {"emb": "col", "head": "sign", "dense": "auto"}
  outs = []
  for norms in (pick, prefix):
    tx = normopt.scale_by_scion(1.0, norms=norms, radius=radius)
    outs.append(tx.update(g, tx.init(g))[0])
  chex.assert_trees_all_equal(outs[0], outs[1])
  gn = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
  np.testing.assert_allclose(outs[0]["emb"], 2.0 * NP_LMOS["col"](gn["emb"]), rtol=1e-6)
  np.testing.assert_allclose(outs[0]["head"], 5.0 * NP_LMOS["sign"](gn["head"]), rtol=1e-6)
  np.testing.assert_allclose(
      outs[0]["dense"]["bias"], 0.5 * NP_LMOS["bias_rms"](gn["dense"]["bias"]), rtol=1e-6)


# --- several steps of scion, both forms --------------------------------------


def _np_scion(params, grads, lrs, momentum, radius, constrained, wd, mask):
  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  d = jax.tree.map(np.zeros_like, w)
  for g, lr in zip(grads, lrs, strict=True):
    g = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
    d = jax.tree.map(lambda d, g: (1 - momentum) * d + momentum * g, d, g)
    u = jax.tree.map(lambda d: radius * NP_LMOS[_np_auto(d)](d), d)
    # SCG: w ← (1 − lr)·w − lr·u; uSCG: w ← w − lr·u; both: decoupled decay.
    shrink = 1.0 if constrained else 0.0
    w = jax.tree.map(
        lambda w, u, m, lr=lr, s=shrink: (1 - lr * s) * w - lr * u - lr * wd * m * w,
        w, u, mask)
  return w


@pytest.mark.parametrize("constrained", [False, True], ids=["uSCG", "SCG"])
def test_scion_steps_match_numpy(constrained):
  rng = np.random.default_rng(3)
  shapes = {"dense": {"kernel": (6, 4), "bias": (4,)}, "conv": {"kernel": (3, 3, 2, 4)}}

  def tree():
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))

  params = tree()
  grads = [tree() for _ in range(4)]
  schedule = optax.linear_schedule(0.1, 0.02, 4)
  mask = {"dense": {"kernel": True, "bias": False}, "conv": {"kernel": True}}
  wd = 0.05
  tx = normopt.scion(schedule, 0.3, radius=2.0, constrained=constrained,
                     weight_decay=wd, weight_decay_mask=mask, **CONVERGING)
  state = tx.init(params)
  step = jax.jit(tx.update)
  p = params
  for g in grads:
    u, state = step(g, state, p)
    p = optax.apply_updates(p, u)
  expect = _np_scion(params, grads, [float(schedule(t)) for t in range(4)], 0.3, 2.0,
                     constrained, wd, jax.tree.map(float, mask))
  print(f"max deviation scion {'SCG' if constrained else 'uSCG'}: {_max_dev(p, expect):.2e}")
  chex.assert_trees_all_close(p, _f32(expect), atol=2e-5, rtol=1e-5)


# --- zeros, dtypes, stacked, grouping, errors --------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16],
                         ids=["f32", "bf16", "f16"])
def test_zero_gradients_give_zero_updates(dtype):
  shapes = {"spectral": (4, 3), "spectral_conv": (2, 2, 3, 4), "sign": (4, 3),
            "bias_rms": (3,), "col": (4, 3), "row": (4, 3)}
  g = {k: jnp.zeros(s, dtype) for k, s in shapes.items()}
  tx = normopt.scale_by_scion(0.1, norms={k: k for k in shapes})
  state = tx.init(g)
  for _ in range(2):
    u, state = tx.update(g, state)
  chex.assert_trees_all_equal(u, g)
  chex.assert_trees_all_equal_dtypes(u, g)
  # Tiny and large gradients in the low-precision dtype stay finite.
  for scale in (1e-6, 1e4):
    big = jax.tree.map(lambda z, s=scale: (z + s).astype(dtype), g)
    u, _ = tx.update(big, tx.init(big))
    chex.assert_tree_all_finite(u)


@pytest.mark.fast_cases("auto")
@pytest.mark.parametrize("norm", ["auto", "sign", "col", "row", "spectral"])
def test_stacked_equals_unrolled(norm):
  rng = np.random.default_rng(4)
  stacked = _f32({"layers": {"kernel": rng.normal(size=(3, 4, 5)),
                             "bias": rng.normal(size=(3, 5))},
                  "convs": {"kernel": rng.normal(size=(2, 3, 3, 2, 4))}})
  unrolled = {f"{name}{i}": jax.tree.map(lambda x, i=i: x[i], sub)
              for name, sub in stacked.items() for i in range(len(sub["kernel"]))}

  def norms(path, leaf):
    key = jax.tree_util.keystr(path)
    return "auto" if "bias" in key or "conv" in key else norm

  kw = dict(norms=norms, radius=1.5, **CONVERGING)
  tx_s = normopt.scale_by_scion(1.0, stacked=normopt.stacked_under("layers", "convs"), **kw)
  tx_u = normopt.scale_by_scion(1.0, **kw)
  u_s, _ = tx_s.update(stacked, tx_s.init(stacked))
  u_u, _ = tx_u.update(unrolled, tx_u.init(unrolled))
  for name, sub in u_s.items():
    for i in range(len(sub["kernel"])):
      chex.assert_trees_all_close(
          jax.tree.map(lambda x, i=i: x[i], sub), u_u[f"{name}{i}"], atol=1e-6, rtol=1e-6)


def _update_and_jaxpr(tx, g):
  """``tx``'s first update of ``g`` under ``jit``, and its jaxpr as text."""
  fn = lambda g, s: tx.update(g, s)[0]  # noqa: E731
  return jax.jit(fn)(g, tx.init(g)), str(jax.make_jaxpr(fn)(g, tx.init(g)))


def test_grouping_changes_nothing_but_the_program():
  rng = np.random.default_rng(5)
  g = _f32({f"k{i}": rng.normal(size=(4, 4)) for i in range(3)}
           | {"layers": rng.normal(size=(2, 4, 4)), "conv": rng.normal(size=(1, 1, 4, 4))})
  stacked = normopt.stacked_under("layers")

  def run(grouped):
    u, jaxpr = _update_and_jaxpr(normopt.scale_by_scion(0.5, stacked=stacked, grouped=grouped), g)
    return u, jaxpr.count("dot_general")

  (u_grouped, dots_grouped), (u_single, dots_single) = run(True), run(False)
  chex.assert_trees_all_close(u_grouped, u_single, atol=1e-6, rtol=1e-6)
  # One (4, 4) group of 6 matrices instead of 5 separate programs.
  assert dots_single == 5 * dots_grouped


def test_gram_form_equals_plain_form():
  """``gram=True`` runs another program (the Gram form) with the same result,
  on wide, tall and stacked matrices and a conv kernel."""
  rng = np.random.default_rng(6)
  g = _f32({"wide": rng.normal(size=(6, 24)), "tall": rng.normal(size=(24, 6)),
            "layers": rng.normal(size=(2, 8, 32)), "conv": rng.normal(size=(3, 3, 2, 4)),
            "bias": rng.normal(size=6)})
  stacked = normopt.stacked_under("layers")

  def run(gram):
    return _update_and_jaxpr(normopt.scion(0.1, stacked=stacked, gram=gram, constrained=False), g)

  (u_gram, jaxpr_gram), (u_plain, jaxpr_plain) = run(True), run(False)
  assert jaxpr_gram != jaxpr_plain
  chex.assert_trees_all_close(u_gram, u_plain, atol=1e-6, rtol=1e-5)


def test_bad_norms_raise_naming_them():
  g = {"b": jnp.ones(3), "w": jnp.ones((3, 2))}
  with pytest.raises(ValueError, match="'frobenius'"):
    normopt.scion(0.1, norms="frobenius")
  for norms, words in (({"b": "spectral", "w": "auto"}, ("'spectral'", "['b']")),
                       ({"b": "auto", "w": "spectral_conv"}, ("'spectral_conv'", "['w']",
                                                               "conv")),
                       ({"b": "auto", "w": "bias_rms"}, ("'bias_rms'", "['w']")),
                       ({"b": "auto", "w": "nuclear"}, ("'nuclear'", "['w']"))):
    tx = normopt.scion(0.1, norms=norms)
    with pytest.raises(ValueError) as err:
      tx.update(g, tx.init(g))
    for word in words:
      assert word in str(err.value)


def test_scg_needs_params():
  g = {"w": jnp.ones((3, 2))}
  tx = normopt.scion(0.1, constrained=True)
  with pytest.raises(ValueError, match="scion"):
    tx.update(g, tx.init(g))


def test_scg_with_a_schedule_under_inject_hyperparams():
  rng = np.random.default_rng(6)
  params = _f32({"head": rng.normal(size=(4, 3)), "w": rng.normal(size=(3, 3)),
                 "b": rng.normal(size=3)})
  grads = [_f32(jax.tree.map(lambda x: rng.normal(size=x.shape), params)) for _ in range(3)]
  schedule = optax.exponential_decay(0.1, 1, 0.5)
  pick = lambda path, leaf: "sign" if "head" in jax.tree_util.keystr(path) else "auto"  # noqa: E731
  kw = dict(learning_rate=schedule, momentum=0.5, radius=2.0, constrained=True, norms=pick)
  direct = normopt.scion(**kw)
  injected = optax.inject_hyperparams(normopt.scion, static_args=("norms",))(**kw)
  outs = []
  for tx in (direct, injected):
    p, s = params, tx.init(params)
    for g in grads:
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
    outs.append(p)
  chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)
  assert float(s.hyperparams["learning_rate"]) == pytest.approx(0.1 * 0.5 ** 2)  # step 2 of 0, 1, 2
