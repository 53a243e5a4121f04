"""Stacked (scanned) layers: ``stacked=`` makes a stacked leaf behave as the
model unrolled, for every registry method and block mode.

The equivalence runs (one device, Auto and Explicit meshes with the stack
axis sharded over 4 devices, ``shard_map`` with whole layers per device) live
in ``tests/stacked_checks.py``, run once in a subprocess with 4 virtual CPU
devices; the tests below assert on its numbers (``slow``: left out of the fast
loop). The rest are fast unit tests of the spec itself.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from methods_registry import METHODS
import normopt
import stacked_checks as sc
from subproc import run_json

TOL = 1e-5  # float32 roundoff, relative to max(1, |unrolled|) per leaf
PATHS = ("jit", "auto", "explicit", "shard_map")


@pytest.fixture(scope="module")
def checks():
  return run_json("stacked_checks.py", timeout=1200)


@pytest.mark.slow
def test_every_method_and_block_mode_is_checked(checks):
  names = {c.split("[")[0] for c in checks["cases"]}
  assert {m.name for m in METHODS} <= names
  for m in METHODS:
    if sc._takes(m.make, "blocks"):
      modes = {c.split("[")[1].rstrip("]") for c in checks["cases"] if c.startswith(m.name + "[")}
      # A norm variant ("block_normalize:rms") and an alias run two modes;
      # the transformations all five.
      assert set(sc.block_modes(m)) <= modes, (m.name, modes)


@pytest.mark.slow
def test_sharded_paths_leave_out_only_thin_aliases(checks):
  sharded = {c.split("[")[0] for c in checks["sharded_cases"]}
  names = {c.split("[")[0] for c in checks["cases"]}
  assert names - sharded == sc.JIT_ONLY
  for m in METHODS:  # each left-out alias takes a learning rate (it is an alias)
    if m.name in sc.JIT_ONLY:
      assert sc._takes(m.make, "learning_rate"), m.name


def test_aliases_run_two_block_modes_and_their_primitives_all():
  modes = {m.name: sc.block_modes(m) for m in METHODS}
  for name in ("adam_ng", "sgd_ngadap", "adagrad_bng", "adam_norm", "adabelief_norm"):
    assert modes[name] == sc.FEW_MODES, name
  for name in ("block_normalize", "ngadap_scale", "scale_by_adagrad_bng",
               "scale_by_adanorm_moments"):
    assert modes[name] == sc.MODES, name


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_stacked_equals_unrolled(checks, path):
  out = checks[path]
  errors = {k: v["error"] + "\n" + v.get("trace", "") for k, v in out.items() if "error" in v}
  assert not errors, errors
  controls = {k: v["max_dev"] for k, v in out.items() if "must deviate" in k}
  assert len(controls) == 2 and min(controls.values()) > 1e-2, controls
  devs = {k: v["max_dev"] for k, v in out.items() if k not in controls}
  cases = checks["cases"] if path == "jit" else checks["sharded_cases"]
  assert set(devs) == {c for c in cases if "must deviate" not in c}
  assert max(devs.values()) <= TOL, {k: v for k, v in devs.items() if v > TOL}


# --- the spec itself --------------------------------------------------------

def _tree():
  return sc.make_tree(np.random.default_rng(0))


def test_stacked_under_names_any_key_kind():
  spec = normopt.stacked_under("layers", 3, axes=2)
  p = {"layers": jnp.ones((2, 2, 3)),
       "other": [jnp.ones(2), jnp.ones(2), jnp.ones(2), jnp.ones((1, 1, 1))]}
  paths = jax.tree_util.tree_flatten_with_path(p)[0]
  assert [spec(k, x) for k, x in paths] == [2, 0, 0, 0, 2]
  with pytest.raises(ValueError, match="at least one name"):
    normopt.stacked_under()
  with pytest.raises(ValueError, match="axes"):
    normopt.stacked_under("layers", axes=-1)


def test_block_partition_lists_slices():
  tree = _tree()
  parts = normopt.block_partition(tree, "layer", stacked=sc.SPEC)
  # 3 modules x 4 slices + head.
  assert len(parts) == 3 * sc.L + 1
  attn = ("layer", (jax.tree_util.DictKey("layers"), jax.tree_util.DictKey("attn")))
  assert parts[(attn, 0)] == ["['layers']['attn']['bias'][0]", "['layers']['attn']['kernel'][0]"]
  assert parts[(attn, 3)] == ["['layers']['attn']['bias'][3]", "['layers']['attn']['kernel'][3]"]
  unstacked = normopt.block_partition(tree, "layer")
  assert len(unstacked) == 3 + 1  # without stacked=: all slices in one


def test_pytree_prefix_spec_equals_callable():
  tree = _tree()
  prefix = {"layers": 1, "head": 0}
  a = normopt.block_norms(tree, "layer", stacked=prefix)
  b = normopt.block_norms(tree, "layer", stacked=sc.SPEC)
  chex.assert_trees_all_equal(a, b)
  with pytest.raises(ValueError, match="prefix"):
    normopt.block_norms(tree, "layer", stacked={"layers": 1})


def test_block_norms_per_slice_match_numpy():
  tree = sc.make_tree(np.random.default_rng(1), sc.LAYER_SCALES)
  norms = normopt.block_norms(tree, "layer", stacked=sc.SPEC)
  for i in range(sc.L):
    want = np.sqrt(sum(np.sum(np.asarray(x[i], np.float64) ** 2)
                       for x in jax.tree.leaves(tree["layers"]["attn"])))
    np.testing.assert_allclose(norms["layers"]["attn"]["kernel"][i], want, rtol=1e-6)
  assert norms["layers"]["attn"]["kernel"].shape == (sc.L, 1, 1)
  assert norms["layers"]["attn"]["bias"].shape == (sc.L, 1)
  assert float(norms["layers"]["attn"]["kernel"][3].squeeze()) == 0.0  # zero layer
  unit = normopt.block_norms(tree, "unit", stacked=sc.SPEC)
  np.testing.assert_allclose(
      unit["layers"]["conv"]["kernel"][:, 0, 0, 0, :],
      np.sqrt(np.sum(np.asarray(tree["layers"]["conv"]["kernel"], np.float64) ** 2,
                     axis=(1, 2, 3))),
      rtol=1e-6)


def test_mismatched_stacked_shapes_in_one_block_raise_naming_paths():
  tree = {"layers": {"dense": {"kernel": jnp.ones((4, 3, 3)), "bias": jnp.ones((5, 3))}}}
  paths = r"\['layers'\]\['dense'\]\['bias'\].*\['layers'\]\['dense'\]\['kernel'\]"
  with pytest.raises(ValueError, match=paths):
    normopt.block_norms(tree, "layer", stacked=normopt.stacked_under("layers"))
  tx = normopt.adam_ng(1e-3, stacked=normopt.stacked_under("layers"))
  with pytest.raises(ValueError, match="equal stacked shapes"):
    tx.update(tree, tx.init(tree))
  # stacked and unstacked leaves under one parent: also a mismatch.
  mixed = {"layers": {"kernel": jnp.ones((4, 3, 3))}, "extra": jnp.ones(3)}
  spec = lambda path, leaf: 1 if leaf.ndim == 3 else 0
  with pytest.raises(ValueError, match="equal stacked shapes"):
    normopt.block_norms(mixed, lambda p, x: "one", stacked=spec)


@pytest.mark.parametrize("bad", [-1, 4, 1.5, True])
def test_bad_stacked_counts_raise(bad):
  tree = {"layers": {"kernel": jnp.ones((4, 3, 3))}}
  with pytest.raises(ValueError, match=r"\['layers'\]\['kernel'\]"):
    normopt.block_norms(tree, "layer", stacked=lambda p, x: bad)


def test_vector_axes_may_not_span_a_stacked_axis():
  tree = {"layers": {"kernel": jnp.ones((4, 3, 3))}}
  with pytest.raises(ValueError, match="stacked"):
    normopt.normalize_vectors(tree, lambda p, x: (0, 1), stacked=normopt.stacked_under("layers"))
  # The default vectors of a stacked leaf are those of each slice.
  w = normopt.normalize_vectors(
      {"layers": {"kernel": jnp.arange(1.0, 37.0).reshape(4, 3, 3)}},
      stacked=normopt.stacked_under("layers"))["layers"]["kernel"]
  np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)


def test_stacked_state_has_one_entry_per_slice():
  tree = _tree()
  s = normopt.adanorm_rescale(blocks="layer", stacked=sc.SPEC).init(tree)
  assert s.e["layers"]["attn"]["kernel"].shape == (sc.L, 1, 1)
  s = normopt.nd_adam(stacked=sc.SPEC).init(tree)
  assert s.nu["layers"]["attn"]["kernel"].shape == (sc.L, 1, 8)
  assert s.nu["layers"]["attn"]["bias"].shape == (sc.L, 8)  # not a vector: Adam


def test_inject_hyperparams_with_static_stacked():
  tree = _tree()
  grads = sc.make_tree(np.random.default_rng(2), sc.LAYER_SCALES)
  tx = optax.inject_hyperparams(normopt.adam_ng, static_args=("stacked",))(
      learning_rate=1e-2, stacked=sc.SPEC)
  direct = normopt.adam_ng(1e-2, stacked=sc.SPEC)
  u1, _ = jax.jit(tx.update)(grads, tx.init(tree), tree)
  u2, _ = jax.jit(direct.update)(grads, direct.init(tree), tree)
  # A traced float32 b2 rounds Adam's bias correction differently (~1e-5).
  chex.assert_trees_all_close(u1, u2, rtol=1e-4, atol=1e-7)
