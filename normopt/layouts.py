"""Layouts: what each parameter is, from the model that owns it (DESIGN §8).

A shape does not say which axes of a kernel are its inputs. Flax's attention
q/k/v kernels are ``(d, heads, head_dim)`` (input axis 0) and its out kernel
``(heads, head_dim, d)``; a q/k/v bias ``(heads, head_dim)`` is no matrix at
all; Equinox stores ``Linear`` as ``(out, in)`` and ``Conv`` as
``(O, I, *k)``. The module that owns a parameter knows. normopt reads it once,
before training (:func:`param_layouts`), and every norm, scale and routing
decision of the spectral family (``block_normalize(norm="spectral")``,
``muon``, ``scion``, ``scale_by_width``) and every ``blocks="unit"`` split
uses it through the keyword ``layout=``.

A :class:`ParamLayout` names, for the full leaf (stacked axes counted):

* ``kind``: ``"hidden"`` (a dense map), ``"conv"``, ``"embedding"``,
  ``"head"`` (the output layer), ``"norm"`` (a norm layer's scale or offset),
  ``"bias"`` or ``"unknown"``;
* ``reduction`` and ``output``: the fan-in and fan-out axes, as optax's
  ``MuonDimensionNumbers``; ``batch``: every other axis, each index its own
  matrix (stacked layers, per-head views); ``spatial``: conv taps (a subset
  of ``reduction``); ``stacked``: how many leading ``batch`` axes are
  stacked (scanned) layers.

A leaf's matrix: transpose to ``batch + reduction + output`` and reshape to
``(B, ∏reduction, ∏output)``; ``fan_in = ∏reduction``, ``fan_out =
∏output``. Without a model, :func:`layouts_from_shapes` is the rule (and the
default of every function that takes ``layout=``): names first (``bias``,
``scale``, ``embedding``), then the number of non-stacked axes, and a leaf
with exactly three (an attention kernel or a Conv1D: a shape cannot say) is
``"unknown"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from normopt.blocks import flatten_stacked
from normopt.blocks import key_name
from normopt.blocks import StackedSpec
from normopt.blocks import strip_wrapper_keys

KINDS = ("hidden", "conv", "embedding", "head", "norm", "bias", "unknown")
#: Kinds whose leaves are matrices (spectral norm, Muon, Scion's matrix LMOs).
MATRIX_KINDS = ("hidden", "conv", "embedding", "head")


def _axes(v: Any) -> tuple[int, ...]:
  if isinstance(v, (int, np.integer)):
    return (int(v),)
  return tuple(int(a) for a in v)


@dataclasses.dataclass(frozen=True)
class ParamLayout:
  """What one parameter leaf is: its kind and its matrix axes (DESIGN §8).

  Axes index the full leaf, stacked axes counted. A pytree *leaf* (unlike
  optax's ``MuonDimensionNumbers``, a NamedTuple), so a tree of them is a
  valid pytree prefix of the params.

  Attributes:
    kind: one of ``"hidden"``, ``"conv"``, ``"embedding"``, ``"head"``,
      ``"norm"``, ``"bias"``, ``"unknown"``.
    reduction: the fan-in axes (an output unit is a vector over them).
    output: the fan-out axes.
    batch: every other axis, each index its own matrix.
    spatial: conv taps, a subset of ``reduction``.
    tied: an embedding table also used as the output layer.
    source: what decided it (``"flax.linen.DenseGeneral"``, ``"shape rule"``,
      ``"override"``...).
    stacked: how many leading axes (all in ``batch``) are stacked layers.
  """

  kind: str
  reduction: tuple[int, ...]
  output: tuple[int, ...]
  batch: tuple[int, ...] = ()
  spatial: tuple[int, ...] = ()
  tied: bool = False
  source: str = ""
  stacked: int = 0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"ParamLayout: kind must be one of {KINDS}, got {self.kind!r}.")
    for f in ("reduction", "output", "batch", "spatial"):
      object.__setattr__(self, f, _axes(getattr(self, f)))
    if not set(self.spatial) <= set(self.reduction):
      raise ValueError(
          f"ParamLayout: spatial {self.spatial} must be a subset of reduction "
          f"{self.reduction}.")
    if tuple(self.batch[: self.stacked]) != tuple(range(self.stacked)):
      raise ValueError(
          f"ParamLayout: the {self.stacked} stacked axes must be the leading "
          f"batch axes, got batch {self.batch}.")

  @property
  def is_matrix(self) -> bool:
    """True when the leaf is (a batch of) matrices: both fans non-empty."""
    return self.kind in MATRIX_KINDS and bool(self.reduction) and bool(self.output)

  def check(self, shape: Sequence[int], where: str = "") -> None:
    """Raises ``ValueError`` unless the axes cover ``shape`` exactly once."""
    ndim = len(shape)
    axes = self.batch + self.reduction + self.output
    if sorted(axes) != list(range(ndim)):
      raise ValueError(
          f"layout of {where or 'a leaf'} with shape {tuple(shape)}: batch "
          f"{self.batch}, reduction {self.reduction} and output {self.output} "
          f"must name each of its {ndim} axes exactly once.")

  def fans(self, shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` = ``(∏reduction, ∏output)`` of ``shape``."""
    return (math.prod(shape[a] for a in self.reduction),
            math.prod(shape[a] for a in self.output))

  def matrix_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
    """``(B, fan_in, fan_out)``: the leaf's matrices."""
    fan_in, fan_out = self.fans(shape)
    return math.prod(shape[a] for a in self.batch), fan_in, fan_out

  @property
  def perm(self) -> tuple[int, ...]:
    return self.batch + self.reduction + self.output

  def to_matrix(self, x: jax.Array) -> jax.Array:
    """``x`` as ``(B, fan_in, fan_out)`` matrices."""
    perm = self.perm
    if perm != tuple(range(len(perm))):
      x = jnp.transpose(x, perm)
    return jnp.reshape(x, self.matrix_shape([jnp.shape(x)[i] for i in np.argsort(perm)]))

  def from_matrix(self, y: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Inverse of :meth:`to_matrix` for a leaf of ``shape``."""
    perm = self.perm
    y = jnp.reshape(y, [shape[a] for a in perm])
    if perm != tuple(range(len(perm))):
      y = jnp.transpose(y, tuple(int(a) for a in np.argsort(perm)))
    return y

  def unit_axes(self) -> tuple[int, ...] | None:
    """The axes one output unit spans (``blocks="unit"``), or None for a vector."""
    if self.kind in ("bias", "norm") or not self.reduction or not self.output:
      return None
    return self.reduction

  def with_kind(self, kind: str, source: str | None = None) -> ParamLayout:
    return dataclasses.replace(self, kind=kind, source=self.source if source is None else source)


def vector_layout(ndim: int, stacked: int, kind: str, source: str) -> ParamLayout:
  """A leaf that is no matrix (bias, norm): reduction (), output the rest."""
  return ParamLayout(kind, (), tuple(range(stacked, ndim)), tuple(range(stacked)),
                     source=source, stacked=stacked)


def _restack(pl: ParamLayout, k: int) -> ParamLayout:
  """``pl`` of an unstacked leaf, shifted behind ``k`` leading stacked axes."""
  if not k:
    return pl
  sh = lambda t: tuple(a + k for a in t)
  return dataclasses.replace(
      pl, reduction=sh(pl.reduction), output=sh(pl.output),
      batch=tuple(range(k)) + sh(pl.batch), spatial=sh(pl.spatial), stacked=k + pl.stacked)


def shape_rule(names: Sequence[Any], shape: Sequence[int], stacked: int = 0,
               convention: str = "flax") -> ParamLayout:
  """The layout a shape (and the leaf's name) gives, without a model."""
  ndim, k = len(shape), stacked
  r = ndim - k
  last = names[-1] if names else None
  src = "shape rule"
  if last == "bias":
    return vector_layout(ndim, k, "bias", src)
  if last == "scale":
    return vector_layout(ndim, k, "norm", src)
  if last == "embedding" and r >= 2:
    return ParamLayout("embedding", (k,), tuple(range(k + 1, ndim)), tuple(range(k)),
                       source=src, stacked=k)
  if r <= 1:
    return vector_layout(ndim, k, "bias", src)
  batch = tuple(range(k))
  if convention == "torch":
    red, out = tuple(range(k + 1, ndim)), (k,)
    spatial = tuple(range(k + 2, ndim))
  else:
    red, out = tuple(range(k, ndim - 1)), (ndim - 1,)
    spatial = tuple(range(k, ndim - 2))
  if r == 2:
    return ParamLayout("hidden", red, out, batch, source=src, stacked=k)
  if r == 3:
    return ParamLayout("unknown", red, out, batch, source=src, stacked=k)
  return ParamLayout("conv", red, out, batch, spatial, source=src, stacked=k)


def _path_names(path: Sequence[Any]) -> tuple[Any, ...]:
  return tuple(key_name(k) for k in strip_wrapper_keys(path))


def _matches(key: Any, names: tuple[Any, ...]) -> bool:
  """A name (any path entry, or ``"a/b"``: consecutive entries) or a
  predicate ``(names)``."""
  if callable(key):
    return bool(key(names))
  if isinstance(key, str) and "/" in key:
    want = tuple(key.strip("/").split("/"))
    got = tuple(str(n) for n in names)
    return any(got[i:i + len(want)] == want for i in range(len(got)))
  return key in names


def _override_items(overrides: Any) -> list[tuple[Any, Any]]:
  if overrides is None:
    return []
  if isinstance(overrides, Mapping):
    return list(overrides.items())
  return [tuple(kv) for kv in overrides]


def _is_head(head: Any, names: tuple[Any, ...]) -> bool:
  if head is None:
    return False
  if callable(head):
    return bool(head(names))
  keys = (head,) if isinstance(head, str) else tuple(head)
  return any(_matches(k, names) for k in keys)


def _finish(pl: ParamLayout, names, shape, head, overrides) -> ParamLayout:
  """Applies ``head=`` and ``overrides=`` to a leaf's layout."""
  for key, value in _override_items(overrides):
    if _matches(key, names):
      value = as_layout(value, len(shape), pl.stacked, "override")
      value.check(shape, "/".join(map(str, names)))
      return value if value.source else dataclasses.replace(value, source="override")
  if _is_head(head, names) and pl.kind in ("hidden", "embedding", "unknown", "conv"):
    return pl.with_kind("head", pl.source + " (head=)")
  return pl


def as_layout(value: Any, ndim: int, stacked: int = 0, source: str = "") -> ParamLayout:
  """A ``ParamLayout`` from one, from ``None`` (no matrix) or from optax's
  ``MuonDimensionNumbers`` (``"hidden"``; every other axis a batch axis, the
  leading ``stacked`` ones stacked) for a leaf of ``ndim`` axes."""
  if isinstance(value, ParamLayout):
    return value
  if value is None:
    return vector_layout(ndim, stacked, "bias", source or "None")
  red = getattr(value, "reduction_axis", None)
  out = getattr(value, "output_axis", None)
  if red is None or out is None:
    raise ValueError(
        f"layout: expected a ParamLayout, a MuonDimensionNumbers or None, got {value!r}.")
  red = tuple(a % ndim for a in _axes(red))
  out = tuple(a % ndim for a in _axes(out))
  batch = tuple(a for a in range(ndim) if a not in red + out)
  k = stacked if tuple(range(stacked)) == batch[:stacked] else 0
  return ParamLayout("hidden", red, out, batch, source=source or "MuonDimensionNumbers",
                     stacked=k)


def _is_spec_leaf(x: Any) -> bool:
  return x is None or isinstance(x, ParamLayout) or (
      hasattr(x, "reduction_axis") and hasattr(x, "output_axis"))


class Layouts:
  """Per-leaf :class:`ParamLayout` objects of a model, callable ``(path, leaf)``.

  Built by :func:`param_layouts` or :func:`layouts_from_shapes`; pass it as
  ``layout=`` to any normopt transformation or optimizer. A path it does not
  know gets the shape rule. Prints as a table (path, shape, kind, matrix
  ``B × m × n``, source).
  """

  def __init__(self, entries: Mapping[tuple[Any, ...], tuple[tuple[int, ...], ParamLayout]],
               *, convention: str = "flax", head: Any = None, overrides: Any = None):
    self._entries = dict(entries)
    self.convention = convention
    self._head = head
    self._overrides = overrides

  def __call__(self, path: Any, leaf: Any) -> ParamLayout:
    names = _path_names(path)
    shape = tuple(jnp.shape(leaf))
    for key in (names, names[1:] if names and names[0] == "params" else None):
      if key is not None and key in self._entries:
        known_shape, pl = self._entries[key]
        if tuple(known_shape) == shape:
          return pl
    pl = shape_rule(names, shape, 0, self.convention)
    return _finish(pl, names, shape, self._head, self._overrides)

  def __getitem__(self, path: str | tuple[Any, ...]) -> ParamLayout:
    key = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
    return self._entries[key][1]

  def __iter__(self):
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def items(self):
    return [(k, pl) for k, (_, pl) in self._entries.items()]

  def unknown(self) -> list[str]:
    """Paths of the leaves whose kind is ``"unknown"``."""
    return ["/".join(map(str, k)) for k, (_, pl) in self._entries.items()
            if pl.kind == "unknown"]

  def table(self) -> str:
    """The layouts as a text table."""
    rows = [("path", "shape", "kind", "matrix B × m × n", "source")]
    for key, (shape, pl) in self._entries.items():
      if pl.is_matrix or pl.kind == "unknown":
        b, m, n = pl.matrix_shape(shape)
        mat = f"{b} × {m} × {n}"
      else:
        mat = "-"
      kind = pl.kind + (" (tied)" if pl.tied else "")
      rows.append(("/".join(map(str, key)), str(tuple(shape)), kind, mat, pl.source))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.table()

  def __repr__(self) -> str:
    return f"Layouts({len(self)} leaves)\n{self.table()}"

  def dimension_numbers(self, params: Any) -> Any:
    """The tree of ``optax.contrib.MuonDimensionNumbers`` (or ``None``).

    ``"hidden"`` and ``"conv"`` leaves get their reduction and output axes;
    every other leaf ``None``: what ``optax.contrib.muon`` takes as
    ``muon_weight_dimension_numbers``.
    """
    from optax.contrib import MuonDimensionNumbers

    def dn(path, leaf):
      pl = self(path, leaf)
      if pl.kind in ("hidden", "conv") and pl.is_matrix:
        return MuonDimensionNumbers(pl.reduction, pl.output)
      return None

    return jax.tree_util.tree_map_with_path(dn, params)


def layouts_from_shapes(
    params: Any,
    *,
    stacked: StackedSpec = None,
    convention: str = "flax",
    head: Any = None,
    overrides: Any = None,
) -> Layouts:
  """The layouts a parameter tree's names and shapes give, without a model.

  Names first: a leaf named ``bias`` is ``"bias"``, ``scale`` is ``"norm"``,
  ``embedding`` is ``"embedding"``, whatever their rank. Then the non-stacked
  axes: 0 or 1 → ``"bias"``; 2 → ``"hidden"`` (``convention="flax"``:
  ``(in, out)``; ``"torch"``: ``(out, in)``); 4 or more → ``"conv"`` (HWIO,
  or ``(O, I, *k)``); exactly 3 → ``"unknown"`` (an attention kernel or a
  Conv1D: a shape cannot say). This is the default of every normopt function
  that takes ``layout=``.

  Args:
    params: the parameter tree (arrays or ``jax.ShapeDtypeStruct`` values).
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`): batch axes of every layout.
    convention: ``"flax"`` (kernels ``(in, out)``, HWIO) or ``"torch"``
      (``(out, in)``, ``(O, I, *k)``: Equinox, PyTorch ports).
    head: names (any path entry, or ``"a/b"`` for consecutive entries) or a predicate
      ``(names) -> bool`` marking the output layer(s): their kernels become
      ``"head"``.
    overrides: a mapping (or pairs) from names or predicates to a
      ``ParamLayout``, a ``MuonDimensionNumbers`` or ``None`` (no matrix).

  Returns:
    A :class:`Layouts`.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> p = {"dense": {"kernel": jnp.zeros((4, 8)), "bias": jnp.zeros(8)},
    ...      "attn": {"query": {"kernel": jnp.zeros((8, 2, 4))}}}
    >>> lay = normopt.layouts_from_shapes(p)
    >>> [lay[k].kind for k in ("dense/kernel", "dense/bias", "attn/query/kernel")]
    ['hidden', 'bias', 'unknown']

  References:
    optax's ``contrib.MuonDimensionNumbers`` (reduction, output and batch
    axes); Jordan et al., `Muon <https://kellerjordan.github.io/posts/muon/>`_,
    2024.
  """
  if convention not in ("flax", "torch"):
    raise ValueError(f"layouts_from_shapes: convention must be 'flax' or 'torch', "
                     f"got {convention!r}.")
  paths, leaves, counts, _ = flatten_stacked(params, stacked, "layouts_from_shapes")
  entries = {}
  for path, leaf, k in zip(paths, leaves, counts, strict=True):
    names = _path_names(path)
    shape = tuple(jnp.shape(leaf))
    pl = _finish(shape_rule(names, shape, k, convention), names, shape, head, overrides)
    entries[names] = (shape, pl)
  return Layouts(entries, convention=convention, head=head, overrides=overrides)


def resolve_layouts(
    tree: Any, layout: Any, stacked: StackedSpec, name: str
) -> tuple[list[Any], list[Any], list[int], list[ParamLayout], Any]:
  """Per flattened leaf of ``tree``: ``(paths, leaves, counts, layouts, treedef)``.

  ``layout`` is ``None`` (the shape rule, :func:`layouts_from_shapes`), a
  :class:`Layouts` or callable ``(path, leaf) -> ParamLayout |
  MuonDimensionNumbers | None``, or a pytree prefix of those. ``counts`` are
  the stacked axes: from ``stacked`` when given (the layouts must agree,
  else ``ValueError`` naming the leaf), else from the layouts.
  """
  paths, leaves, counts, treedef = flatten_stacked(tree, stacked, name)
  if layout is None:
    out = [shape_rule(_path_names(p), tuple(jnp.shape(x)), k)
           for p, x, k in zip(paths, leaves, counts, strict=True)]
    return paths, leaves, counts, out, treedef
  if callable(layout) and not isinstance(layout, ParamLayout):
    raw = [layout(p, x) for p, x in zip(paths, leaves, strict=True)]
  else:
    try:
      full = jax.tree.map(
          lambda v, sub: jax.tree.map(lambda _: v, sub), layout, tree, is_leaf=_is_spec_leaf)
    except (ValueError, TypeError) as e:
      raise ValueError(
          f"{name}: layout must be a Layouts, a callable (path, leaf) -> ParamLayout, "
          f"or a pytree prefix of the params holding ParamLayout / "
          f"MuonDimensionNumbers / None; its structure does not fit the tree: {e}") from e
    raw = jax.tree.leaves(full, is_leaf=_is_spec_leaf)
    if len(raw) != len(leaves):
      raise ValueError(f"{name}: layout is not a pytree prefix of the tree.")
  given = stacked is not None
  out, new_counts = [], []
  for p, x, k, v in zip(paths, leaves, counts, raw, strict=True):
    shape = tuple(jnp.shape(x))
    where = jax.tree_util.keystr(p)
    pl = as_layout(v, len(shape), k)
    pl.check(shape, f"{name}: {where}")
    if given and pl.stacked != k:
      if pl.stacked == 0 and tuple(range(k)) == pl.batch[:k]:
        pl = dataclasses.replace(pl, stacked=k)
      else:
        raise ValueError(
            f"{name}: stacked= gives {k} stacked axes for {where} of shape {shape}, "
            f"but its layout has {pl.stacked} ({pl.source}); give one of them, or make "
            f"them agree.")
    out.append(pl)
    new_counts.append(pl.stacked)
  return paths, leaves, new_counts, out, treedef


def unknown_error(name: str, where: str, shape: Any, what: str) -> ValueError:
  """The error for an ``"unknown"`` leaf, naming both fixes."""
  return ValueError(
      f"{name}: {where} of shape {tuple(shape)} has 3 non-stacked axes, so its shape "
      f"cannot say which are its inputs (an attention kernel (d, heads, head_dim), a "
      f"Conv1D (W, I, O) or a scanned (L, d, d) layer), and {what} needs its matrix. "
      f"Fix: stacked= for a scanned layer (e.g. stacked=normopt.stacked_under"
      f"('layers')), or layout=normopt.param_layouts(model, *example_inputs) to read "
      f"every leaf's axes from the model.")


# --------------------------------------------------------------------------
# param_layouts: from the model.

_ATTENTION = ("MultiHeadDotProductAttention", "SelfAttention", "MultiHeadAttention")
_NORMS = ("LayerNorm", "RMSNorm", "BatchNorm", "GroupNorm", "InstanceNorm",
          "SpectralNorm", "WeightNorm")
_QKV = ("query", "key", "value")


def _find_stack(full: tuple[int, ...], core: tuple[int, ...]) -> tuple[int, ...] | None:
  """Positions of the extra (stacked) axes of ``full`` over ``core``: leading first."""
  k = len(full) - len(core)
  if k < 0:
    return None
  if full[k:] == core:
    return tuple(range(k))
  # Not leading (variable_axes={"params": 1}...): the first subsequence match.
  def match(i, j, picked):
    if j == len(core):
      return picked + tuple(range(i, len(full)))
    for t in range(i, len(full)):
      if full[t] == core[j] and len(picked) + (t - i) <= k:
        r = match(t + 1, j + 1, picked + tuple(range(i, t)))
        if r is not None:
          return r
    return None
  return match(0, 0, ())


def _core_layout(cls: str, param: str, core_ndim: int, attrs: dict, framework: str,
                 attention: str, parent: str | None, own_name: Any) -> ParamLayout | None:
  """The layout of an unstacked parameter of a known layer, or None."""
  n = core_ndim
  src = f"{framework}.{cls}"
  if param in ("bias", "bias_n") or (cls in _NORMS and param in ("scale", "weight")):
    kind = "norm" if cls in _NORMS else "bias"
    return vector_layout(n, 0, kind, src)
  if cls in ("Dense", "Linear", "DenseParams", "LoRALinear") and param in ("kernel", "weight"):
    if n != 2:
      return None
    torch = framework == "equinox"
    return ParamLayout("hidden", (1,) if torch else (0,), (0,) if torch else (1,), source=src)
  if cls in ("LoRA", "LoRALinear") and param in ("lora_a", "lora_b"):
    return ParamLayout("hidden", (0,), (1,), source=src) if n == 2 else None
  if cls in ("GRUCell", "LSTMCell") and framework == "equinox" and param.startswith("weight"):
    return ParamLayout("hidden", (1,), (0,), source=src) if n == 2 else None
  if cls in ("DenseGeneral", "LinearGeneral") and param == "kernel":
    nb, nc = attrs["n_batch"], attrs["n_in"]
    batch = tuple(range(nb))
    red = tuple(range(nb, nb + nc))
    out = tuple(range(nb + nc, n))
    if parent in _ATTENTION and attention == "head":
      if own_name in _QKV and len(out) == 2:  # (d, heads, head_dim)
        batch, out = batch + (out[0],), (out[1],)
        src += " (per head)"
      elif own_name == "out" and len(red) == 2:  # (heads, head_dim, d)
        batch, red = batch + (red[0],), (red[1],)
        src += " (per head)"
    return ParamLayout("hidden", red, out, batch, source=src)
  if cls == "Einsum" and param == "kernel":
    spec = attrs.get("einsum_str")
    if not spec or "->" not in spec:
      return None
    lhs_rhs, res = spec.replace(" ", "").split("->")
    lhs, rhs = lhs_rhs.split(",")
    if len(rhs) != n:
      return None
    ein_batch: list[int] = []
    ein_red: list[int] = []
    ein_out: list[int] = []
    for i, c in enumerate(rhs):
      (ein_batch if c in lhs and c in res else ein_out if c in res else ein_red).append(i)
    return ParamLayout("hidden", tuple(ein_red), tuple(ein_out), tuple(ein_batch),
                       source=src + f" {spec!r}")
  if cls in ("Conv", "ConvTranspose", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
             "ConvTranspose2d", "ConvTranspose3d") and param in ("kernel", "weight"):
    if n < 3:
      return None
    if framework == "equinox":  # (O, I, *k)
      return ParamLayout("conv", tuple(range(1, n)), (0,), (), tuple(range(2, n)), source=src)
    sp = tuple(range(n - 2))
    if attrs.get("transpose_kernel"):  # (*k, O, I)
      return ParamLayout("conv", sp + (n - 1,), (n - 2,), (), sp, source=src)
    return ParamLayout("conv", sp + (n - 2,), (n - 1,), (), sp, source=src)
  if cls == "ConvLocal" and param == "kernel":  # (*positions, k·I, O)
    return ParamLayout("hidden", (n - 2,), (n - 1,), tuple(range(n - 2)), source=src)
  if cls in ("Embed", "Embedding") and param in ("embedding", "weight"):
    return ParamLayout("embedding", (0,), tuple(range(1, n)), source=src,
                       tied=bool(attrs.get("tied")))
  if cls == "PReLU":
    return vector_layout(n, 0, "bias", src)
  return None


def _layout_of(names, shape, core_shape, info, attention) -> ParamLayout | None:
  cls, attrs, framework, parent, own = info
  stack = _find_stack(tuple(shape), tuple(core_shape)) if core_shape is not None else None
  if stack is None:
    return None
  core = _core_layout(cls, names[-1], len(core_shape), attrs, framework, attention, parent, own)
  if core is None:
    return None
  if stack == tuple(range(len(stack))):
    return _restack(core, len(stack))
  # Stacked axes elsewhere: every axis of the core shifted past them, all batch.
  rest = [a for a in range(len(shape)) if a not in stack]
  m = lambda t: tuple(rest[a] for a in t)
  return dataclasses.replace(
      core, reduction=m(core.reduction), output=m(core.output),
      batch=tuple(sorted(stack + m(core.batch))), spatial=m(core.spatial), stacked=0)


def _linen_owners(model, args, kwargs):
  import flax.linen as nn

  owners: dict[tuple[Any, ...], Any] = {}

  def interceptor(next_fun, a, kw, ctx):
    out = next_fun(*a, **kw)
    m = ctx.module
    if m.scope is None:
      return out
    path = tuple(m.path)
    cls = type(m).__name__
    prev = owners.get(path)
    variables = m.variables.get("params", {})
    shapes = {k: tuple(v.shape) for k, v in variables.items()
              if hasattr(v, "shape") and not isinstance(v, Mapping)}
    attrs: dict[str, Any] = dict(prev[1]) if prev else {}
    if cls == "DenseGeneral":
      axis = m.axis if isinstance(m.axis, Sequence) else (m.axis,)
      bd = m.batch_dims if isinstance(m.batch_dims, Sequence) else (m.batch_dims,)
      attrs.update(n_batch=len(bd), n_in=len(axis))
    if cls == "Einsum":
      attrs["einsum_str"] = kw.get("einsum_str") or (
          a[1] if len(a) > 1 and isinstance(a[1], str) else m.einsum_str)
    if cls == "ConvTranspose":
      attrs["transpose_kernel"] = m.transpose_kernel
    if ctx.method_name == "attend":
      attrs["tied"] = True
    parent = type(m.parent).__name__ if isinstance(m.parent, nn.Module) else None
    if shapes or prev is None:
      owners[path] = (cls, attrs, shapes, parent, m.name)
    else:  # a later call without params (Embed.attend): keep the first record
      owners[path] = (*prev[:1], attrs, *prev[2:])
    return out

  # Array-like inputs (arrays, ShapeDtypeStructs) go in abstractly; the rest
  # (flags such as deterministic=True) stay Python values.
  leaves, treedef = jax.tree.flatten((args, kwargs))
  dyn = [i for i, x in enumerate(leaves) if hasattr(x, "shape") and hasattr(x, "dtype")]

  def init(key, *arrays):
    full = list(leaves)
    for i, x in zip(dyn, arrays, strict=True):
      full[i] = x
    a, kw = jax.tree.unflatten(treedef, full)
    return model.init({"params": key, "dropout": key}, *a, **kw)

  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(init, jax.random.key(0), *[leaves[i] for i in dyn])
  params = variables["params"] if "params" in variables else variables
  return params, owners


def _nnx_owners(model):
  from flax import nnx

  iter_modules = getattr(nnx, "iter_modules", None)
  pairs = list(iter_modules(model) if iter_modules else model.iter_modules())
  mods = {tuple(p): m for p, m in pairs}
  owners = {}
  for path, m in mods.items():
    cls = type(m).__name__
    attrs: dict[str, Any] = {}
    core: dict[str, tuple[int, ...] | None] = {}
    if cls == "LinearGeneral":
      attrs.update(n_batch=len(m.batch_axis), n_in=len(m.in_features))
      core["kernel"] = (*tuple(m.batch_axis.values()), *m.in_features, *m.out_features)
      core["bias"] = (*tuple(m.batch_axis.values()), *m.out_features)
    elif cls in ("Linear", "LoRALinear"):
      core["kernel"], core["bias"] = (m.in_features, m.out_features), (m.out_features,)
    elif cls == "Einsum":
      attrs["einsum_str"] = m.einsum_str
      core["kernel"] = tuple(m.kernel_shape)
    elif cls in ("Conv", "ConvTranspose"):
      ks = tuple(m.kernel_size) if isinstance(m.kernel_size, Sequence) else (m.kernel_size,)
      attrs["transpose_kernel"] = getattr(m, "transpose_kernel", False)
      n_in = m.in_features // getattr(m, "feature_group_count", 1)
      if attrs["transpose_kernel"]:
        core["kernel"] = (*ks, m.out_features, m.in_features)
      else:
        core["kernel"] = (*ks, n_in if cls == "Conv" else m.in_features, m.out_features)
      core["bias"] = (m.out_features,)
    elif cls == "Embed":
      core["embedding"] = (m.num_embeddings, m.features)
    elif cls in _NORMS:
      feat = getattr(m, "num_features", None)
      if feat is not None:
        core["scale"] = core["bias"] = (feat,)
    elif cls == "LoRA":
      core["lora_a"] = (m.in_features, m.lora_rank)
      core["lora_b"] = (m.lora_rank, m.out_features)
    parent = type(mods.get(path[:-1])).__name__ if path[:-1] in mods else None
    owners[path] = (cls, attrs, core, parent, path[-1] if path else None)
  return owners


def _equinox_owners(model):
  import equinox as eqx

  owners = {}

  def walk(m, prefix):
    cls = type(m).__name__
    core: dict[str, Any] = {}
    for f in ("weight", "bias", "bias_n", "weight_ih", "weight_hh", "negative_slope"):
      v = getattr(m, f, None)
      if v is not None and hasattr(v, "shape"):
        core[f] = None  # unknown core shape: stacked axes from the rank
    attrs: dict[str, Any] = {}
    if getattr(m, "num_spatial_dims", None) is not None:
      attrs["core_ndim"] = {"weight": m.num_spatial_dims + 2, "bias": m.num_spatial_dims + 1}
    elif cls in _NORMS:
      shp = getattr(m, "shape", None)
      n = len(shp) if isinstance(shp, tuple) else 1
      attrs["core_ndim"] = {"weight": n, "bias": n}
    owners[prefix] = (cls, attrs, core, None, prefix[-1] if prefix else None)
    flat, _ = jax.tree_util.tree_flatten_with_path(
        m, is_leaf=lambda x: x is not m and isinstance(x, eqx.Module))
    for p, sub in flat:
      if isinstance(sub, eqx.Module):
        walk(sub, prefix + tuple(key_name(k) for k in p))

  walk(model, ())
  return owners


_EQX_CORE_NDIM = {
    ("Linear", "weight"): 2, ("Linear", "bias"): 1, ("Embedding", "weight"): 2,
    ("GRUCell", "weight_ih"): 2, ("GRUCell", "weight_hh"): 2, ("GRUCell", "bias"): 1,
    ("GRUCell", "bias_n"): 1, ("LSTMCell", "weight_ih"): 2, ("LSTMCell", "weight_hh"): 2,
    ("LSTMCell", "bias"): 1, ("PReLU", "negative_slope"): 0,
}


def param_layouts(
    model: Any,
    *example_args: Any,
    head: Any = None,
    attention: str = "layer",
    overrides: Any = None,
    strict: bool = False,
    **example_kwargs: Any,
) -> Layouts:
  """Each parameter's layout, read from the model that owns it (DESIGN §8).

  * Flax Linen: give the module and example inputs; the module is
    initialized abstractly (``jax.eval_shape`` under ``nn.intercept_methods``:
    no FLOPs, no arrays) and every call of a known layer records it. Keys are
    those of ``variables["params"]``.
  * Flax NNX: give the module (real or abstract, e.g. from
    ``nnx.eval_shape``); nothing is run. Keys are those of
    ``nnx.state(model, nnx.Param)``.
  * Equinox: give the module; nothing is run. Keys are those of
    ``eqx.filter(model, eqx.is_array)``.

  Known layers: Dense/Linear, DenseGeneral/LinearGeneral (with batch dims),
  the attention modules (their q/k/v/out kernels), Conv/ConvTranspose (any
  rank), ConvLocal, Embed/Embedding (``attend`` seen in Linen makes it
  ``tied``), the norm layers, Einsum (its string decides), LoRA, Equinox's
  recurrent cells. Layers lifted by ``nn.scan``, ``nn.vmap``,
  ``nnx.scan``/``nnx.vmap`` or ``eqx.filter_vmap`` get their stacked axes as
  ``batch`` (and ``stacked`` when they lead).

  Args:
    model: a Flax Linen, Flax NNX or Equinox module.
    *example_args: Linen only: example inputs for ``model.init``
      (``jax.ShapeDtypeStruct`` values are fine).
    head: names (a path entry, or ``"a/b"`` for consecutive entries) or a predicate
      ``(names) -> bool`` marking the output layer(s): their kernels become
      ``"head"`` (Muon gives them to Adam; Scion's ``"auto"`` gives them
      ``"sign"``).
    attention: ``"layer"`` (the attention layer's own maps, ``d →
      heads·head_dim``) or ``"head"`` (each head's q/k/v/out its own matrix,
      heads a batch axis; Flax's attention modules; Equinox's
      ``MultiheadAttention`` stores heads merged and keeps its layer view).
    overrides: a mapping (or pairs) from names or predicates to a
      ``ParamLayout``, ``MuonDimensionNumbers`` or ``None`` (no matrix).
    strict: raise ``ValueError`` listing the leaves no known layer owns
      (``"unknown"``) instead of returning them.
    **example_kwargs: Linen only: keyword inputs for ``model.init``.

  Returns:
    A :class:`Layouts`.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, normopt
    >>> attn = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    >>> x = jax.ShapeDtypeStruct((1, 5, 8), jnp.float32)
    >>> lay = normopt.param_layouts(attn, x, x)
    >>> q = lay["query/kernel"]
    >>> q.kind, q.reduction, q.output, q.matrix_shape((8, 2, 4))
    ('hidden', (0,), (1, 2), (1, 8, 8))
    >>> lay["query/bias"].kind
    'bias'
    >>> normopt.param_layouts(attn, x, x, attention="head")["query/kernel"].batch
    (1,)

  References:
    optax's ``contrib.MuonDimensionNumbers``, which this fills in from the
    model; Jordan et al., `Muon <https://kellerjordan.github.io/posts/muon/>`_,
    2024.
  """
  if attention not in ("layer", "head"):
    raise ValueError(f"param_layouts: attention must be 'layer' or 'head', got {attention!r}.")
  framework, params, owners = _framework_owners(model, example_args, example_kwargs)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  entries: dict[tuple[Any, ...], tuple[tuple[int, ...], ParamLayout]] = {}
  for path, leaf in flat:
    names = _path_names(path)
    shape = tuple(jnp.shape(leaf))
    pl = _owned_layout(framework, owners, names, shape, attention)
    if pl is None:
      rule = shape_rule(names, shape, 0, "torch" if framework == "equinox" else "flax")
      pl = rule if rule.kind in ("bias", "norm") else dataclasses.replace(
          rule, kind="unknown", source="no known layer")
    entries[names] = (shape, _finish(pl, names, shape, head, overrides))
  lay = Layouts(entries, convention="torch" if framework == "equinox" else "flax",
                head=head, overrides=overrides)
  if strict and lay.unknown():
    raise ValueError(
        "param_layouts(strict=True): no known layer owns these leaves: "
        + ", ".join(lay.unknown()) + "; give them overrides= (a ParamLayout or None).")
  return lay


def _framework_owners(model, args, kwargs):
  mod = type(model).__module__
  nn: Any = None
  nnx: Any = None
  try:
    from flax import nnx
    import flax.linen as nn
  except ImportError:  # pragma: no cover - flax is an extra
    pass
  if nn is not None and isinstance(model, nn.Module):
    params, owners = _linen_owners(model, args, kwargs)
    return "flax.linen", params, owners
  if nnx is not None and isinstance(model, nnx.Module):
    return "flax.nnx", nnx.state(model, nnx.Param), _nnx_owners(model)
  if mod.startswith("equinox") or any(
      c.__module__.startswith("equinox") for c in type(model).__mro__):
    import equinox as eqx
    return "equinox", eqx.filter(model, eqx.is_array), _equinox_owners(model)
  raise TypeError(
      f"param_layouts: expected a Flax Linen, Flax NNX or Equinox module, got "
      f"{type(model).__name__}; without a model use normopt.layouts_from_shapes(params).")


def _owned_layout(framework, owners, names, shape, attention):
  info = owners.get(names[:-1])
  if info is None:
    return None
  cls, attrs, core, parent, own = info
  param = names[-1]
  if framework == "equinox":
    if param not in core:
      return None
    core_ndim = attrs.get("core_ndim", {}).get(param, _EQX_CORE_NDIM.get((cls, param)))
    if core_ndim is None or core_ndim > len(shape):
      return None
    core_shape = shape[len(shape) - core_ndim:]
  else:
    core_shape = core.get(param)
    if core_shape is None:
      return None
  return _layout_of(names, shape, core_shape, (cls, attrs, framework, parent, own), attention)


__all__ = [
    "Layouts",
    "ParamLayout",
    "layouts_from_shapes",
    "param_layouts",
]

