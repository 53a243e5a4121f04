"""Block machinery: norms per mode vs NumPy, extreme magnitudes, dtypes, zeros."""

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


@pytest.mark.parametrize("blocks", MODES)
@pytest.mark.parametrize("frozen", [False, True], ids=["dict", "FrozenDict"])
def test_block_norms_match_numpy(blocks, frozen):
  tree = trees.flax_tree(np.random.default_rng(0), frozen=frozen)
  got = jax.tree.leaves(normopt.block_norms(tree, blocks))
  want = np_ref.block_norms(np_ref.flat(tree), blocks)
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(
        np.asarray(g, np.float64), np.broadcast_to(w, np.shape(g)), rtol=1e-6)


def test_layer_groups_kernel_and_bias_of_each_module():
  tree = trees.flax_tree(np.random.default_rng(0))
  groups = list(normopt.block_partition(tree, "layer").values())
  assert sorted(len(g) for g in groups) == [2, 2, 2, 2]
  assert ["['params']['Conv_0']['bias']", "['params']['Conv_0']['kernel']"] in groups


def test_callable_blocks_group_equal_keys():
  tree = trees.flax_tree(np.random.default_rng(1))
  # Everything whose module name starts with "Dense" is one block.
  key = lambda path, leaf: jax.tree_util.keystr(path).startswith("['params']['Dense")
  norms = normopt.block_norms(tree, key)
  d = np_ref.flat({k: v for k, v in tree["params"].items() if k.startswith("Dense")})
  want = np.sqrt(sum(np.sum(x**2) for _, x in d))
  np.testing.assert_allclose(norms["params"]["Dense_0"]["kernel"], want, rtol=1e-6)
  np.testing.assert_allclose(norms["params"]["Dense_1"]["bias"], want, rtol=1e-6)


def test_mixed_tree_with_none_lists_tuples_and_dtypes():
  tree = trees.mixed_tree(np.random.default_rng(2))
  tx = normopt.block_normalize("global")
  u, _ = jax.jit(tx.update)(tree, tx.init(tree))
  assert u["blocks"][1]["b"] is None
  chex.assert_trees_all_equal_dtypes(u, tree)
  total = sum(float(jnp.sum(jnp.square(x.astype(jnp.float32)))) for x in jax.tree.leaves(u))
  np.testing.assert_allclose(total, 1.0, rtol=1e-2)  # bf16/fp16 leaves round
  want = np_ref.normalize(np_ref.flat(tree), "global")
  for g, w in zip(jax.tree.leaves(u), want, strict=True):
    np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("magnitude", [1e-10, 1e-5, 1.0, 1e5, 1e10, 1e15, 1e18])
@pytest.mark.parametrize("blocks", MODES)
def test_float32_extreme_magnitudes_normalize_to_unit_norm(magnitude, blocks):
  rng = np.random.default_rng(3)
  g = {"layer": {"kernel": jnp.asarray(magnitude * rng.normal(size=(64, 32)), jnp.float32),
                 "bias": jnp.asarray(magnitude * rng.normal(size=32), jnp.float32)}}
  tx = normopt.block_normalize(blocks)
  u, _ = tx.update(g, tx.init(g))
  chex.assert_tree_all_finite(u)
  norms = normopt.block_norms(u, blocks)
  for n in jax.tree.leaves(norms):
    np.testing.assert_allclose(np.asarray(n), 1.0, rtol=1e-5)
  want = np_ref.normalize(np_ref.flat(g), blocks)
  for got, w in zip(jax.tree.leaves(u), want, strict=True):
    np.testing.assert_allclose(np.asarray(got, np.float64), w, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype,magnitude", [(jnp.bfloat16, 1e18), (jnp.bfloat16, 1e-10),
                                             (jnp.float16, 300.0), (jnp.float16, 6e4),
                                             (jnp.float16, 1e-3)])
def test_low_precision_gradients_reach_unit_norm(dtype, magnitude):
  # fp16 squares overflow near 256; bf16 squares overflow near 1.8e19.
  rng = np.random.default_rng(4)
  g = {"l": {"w": jnp.asarray(magnitude * np.sign(rng.normal(size=(128,))), dtype)}}
  tx = normopt.block_normalize("layer")
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  assert u["l"]["w"].dtype == dtype
  chex.assert_tree_all_finite(u)
  n = float(jnp.sqrt(jnp.sum(jnp.square(u["l"]["w"].astype(jnp.float32)))))
  np.testing.assert_allclose(n, 1.0, rtol=1e-2)


def test_beyond_float32_square_range_is_finite_not_nan():
  # Elements above ~1e24 overflow even the prescaled float32 squares: the
  # documented outcome is a zero (finite) update, never NaN.
  g = {"w": jnp.full((8,), 1e30, jnp.float32), "v": jnp.ones(2)}
  tx = normopt.block_normalize("leaf")
  u, _ = tx.update(g, tx.init(g))
  chex.assert_tree_all_finite(u)
  np.testing.assert_allclose(float(jnp.linalg.norm(u["v"])), 1.0, rtol=1e-6)


def test_zero_block_gives_zero_and_finite_grad_through_optimizer():
  tx = normopt.block_normalize("leaf")
  g = {"a": jnp.zeros(3), "b": jnp.array([3.0, 4.0])}
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(u["a"], 0.0)
  np.testing.assert_allclose(u["b"], [0.6, 0.8], rtol=1e-6)
  # Differentiating through the normalization at a zero block (e.g. in
  # meta-learning) must give finite derivatives.
  f = lambda a: jnp.sum(tx.update({"a": a, "b": g["b"]}, optax.EmptyState())[0]["a"])
  chex.assert_tree_all_finite(jax.grad(f)(jnp.zeros(3)))
  chex.assert_tree_all_finite(
      jax.grad(lambda a: jnp.sum(normopt.block_norms(a, "global")))(jnp.zeros(3)))


def test_eps_zero_and_zero_block_is_not_nan():
  tx = normopt.block_normalize("leaf", eps=0.0)
  g = {"a": jnp.zeros(3)}
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_array_equal(u["a"], 0.0)


def test_unknown_blocks_mode_is_a_clear_error():
  with pytest.raises(ValueError, match="blocks must be one of"):
    normopt.block_normalize("layers")


def test_masked_leaves_are_untouched():
  rng = np.random.default_rng(5)
  tree = trees.flax_tree(rng)
  mask = jax.tree_util.tree_map_with_path(lambda p, _: "kernel" in jax.tree_util.keystr(p), tree)
  tx = optax.masked(normopt.block_normalize("layer"), mask)
  u, _ = tx.update(tree, tx.init(tree))
  pairs = zip(jax.tree.leaves(u), jax.tree.leaves(tree), strict=True)
  for path, (a, b) in zip(np_ref.flat(tree), pairs, strict=True):
    if "kernel" in path[0]:
      # a kernel alone is the layer
      np.testing.assert_allclose(float(jnp.linalg.norm(a)), 1.0, rtol=1e-5)
    else:
      np.testing.assert_array_equal(a, b)


def test_nnx_value_wrapper_is_skipped_for_layers():
  path = (jax.tree_util.DictKey("l1"), jax.tree_util.DictKey("kernel"),
          jax.tree_util.GetAttrKey("value"))
  assert normopt.blocks.layer_key(path) == (jax.tree_util.DictKey("l1"),)


def test_callable_blocks_under_inject_hyperparams_with_static_args():
  tree = trees.flax_tree(np.random.default_rng(6))
  key = lambda path, leaf: jax.tree_util.keystr(path).startswith("['params']['Dense")
  tx = optax.inject_hyperparams(normopt.block_normalize, static_args=("blocks",))(
      blocks=key, eps=1e-12)
  u, state = tx.update(tree, tx.init(tree))
  assert "eps" in state.hyperparams and "blocks" not in state.hyperparams
  want, _ = normopt.block_normalize(key).update(tree, optax.EmptyState())
  chex.assert_trees_all_close(u, want, rtol=1e-6)
