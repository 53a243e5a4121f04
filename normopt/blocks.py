"""Blocks: how a pytree of gradients is cut into the groups that get one norm.

Every block-wise transformation in normopt takes ``blocks=`` and ``axis_name=``:

=============  ==============================================================
``blocks``     one block is
=============  ==============================================================
``"leaf"``     one array leaf of the pytree
``"layer"``    all leaves that share a parent path (a Flax module's ``kernel``
               and ``bias``). Trailing wrapper keys that are not module names
               (an NNX variable's ``.value``) are skipped when finding it.
``"global"``   the whole pytree (SNGD)
``"unit"``     one output unit: a leaf of ``ndim >= 2`` is split into vectors
               over all axes but the last (Dense ``(in, out)`` reduces axis 0,
               Conv HWIO reduces ``(0, 1, 2)``); a leaf of ``ndim < 2`` is one
               block
callable       ``(path, leaf) -> hashable``: leaves with equal keys form one
               block
=============  ==============================================================

Norms are Euclidean and accumulated in float32 (or wider, for float64 leaves),
whatever the leaf dtype, so bf16 and fp16 gradients do not overflow. Per-leaf
squared norms are computed once and summed per block; leaves are never
concatenated. If a sum of squares overflows (float32 elements above ~1e19),
all are recomputed once after an exact power-of-two rescaling (a
``lax.cond``: the usual step does not pay for it), so every finite float32
gradient has a finite norm unless the norm itself exceeds the float32 range;
then the block's normalized gradient is 0 (never NaN).

``axis_name``: inside ``shard_map``/``pmap`` with leaves *sharded* across that
mapped axis, partial squared norms are ``psum``-med over it. Under ``jit`` with
``NamedSharding`` nothing is needed: norms are global already. For
``"unit"`` blocks only a split along the reduced (input) axes needs
``axis_name``; a split along the last (output) axis keeps whole units per
shard and must not pass it. The psum covers every leaf of the call: a leaf
that is *replicated* rather than split would be counted once per shard, so
give such leaves their own ``optax.partition`` group without ``axis_name``.

``optax.inject_hyperparams`` treats every callable argument as a schedule: with
a callable ``blocks``, list it in ``static_args=("blocks",)``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
from jax import lax

BlockSpec = Union[str, Callable[[Any, Any], Hashable]]

BLOCK_MODES = ("leaf", "layer", "global", "unit")

# Keys that wrap a parameter instead of naming a module or a parameter:
# flax.nnx Variables flatten to ``(..., "kernel", GetAttrKey("value"))``.
_WRAPPER_ATTRS = ("value", "raw_value")


def check_blocks(blocks: BlockSpec, name: str) -> None:
  """Raises ``ValueError`` unless ``blocks`` is a known mode or a callable."""
  if callable(blocks):
    return
  if not isinstance(blocks, str) or blocks not in BLOCK_MODES:
    raise ValueError(
        f"{name}: blocks must be one of {BLOCK_MODES} or a callable "
        f"(path, leaf) -> hashable, got {blocks!r}."
    )


def strip_wrapper_keys(path: Sequence[Any]) -> tuple[Any, ...]:
  """Drops trailing wrapper keys (e.g. an NNX variable's ``.value``)."""
  path = tuple(path)
  while path and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      path[-1].name in _WRAPPER_ATTRS
  ):
    path = path[:-1]
  return path


def layer_key(path: Sequence[Any]) -> tuple[Any, ...]:
  """The parent path of a leaf: its "layer" in the BNG paper's sense."""
  return strip_wrapper_keys(path)[:-1]


def unit_axes(leaf: Any) -> tuple[int, ...] | None:
  """The default "unit" rule: all axes but the last for ``ndim >= 2``."""
  ndim = len(jnp.shape(leaf))
  if ndim < 2:
    return None
  return tuple(range(ndim - 1))


def _leaf_partition(paths, leaves, blocks):
  """Per leaf: (block key, axes reduced inside the leaf) for a block mode."""
  keys, axes = [], []
  for i, (path, leaf) in enumerate(zip(paths, leaves)):
    ndim = len(jnp.shape(leaf))
    full = tuple(range(ndim))
    if callable(blocks):
      keys.append(("callable", blocks(path, leaf)))
      axes.append(full)
    elif blocks == "leaf":
      keys.append(i)
      axes.append(full)
    elif blocks == "layer":
      keys.append(("layer", layer_key(path)))
      axes.append(full)
    elif blocks == "global":
      keys.append("global")
      axes.append(full)
    elif blocks == "unit":
      keys.append(i)
      ua = unit_axes(leaf)
      axes.append(full if ua is None else ua)
    else:
      raise ValueError(f"unknown blocks mode {blocks!r}")
  return keys, axes


def block_partition(tree: Any, blocks: BlockSpec = "layer") -> dict[Any, list[str]]:
  """Which leaves form one block: ``{block key: [leaf path, ...]}``.

  A debugging aid to see how ``blocks`` cuts a parameter tree.

  Args:
    tree: a pytree of arrays (params or gradients).
    blocks: a block mode (see module docstring) or a callable.

  Returns:
    An ordered dict from block key to the ``jax.tree_util.keystr`` paths of the
    leaves in that block (for ``"unit"`` one leaf holds many blocks).

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> p = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
    >>> list(normopt.block_partition(p, "layer").values())
    [["['dense']['bias']", "['dense']['kernel']"]]

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017
    (layer blocks); Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018 (unit blocks).
  """
  check_blocks(blocks, "block_partition")
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  paths = [p for p, _ in flat]
  keys, _ = _leaf_partition(paths, [l for _, l in flat], blocks)
  out: dict[Any, list[str]] = {}
  for key, path in zip(keys, paths):
    out.setdefault(key, []).append(jax.tree_util.keystr(path))
  return out


def _acc_dtype(x):
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


# Squares are summed as they are: in float32 they overflow only for elements
# above ~1e19. If any block's sum is not finite, all sums are recomputed once
# from x * 2**-_SHIFT inside a ``lax.cond`` (the usual step does not pay for
# it), and the blocks that overflowed take the rescaled sum, their norm
# multiplied back by 2**_SHIFT. Powers of two scale exactly; with this shift
# every finite float32 element squares without overflow, so a norm is inf
# only when it exceeds the float32 range itself. What the rescaled squares
# lose to underflow (elements below ~1e5) is negligible next to the elements
# that overflowed. (Always rescaling, as an earlier version did by 2**-16
# through an optimization barrier, cost ~40% of the reduction on XLA:CPU.)
_SHIFT = 80

# Blocks of more leaves than this are summed in a loop (see _loop_sum)
# instead of a chain of adds (``"global"`` over thousands of leaves).
_CHAIN_MAX = 8


def _sum_sq(x, axes, shift=0):
  """Partial sum of squares: a scalar if ``axes`` covers the leaf, else keepdims."""
  x = x.astype(_acc_dtype(x))
  if shift:
    # Through a barrier: as a plain constant, XLA:CPU would materialize one
    # full-size broadcast of the scale per leaf shape (24 MB of temp buffers
    # for a ResNet-50 tree).
    scale, x = lax.optimization_barrier((jnp.asarray(2.0 ** -shift, x.dtype), x))
    x = x * scale
  full = len(axes) == x.ndim
  return jnp.sum(jnp.square(x), axis=axes, keepdims=not full)


def _loop_sum(stacked, chunk=64):
  """``sum(stacked, axis=0)`` that XLA computes once.

  Summed in a loop over chunks of rows: XLA turns a plain sum of stacked
  scalars into a chain of adds and copies that chain into the fused kernel
  of every leaf that uses the total (quadratic in the leaf count: a
  2,000-leaf "global" block took minutes to compile). A loop's result is a
  buffer that every consumer reads.
  """
  n = stacked.shape[0]
  k = -(-n // chunk)
  pad = [(0, k * chunk - n)] + [(0, 0)] * (stacked.ndim - 1)
  rows = jnp.reshape(jnp.pad(stacked, pad), (k, chunk) + stacked.shape[1:])
  return lax.fori_loop(
      0, k, lambda i, acc: acc + jnp.sum(rows[i], axis=0),
      jnp.zeros(stacked.shape[1:], stacked.dtype),
  )


def _block_index(keys):
  """Block number of each leaf (in order of first appearance), and the count."""
  ids: dict[Any, int] = {}
  return [ids.setdefault(k, len(ids)) for k in keys], len(ids)


def _group_totals(values, index, n):
  """Sums per-leaf values per block: ``totals[b]`` over leaves with index b."""
  members: list[list[Any]] = [[] for _ in range(n)]
  for b, v in zip(index, values):
    members[b].append(v)
  totals = []
  for vs in members:
    if len(vs) > _CHAIN_MAX:
      totals.append(_loop_sum(jnp.stack(vs)))
    else:
      t = vs[0]
      for v in vs[1:]:
        t = t + v
      totals.append(t)
  return totals


def safe_sqrt(x):
  """``sqrt`` whose gradient at 0 is 0 instead of inf (safe under jax.grad)."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1)), 0)


def inv_norm(norm, eps):
  """``1 / max(norm, eps)``, and 0 for a zero norm (no NaN even with eps=0)."""
  pos = norm > 0
  return jnp.where(pos, 1.0 / jnp.where(pos, jnp.maximum(norm, eps), 1), 0)


def _all_finite(totals):
  """One boolean: every total (arrays, or lists of arrays) is finite."""
  sums = [jnp.sum(t) for t in jax.tree.leaves(totals)]
  # A finite total can only make the sum overflow, which then takes the
  # (still correct) rescaled path: one reduction instead of one per block.
  return jnp.isfinite(jnp.sum(jnp.stack(sums)))


def _apply_to_norms(fn, totals_of):
  """``fn`` of the block norms, with sums of squares from ``totals_of(shift)``.

  ``totals_of`` returns a pytree of (psum-med) sums of squares per tree. The
  result comes out of a ``lax.cond``: the usual branch takes square roots of
  the direct sums; the other, taken when a sum overflowed, recomputes them
  rescaled. Both apply ``fn`` inside the branch, so ``fn`` runs once per
  block and every leaf's kernel reads a finished value (XLA:CPU would
  otherwise fuse the per-block math into each leaf's kernel). psum-med
  totals are equal on every device, so all devices take the same branch.
  """
  fast = totals_of(0)

  def direct():
    return fn(*jax.tree.map(safe_sqrt, fast))

  def rescaled():
    slow = totals_of(_SHIFT)

    def norm(f, r):
      # Blocks that did not overflow keep their direct sum: rescaling would
      # underflow the squares of small blocks.
      fin = jnp.isfinite(f)
      scale = jnp.where(fin, 1.0, 2.0 ** _SHIFT).astype(f.dtype)
      return safe_sqrt(jnp.where(fin, f, r)) * scale

    return fn(*jax.tree.map(norm, fast, slow))

  return lax.cond(_all_finite(fast), direct, rescaled)


def _block_totals(trees_leaves, axes, index, n, axis_name):
  """``totals_of(shift)``: per tree, the list of per-block sums of squares.

  A block's sum is a scalar, or a keepdims row for ``"unit"`` blocks. They
  stay separate arrays: stacking them into one vector that every leaf's
  kernel slices made XLA:CPU compile ~8x slower.
  """

  def totals_of(shift):
    out = []
    for leaves in trees_leaves:
      parts = [_sum_sq(x, a, shift) for x, a in zip(leaves, axes)]
      out.append(_group_totals(parts, index, n))
    if axis_name is not None:
      out = lax.psum(out, axis_name)
    return out

  return totals_of


def block_norm_map(
    fn: Callable[..., Any],
    tree: Any,
    *others: Any,
    blocks: BlockSpec = "layer",
    axis_name: str | None = None,
) -> Any:
  """Applies an elementwise ``fn`` to block norms, once per block.

  ``fn(norm_of_tree, *norms_of_others)`` gets a block's norm in ``tree``
  (and in each tree of ``others``, which must share its structure, e.g.
  params next to updates) and returns an array, or a tuple of arrays, of the
  same shape. It runs once per block, not once per leaf, and every leaf of
  the block gets the same result: the per-block scalar math is computed once
  and each leaf's consumer sees a plain scalar operand, which keeps the
  compiled step small (XLA compiles one kernel per distinct fused
  computation, and identical per-leaf computations are shared).

  Args:
    fn: an elementwise function of one norm array per tree.
    tree: a pytree of arrays.
    *others: pytrees with the structure of ``tree``.
    blocks: block mode or callable (see the module docstring).
    axis_name: mapped axis across which leaves are sharded.

  Returns:
    A pytree with the structure of ``tree`` laid out like
    :func:`block_norms` (per leaf a scalar, or a keepdims ``"unit"`` row),
    or a tuple of such pytrees if ``fn`` returns a tuple.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> g = {"a": {"w": jnp.full(4, 3.0)}, "b": {"w": jnp.full(4, 0.5)}}
    >>> inv = normopt.blocks.block_norm_map(lambda n: 1 / n, g, blocks="layer")
    >>> round(float(inv["a"]["w"]), 6), float(inv["b"]["w"])
    (0.166667, 1.0)

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  check_blocks(blocks, "block_norm_map")
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  if not flat:
    return tree
  paths = [p for p, _ in flat]
  leaves = [l for _, l in flat]
  others_leaves = [treedef.flatten_up_to(o) for o in others]
  keys, axes = _leaf_partition(paths, leaves, blocks)
  trees_leaves = [leaves, *others_leaves]
  index, n = _block_index(keys)

  def per_block(*norms):
    out = [fn(*[nrm[b] for nrm in norms]) for b in range(n)]
    if isinstance(out[0], tuple):
      return tuple([o[j] for o in out] for j in range(len(out[0])))
    return out

  result = _apply_to_norms(
      per_block, _block_totals(trees_leaves, axes, index, n, axis_name)
  )
  pick = lambda r: [r[b] for b in index]
  if isinstance(result, tuple):
    return tuple(
        jax.tree_util.tree_unflatten(treedef, pick(r)) for r in result
    )
  return jax.tree_util.tree_unflatten(treedef, pick(result))


def block_norms(
    tree: Any, blocks: BlockSpec = "layer", axis_name: str | None = None
) -> Any:
  """Euclidean norm of each leaf's block, broadcastable against the leaf.

  ``‖g_b‖ = sqrt(sum over leaves l in b of sum(g_l ** 2))``, accumulated in
  float32 or wider.

  Args:
    tree: a pytree of arrays; ``None`` and empty nodes (``optax.MaskedNode``)
      are skipped.
    blocks: ``"leaf"``, ``"layer"``, ``"global"``, ``"unit"`` or a callable
      ``(path, leaf) -> hashable`` (see the module docstring).
    axis_name: a mapped axis (``pmap``/``shard_map``) across which the leaves
      are sharded; partial squared norms are ``psum``-med over it.

  Returns:
    A pytree with the structure of ``tree``: per leaf, an array of the
    accumulation dtype (float32, or float64 for float64 leaves) that
    broadcasts against the leaf: a scalar where one block covers the leaf, or
    of shape ``(1, ..., 1, units)`` for ``"unit"`` blocks. Leaves of one block
    hold the same value.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> g = {"dense": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.full(2, 2.0)}}
    >>> n = normopt.block_norms(g, "layer")
    >>> round(float(n["dense"]["kernel"].squeeze()), 4), round(float(n["dense"]["bias"].squeeze()), 4)
    (3.4641, 3.4641)

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017
    (layer blocks); Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018 (unit blocks).
  """
  check_blocks(blocks, "block_norms")
  return block_norm_map(lambda n: n, tree, blocks=blocks, axis_name=axis_name)


def require_params(params: Any, name: str) -> None:
  """Raises the ``ValueError`` every params-needing transformation raises."""
  if params is None:
    raise ValueError(
        f"{name} needs the current parameters: call "
        f"update(updates, state, params) with params."
    )


def check_same_structure(updates: Any, other: Any, name: str, what: str = "params") -> None:
  """Raises ``ValueError`` naming ``name`` if the two trees differ in structure."""
  s_u = jax.tree.structure(updates)
  s_o = jax.tree.structure(other)
  if s_u != s_o:
    raise ValueError(
        f"{name}: updates and {what} have different tree structures "
        f"({s_u.num_leaves} vs {s_o.num_leaves} leaves).\n"
        f"updates: {s_u}\n{what}: {s_o}"
    )
