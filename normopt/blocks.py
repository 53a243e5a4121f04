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
concatenated. Squares are taken after an exact power-of-two rescaling, so
float32 elements up to ~1e24 do not overflow; beyond that a block's norm is
inf and its normalized gradient 0 (never NaN).

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


# Squares are taken of x * 2**-_SHIFT and the norm multiplied back by
# 2**_SHIFT. Powers of two scale exactly, so in the normal range the norm is
# bit-identical to the naive one, while float32 elements up to ~1e24 (instead
# of ~1.8e19) square without overflow. Elements below ~7e-15 square into the
# subnormals, far below the default eps=1e-12 where a block divides by eps
# anyway. The scale is passed through an optimization barrier together with
# its leaf: as a plain constant, XLA's CPU backend would share one
# materialized full-size broadcast of it between same-shaped leaves and read
# it back in every reduction (about one extra read of the gradient).
_SHIFT = 16

# Blocks of more leaves than this are summed in a loop (see _loop_sum)
# instead of a chain of adds (``"global"`` over thousands of leaves).
_CHAIN_MAX = 8


def _sum_sq(x, axes):
  """Partial sum of squares: a scalar if ``axes`` covers the leaf, else keepdims."""
  x = x.astype(_acc_dtype(x))
  scale, x = lax.optimization_barrier((jnp.asarray(2.0 ** -_SHIFT, x.dtype), x))
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


def _group_totals(values, keys):
  """Sums per-leaf values sharing a key: ``(block index per leaf, totals)``."""
  members: dict[Any, list[Any]] = {}
  for key, v in zip(keys, values):
    members.setdefault(key, []).append(v)
  ids = {k: i for i, k in enumerate(members)}
  index = [ids[k] for k in keys]
  totals = []
  for vs in members.values():
    if len(vs) > _CHAIN_MAX:
      totals.append(_loop_sum(jnp.stack(vs)))
    else:
      t = vs[0]
      for v in vs[1:]:
        t = t + v
      totals.append(t)
  return index, totals


def safe_sqrt(x):
  """``sqrt`` whose gradient at 0 is 0 instead of inf (safe under jax.grad)."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1)), 0)


def inv_norm(norm, eps):
  """``1 / max(norm, eps)``, and 0 for a zero norm (no NaN even with eps=0)."""
  pos = norm > 0
  return jnp.where(pos, 1.0 / jnp.where(pos, jnp.maximum(norm, eps), 1), 0)


def _block_totals(trees_leaves, keys, axes, axis_name):
  """Per tree, the per-block sums of (prescaled) squares.

  Returns ``(index, totals)``: ``index[i]`` is leaf ``i``'s block and
  ``totals[t][b]`` block ``b``'s sum of squares in tree ``t``, psum-med over
  ``axis_name``; the norm is ``sqrt(total) * 2**_SHIFT``.
  """
  out, index = [], None
  for leaves in trees_leaves:
    parts = [_sum_sq(x, a) for x, a in zip(leaves, axes)]
    index, tot = _group_totals(parts, keys)
    out.append(tot)
  if axis_name is not None:
    out = lax.psum(out, axis_name)
  return index, out


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
  index, totals = _block_totals(
      [leaves, *others_leaves], keys, axes, axis_name
  )
  per_block = [
      fn(*[safe_sqrt(tot[b]) * (2.0 ** _SHIFT) for tot in totals])
      for b in range(len(totals[0]))
  ]
  if isinstance(per_block[0], tuple):
    return tuple(
        jax.tree_util.tree_unflatten(treedef, [per_block[b][j] for b in index])
        for j in range(len(per_block[0]))
    )
  return jax.tree_util.tree_unflatten(treedef, [per_block[b] for b in index])


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
