"""Blocks: how a pytree of gradients is cut into the groups that get one norm.

Every block-wise transformation in normopt takes ``blocks=``, ``stacked=``
and ``axis_name=``:

=============  ==============================================================
``blocks``     one block is
=============  ==============================================================
``"leaf"``     one array leaf of the pytree
``"layer"``    all leaves that share a parent path (a Flax module's ``kernel``
               and ``bias``). Trailing wrapper keys that are not module names
               (an NNX variable's ``.value``) are skipped when finding it.
``"global"``   the whole pytree (SNGD)
``"unit"``     one output unit of the leaf's layout (:mod:`normopt.layouts`):
               a vector over its reduction axes. By default (the shape rule)
               a leaf of ``ndim >= 2`` is split into vectors over all axes
               but the last (Dense ``(in, out)`` reduces axis 0, Conv HWIO
               reduces ``(0, 1, 2)``); a leaf of ``ndim < 2``, or one named
               ``bias`` or ``scale``, is one block
callable       ``(path, leaf) -> hashable``: leaves with equal keys form one
               block
=============  ==============================================================

Norms are Euclidean and accumulated in float32 (or wider, for float64 leaves),
whatever the leaf dtype, so bf16 and fp16 gradients do not overflow. Per-leaf
squared norms are computed once and summed per block; leaves are never
concatenated. Float32 elements up to ~1e24 square without overflow; beyond
that a block's norm is inf and its normalized gradient 0 (never NaN).

**Stacked (scanned) layers.** ``flax.linen.scan``, ``nnx.scan``/``nnx.vmap``
and ``equinox.filter_vmap`` store L layers as ONE leaf with a leading axis of
size L (a kernel ``(L, d_in, d_out)``). ``stacked`` says how many leading axes
of each leaf index such a stack: ``None`` (nothing is stacked), a callable
``(path, leaf) -> int`` such as :func:`stacked_under`, or a pytree prefix of
the params holding ints (as ``optax.masked`` takes masks). A leaf with stacked
shape ``S`` behaves exactly as ``prod(S)`` separate leaves, the model
unrolled: ``"layer"`` blocks are slice ``i`` of every leaf under one parent
(their stacked shapes must agree); ``"leaf"`` is one block per slice;
``"unit"`` splits each slice into vectors over its axes but the last;
``"global"`` is unchanged; callable blocks key on ``(user key, slice)``. No
norm reduces over a stacked axis.

``axis_name``: inside ``shard_map``/``pmap`` with leaves *sharded* across that
mapped axis, partial squared norms are ``psum``-med over it. Under ``jit`` with
``NamedSharding`` nothing is needed: norms are global already. Only a split
along the axes a norm reduces needs ``axis_name``: for ``"unit"`` blocks a
split along the last (output) axis keeps whole units per shard, and a split
along a *stacked* axis (whole layers per device, FSDP-style) keeps whole
blocks per shard for every mode but ``"global"``; such splits must not pass
it. The psum covers every leaf of the call: a leaf that is *replicated*
rather than split would be counted once per shard, so give such leaves their
own ``optax.partition`` group without ``axis_name``.

``layout``: per-leaf :class:`normopt.ParamLayout` objects (``normopt.param_layouts(
model, x)``, a callable or a pytree prefix): their stacked axes stand for
``stacked`` (the two must agree when both are given), and ``"unit"`` blocks
are the layouts' output units (a per-head attention kernel's unit is one
head's output).

``optax.inject_hyperparams`` treats every callable argument as a schedule:
with a callable ``blocks`` or ``stacked``, list it in
``static_args=("blocks", "stacked", "layout")``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
import itertools
from typing import Any, TypeAlias

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from normopt._numerics import acc_dtype
from normopt._numerics import safe_sqrt

#: A block mode (``"leaf"``, ``"layer"``, ``"global"``, ``"unit"``) or a callable
#: ``(path, leaf) -> hashable`` whose equal keys form one block.
BlockSpec: TypeAlias = str | Callable[[Any, Any], Hashable]
#: How many leading axes of each leaf index stacked layers: ``None``, a callable
#: ``(path, leaf) -> int`` or a pytree prefix of ints.
StackedSpec: TypeAlias = None | int | Callable[[Any, Any], int] | Any

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


def key_name(key: Any) -> Any:
  """What a path entry names: a dict key, an attribute name or an index."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def stacked_under(*names: Hashable, axes: int = 1) -> Callable[[Any, Any], int]:
  """A ``stacked`` spec: ``axes`` stacked axes for leaves under ``names``.

  Returns the callable ``(path, leaf) -> int`` that gives ``axes`` to every
  leaf whose path has a key (dict key, attribute name or sequence index)
  equal to one of ``names``, and 0 to every other leaf. Pass it as
  ``stacked=`` to any normopt transformation or optimizer.

  Args:
    *names: the keys under which scanned layers live (e.g. the name of an
      ``nn.scan``-ned module, or an NNX attribute holding a stacked module).
    axes: how many leading axes index the stack (2 for a scan of scans).

  Returns:
    A callable ``(path, leaf) -> int``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> p = {"layers": {"dense": {"kernel": jnp.ones((3, 4, 4)), "bias": jnp.ones((3, 4))}},
    ...      "head": {"kernel": jnp.ones((4, 2))}}
    >>> spec = normopt.stacked_under("layers")
    >>> len(normopt.block_partition(p, "layer"))     # the stack is one block
    2
    >>> len(normopt.block_partition(p, "layer", stacked=spec))   # 3 layers + head
    4

  References:
    Layers stacked by `flax.linen.scan
    <https://flax.readthedocs.io/en/latest/api_reference/flax.linen/transformations.html>`_
    or ``nnx.scan``; batch axes as in optax's ``contrib.MuonDimensionNumbers``.
  """
  if not names:
    raise ValueError("stacked_under: give at least one name.")
  if isinstance(axes, bool) or not isinstance(axes, (int, np.integer)) or axes < 0:
    raise ValueError(f"stacked_under: axes must be an int >= 0, got {axes!r}.")
  wanted = set(names)

  def stacked(path: Any, leaf: Any) -> int:
    del leaf
    return int(axes) if any(key_name(k) in wanted for k in path) else 0

  return stacked


def per_leaf(spec: Any, tree: Any, paths: Sequence[Any], leaves: Sequence[Any],
             name: str, what: str, holding: str) -> list[Any]:
  """``spec`` read per flattened leaf of ``tree``.

  ``spec`` is a callable ``(path, leaf) -> value`` or a pytree prefix of
  ``tree`` holding values (as ``optax.masked`` takes masks); ``stacked=``,
  ``norm=`` and Scion's ``norms=``/``radius=`` are read through it.
  """
  if callable(spec):
    return [spec(p, x) for p, x in zip(paths, leaves, strict=True)]
  try:
    full = jax.tree.map(lambda v, sub: jax.tree.map(lambda _: v, sub), spec, tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"{name}: {what} must be a callable (path, leaf) -> value or a pytree "
        f"prefix of the params holding {holding}; its structure does not fit "
        f"the tree: {e}"
    ) from e
  values = jax.tree.leaves(full)
  if len(values) != len(leaves):
    raise ValueError(f"{name}: {what} is not a pytree prefix of the tree.")
  return values


def _stack_counts(tree, paths, leaves, stacked, name):
  """Per flattened leaf of ``tree``: how many leading axes are stacked."""
  if stacked is None:
    return [0] * len(leaves)
  raw = per_leaf(stacked, tree, paths, leaves, name, "stacked", "ints")
  counts = []
  for path, leaf, k in zip(paths, leaves, raw, strict=True):
    ndim = len(jnp.shape(leaf))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= ndim:
      raise ValueError(
          f"{name}: stacked gave {k!r} for {jax.tree_util.keystr(path)} of "
          f"shape {jnp.shape(leaf)}; expected an int in [0, {ndim}]."
      )
    counts.append(int(k))
  return counts


class WithLayout:
  """``stacked=`` and ``layout=`` of a public function, carried as one spec.

  The internals pass ``stacked`` around; a public function that takes both
  wraps them once (:func:`with_layout`), and :func:`flatten_stacked` and
  :func:`flatten_layouts` read the stacked axes and layouts from it.
  """

  def __init__(self, stacked: StackedSpec, layout: Any):
    self.stacked = stacked
    self.layout = layout


def with_layout(stacked: StackedSpec, layout: Any) -> Any:
  """``stacked`` itself, or both wrapped when a ``layout`` is given."""
  if layout is None:
    return stacked
  if isinstance(stacked, WithLayout):
    raise ValueError("layout= given twice.")
  return WithLayout(stacked, layout)


def flatten_stacked(tree: Any, stacked: StackedSpec, name: str):
  """Flattens ``tree``: ``(paths, leaves, stacked axes per leaf, treedef)``."""
  if isinstance(stacked, WithLayout):
    paths, leaves, counts, _, treedef = flatten_layouts(tree, stacked, None, "unit", name)
    return paths, leaves, counts, treedef
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = [p for p, _ in flat]
  leaves = [x for _, x in flat]
  return paths, leaves, _stack_counts(tree, paths, leaves, stacked, name), treedef


def flatten_layouts(tree: Any, stacked: StackedSpec, layout: Any, blocks: Any, name: str):
  """:func:`flatten_stacked` that also resolves ``layout=`` when it matters.

  Returns ``(paths, leaves, counts, layouts, treedef)``; ``layouts`` is None
  when neither ``layout`` nor ``"unit"`` blocks need them (the stacked axes
  then come from ``stacked`` alone).
  """
  if isinstance(stacked, WithLayout):
    if layout is not None:
      raise ValueError(f"{name}: layout= given twice.")
    wrapped: WithLayout = stacked
    stacked, layout = wrapped.stacked, wrapped.layout
  if layout is None and blocks != "unit":
    paths, leaves, counts, treedef = flatten_stacked(tree, stacked, name)
    return paths, leaves, counts, None, treedef
  from normopt.layouts import resolve_layouts  # layouts imports this module

  return resolve_layouts(tree, layout, stacked, name)


def _leaf_partition(paths, leaves, counts, blocks, layouts=None):
  """Per leaf: (block key, reduced axes, keepdims, stacked axes).

  ``layouts`` (from :func:`flatten_layouts`, always resolved for ``"unit"``
  blocks) give each leaf's output units.
  """
  out: list[tuple[Any, tuple[int, ...], bool, int]] = []
  for i, (path, leaf, k) in enumerate(zip(paths, leaves, counts, strict=True)):
    ndim = len(jnp.shape(leaf))
    rest = tuple(range(k, ndim))
    if callable(blocks):
      out.append((("callable", blocks(path, leaf)), rest, False, k))
    elif blocks == "leaf":
      out.append((i, rest, False, k))
    elif blocks == "layer":
      out.append((("layer", layer_key(path)), rest, False, k))
    elif blocks == "global":
      out.append(("global", tuple(range(ndim)), False, 0))
    elif blocks == "unit":
      ua = layouts[i].unit_axes()
      out.append((i, rest, False, k) if ua is None else (i, ua, True, k))
    else:
      raise ValueError(f"unknown blocks mode {blocks!r}")
  return out


def _slice_path(path, idx):
  return jax.tree_util.keystr(path) + "".join(f"[{j}]" for j in idx)


def block_partition(
    tree: Any, blocks: BlockSpec = "layer", *, stacked: StackedSpec = None, layout: Any = None
) -> dict[Any, list[str]]:
  """Which leaves (or stacked slices) form one block: ``{key: [path, ...]}``.

  A debugging aid to see how ``blocks`` and ``stacked`` cut a parameter tree.

  Args:
    tree: a pytree of arrays (params or gradients).
    blocks: a block mode (see module docstring) or a callable.
    stacked: stacked leading axes per leaf (see module docstring).
    layout: per-leaf layouts (:mod:`normopt.layouts`): stacked axes, and
      the output units of ``"unit"`` blocks.

  Returns:
    An ordered dict from block key to the ``jax.tree_util.keystr`` paths of the
    leaves in that block (for ``"unit"`` one leaf holds many blocks). A slice
    ``i`` of a stacked leaf is listed as ``path[i]`` under the key
    ``(key, i)``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> p = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
    >>> list(normopt.block_partition(p, "layer").values())
    [["['dense']['bias']", "['dense']['kernel']"]]
    >>> s = {"layers": {"kernel": jnp.ones((2, 3, 3)), "bias": jnp.zeros((2, 3))}}
    >>> parts = normopt.block_partition(s, "layer", stacked=normopt.stacked_under("layers"))
    >>> for paths in parts.values():
    ...   print(paths)
    ["['layers']['bias'][0]", "['layers']['kernel'][0]"]
    ["['layers']['bias'][1]", "['layers']['kernel'][1]"]

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017
    (layer blocks); Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018 (unit blocks).
  """
  check_blocks(blocks, "block_partition")
  paths, leaves, counts, lay, _ = flatten_layouts(tree, stacked, layout, blocks,
                                                  "block_partition")
  parts = _leaf_partition(paths, leaves, counts, blocks, lay)
  _check_group_shapes(paths, leaves, parts, "block_partition")
  out: dict[Any, list[str]] = {}
  for (key, _, _, k), path, leaf in zip(parts, paths, leaves, strict=True):
    shape = tuple(jnp.shape(leaf))[:k]
    if not shape:
      out.setdefault(key, []).append(jax.tree_util.keystr(path))
      continue
    for idx in itertools.product(*(range(n) for n in shape)):
      out.setdefault((key, idx[0] if len(idx) == 1 else idx), []).append(
          _slice_path(path, idx)
      )
  return out


def _check_group_shapes(paths, leaves, parts, name):
  """Leaves of one block must have equal stacked shapes (else ValueError)."""
  first: dict[Any, tuple[Any, tuple[int, ...]]] = {}
  for path, leaf, (key, _, keepdims, k) in zip(paths, leaves, parts, strict=True):
    if keepdims:
      continue
    shape = tuple(jnp.shape(leaf))[:k]
    if key not in first:
      first[key] = (path, shape)
    elif first[key][1] != shape:
      p0, s0 = first[key]
      raise ValueError(
          f"{name}: leaves of one block must have equal stacked shapes, got "
          f"{s0} at {jax.tree_util.keystr(p0)} and {shape} at "
          f"{jax.tree_util.keystr(path)}; check stacked= for these paths."
      )


# Squares are taken of x * 2**-_SHIFT and the norm multiplied back by
# 2**_SHIFT (see docs/design.md, "The 2^-16 prescale").
_SHIFT = 16
#: A block's norm is ``sqrt(total) * NORM_SCALE`` for the ``total`` that
#: :func:`block_sq_map` passes (the sum of squares of the prescaled elements).
NORM_SCALE = 2.0 ** _SHIFT

# Blocks of more leaves than this are summed in a loop (see _loop_sum)
# instead of a chain of adds (``"global"`` over thousands of leaves).
_CHAIN_MAX = 8


def _sum_sq(x, axes, keepdims):
  """Partial sum of squares of ``x * 2**-_SHIFT`` over ``axes``."""
  x = x.astype(acc_dtype(x))
  scale, x = lax.optimization_barrier((jnp.asarray(2.0 ** -_SHIFT, x.dtype), x))
  x = x * scale
  return jnp.sum(jnp.square(x), axis=axes, keepdims=keepdims)


def _loop_sum(rows_in, chunk=64):
  """``sum(rows_in, axis=0)`` that XLA computes once (see docs/design.md)."""
  n = rows_in.shape[0]
  k = -(-n // chunk)
  pad = [(0, k * chunk - n)] + [(0, 0)] * (rows_in.ndim - 1)
  rows = jnp.reshape(jnp.pad(rows_in, pad), (k, chunk) + rows_in.shape[1:])
  return lax.fori_loop(
      0, k, lambda i, acc: acc + jnp.sum(rows[i], axis=0),
      jnp.zeros(rows_in.shape[1:], rows_in.dtype),
  )


def _group_totals(values, keys):
  """Sums per-leaf values sharing a key: ``(block index per leaf, totals)``."""
  members: dict[Any, list[Any]] = {}
  for key, v in zip(keys, values, strict=True):
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


def _block_totals(trees_leaves, parts, axis_name):
  """Per tree, the per-block sums of (prescaled) squares.

  Returns ``(index, totals)``: ``index[i]`` is leaf ``i``'s block and
  ``totals[t][b]`` block ``b``'s sum of squares in tree ``t`` (of the
  block's stacked shape, or a keepdims row for ``"unit"``), psum-med over
  ``axis_name``; the norm is ``sqrt(total) * 2**_SHIFT``.
  """
  keys = [key for key, _, _, _ in parts]
  out, index = [], None
  for leaves in trees_leaves:
    sums = [_sum_sq(x, a, kd) for x, (_, a, kd, _) in zip(leaves, parts, strict=True)]
    index, tot = _group_totals(sums, keys)
    out.append(tot)
  if axis_name is not None:
    out = lax.psum(out, axis_name)
  return index, out


def _broadcastable(x, leaf, part):
  """A block result laid out to broadcast against its (stacked) leaf."""
  _, _, keepdims, k = part
  ndim = len(jnp.shape(leaf))
  if keepdims or k == 0:
    return x
  return jnp.reshape(x, jnp.shape(x) + (1,) * (ndim - k))


def block_norm_map(
    fn: Callable[..., Any],
    tree: Any,
    *others: Any,
    blocks: BlockSpec = "layer",
    stacked: StackedSpec = None,
    axis_name: str | None = None,
    layout: Any = None,
) -> Any:
  """Applies an elementwise ``fn`` to block norms, once per block.

  ``fn(norm_of_tree, *norms_of_others)`` gets a block's norm in ``tree``
  (and in each tree of ``others``, which must share its structure, e.g.
  params next to updates) and returns an array, or a tuple of arrays, of the
  same shape. It runs once per block, not once per leaf, and every leaf of
  the block gets the same result (see docs/design.md for why this keeps the
  compiled step small). For a stacked block the norm is an array over the
  stack, one entry per slice.

  Args:
    fn: an elementwise function of one norm array per tree.
    tree: a pytree of arrays.
    *others: pytrees with the structure of ``tree``.
    blocks: block mode or callable (see the module docstring).
    stacked: stacked leading axes per leaf (see the module docstring).
    layout: per-leaf layouts (:mod:`normopt.layouts`): stacked axes, and
      the output units of ``"unit"`` blocks.
    axis_name: mapped axis across which leaves are sharded.

  Returns:
    A pytree with the structure of ``tree`` laid out like
    :func:`block_norms`, or a tuple of such pytrees if ``fn`` returns a
    tuple.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> g = {"a": {"w": jnp.full(4, 3.0)}, "b": {"w": jnp.full(4, 0.5)}}
    >>> inv = normopt.block_norm_map(lambda n: 1 / n, g, blocks="layer")
    >>> round(float(inv["a"]["w"]), 6), float(inv["b"]["w"])
    (0.166667, 1.0)

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  return _map_blocks(
      lambda *totals: fn(*[safe_sqrt(t) * NORM_SCALE for t in totals]),
      tree, others, blocks, stacked, axis_name, "block_norm_map", layout,
  )


def block_sq_map(
    fn: Callable[..., Any],
    tree: Any,
    *others: Any,
    blocks: BlockSpec = "layer",
    stacked: StackedSpec = None,
    axis_name: str | None = None,
    layout: Any = None,
) -> Any:
  """:func:`block_norm_map` on the sums of squares instead of the norms.

  ``fn`` gets, per tree, a block's sum of squares of its prescaled elements,
  ``total = sum(g_b**2) / NORM_SCALE**2`` (the norm is
  ``sqrt(total) * NORM_SCALE``), and runs once per block. For a caller that
  needs both the norm and its inverse: one ``rsqrt`` of the total gives both,
  where the norm first costs a ``sqrt`` and then a division, and XLA keeps
  each such scalar as a kernel of its own per block (see docs/design.md).
  """
  return _map_blocks(fn, tree, others, blocks, stacked, axis_name, "block_sq_map", layout)


def _map_blocks(fn, tree, others, blocks, stacked, axis_name, name, layout=None):
  """``fn`` of each block's totals (one per tree), laid out per leaf."""
  check_blocks(blocks, name)
  paths, leaves, counts, lay, treedef = flatten_layouts(tree, stacked, layout, blocks, name)
  if not leaves:
    return tree
  others_leaves = [treedef.flatten_up_to(o) for o in others]
  parts = _leaf_partition(paths, leaves, counts, blocks, lay)
  _check_group_shapes(paths, leaves, parts, name)
  index, totals = _block_totals([leaves, *others_leaves], parts, axis_name)
  per_block = [fn(*[tot[b] for tot in totals]) for b in range(len(totals[0]))]

  def unflatten(results):
    return jax.tree_util.tree_unflatten(
        treedef,
        [_broadcastable(r, x, pt) for r, x, pt in zip(results, leaves, parts, strict=True)],
    )

  if isinstance(per_block[0], tuple):
    return tuple(
        unflatten([per_block[b][j] for b in index])
        for j in range(len(per_block[0]))
    )
  return unflatten([per_block[b] for b in index])


def block_norms(
    tree: Any,
    blocks: BlockSpec = "layer",
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
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
    stacked: stacked leading axes per leaf (see the module docstring).
    layout: per-leaf layouts (:mod:`normopt.layouts`): stacked axes, and
      the output units of ``"unit"`` blocks.

  Returns:
    A pytree with the structure of ``tree``: per leaf, an array of the
    accumulation dtype (float32, or float64 for float64 leaves) that
    broadcasts against the leaf: a scalar where one block covers the leaf,
    of shape ``(1, ..., 1, units)`` for ``"unit"`` blocks, and with the
    stacked axes in front (``(L, 1, ..., 1)``) for a stacked leaf. Leaves of
    one block hold the same value.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> g = {"dense": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.full(2, 2.0)}}
    >>> n = normopt.block_norms(g, "layer")
    >>> [round(float(x), 4) for x in (n["dense"]["kernel"], n["dense"]["bias"])]
    [3.4641, 3.4641]

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017
    (layer blocks); Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018 (unit blocks).
  """
  check_blocks(blocks, "block_norms")
  return block_norm_map(
      lambda n: n, tree, blocks=blocks, stacked=stacked, axis_name=axis_name, layout=layout
  )


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


def leaf_blocks(
    tree: Any, blocks: BlockSpec = "layer", *, stacked: StackedSpec = None, name: str = "blocks",
    layout: Any = None,
) -> list[tuple[Any, int]]:
  """Per flattened leaf of ``tree``: ``(block key, elements per block)``.

  The element count is that of one block (of one stacked slice, or of one
  unit for ``"unit"`` blocks), summed over the block's leaves: the ``n_b``
  of the ``"rms"`` norm. Leaves with equal keys share a block.
  """
  check_blocks(blocks, name)
  paths, leaves, counts, lay, _ = flatten_layouts(tree, stacked, layout, blocks, name)
  parts = _leaf_partition(paths, leaves, counts, blocks, lay)
  _check_group_shapes(paths, leaves, parts, name)
  per_leaf = []
  for leaf, (key, axes, keepdims, k) in zip(leaves, parts, strict=True):
    shape = jnp.shape(leaf)
    if keepdims or key == "global":
      per_leaf.append(int(np.prod([shape[a] for a in axes], dtype=np.int64)))
    else:
      per_leaf.append(int(np.prod(shape[k:], dtype=np.int64)))
  totals: dict[Any, int] = {}
  for (key, _, keepdims, _), n in zip(parts, per_leaf, strict=True):
    totals[(key, keepdims)] = n if keepdims else totals.get((key, keepdims), 0) + n
  return [
      (key, n if keepdims else totals[(key, keepdims)])
      for (key, _, keepdims, _), n in zip(parts, per_leaf, strict=True)
  ]
