"""block_normalize(norm=...) against float64 NumPy references (DESIGN §7).

Every norm of ``normopt.norms.NORMS`` in every block mode it allows, written from
the table's formulas with no normopt code: ``"l2"``, ``"rms"``, ``"sign"``
by blocks from the leaf paths, ``"spectral"`` as the SVD polar factor
``U Vᵀ`` of each leaf's matrix view (with the converging coefficients
``(1.5, -0.5, 0.0)`` and enough steps), and the Muon-default coefficients
against the same iteration in NumPy.
"""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import normopt
import np_ref

CONVERGING = dict(ns_coeffs=(1.5, -0.5, 0.0), ns_steps=20)
SPEC = normopt.stacked_under("layers")


def _tree(rng, scale=1.0):
  def a(*shape):
    return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)

  return {
      "dense": {"kernel": a(6, 4), "bias": a(4)},
      "tall": {"kernel": a(9, 3)},
      "conv": {"kernel": a(2, 2, 3, 5), "bias": a(5)},
      "layers": {"kernel": a(3, 4, 7), "bias": a(3, 7)},
  }


def _np_polar(m):
  u, _, vt = np.linalg.svd(m, full_matrices=False)
  return u @ vt


def _np_spectral(x, stacked):
  """Float64 reference of the "spectral" direction of one leaf."""
  x = np.asarray(x, np.float64)
  lead, rest = x.shape[:stacked], x.shape[stacked:]
  flat = x.reshape((-1,) + rest)
  out = []
  for s in flat:
    if s.ndim < 2:
      n = np.linalg.norm(s)
      out.append(s / n if n > 0 else s)
    else:
      out.append(_np_polar(s.reshape(-1, s.shape[-1])).reshape(s.shape))
  return np.stack(out).reshape(lead + rest)


def _np_ns(x, coeffs, steps, eps):
  """Newton–Schulz in float64 (the iteration DESIGN §7 states): one
  ``(a, b, c)`` for ``steps`` steps, or one per step (``steps`` unused)."""
  x = np.asarray(x, np.float64)
  wide = x.shape[0] <= x.shape[1]
  x = x if wide else x.T
  x = x / (np.linalg.norm(x) + eps)
  for a, b, c in ([coeffs] * steps if np.ndim(coeffs) == 1 else coeffs):
    g = x @ x.T
    x = a * x + (b * g + c * g @ g) @ x
  return x if wide else x.T


def _stack_count(path):
  return 1 if "layers" in jax.tree_util.keystr(path) else 0


def _np_blocks(tree, blocks):
  """Per flattened leaf a float64 array and its block keys, unrolled by slice."""
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out.append((jax.tree_util.keystr(path), np.asarray(x, np.float64), _stack_count(path)))
  return out


def _np_direction(tree, norm, blocks, eps=1e-12):
  """Float64 reference of block_normalize(norm, blocks, stacked=SPEC)."""
  leaves = _np_blocks(tree, blocks)
  if norm == "sign":
    return [np.sign(x) for _, x, _ in leaves]
  if norm == "spectral":
    return [_np_spectral(x, k) for _, x, k in leaves]
  # l2 / rms: sum squares and counts per block (per slice for stacked leaves).
  sums, counts = {}, {}

  def keys(i, p, x, k):
    if blocks == "global":
      return [("g",)] * 1, [x]
    if blocks == "unit" and x.ndim - k >= 2:
      return None, None
    slices = list(x) if k else [x]
    base = np_ref.parent(p) if blocks == "layer" else p
    return [(base, j) for j in range(len(slices))], slices

  for i, (p, x, k) in enumerate(leaves):
    ks, slices = keys(i, p, x, k)
    if ks is None:
      continue
    for key, s in zip(ks, slices, strict=True):
      sums[key] = sums.get(key, 0.0) + np.sum(s**2)
      counts[key] = counts.get(key, 0) + s.size
  out = []
  for i, (p, x, k) in enumerate(leaves):
    ks, slices = keys(i, p, x, k)
    if ks is None:  # unit blocks: vectors over the slice's axes but the last
      axes = tuple(range(k, x.ndim - 1))
      n = np.sqrt(np.sum(x**2, axis=axes, keepdims=True))
      size = np.prod([x.shape[a] for a in axes])
      d = x / np.maximum(n, eps)
    else:
      d = np.stack([s / np.maximum(np.sqrt(sums[key]), eps)
                    for key, s in zip(ks, slices, strict=True)])
      d = d.reshape(x.shape)
      size = np.array([counts[key] for key in ks]).reshape((-1,) + (1,) * (x.ndim - k))
      size = size if k else size.reshape(())
    out.append(d * np.sqrt(size) if norm == "rms" else d)
  return out


@pytest.mark.parametrize("norm,blocks", [
    ("l2", "layer"), ("rms", "layer"), ("rms", "leaf"), ("rms", "unit"),
    ("rms", "global"), ("sign", "layer"), ("sign", "global"),
])
def test_block_norms_match_numpy(norm, blocks):
  rng = np.random.default_rng(0)
  g = _tree(rng)
  tx = normopt.block_normalize(blocks=blocks, norm=norm, stacked=SPEC)
  got = jax.jit(tx.update)(g, tx.init(g))[0]
  want = _np_direction(g, norm, blocks)
  for x, w in zip(jax.tree.leaves(got), want, strict=True):
    np.testing.assert_allclose(np.asarray(x, np.float64), w, rtol=2e-6, atol=1e-7)


def test_rms_gives_unit_rms_per_block():
  rng = np.random.default_rng(1)
  g = _tree(rng, scale=1e3)
  tx = normopt.block_normalize(blocks="leaf", norm="rms")
  u, _ = tx.update(g, tx.init(g))
  for x in jax.tree.leaves(u):
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))), 1.0,
                               rtol=1e-5)


@pytest.mark.fast_cases("False")
@pytest.mark.parametrize("gram", [False, True])
def test_spectral_converges_to_svd_polar_factor(gram):
  """The converging iteration reaches U Vᵀ of every matrix (and slice), in
  the plain and the Gram form."""
  rng = np.random.default_rng(2)
  # Well-conditioned matrices: singular values in [0.5, 2] before scaling.
  def cond(*shape):
    *lead, m, n = shape
    out = []
    for _ in range(int(np.prod(lead)) if lead else 1):
      u, _ = np.linalg.qr(rng.normal(size=(m, m)))
      v, _ = np.linalg.qr(rng.normal(size=(n, n)))
      s = np.zeros((m, n))
      k = min(m, n)
      s[:k, :k] = np.diag(rng.uniform(0.5, 2.0, size=k))
      out.append(u @ s @ v.T)
    return jnp.asarray(np.stack(out).reshape(shape), jnp.float32)

  g = {
      "dense": {"kernel": cond(6, 4), "bias": jnp.asarray(rng.normal(size=4), jnp.float32)},
      "wide": {"kernel": cond(3, 8)},
      "conv": {"kernel": jnp.reshape(cond(12, 5), (2, 2, 3, 5))},
      "layers": {"kernel": cond(3, 4, 7)},
  }
  tx = normopt.block_normalize(blocks="leaf", norm="spectral", stacked=SPEC, gram=gram,
                               **CONVERGING)
  got = jax.jit(tx.update)(g, tx.init(g))[0]
  dev = 0.0
  for (p, x), k in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                       [_stack_count(p) for p, _ in jax.tree_util.tree_flatten_with_path(g)[0]],
                       strict=True):
    want = _np_spectral(np.asarray(_get(g, p)), k)
    dev = max(dev, float(np.max(np.abs(np.asarray(x, np.float64) - want))))
  assert dev < 2e-5, dev


def _get(tree, path):
  for k in path:
    tree = tree[k.key]
  return tree


def test_muon_coefficients_match_numpy_iteration():
  """Muon's non-converging default: the same iteration in float64."""
  rng = np.random.default_rng(3)
  g = {"a": jnp.asarray(rng.normal(size=(5, 8)), jnp.float32),
       "b": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
  coeffs = normopt.norms.NS_PRESETS["muon"]
  tx = normopt.block_normalize(blocks="leaf", norm="spectral", eps=1e-8)
  got = jax.jit(tx.update)(g, tx.init(g))[0]
  for k in g:
    want = _np_ns(g[k], coeffs, 5, 1e-8)
    np.testing.assert_allclose(np.asarray(got[k], np.float64), want, atol=5e-6)
  # Per-step coefficients (a sequence): one (a, b, c) per step.
  seq = normopt.norms.NS_PRESETS["dion"]
  tx = normopt.block_normalize(blocks="leaf", norm="spectral", eps=1e-8, ns_coeffs=seq)
  got = tx.update(g, tx.init(g))[0]
  np.testing.assert_allclose(np.asarray(got["a"], np.float64),
                             _np_ns(g["a"], seq, None, 1e-8), atol=5e-6)


def test_grouping_changes_nothing():
  rng = np.random.default_rng(4)
  g = {f"l{i}": {"kernel": jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)} for i in range(5)}
  g["layers"] = {"kernel": jnp.asarray(rng.normal(size=(3, 6, 6)), jnp.float32)}
  g["t"] = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  make = functools.partial(normopt.block_normalize, blocks="leaf", norm="spectral", stacked=SPEC)
  a = jax.jit(make(grouped=True).update)(g, optax.EmptyState())[0]
  b = jax.jit(make(grouped=False).update)(g, optax.EmptyState())[0]
  chex.assert_trees_all_close(a, b, atol=2e-6)


@pytest.mark.parametrize("preset", ["muon", "dion"])
def test_group_of_separate_matrices_matches_numpy(preset):
  # Separate matrices of one shape form a group (on a CPU backend: one
  # compiled body looped over them); one (a, b, c) repeated, or one per step.
  rng = np.random.default_rng(6)
  g = {f"l{i}": jnp.asarray(rng.normal(size=(7, 5)) * 10.0 ** (i - 2), jnp.float32)
       for i in range(4)}
  g["l3"] = jnp.zeros((7, 5), jnp.float32)  # stays zero
  coeffs = normopt.norms.NS_PRESETS[preset]
  tx = normopt.block_normalize(blocks="leaf", norm="spectral", eps=1e-8, ns_coeffs=coeffs)
  got = jax.jit(tx.update)(g, tx.init(g))[0]
  for k, x in g.items():
    np.testing.assert_allclose(np.asarray(got[k], np.float64), _np_ns(x, coeffs, 5, 1e-8),
                               atol=5e-6, err_msg=k)


@pytest.mark.parametrize("preset", ["muon", "dion"])
def test_gram_form_matches_numpy_iteration(preset):
  # The Gram form is the plain iteration rearranged: against the float64
  # plain iteration, for wide and tall matrices, a zero one, a group of
  # separate ones and a traced step count (optax.inject_hyperparams).
  rng = np.random.default_rng(8)
  mats = [rng.normal(size=(3, 16, 40)), rng.normal(size=(1, 40, 16)),
          rng.normal(size=(1, 16, 40)), np.zeros((2, 5, 9))]
  mats = [jnp.asarray(m, jnp.float32) for m in mats]
  coeffs = normopt.norms.NS_PRESETS[preset]
  got = jax.jit(lambda ms: normopt.polar_factors(ms, ns_coeffs=coeffs, eps=1e-8, gram=True))(mats)
  for x, y in zip(mats, got, strict=True):
    want = np.stack([_np_ns(m, coeffs, 5, 1e-8) for m in np.asarray(x)])
    np.testing.assert_allclose(np.asarray(y, np.float64), want, atol=5e-6)
  muon = normopt.norms.NS_PRESETS["muon"]
  traced = jax.jit(lambda ms, k: normopt.polar_factors(
      ms, ns_steps=k, ns_coeffs=muon, eps=1e-8, gram=True))
  y = traced(mats[:1], jnp.asarray(5))[0]
  want = np.stack([_np_ns(m, muon, 5, 1e-8) for m in np.asarray(mats[0])])
  np.testing.assert_allclose(np.asarray(y, np.float64), want, atol=5e-6)


def _distinct_kernels(compiled_text):
  """Fused computations of a compiled HLO text: (how many, how many distinct).

  Distinct up to instruction names and metadata: XLA:CPU compiles one kernel
  per distinct fused computation and shares it among identical ones.
  """
  bodies, cur = {}, None
  for line in compiled_text.splitlines():
    m = re.match(r"^%?(fused_[\w.\-]+) \(.*\{$", line)
    if m:
      cur = bodies.setdefault(m[1], [])
    elif line.startswith("}"):
      cur = None
    elif cur is not None:
      line = re.sub(r", metadata=\{[^}]*\}", "", line)
      cur.append(re.sub(r"%[\w.\-]+", "%", line).strip())
  return len(bodies), len({"\n".join(b) for b in bodies.values()})


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU kernel layout")
def test_group_slices_compile_to_one_kernel():
  # A group of separate matrices is sliced back into its members at offsets
  # XLA cannot fold: the members' kernels are identical, so doubling the
  # members adds kernels but no distinct one (constant offsets made a
  # distinct kernel per member: 1.6 s of compile on 150 matrices, and 6 → 12
  # members here went from 19 to 24 distinct).
  def counts(k):
    g = {f"l{i}": jax.ShapeDtypeStruct((6, 8), jnp.float32) for i in range(k)}
    tx = normopt.block_normalize(blocks="leaf", norm="spectral")
    step = jax.jit(lambda u, p: optax.apply_updates(p, tx.update(u, optax.EmptyState())[0]))
    return _distinct_kernels(step.lower(g, g).compile().as_text())
  (n6, d6), (n12, d12) = counts(6), counts(12)
  assert n12 > n6  # more members, more kernels to run ...
  assert d12 <= d6  # ... but none more to compile


@pytest.mark.fast_cases("spectral")
@pytest.mark.parametrize("norm", ["l2", "rms", "sign", "spectral"])
def test_zero_and_low_precision_stay_finite(norm):
  rng = np.random.default_rng(5)
  g = _tree(rng)
  tx = normopt.block_normalize(blocks="leaf", norm=norm, stacked=SPEC)
  zeros = jax.tree.map(jnp.zeros_like, g)
  update = jax.jit(tx.update)  # one program per dtype, not one per eager op
  u, _ = update(zeros, tx.init(zeros))
  assert all(bool(jnp.all(x == 0)) for x in jax.tree.leaves(u))
  # Up to ~1e24 per element (docs: the 2^-16 prescale); fp16 near its max.
  for dtype, scale in ((jnp.bfloat16, 1e20), (jnp.float16, 1e4), (jnp.float32, 1e-12)):
    low = jax.tree.map(lambda x, s=scale, d=dtype: (x * s).astype(d), g)
    u, _ = update(low, tx.init(low))
    for x in jax.tree.leaves(u):
      assert x.dtype == dtype
      assert bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
      assert bool(jnp.any(x != 0))
  # Through jax.grad too: no NaN from a zero gradient's norm.
  grad = jax.grad(lambda w: jnp.sum(tx.update({"w": w}, optax.EmptyState())[0]["w"] ** 2))
  assert bool(jnp.all(jnp.isfinite(grad(jnp.zeros((3, 4))))))


def test_per_leaf_norms_callable_and_prefix():
  rng = np.random.default_rng(6)
  g = _tree(rng)
  by_path = lambda p, x: "sign" if "bias" in jax.tree_util.keystr(p) else "spectral"
  prefix = {"dense": {"kernel": "spectral", "bias": "sign"}, "tall": "spectral",
            "conv": {"kernel": "spectral", "bias": "sign"},
            "layers": {"kernel": "spectral", "bias": "sign"}}
  outs = []
  for norm in (by_path, prefix):
    tx = normopt.block_normalize(blocks="leaf", norm=norm, stacked=SPEC, **CONVERGING)
    outs.append(tx.update(g, tx.init(g))[0])
  chex.assert_trees_all_close(outs[0], outs[1])
  u = outs[0]
  np.testing.assert_array_equal(u["dense"]["bias"], jnp.sign(g["dense"]["bias"]))
  np.testing.assert_allclose(u["dense"]["kernel"], _np_spectral(g["dense"]["kernel"], 0),
                             atol=2e-5)


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="spectral.*blocks='layer'"):
    normopt.block_normalize(norm="spectral")
  with pytest.raises(ValueError, match="spectral.*axis_name"):
    normopt.block_normalize(blocks="leaf", norm="spectral", axis_name="i")
  with pytest.raises(ValueError, match="unknown norm 'linf'"):
    normopt.block_normalize(norm="linf")
  with pytest.raises(ValueError, match="ns_coeffs"):
    normopt.block_normalize(blocks="leaf", norm="spectral", ns_coeffs=(1.0, 2.0))
  with pytest.raises(ValueError, match="unknown ns_coeffs preset"):
    normopt.block_normalize(blocks="leaf", norm="spectral", ns_coeffs="fast")
  g = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  mixed = normopt.block_normalize(norm=lambda p, x: "sign" if x.ndim == 1 else "l2")
  with pytest.raises(ValueError, match="share a norm.*'l2'.*'sign'|share a norm.*'sign'.*'l2'"):
    mixed.update(g, mixed.init(g))
  per_leaf = normopt.block_normalize(blocks="layer", norm={"dense": "spectral"})
  with pytest.raises(ValueError, match="spectral.*blocks='layer'"):
    per_leaf.update(g, per_leaf.init(g))


def test_signum_chain_is_sign_of_momentum():
  """Signum: momentum, then norm="sign" (DESIGN §7's documented chain)."""
  rng = np.random.default_rng(7)
  tx = optax.chain(optax.trace(decay=0.9), normopt.block_normalize(norm="sign"),
                   optax.scale_by_learning_rate(0.01))
  w = {"l": {"w": jnp.zeros(5)}}
  s = tx.init(w)
  m = np.zeros(5)
  for _ in range(4):
    g = rng.normal(size=5)
    u, s = tx.update({"l": {"w": jnp.asarray(g, jnp.float32)}}, s)
    m = 0.9 * m + g
    np.testing.assert_allclose(u["l"]["w"], -0.01 * np.sign(m), rtol=1e-6)
