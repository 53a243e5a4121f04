"""The Muon family (DESIGN §9): Muon's new scales, NorMuon and AdaMuon.

* float64 NumPy references (``np_ref.MuonFamily``, ``np_ref.unit_rms``),
  written from DESIGN §9 with the same Newton–Schulz in NumPy, over several
  steps on a tree with a stacked MLP kernel, a stacked per-head attention
  kernel (``ParamLayout("hidden", (1,), (3,), batch=(0, 2), stacked=1)`` on
  ``(L, d, H, hd)``: one matrix per layer and head), an embedding and biases
  (Adam), grouped and not;
* ``normopt.muon(consistent_rms=, adaptive=, preconditioning=)`` against
  ``optax.contrib.muon`` with the same options: on the stacked tree with
  optax given ``MuonDimensionNumbers``, and on its unrolled twin (optax's
  ``adaptive`` takes one inner product per leaf, normopt one per matrix:
  the unrolled model's);
* the Newton–Schulz options on every spectral entry point, zero gradients,
  bfloat16, weight decay, and the routing of the layouts.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers as DN
import pytest

import normopt
import np_ref

L, D, H, HD = 3, 8, 2, 4
PER_HEAD = normopt.ParamLayout("hidden", (1,), (3,), batch=(0, 2), stacked=1)
SHAPES = {
    "embed": {"embedding": (11, D)},
    "layers": {"attn": {"kernel": (L, D, H, HD)},
               "mlp": {"kernel": (L, D, 16), "bias": (L, 16)}},
    "head": {"kernel": (D, 5), "bias": (5,)},
}
# The same, written independently for NumPy: (reduction, output, batch) axes
# of each leaf by path, None for the Adam leaves.
NP_AXES = {
    "['embed']['embedding']": None,
    "['head']['bias']": None,
    "['head']['kernel']": ((0,), (1,), ()),
    "['layers']['attn']['kernel']": ((1,), (3,), (0, 2)),
    "['layers']['mlp']['bias']": None,
    "['layers']['mlp']['kernel']": ((1,), (2,), (0,)),
}


def _tree(rng, scale=1.0, dtype=jnp.float32):
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s), dtype), SHAPES,
                      is_leaf=lambda s: isinstance(s, tuple))


def _layout(params):
  return normopt.layouts_from_shapes(
      params, stacked=normopt.stacked_under("layers"), overrides={"attn": PER_HEAD})


def _np_layouts(params):
  return [NP_AXES[p] for p, _ in np_ref.flat(params)]


def _run(tx, params, grads):
  step = jax.jit(tx.update)
  state = tx.init(params)
  out = []
  for g in grads:
    u, state = step(g, state, params)
    out.append(u)
    params = optax.apply_updates(params, u)
  return out, state


def _np_run(ref, params, grads):
  out = []
  w = np_ref.flat(params)
  for g in grads:
    u = ref(np_ref.flat(g), w)
    w = [(p, x + du) for (p, x), du in zip(w, u, strict=True)]
    out.append(u)
  return out


def _assert_close(got, want, rtol, atol):
  for t, (u, ref) in enumerate(zip(got, want, strict=True)):
    for (path, x), r in zip(np_ref.flat(u), ref, strict=True):
      np.testing.assert_allclose(x, r, rtol=rtol, atol=atol, err_msg=f"step {t} {path}")


STEPS = 4
CASES = {
    "muon:consistent_rms": ("muon", dict(consistent_rms=0.2)),
    "muon:adaptive": ("muon", dict(adaptive=True)),
    "muon:adaptive+consistent_rms": ("muon", dict(adaptive=True, consistent_rms=0.3)),
    "normuon": ("normuon", dict(b2=0.9)),
    "normuon:consistent_rms": ("normuon", dict(b2=0.95, consistent_rms=0.2)),
    "adamuon:sign": ("adamuon", dict(sign=True, b2=0.9)),
    "adamuon:no-sign": ("adamuon", dict(sign=False, b2=0.95, rms=0.3)),
}


@pytest.mark.fast_cases(
    "muon:adaptive+consistent_rms-grouped", "normuon-per-leaf", "adamuon:sign-grouped")
@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "per-leaf"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy_reference(case, grouped):
  kind, kw = CASES[case]
  rng = np.random.default_rng(0)
  params = _tree(rng)
  grads = [_tree(rng, scale=10.0 ** rng.uniform(-1, 1)) for _ in range(STEPS)]
  lr, wd = 0.05, 0.1
  if kind == "adamuon":
    tx = normopt.adamuon(lr, b1=0.8, layout=_layout(params), grouped=grouped,
                         weight_decay=wd, **kw)
    ref = np_ref.MuonFamily("adamuon", lr, _np_layouts(params), beta=0.8, eps=1e-10,
                            weight_decay=wd, **kw)
  else:
    make = getattr(normopt, kind)
    tx = make(lr, beta=0.9, layout=_layout(params), grouped=grouped, weight_decay=wd, **kw)
    ref = np_ref.MuonFamily(kind, lr, _np_layouts(params), beta=0.9, weight_decay=wd, **kw)
  got, _ = _run(tx, params, grads)
  _assert_close(got, _np_run(ref, params, grads), rtol=2e-4, atol=2e-6)


def test_scale_by_unit_rms_matches_numpy_and_state_shapes():
  rng = np.random.default_rng(1)
  params = _tree(rng)
  tx = normopt.scale_by_unit_rms(0.8, layout=_layout(params))
  state = tx.init(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
  v = state.v
  # One second moment per output unit: the reduction axes have size 1.
  assert v["layers"]["attn"]["kernel"].shape == (L, 1, H, HD)
  assert v["layers"]["mlp"]["kernel"].shape == (L, 1, 16)
  assert v["head"]["kernel"].shape == (1, 5)
  assert isinstance(v["layers"]["mlp"]["bias"], optax.MaskedNode)
  assert v["embed"]["embedding"].shape == (1, D)  # the shape rule: a (vocab, d) matrix
  np_v = [None] * 6
  axes = [NP_AXES[p] for p, _ in np_ref.flat(params)]
  axes[0] = ((0,), (1,), ())  # scale_by_unit_rms normalizes every matrix, embeddings too
  step = jax.jit(tx.update)
  for _ in range(STEPS):
    o = _tree(rng, scale=10.0 ** rng.uniform(-2, 1))
    u, state = step(o, state)
    want = np_ref.unit_rms([x for _, x in np_ref.flat(o)], np_v, axes, decay=0.8)
    for (path, x), r in zip(np_ref.flat(u), want, strict=True):
      np.testing.assert_allclose(x, r, rtol=2e-5, atol=1e-6, err_msg=path)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(params))


# --- optax 0.2.8 ------------------------------------------------------------

OPTAX_DIMS = {
    "embed": {"embedding": None},
    "layers": {"attn": {"kernel": DN(1, 3)}, "mlp": {"kernel": DN(1, 2), "bias": None}},
    "head": {"kernel": DN(0, 1), "bias": None},
}
OPTAX_CASES = {
    "consistent_rms": dict(consistent_rms=0.2),
    "adaptive": dict(adaptive=True),
    "aol": dict(preconditioning="aol"),
    "schatten": dict(preconditioning="schatten"),
    "schatten+consistent_rms+adaptive": dict(
        preconditioning="schatten", consistent_rms=0.2, adaptive=True),
}


def _unroll(tree):
  """One leaf per layer, and per head for the attention kernel."""
  out = {k: v for k, v in tree.items() if k != "layers"}
  for i in range(L):
    layer = jax.tree.map(lambda x, i=i: x[i], tree["layers"])
    attn = layer["attn"]["kernel"]
    layer["attn"] = {f"head_{h}": attn[:, h, :] for h in range(H)}
    out[f"layers_{i}"] = layer
  return out


def _unrolled_dims():
  layer = {"attn": {f"head_{h}": DN(0, 1) for h in range(H)},
           "mlp": {"kernel": DN(0, 1), "bias": None}}
  dims = {k: v for k, v in OPTAX_DIMS.items() if k != "layers"}
  dims.update({f"layers_{i}": layer for i in range(L)})
  return dims


@pytest.mark.fast_cases("schatten+consistent_rms+adaptive")
@pytest.mark.parametrize("case", list(OPTAX_CASES))
def test_muon_options_equal_optax(case):
  kw = OPTAX_CASES[case]
  rng = np.random.default_rng(2)
  params = _tree(rng)
  grads = [_tree(rng) for _ in range(3)]
  common = dict(beta=0.9, weight_decay=0.01, **kw)
  ours, _ = _run(normopt.muon(0.02, layout=_layout(params), **common), params, grads)
  # The unrolled model: one optax leaf per layer and head.
  ref = optax.contrib.muon(0.02, muon_weight_dimension_numbers=_unrolled_dims(), **common)
  want, _ = _run(ref, _unroll(params), [_unroll(g) for g in grads])
  for u, w in zip(ours, want, strict=True):
    chex.assert_trees_all_close(_unroll(u), w, rtol=2e-4, atol=2e-6)
  if not kw.get("adaptive"):
    # Stacked, with optax given the batch axes: the same (without adaptive,
    # which optax reduces over a whole leaf, all layers and heads at once).
    ref = optax.contrib.muon(0.02, muon_weight_dimension_numbers=OPTAX_DIMS, **common)
    want, _ = _run(ref, params, grads)
    for u, w in zip(ours, want, strict=True):
      chex.assert_trees_all_close(u, w, rtol=2e-4, atol=2e-6)


def test_adaptive_is_per_matrix_not_per_leaf():
  # optax's adaptive takes one inner product over a stacked leaf; normopt's,
  # one per layer (the unrolled model, DESIGN §1): they differ there.
  rng = np.random.default_rng(3)
  params = {"w": jnp.asarray(rng.normal(size=(2, 6, 5)), jnp.float32)}
  g = {"w": params["w"] * jnp.asarray([[[1.0]], [[5.0]]])}
  ours = normopt.muon(1.0, stacked=1, adaptive=True)
  theirs = optax.contrib.muon(1.0, adaptive=True, muon_weight_dimension_numbers={"w": DN(1, 2)})
  u, _ = ours.update(g, ours.init(params))
  v, _ = theirs.update(g, theirs.init(params), params)
  each = [normopt.muon(1.0, adaptive=True) for _ in range(2)]
  slices = [tx.update({"w": g["w"][i]}, tx.init({"w": params["w"][i]}))[0]["w"]
            for i, tx in enumerate(each)]
  np.testing.assert_allclose(u["w"], np.stack(slices), rtol=1e-5)
  assert not np.allclose(u["w"], v["w"], rtol=1e-2)


# --- Newton–Schulz options on every spectral entry point ---------------------

def _entry_points(**ns):
  return {
      "block_normalize": normopt.block_normalize(blocks="leaf", norm="spectral", **ns),
      "muon": normopt.muon(0.1, **ns),
      "normuon": normopt.normuon(0.1, **ns),
      "adamuon": normopt.adamuon(0.1, **ns),
      "scale_by_scion": normopt.scale_by_scion(**ns),
      "scion": normopt.scion(0.1, **ns),
  }


@pytest.mark.fast_cases("schatten")
@pytest.mark.parametrize("preconditioning", ["aol", "schatten"])
def test_preconditioning_reaches_the_newton_schulz(preconditioning):
  rng = np.random.default_rng(4)
  g = {"w": jnp.asarray(rng.normal(size=(12, 20)), jnp.float32),
       "b": jnp.asarray(rng.normal(size=20), jnp.float32)}
  g2 = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape), x.dtype), g)
  plain = _entry_points(ns_steps=1)
  pre = _entry_points(ns_steps=1, preconditioning=preconditioning)

  def second(tx):  # AdaMuon's first step is the sign of its O: two steps
    u, s = tx.update(g, tx.init(g), g)
    return tx.update(g2, s, g)[0]["w"]

  for name in plain:
    a, b = second(plain[name]), second(pre[name])
    assert bool(jnp.all(jnp.isfinite(b))), name
    assert not np.allclose(a, b, rtol=1e-3), name  # the first step sees the rescaling
  # block_normalize's matrix is polar_factors' with the same option.
  want = normopt.polar_factors([g["w"][None]], ns_steps=1, eps=1e-12,
                               preconditioning=preconditioning)[0][0]
  got = pre["block_normalize"].update(g, optax.EmptyState())[0]["w"]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_unknown_preconditioning_raises_early():
  for make in (functools.partial(normopt.block_normalize, norm="spectral", blocks="leaf"),
               functools.partial(normopt.muon, 0.1), functools.partial(normopt.normuon, 0.1),
               functools.partial(normopt.adamuon, 0.1), normopt.scale_by_scion,
               functools.partial(normopt.scion, 0.1)):
    with pytest.raises(ValueError, match="preconditioning"):
      make(preconditioning="spectral")


def test_polar_express_on_every_entry_point():
  rng = np.random.default_rng(5)
  g = {"w": jnp.asarray(rng.normal(size=(16, 24)), jnp.float32)}
  want = normopt.polar_factors([g["w"][None]], ns_coeffs="polar_express", eps=1e-12)[0][0]
  # Polar Express converges: singular values within 1e-3 of 1 after its 8 steps.
  assert np.abs(np.linalg.svd(np.asarray(want), compute_uv=False) - 1).max() < 1e-3
  for name, tx in _entry_points(ns_coeffs="polar_express").items():
    u = tx.update(g, tx.init(g), g)[0]["w"]
    assert bool(jnp.all(jnp.isfinite(u))), name
    if name == "block_normalize":
      np.testing.assert_allclose(u, want, rtol=1e-5, atol=1e-6)
  # Muon at the preset: its update is the 8-step polar factor times its scales.
  tx = normopt.muon(1.0, ns_coeffs="polar_express", nesterov=False)
  u = tx.update(g, tx.init(g))[0]["w"]
  s = np.linalg.svd(-np.asarray(u) / np.sqrt(24 / 16), compute_uv=False)
  np.testing.assert_allclose(s, 1.0, atol=1e-3)


# --- zeros, dtypes, decay, routing -----------------------------------------

FAMILY = {
    "normuon": functools.partial(normopt.normuon, 0.1),
    "adamuon": functools.partial(normopt.adamuon, 0.1),
    "adamuon:no-sign": functools.partial(normopt.adamuon, 0.1, sign=False),
    "muon:adaptive": functools.partial(normopt.muon, 0.1, adaptive=True),
    "muon:consistent_rms": functools.partial(normopt.muon, 0.1, consistent_rms=0.2),
}


@pytest.mark.fast_cases("bf16-normuon", "bf16-adamuon")
@pytest.mark.parametrize("name", list(FAMILY))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_zero_gradient_gives_zero_update_in_every_dtype(name, dtype):
  rng = np.random.default_rng(6)
  params = _tree(rng, dtype=dtype)
  tx = FAMILY[name](layout=_layout(params))
  zeros = jax.tree.map(jnp.zeros_like, params)
  u, state = jax.jit(tx.update)(zeros, tx.init(params), params)
  chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
  for x in jax.tree.leaves(u):
    np.testing.assert_array_equal(np.asarray(x, np.float32), 0.0)
  # A nonzero gradient, then zeros: finite, and the dtypes kept (bf16 too).
  g = _tree(rng, scale=100.0, dtype=dtype)
  step = jax.jit(tx.update)
  for grad in (g, zeros, zeros):
    u, state = step(grad, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
    chex.assert_tree_all_finite((u, state))


@pytest.mark.fast_cases("adamuon")
@pytest.mark.parametrize("name", ["normuon", "adamuon"])
def test_weight_decay_is_decoupled(name):
  # The step with decay is the step without it plus −lr·λ·w on the matrices
  # (the Adam leaves decay with adam_weight_decay).
  rng = np.random.default_rng(7)
  params, g = _tree(rng), _tree(rng)
  make = getattr(normopt, name)
  plain = make(0.05, layout=_layout(params))
  decayed = make(0.05, layout=_layout(params), weight_decay=0.1, adam_weight_decay=0.2)
  u0, _ = plain.update(g, plain.init(params), params)
  u1, _ = decayed.update(g, decayed.init(params), params)
  lam = jax.tree_util.tree_map_with_path(
      lambda p, _: 0.2 if NP_AXES[jax.tree_util.keystr(p)] is None else 0.1, params)
  want = jax.tree.map(lambda a, w, l: a - 0.05 * l * w, u0, params, lam)
  chex.assert_trees_all_close(u1, want, rtol=1e-5, atol=1e-7)


def test_adamuon_update_rms_is_rms_and_normuon_keeps_muon_scale():
  rng = np.random.default_rng(8)
  params = _tree(rng)
  g = _tree(rng, scale=3.0)
  tx = normopt.adamuon(1.0, rms=0.2, layout=_layout(params))
  u, _ = tx.update(g, tx.init(params), params)
  # Per matrix (each layer and head) the RMS is exactly rms.
  per_head = np.asarray(u["layers"]["attn"]["kernel"])
  rms = np.sqrt(np.mean(per_head**2, axis=(1, 3)))
  np.testing.assert_allclose(rms, 0.2, rtol=1e-5)
  np.testing.assert_allclose(np.sqrt(np.mean(np.asarray(u["head"]["kernel"]) ** 2)), 0.2,
                             rtol=1e-5)
  # NorMuon keeps each matrix's Frobenius norm as Muon gave it.
  a = normopt.muon(1.0, layout=_layout(params))
  b = normopt.normuon(1.0, layout=_layout(params))
  ua, _ = a.update(g, a.init(params), params)
  ub, _ = b.update(g, b.init(params), params)
  fro = lambda x: np.sqrt(np.sum(np.asarray(x) ** 2, axis=(1, 3)))
  np.testing.assert_allclose(fro(ub["layers"]["attn"]["kernel"]),
                             fro(ua["layers"]["attn"]["kernel"]), rtol=1e-5)
  # ... and evens its output units: one RMS per head's output column.
  unit_rms = np.sqrt(np.mean(np.asarray(ub["layers"]["attn"]["kernel"]) ** 2, axis=1))
  assert unit_rms.std() / unit_rms.mean() < 0.05


def test_family_routes_as_muon():
  # The layouts decide: the embedding and biases get Adam (their update
  # equals optax.adam's), and so does an "unknown" 3-axis leaf (with a warning).
  rng = np.random.default_rng(9)
  params = {"embedding": jnp.asarray(rng.normal(size=(7, 4)), jnp.float32),
            "w3": jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32),
            "w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}
  g = jax.tree.map(lambda x: x * 0.5, params)
  for tx, adam in ((normopt.normuon(0.1), optax.adam(0.1, nesterov=True)),
                   (normopt.adamuon(0.1), optax.adam(0.1, eps=1e-10))):
    with pytest.warns(UserWarning, match="w3"):
      u, _ = tx.update(g, tx.init(params), params)
    want, _ = adam.update(g, adam.init(params))
    for k in ("embedding", "w3"):
      np.testing.assert_allclose(u[k], want[k], rtol=1e-5)
    assert not np.allclose(u["w"], want["w"], rtol=1e-2)


def test_hyperparameters_can_be_injected():
  rng = np.random.default_rng(10)
  params = _tree(rng)
  grads = [_tree(rng) for _ in range(2)]
  layout = _layout(params)
  for make, kw in ((normopt.muon, dict(learning_rate=0.1, consistent_rms=0.2)),
                   (normopt.normuon, dict(learning_rate=0.1, b2=0.9, consistent_rms=0.2,
                                          eps_unit=1e-10)),
                   (normopt.adamuon, dict(learning_rate=0.1, b1=0.8, b2=0.9, rms=0.3))):
    injected = optax.inject_hyperparams(make, static_args=("layout",))(layout=layout, **kw)
    direct = make(layout=layout, **kw)
    a, sa = _run(injected, params, grads)
    b, _ = _run(direct, params, grads)
    for name in kw:
      assert isinstance(sa.hyperparams[name], jax.Array), name
    chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
