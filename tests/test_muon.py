"""The Muon recipe from normopt's primitive equals optax.contrib.muon.

``normopt.muon`` is Muon's momentum, then ``block_normalize(blocks="leaf",
norm="spectral")``, then the width scale, with Adam for the other leaves.
optax's Muon is the reference: given the matching ``MuonDimensionNumbers``
(batch axis 0 for a stacked ``(L, d_in, d_out)`` kernel), the updates agree to
float32 roundoff, step after step.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers as DN
import pytest

import normopt


def _params(rng):
  def a(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  return {
      "embed": {"embedding": a(11, 8)},
      "layers": {"attn": {"kernel": a(3, 8, 8)}, "mlp": {"kernel": a(3, 8, 16), "bias": a(3, 16)}},
      "head": {"kernel": a(8, 4), "bias": a(4)},
  }


# The embedding goes to Adam (normopt's default rule names it by its key,
# DESIGN §8); optax's Muon is told the same with None.
DIMS = {
    "embed": {"embedding": None},
    "layers": {"attn": {"kernel": DN(1, 2)}, "mlp": {"kernel": DN(1, 2), "bias": None}},
    "head": {"kernel": DN(0, 1), "bias": None},
}


@pytest.mark.parametrize("nesterov,gram", [(True, False), (False, False), (True, True)],
                         ids=["nesterov", "plain", "nesterov-gram"])
@pytest.mark.fast_cases("nesterov-gram")
def test_muon_recipe_equals_optax_muon(nesterov, gram):
  """``gram=True`` (the Gram-form Newton–Schulz) equals optax's plain form
  too, the same iteration: to float32 roundoff on the rectangular matrices,
  and to the Gram form's larger roundoff on the square 8 x 8 ones (the
  Gram matrix squares their condition number; see ``polar_factors``)."""
  tol = 1e-4 if gram else 1e-5
  rng = np.random.default_rng(0)
  params = _params(rng)
  kw = dict(beta=0.9, nesterov=nesterov, weight_decay=0.01)
  ref = optax.contrib.muon(0.02, muon_weight_dimension_numbers=DIMS, **kw)
  ours = normopt.muon(0.02, stacked=normopt.stacked_under("layers"), gram=gram, **kw)
  step_ref, step_ours = jax.jit(ref.update), jax.jit(ours.update)
  s_ref, s_ours = ref.init(params), ours.init(params)
  worst = 0.0
  for _ in range(4):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    u_ref, s_ref = step_ref(g, s_ref, params)
    u_ours, s_ours = step_ours(g, s_ours, params)
    chex.assert_trees_all_close(u_ours, u_ref, rtol=tol, atol=tol * 1e-2)
    pairs = zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_ref), strict=True)
    worst = max(worst, max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                           for a, b in pairs))
    params = optax.apply_updates(params, u_ours)
  print(f"worst relative deviation from optax's Muon: {worst:.1e}")
  assert worst < tol, worst


def test_muon_grouped_equals_per_leaf_and_unstacked_slices():
  """Grouping changes nothing; a stacked leaf = its slices as separate leaves."""
  rng = np.random.default_rng(1)
  params = _params(rng)
  spec = normopt.stacked_under("layers")
  g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  a, _ = normopt.muon(0.02, stacked=spec).update(g, normopt.muon(0.02, stacked=spec).init(params))
  tx = normopt.muon(0.02, stacked=spec, grouped=False)
  b, _ = tx.update(g, tx.init(params))
  chex.assert_trees_all_close(a, b, atol=1e-7)
  unrolled = {f"l{i}": jax.tree.map(lambda x, i=i: x[i], g["layers"]) for i in range(3)}
  tx = normopt.muon(0.02)
  c, _ = tx.update(unrolled, tx.init(unrolled))
  for i in range(3):
    chex.assert_trees_all_close(
        jax.tree.map(lambda x, i=i: x[i], a["layers"]["attn"]), c[f"l{i}"]["attn"], atol=1e-7)


def test_muon_mask_sends_leaves_to_adam():
  rng = np.random.default_rng(2)
  params = _params(rng)
  g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  mask = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, x: "embed" not in jax.tree_util.keystr(path) and x.ndim >= 2, p)
  tx = normopt.muon(1e-2, stacked=normopt.stacked_under("layers"), muon_mask=mask)
  u, _ = tx.update(g, tx.init(params))
  adam = optax.adam(1e-2, nesterov=True)
  want, _ = adam.update(g["embed"], adam.init(params["embed"]))
  chex.assert_trees_all_close(u["embed"], want, rtol=1e-6)


def test_width_scale_and_momentum_reference():
  tx = normopt.scale_by_width(stacked=normopt.stacked_under("s"))
  g = {"s": jnp.ones((2, 3, 12)), "tall": jnp.ones((12, 3)), "v": jnp.ones(5)}
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(u["s"], 2.0)           # √(12 / 3)
  np.testing.assert_allclose(u["tall"], 1.0)        # √max(1, 3/12)
  np.testing.assert_allclose(u["v"], 1.0)           # not a matrix
  rng = np.random.default_rng(3)
  mom = normopt.scale_by_muon_momentum(beta=0.8, nesterov=True)
  s = mom.init(jnp.zeros(3))
  m = np.zeros(3)
  for t in range(1, 5):
    gt = rng.normal(size=3)
    u, s = mom.update(jnp.asarray(gt, jnp.float32), s)
    m = 0.8 * m + 0.2 * gt
    want = 0.8 * m / (1 - 0.8 ** (t + 1)) + 0.2 * gt / (1 - 0.8**t)
    np.testing.assert_allclose(u, want, rtol=1e-5)
