"""Scion: a norm-constrained LMO step with a norm chosen per layer (DESIGN §7).

Scion (Pethick et al., ICML 2025) keeps a momentum ``d`` of the gradient and
steps along ``radius · lmo(d)`` per layer, where ``lmo`` is the linear
minimization oracle of a norm ball, ``lmo(g) = argmax_{‖u‖ ≤ 1} <g, u>``,
and each layer picks its own norm. The LMOs below are the reference code's
(``LIONS-EPFL/scion``, with its default flags), written for a Flax kernel
``G`` of shape ``(fan_in, fan_out)`` (PyTorch's ``(out, in)`` transposed):

===================  =========================================================
name                 ``lmo(G)``
===================  =========================================================
``"spectral"``       ``√(fan_out/fan_in) · U Vᵀ`` (polar factor, Newton–Schulz)
``"spectral_conv"``  Conv ``(H, W, I, O)``: polar factor of the
                     ``(H·W·I, O)`` matrix times ``√(O/I) / (H·W)``
``"sign"``           ``sign(G) / fan_in``
``"bias_rms"``       ``g / RMS(g)`` (a vector)
``"col"``            each row ``G[i, :]`` (one input unit's outgoing weights)
                     to RMS 1: ``G[i, :] / RMS(G[i, :])``
``"row"``            each column ``G[:, j]`` (one output unit's incoming
                     weights) to norm ``1/√fan_in``
===================  =========================================================

``fan_in`` and ``fan_out`` are the products of a leaf's reduction and
output axes in its layout (:mod:`normopt.layouts`; without ``layout=``, the
shape rule: all non-stacked axes but the last are the fan-in), per matrix
(stacked slice, or head in a per-head view); ``"spectral_conv"``'s taps are
the layout's ``spatial`` axes. ``"bias_rms"`` takes leaves that are no
matrix (biases, norm scales), the others matrices. ``"auto"`` reads the
layout's kind: ``"hidden"`` → ``"spectral"``, ``"conv"`` →
``"spectral_conv"``, ``"embedding"`` → ``"col"`` (each token's vector),
``"head"`` → ``"sign"``, ``"norm"`` and ``"bias"`` → ``"bias_rms"``; an
``"unknown"`` leaf (3 non-stacked axes under the shape rule) raises. Every
LMO adds ``eps`` where it divides (to the RMS or norm, and to the Frobenius
norm before Newton–Schulz), so a zero gradient gives a zero step.

Each LMO is one row of ``LMOS``. The polar factors of all spectral leaves
of a tree come from ONE call of :func:`normopt.norms.directions` (so of
:func:`normopt.polar_factors`), grouped by shape and dtype and split across a
mesh's devices by matrix.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normopt._numerics import acc_dtype
from normopt._numerics import canonical_dtype
from normopt._numerics import decayed_weights
from normopt._numerics import safe_sqrt
from normopt.blocks import check_same_structure
from normopt.blocks import flatten_layouts
from normopt.blocks import per_leaf
from normopt.blocks import require_params
from normopt.blocks import StackedSpec
from normopt.layouts import ParamLayout
from normopt.layouts import unknown_error
from normopt.norms import check_preconditioning
from normopt.norms import DEFAULT_NS_COEFFS
from normopt.norms import directions
from normopt.norms import ns_coefficients


class LMO(NamedTuple):
  """One row of the Scion LMO table.

  ``fn(x, polar, pl, eps)`` gives the direction of a leaf ``x`` (in float32
  or wider) whose layout is ``pl`` (:class:`normopt.ParamLayout`); ``polar``
  is the polar factor of each of its matrices when ``polar`` is set, else
  None. ``matrix``: the LMO needs a matrix (both fans); else it takes a
  leaf that is no matrix (a bias, a norm scale).
  """

  fn: Callable[[jax.Array, Any, ParamLayout, Any], jax.Array]
  matrix: bool = True
  polar: bool = False


def _spectral(x, polar, pl, eps):
  fan_in, fan_out = pl.fans(x.shape)
  return polar * math.sqrt(fan_out / fan_in)


def _spectral_conv(x, polar, pl, eps):
  fan_in, c_out = pl.fans(x.shape)
  taps = math.prod(x.shape[a] for a in pl.spatial)
  return polar * (math.sqrt(c_out / (fan_in // taps)) / taps)


def _sign(x, polar, pl, eps):
  fan_in, _ = pl.fans(x.shape)
  return jnp.sign(x) / fan_in


def _col(x, polar, pl, eps):
  rms = safe_sqrt(jnp.mean(jnp.square(x), axis=pl.output, keepdims=True))
  return x / (rms + eps)


def _row(x, polar, pl, eps):
  fan_in, _ = pl.fans(x.shape)
  norm = safe_sqrt(jnp.sum(jnp.square(x), axis=pl.reduction, keepdims=True))
  return x / (norm * math.sqrt(fan_in) + eps)


def _bias_rms(x, polar, pl, eps):
  axes = pl.reduction + pl.output
  rms = safe_sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True))
  return x / (rms + eps)


#: Scion's LMOs by name (see the module docstring).
LMOS: dict[str, LMO] = {
    "spectral": LMO(_spectral, polar=True),
    "spectral_conv": LMO(_spectral_conv, polar=True),
    "sign": LMO(_sign),
    "bias_rms": LMO(_bias_rms, matrix=False),
    "col": LMO(_col),
    "row": LMO(_row),
}

#: Scion's ``"auto"`` rule, by the kind of a leaf's layout.
AUTO: dict[str, str] = {
    "hidden": "spectral",
    "conv": "spectral_conv",
    "embedding": "col",
    "head": "sign",
    "norm": "bias_rms",
    "bias": "bias_rms",
}


def _check_name(name: Any) -> None:
  if name != "auto" and name not in LMOS:
    raise ValueError(
        f"scion: unknown norm {name!r}; known: {sorted(LMOS)} and 'auto'.")


def _leaf_lmos(tree, paths, leaves, lays, norms):
  """The LMO name of every flattened leaf: resolved, checked against its layout."""
  names = []
  given = per_leaf(norms, tree, paths, leaves, "scion", "norms", "names")
  for p, x, pl, n in zip(paths, leaves, lays, given, strict=True):
    where = jax.tree_util.keystr(p)
    if not isinstance(n, str) or (n != "auto" and n not in LMOS):
      raise ValueError(
          f"scion: unknown norm {n!r} for {where}; known: {sorted(LMOS)} and 'auto'.")
    if pl.kind == "unknown" and (n == "auto" or LMOS[n].matrix):
      raise unknown_error("scion", where, jnp.shape(x), f"norm {n!r}")
    if n == "auto":
      n = AUTO[pl.kind] if pl.is_matrix or pl.kind in ("bias", "norm") else "bias_rms"
    if LMOS[n].matrix != pl.is_matrix:
      want = "a matrix" if LMOS[n].matrix else "a leaf that is no matrix (a bias, a norm scale)"
      raise ValueError(
          f"scion: norm {n!r} needs {want}; {where} of shape {jnp.shape(x)} has layout "
          f"kind {pl.kind!r}, reduction {pl.reduction}, output {pl.output} ({pl.source}).")
    if n == "spectral_conv" and pl.kind != "conv":
      raise ValueError(
          f"scion: norm 'spectral_conv' needs a conv kernel; {where} of shape "
          f"{jnp.shape(x)} has layout kind {pl.kind!r} ({pl.source}).")
    names.append(n)
  return names


def scion_directions(
    tree: Any,
    *,
    norms: Any = "auto",
    radius: Any = 1.0,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps: Any = 1e-8,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    grouped: bool = True,
    gram: bool = False,
    **ns_options: Any,
) -> Any:
  """``radius · lmo(x)`` for every leaf ``x`` of ``tree``, each in its dtype.

  The arguments are those of :func:`scale_by_scion`; the polar factors of
  all ``"spectral"`` and ``"spectral_conv"`` leaves come from one grouped
  call of :func:`normopt.polar_factors`.
  """
  paths, leaves, _, lays, treedef = flatten_layouts(tree, stacked, layout, "unit", "scion")
  if not leaves:
    return tree
  names = _leaf_lmos(tree, paths, leaves, lays, norms)
  radii = per_leaf(radius, tree, paths, leaves, "scion", "radius", "numbers")
  xs = [x.astype(acc_dtype(x)) for x in leaves]
  polar: list[Any] = [None] * len(leaves)
  idx = [i for i, n in enumerate(names) if LMOS[n].polar]
  if idx:
    factors = directions(
        [xs[i] for i in idx], norm="spectral", blocks="leaf",
        layout=[lays[i] for i in idx], eps=eps, ns_steps=ns_steps,
        ns_coeffs=ns_coeffs, grouped=grouped, gram=gram, name="scion", **ns_options)
    for i, f in zip(idx, factors, strict=True):
      polar[i] = f
  out = []
  for x, acc, p, pl, n, r in zip(leaves, xs, polar, lays, names, radii, strict=True):
    d = LMOS[n].fn(acc, p, pl, eps)
    out.append((r * d).astype(jnp.result_type(x)))
  return jax.tree_util.tree_unflatten(treedef, out)


class ScaleByScionState(NamedTuple):
  """State of :func:`scale_by_scion`: step count and the momentum ``d``."""

  count: jax.Array  # type: ignore[assignment]
  d: Any


def scale_by_scion(
    momentum: Any = 0.1,
    *,
    norms: Any = "auto",
    radius: Any = 1.0,
    stacked: StackedSpec = None,
    layout: Any = None,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    eps: Any = 1e-8,
    mu_dtype: Any = None,
    grouped: bool = True,
    gram: bool = False,
    preconditioning: str = "frobenius",
) -> optax.GradientTransformationExtraArgs:
  r"""Scion's direction: momentum, then ``radius · lmo`` per leaf.

  .. math::
    d_t = (1 - \alpha)\, d_{t-1} + \alpha\, g_t, \qquad
    u_t = \rho \cdot \mathrm{lmo}(d_t), \qquad d_0 = 0

  with ``α = momentum`` (Scion's convention: it weighs the NEW gradient;
  ``momentum=1`` is no momentum) and ``ρ = radius``. ``lmo`` is the leaf's
  row of ``normopt.scion_lmo.LMOS`` (see :mod:`normopt.scion_lmo`), chosen by ``norms``.
  ``optax.scale_by_learning_rate`` after it gives Scion's unconstrained
  step ``w ← w − lr·u``; :func:`scion` builds both forms.

  Args:
    momentum: weight of the new gradient in the momentum, in ``(0, 1]``.
    norms: ``"auto"`` (by the kind of each leaf's layout: ``"hidden"`` →
      ``"spectral"``, ``"conv"`` → ``"spectral_conv"``, ``"embedding"`` →
      ``"col"``, ``"head"`` → ``"sign"``, ``"norm"``/``"bias"`` →
      ``"bias_rms"``; an ``"unknown"`` leaf raises ``ValueError``), a
      name of ``normopt.scion_lmo.LMOS``, a callable ``(path, leaf) ->
      name`` or a pytree prefix of names (``"auto"``
      allowed in each).
    radius: the norm-ball radius ``ρ`` (Scion's ``scale``), a number or a
      pytree prefix of numbers.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`); every slice is its own layer.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; default
      :func:`normopt.layouts_from_shapes`): its fans, matrices, conv taps and,
      under ``"auto"``, its LMO.
    ns_steps: Newton–Schulz steps of the spectral LMOs.
    ns_coeffs: Newton–Schulz coefficients: one ``(a, b, c)``, one per step,
      or a preset name (:data:`normopt.NS_PRESETS`).
    eps: added where an LMO divides (RMS, norms, Frobenius norm).
    mu_dtype: optional dtype of the momentum ``d``.
    grouped: orthogonalize the spectral leaves' matrices of equal shape
      together (see :func:`normopt.polar_factors`); ``False`` runs one
      program per leaf. The result is the same.
    gram: run the spectral LMOs' Newton–Schulz in its Gram form (see
      :func:`normopt.polar_factors`): the same iteration, cheaper for
      rectangular matrices (a ``d × 4d`` MLP kernel), dearer for square ones.
    preconditioning: how the spectral LMOs scale each matrix before the
      first Newton–Schulz step: ``"frobenius"``, ``"aol"`` or ``"schatten"``
      (see :func:`normopt.polar_factors`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``optax.inject_hyperparams``
    needs ``static_args=("norms", "stacked", "layout")`` when one is a callable
    (a :class:`normopt.Layouts` is).

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.scale_by_scion(momentum=1.0, ns_coeffs="cubic", ns_steps=30)
    >>> g = {"b": jnp.array([3.0, -4.0]), "w": jnp.array([[2.0, 0.0], [0.0, 5.0]])}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> [round(float(v), 3) for v in u["b"]]        # g / RMS(g), RMS = 3.536
    [0.849, -1.131]
    >>> [round(float(v), 3) for v in jnp.diag(u["w"])]  # polar factor U Vᵀ = I
    [1.0, 1.0]

  References:
    Pethick et al., `Training Deep Learning Models with Norm-Constrained LMOs
    <https://arxiv.org/abs/2502.07529>`_, ICML 2025.
  """
  if isinstance(norms, str):
    _check_name(norms)
  ns_coefficients(ns_coeffs, ns_steps)
  check_preconditioning(preconditioning)
  mu_dtype = canonical_dtype(mu_dtype)

  def init_fn(params):
    return ScaleByScionState(
        count=jnp.zeros([], jnp.int32),
        d=optax.tree.zeros_like(params, dtype=mu_dtype),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    d = jax.tree.map(
        lambda g, m: (momentum * g + (1 - momentum) * m).astype(m.dtype), updates, state.d)
    u = scion_directions(
        d, norms=norms, radius=radius, stacked=stacked, layout=layout, eps=eps,
        ns_steps=ns_steps, ns_coeffs=ns_coeffs, grouped=grouped, gram=gram,
        preconditioning=preconditioning)
    u = jax.tree.map(lambda x, g: x.astype(jnp.result_type(g)), u, updates)
    return u, ScaleByScionState(count=optax.safe_increment(state.count), d=d)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _add_params() -> optax.GradientTransformationExtraArgs:
  """``u + w``: with a step ``−lr`` after it, SCG's ``w ← (1 − lr)·w − lr·u``."""

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    require_params(params, "scion(constrained=True)")
    check_same_structure(updates, params, "scion(constrained=True)")
    out = jax.tree.map(lambda u, w: (u + w).astype(jnp.result_type(u)), updates, params)
    return out, state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def scion(
    learning_rate: optax.ScalarOrSchedule,
    momentum: Any = 0.1,
    *,
    norms: Any = "auto",
    radius: Any = 1.0,
    constrained: bool = False,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    stacked: StackedSpec = None,
    layout: Any = None,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    eps: Any = 1e-8,
    mu_dtype: Any = None,
    grouped: bool = True,
    gram: bool = False,
    preconditioning: str = "frobenius",
) -> optax.GradientTransformationExtraArgs:
  r"""Scion: momentum, a per-layer norm's LMO, and an (un)constrained step.

  With ``d_t`` and ``u_t = ρ · lmo(d_t)`` from :func:`scale_by_scion`:

  .. math::
    \text{uSCG } (\texttt{constrained=False}):\quad
      w_{t+1} = w_t - \eta_t\,(u_t + \lambda\, w_t)
    \\
    \text{SCG } (\texttt{constrained=True}):\quad
      w_{t+1} = (1 - \eta_t)\, w_t - \eta_t\, u_t

  SCG keeps every layer inside its norm ball of radius ``ρ`` once there
  (for ``η_t ≤ 1``: ``w`` is a convex combination of ``w`` and ``−u``).
  ``λ = weight_decay`` is decoupled, as in ``optax.adamw``, and also applies
  (on top of SCG's shrink) when ``constrained=True``.

  Args:
    learning_rate: step size ``η`` (a float or an ``optax.Schedule``).
    momentum: weight of the new gradient in the momentum (Scion's
      convention: 0.1 is the usual momentum 0.9; 1 is none).
    norms: per-leaf LMO: ``"auto"``, a name of ``normopt.scion_lmo.LMOS``, a callable
      ``(path, leaf) -> name`` or a pytree prefix of names (see
      :func:`scale_by_scion`).
    radius: the norm-ball radius ``ρ`` (Scion's ``scale``), a number or a
      pytree prefix of numbers.
    constrained: SCG (``True``, the reference's default
      ``unconstrained=False``) or uSCG (``False``); SCG needs ``params``.
    weight_decay: decoupled weight decay ``λ``.
    weight_decay_mask: mask for it (a pytree prefix of bools or a callable
      ``params -> such a tree``), as ``optax.adamw`` takes it.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`); every slice is its own layer.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; default
      :func:`normopt.layouts_from_shapes`): its fans, matrices, conv taps and,
      under ``"auto"``, its LMO.
    ns_steps: Newton–Schulz steps of the spectral LMOs.
    ns_coeffs: Newton–Schulz coefficients (see :func:`scale_by_scion`).
    eps: added where an LMO divides.
    mu_dtype: optional dtype of the momentum.
    grouped: orthogonalize matrices of equal shape together (the result
      is the same).
    gram: the Gram form of the Newton–Schulz (see :func:`scale_by_scion`).
    preconditioning: ``"frobenius"``, ``"aol"`` or ``"schatten"`` (see
      :func:`scale_by_scion`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> w_true = jax.random.normal(jax.random.key(1), (8, 4))
    >>> loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - x @ w_true) ** 2)
    >>> p = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
    >>> tx = normopt.scion(optax.cosine_decay_schedule(0.1, 300), momentum=0.5,
    ...                    radius={"w": 10.0, "b": 0.1}, constrained=True)
    >>> s = tx.init(p)
    >>> step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    >>> l0 = loss(p)
    >>> for _ in range(300):
    ...   u, s = step(p, s)
    ...   p = optax.apply_updates(p, u)
    >>> bool(loss(p) < 1e-3 * l0)
    True

  References:
    Pethick et al., `Training Deep Learning Models with Norm-Constrained LMOs
    <https://arxiv.org/abs/2502.07529>`_, ICML 2025.
  """
  parts = [scale_by_scion(
      momentum, norms=norms, radius=radius, stacked=stacked, layout=layout, ns_steps=ns_steps,
      ns_coeffs=ns_coeffs, eps=eps, mu_dtype=mu_dtype, grouped=grouped,
      gram=gram, preconditioning=preconditioning)]
  if constrained:
    parts.append(_add_params())
  parts.append(decayed_weights(weight_decay, weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
