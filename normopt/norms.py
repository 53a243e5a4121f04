"""Norms: a block's steepest direction under a chosen norm (DESIGN §7).

The normalized step replaces a block's gradient (or momentum) ``g_b`` by the
linear minimization oracle of the norm's unit ball,
``d_b = argmax_{‖d‖ ≤ 1} <g_b, d>``. Under the Euclidean norm that is BNG's
and SNGD's ``g_b / ‖g_b‖``; under the max norm it is ``sign(g_b)``
(signSGD, Signum); under the spectral norm it is the polar factor ``U Vᵀ`` of
the block's matrix (Muon).

====================  ==========================================  ============
``norm``              ``d_b``                                     blocks
====================  ==========================================  ============
``"l2"``              ``g_b / max(‖g_b‖₂, eps)``                  every mode
``"rms"``             ``√n_b · g_b / max(‖g_b‖₂, eps)`` (unit     every mode
                      RMS; ``n_b`` the block's element count)
``"sign"``            ``sign(g_b)`` (0 where ``g = 0``)           every mode
``"spectral"``        polar factor ``U Vᵀ`` of ``G = U Σ Vᵀ``,    ``"leaf"``
                      by Newton–Schulz
====================  ==========================================  ============

Each norm is one row of ``NORMS``; the block machinery
(:mod:`normopt.blocks`: blocks, stacked slices, ``axis_name``, dtypes, zero
blocks) calls the row and never asks which norm it is.

**The matrix of a leaf** (``"spectral"``) comes from its layout
(:mod:`normopt.layouts`, ``layout=``): the leaf transposed to ``batch +
reduction + output`` and reshaped to ``(B, fan_in, fan_out)``. Without
``layout=`` the shape rule decides: Dense ``(in, out)`` stays ``(in, out)``,
Conv HWIO becomes ``(H·W·I, O)``, each stacked slice is its own matrix, a
leaf that is no matrix (a vector, a bias, a norm scale) gets its ``"l2"``
direction (the polar factor of a vector), and a leaf with exactly three
non-stacked axes raises (its shape cannot say which axes are its inputs).

**Newton–Schulz.** The matrix is divided by its Frobenius norm (plus
``eps``), then ``ns_steps`` times ``X ← a·X + b·(X Xᵀ)X + c·(X Xᵀ)²X`` on the
orientation with the smaller Gram matrix, in float32 or wider. Muon's default
coefficients (``"muon"`` in ``normopt.norms.NS_PRESETS``) trade exactness for speed:
singular values end near 0.7–1.2. ``(1.5, -0.5, 0.0)`` (``"cubic"``)
converges to ``U Vᵀ`` with enough steps. ``"polar_express"`` (Amsel et al.
2025) is one optimal ``(a, b, c)`` per step, 8 steps: tighter around 1 than
Muon's at equal work, converged for condition numbers up to about 1e3; the
safety factor and normalization of its reference are folded into its rows.
``preconditioning="aol"`` or ``"schatten"`` (as in optax's Muon) rescales the
normalized matrix before the first step, by its rows' sums of
``|X Xᵀ|`` or its Schatten-4 norm, from the Gram matrix that step computes
anyway (:func:`polar_factors`).

**Grouping.** The matrices of one call that share a shape and dtype (after
the matrix view, the orientation and the stacked slices) are orthogonalized
together: one batched program per group, not one per leaf. Under
``jax.set_mesh`` (or on leaves sharded on an Explicit mesh) each group is
split across the mesh's devices by matrix: each device orthogonalizes whole
matrices, and the results go back to the parameters' own shardings. A group
with fewer matrices than devices is padded with zero matrices to a multiple
of the device count (the padding costs compute on the otherwise idle devices,
not communication).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

from normopt._numerics import acc_dtype
from normopt._numerics import inv_norm
from normopt._numerics import runtime_offsets
from normopt._numerics import safe_sqrt
from normopt.blocks import block_norm_map
from normopt.blocks import BlockSpec
from normopt.blocks import flatten_layouts
from normopt.blocks import leaf_blocks
from normopt.blocks import per_leaf
from normopt.blocks import StackedSpec
from normopt.blocks import with_layout
from normopt.layouts import unknown_error

#: A norm name, a callable ``(path, leaf) -> name`` or a pytree prefix of names.
NormSpec: TypeAlias = str | Callable[[Any, Any], str] | Any

#: Newton–Schulz coefficient presets: one ``(a, b, c)`` or one per step.
NS_PRESETS: dict[str, Any] = {
    # Jordan et al. 2024 (Muon): fast, not convergent (σ end in ~[0.7, 1.2]).
    "muon": (3.4445, -4.7750, 2.0315),
    # Ahn et al. 2025 (Dion), as optax.contrib.muon's "dion" preset.
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
    # The classical cubic iteration: converges to U Vᵀ (slowly near σ = 0).
    "cubic": (1.5, -0.5, 0.0),
}

#: The reference's rows of Amsel et al. 2025 (NoahAmsel/PolarExpress,
#: ``polar_express/basic.py``, the paper's Algorithm 1), before its safety factor.
_POLAR_EXPRESS_ROWS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)


def _input_scaled(abc: tuple[float, float, float], s: float) -> tuple[float, float, float]:
  """The step ``(a, b, c)`` applied to ``X / s``: ``(a/s, b/s³, c/s⁵)``."""
  a, b, c = abc
  return (a / s, b / s**3, c / s**5)


# Polar Express (Amsel et al. 2025): the reference divides every row but the
# last by its safety factor 1.01 (as the polynomial of X/1.01), and divides X
# by 1.01·‖X‖_F + 1e-7 where normopt divides by ‖X‖_F + eps; that extra 1/1.01
# is folded into the first row the same way, so the rows alone (the preset,
# or the tuple passed as ns_coeffs) run the reference's algorithm.
NS_PRESETS["polar_express"] = (
    _input_scaled(_input_scaled(_POLAR_EXPRESS_ROWS[0], 1.01), 1.01),
    *(_input_scaled(row, 1.01) for row in _POLAR_EXPRESS_ROWS[1:-1]),
    _POLAR_EXPRESS_ROWS[-1],
)

#: Rescalings before the first Newton–Schulz step (optax's ``preconditioning``).
PRECONDITIONINGS = ("frobenius", "aol", "schatten")


def check_preconditioning(preconditioning: str) -> None:
  """Raises ``ValueError`` unless ``preconditioning`` is in ``PRECONDITIONINGS``."""
  if preconditioning not in PRECONDITIONINGS:
    raise ValueError(
        f"unknown preconditioning {preconditioning!r}; known: {list(PRECONDITIONINGS)}.")

DEFAULT_NS_COEFFS = NS_PRESETS["muon"]


def ns_coefficients(ns_coeffs: Any, ns_steps: int) -> list[tuple[Any, Any, Any]]:
  """The ``(a, b, c)`` of each Newton–Schulz step.

  ``ns_coeffs`` is one ``(a, b, c)`` (used ``ns_steps`` times), a sequence
  of them (one per step: its length is the number of steps and ``ns_steps``
  is ignored, as in ``optax.contrib.muon``), or the name of a preset in
  ``normopt.norms.NS_PRESETS``. ``"polar_express"`` is a sequence of 8 rows
  (8 steps); its first ``k`` rows are its ``k``-step iteration, and the
  reference repeats its last row past the eighth step.
  """
  if isinstance(ns_coeffs, str):
    if ns_coeffs not in NS_PRESETS:
      raise ValueError(
          f"unknown ns_coeffs preset {ns_coeffs!r}; known: {sorted(NS_PRESETS)}.")
    ns_coeffs = NS_PRESETS[ns_coeffs]
  shape = np.shape(ns_coeffs)
  if len(shape) == 1 and shape[0] == 3:
    if isinstance(ns_steps, (jax.Array, np.ndarray)) and not isinstance(
        ns_steps, jax.core.Tracer) and ns_steps.shape == ():
      ns_steps = int(ns_steps)  # optax.inject_hyperparams makes it an array
    if isinstance(ns_steps, jax.core.Tracer):
      return _Repeat(tuple(ns_coeffs), ns_steps)
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, (int, np.integer)) or ns_steps < 0:
      raise ValueError(f"ns_steps must be an int >= 0, got {ns_steps!r}.")
    return [tuple(ns_coeffs)] * int(ns_steps)
  if len(shape) == 2 and shape[1] == 3:
    return [tuple(row) for row in ns_coeffs]
  raise ValueError(
      f"ns_coeffs must be one (a, b, c), a sequence of them or a preset name, "
      f"got shape {shape}.")


class _Repeat(NamedTuple):
  """One ``(a, b, c)`` repeated a traced number of times (inject_hyperparams)."""

  abc: tuple[Any, Any, Any]
  steps: Any


def _ns_step(x, abc, gram=None):
  """``a·X + (b·A + c·A²)·X`` with ``A = X Xᵀ`` (or ``gram``), batched over axis 0."""
  a, b, c = abc
  if gram is None:
    gram = jnp.einsum("bij,bkj->bik", x, x)
  poly = b * gram + c * jnp.einsum("bij,bjk->bik", gram, gram)
  return a * x + jnp.einsum("bij,bjk->bik", poly, x)


def _gram_step(qr, abc):
  """One step of the Gram form: ``P = a + b·R + c·R²``; ``Q ← P Q``, ``R ← P² R``."""
  q, r = qr
  a, b, c = abc
  eye = jnp.eye(r.shape[-1], dtype=r.dtype)
  p = a * eye + b * r + c * jnp.einsum("bij,bjk->bik", r, r)
  q = p if q is None else jnp.einsum("bij,bjk->bik", p, q)
  r = jnp.einsum("bij,bjk->bik", p, jnp.einsum("bij,bjk->bik", p, r))
  return q, 0.5 * (r + jnp.swapaxes(r, -1, -2))  # symmetric, as in exact arithmetic


def _precondition(x, gram, preconditioning, eps):
  """``X`` and ``A = X Xᵀ`` rescaled before the first step, as optax does.

  ``"aol"``: each row ``i`` by ``1/√max(Σ_j |A_ij|, eps)`` (``‖X'X'ᵀ‖₂ <= 1``
  by Gershgorin); ``"schatten"``: ``X`` by ``1/√max(‖A‖_F, eps)``, that is by
  its Schatten-4 norm. ``A`` is rescaled alike, not recomputed. A zero row
  or matrix stays zero.
  """
  if preconditioning == "frobenius":
    return x, gram
  root_eps = jnp.sqrt(jnp.asarray(eps, gram.dtype))
  if preconditioning == "aol":
    s = inv_norm(safe_sqrt(jnp.sum(jnp.abs(gram), axis=-1, keepdims=True)), root_eps)
    return x * s, gram * s * jnp.swapaxes(s, -1, -2)
  fro = safe_sqrt(jnp.sum(jnp.square(gram), axis=(-2, -1), keepdims=True))
  s = inv_norm(safe_sqrt(fro), root_eps)
  return x * s, gram * jnp.square(s)


def _gram_newton_schulz(x, steps, preconditioning="frobenius", eps=0.0):
  """The steps on the ``m x m`` Gram matrix: ``X_k = Q_k X_0``.

  Each step's polynomial is one of ``R = X Xᵀ``, and ``Q_k`` one of ``R_0``,
  so they commute: ``X_{k+1} = P_k X_k`` with ``P_k = a + b R_k + c R_k²``,
  ``R_{k+1} = P_k² R_k``. ``X`` is read twice (``R_0`` and the final
  ``Q X``): ``2m²n + 4m³`` per step less ``(2m²n + m³)`` of the plain form.
  The preconditionings rescale ``X_0``'s rows, so ``R_0`` is rescaled alike
  before the steps.
  """
  r = jnp.einsum("bij,bkj->bik", x, x)
  x, r = _precondition(x, r, preconditioning, eps)
  if isinstance(steps, _Repeat):
    eye = jnp.broadcast_to(jnp.eye(r.shape[-1], dtype=r.dtype), r.shape)
    q, _ = jax.lax.fori_loop(0, steps.steps, lambda _, qr: _gram_step(qr, steps.abc), (eye, r))
  else:
    q = None
    for abc in steps:
      q, r = _gram_step((q, r), abc)
    if q is None:
      return x
  return jnp.einsum("bij,bjk->bik", q, x)


def newton_schulz(
    x: jax.Array,
    steps: Sequence[tuple[Any, Any, Any]],
    eps: Any,
    gram: bool = False,
    *,
    preconditioning: str = "frobenius",
) -> jax.Array:
  """Newton–Schulz on a batch of wide matrices ``(B, m, n)``, ``m <= n``.

  Divides each matrix by its Frobenius norm plus ``eps`` (a zero matrix stays
  zero), rescales it by ``preconditioning`` (:func:`polar_factors`), then
  applies the steps. Computes in ``x``'s dtype. ``gram=True`` iterates on
  the ``m x m`` Gram matrix instead (:func:`polar_factors`).
  """
  check_preconditioning(preconditioning)
  # Squares of x·2^-16 (see docs/design.md, "The 2^-16 prescale"): no
  # overflow for float32 entries up to ~1e24.
  shift = jnp.asarray(2.0 ** -16, x.dtype)
  fro = safe_sqrt(jnp.sum(jnp.square(x * shift), axis=(-2, -1), keepdims=True)) / shift
  x = x * inv_norm(fro + eps, 0.0)
  if gram:
    return _gram_newton_schulz(x, steps, preconditioning, eps)
  if preconditioning != "frobenius":
    # The first step reuses the Gram matrix the rescaling is computed from.
    gram_0 = jnp.einsum("bij,bkj->bik", x, x)
    x, gram_0 = _precondition(x, gram_0, preconditioning, eps)
    if isinstance(steps, _Repeat):
      y = jax.lax.fori_loop(
          1, steps.steps, lambda _, y: _ns_step(y, steps.abc), _ns_step(x, steps.abc, gram_0))
      return jnp.where(steps.steps > 0, y, x)
    steps = list(steps)
    if steps:
      x = _ns_step(x, steps[0], gram_0)
    steps = steps[1:]
  if isinstance(steps, _Repeat):
    return jax.lax.fori_loop(0, steps.steps, lambda _, y: _ns_step(y, steps.abc), x)
  for abc in steps:
    x = _ns_step(x, abc)
  return x


def _mesh_of(arrays):
  """The mesh to split groups over: the context's, else an Explicit leaf's."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh
  for x in arrays:
    sh = getattr(jax.typeof(x), "sharding", None)
    m = getattr(sh, "mesh", None)
    if m is not None and not m.empty and _explicit(m):
      return m
  return None


def _split_axes(mesh):
  """The mesh axes a group's matrix axis is split over, and their size."""
  if mesh is None:
    return (), 1
  # Manual axes (inside shard_map) hold per-device shards already: not split.
  free = [
      (n, s) for n, s, t in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types, strict=True)
      if t != jax.sharding.AxisType.Manual
  ]
  return tuple(n for n, _ in free), math.prod(s for _, s in free)


def _explicit(mesh):
  return any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types)


def _constrain(x, mesh, spec):
  """``x`` laid out as ``spec`` on ``mesh`` (reshard on Explicit axes)."""
  if jax.sharding.get_abstract_mesh().empty:
    target: Any = jax.sharding.NamedSharding(mesh, spec)
  else:
    target = spec
  if _explicit(mesh):
    return jax.sharding.reshard(x, target)
  return jax.lax.with_sharding_constraint(x, target)


def _explicit_spec(x):
  """The PartitionSpec of ``x`` if it is sharded on Explicit axes, else None."""
  sh = getattr(jax.typeof(x), "sharding", None)
  mesh = getattr(sh, "mesh", None)
  if mesh is None or mesh.empty or not _explicit(mesh):
    return None
  return getattr(sh, "spec", None)


def polar_factors(
    mats: Sequence[jax.Array],
    *,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    eps: Any = 1e-12,
    grouped: bool = True,
    gram: bool = False,
    preconditioning: str = "frobenius",
) -> list[jax.Array]:
  """Approximate polar factors ``U Vᵀ`` of batches of matrices.

  Args:
    mats: arrays of shape ``(B, m, n)``: ``B`` matrices each (stacked slices).
    ns_steps: Newton–Schulz steps (with one ``(a, b, c)``).
    ns_coeffs: one ``(a, b, c)``, one per step, or a preset name
      (``normopt.norms.NS_PRESETS``). ``"polar_express"``: the 8 per-step
      rows of Amsel et al. 2025 (8 steps; pass ``NS_PRESETS["polar_express"][:k]``
      for ``k``), with their reference's safety factor (every row but the
      last as the polynomial of ``X/1.01``) and its normalization
      ``X/(1.01·‖X‖_F + 1e-7)``, here ``X/(1.01·(‖X‖_F + eps))``: the extra
      ``1/1.01`` is folded into the first row, so the rows alone run the
      reference's iteration, in float32 or wider (the reference runs it in
      bfloat16).
    eps: added to each matrix's Frobenius norm before dividing by it, and
      the floor of what ``preconditioning`` takes a square root of.
    grouped: orthogonalize matrices of equal shape and dtype together (and,
      under a mesh, split each group across its devices by matrix); ``False``
      runs each array on its own, as ``optax.contrib.muon`` does per leaf.
      On a CPU backend, a group of several separate (unstacked) matrices
      that is not split across devices runs as one compiled body looped over
      them (measured faster there than a batched matmul;
      ``benchmarks/spectral_scale.py``), and is sliced back at offsets XLA
      cannot fold, so its members share one slice kernel.
    gram: iterate on each matrix's ``m x m`` Gram matrix ``R = X Xᵀ``
      (``m <= n``) and apply the product of the steps' polynomials to ``X``
      once at the end, as Dao-AILab's gram-newton-schulz does: the same
      iteration in exact arithmetic, ``2m²n + 4m³·steps`` FLOPs instead of
      ``(2m²n + m³)·steps``, fewer from an aspect ratio ``n/m`` of about 2.
      In float32, after 5 Muon steps, it is as close to a float64 run as
      the plain form on rectangular matrices (about 1e-5 of the largest
      entry), and about 10x further on square ones (2-3e-5: the Gram matrix
      squares their condition number). In lower precision the Gram matrix
      loses accuracy faster still (the matrices are cast to float32 or wider
      here first). Works with every ``preconditioning``: its rescaling of
      ``X`` is one of the Gram matrix's rows, applied to ``R`` and ``X``
      before the steps.
    preconditioning: how each matrix is scaled before the first step, as
      ``optax.contrib.orthogonalize_via_newton_schulz``'s option of the same
      name, on the wide orientation ``X`` (``m <= n``) with ``A = X Xᵀ``:
      ``"frobenius"`` divides by the Frobenius norm (above); ``"aol"``
      (almost-orthogonal layers) then scales row ``i`` by
      ``1/√max(Σ_j |A_ij|, eps)``, and ``"schatten"`` scales ``X`` by
      ``1/√max(‖A‖_F, eps)`` (its Schatten-4 norm), so the first step
      starts with singular values nearer 1 (``A`` is rescaled, not
      recomputed). optax does not divide by the Frobenius norm first with
      these two and floors at a fixed ``1e-8``; both rescalings ignore a
      scalar factor of ``X``, so the results are optax's up to roundoff
      (with ``eps=1e-8``), while large entries cannot overflow the Gram
      matrix and ``eps`` is relative to the matrix's scale. ``"aol"``
      rescales rows unevenly, so (as in optax) its limit is the polar
      factor of the rescaled matrix: orthogonal rows, not ``U Vᵀ``. With
      ``ns_steps=0`` the rescaled matrix comes back (optax returns its
      input unscaled).

  Returns:
    The polar factors, each of its input's shape, in float32 or wider.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> a = jnp.array([[[3.0, 0.0], [0.0, 0.5]]])          # one 2x2 matrix
    >>> b = jnp.array([[[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]])  # one 2x3 matrix
    >>> pa, pb = normopt.polar_factors([a, b], ns_coeffs="cubic", ns_steps=40)
    >>> [round(float(s), 3) for s in jnp.linalg.svd(pa[0], compute_uv=False)]
    [1.0, 1.0]
    >>> [round(float(s), 3) for s in jnp.linalg.svd(pb[0], compute_uv=False)]
    [1.0, 1.0]

  References:
    Bernstein and Newhouse, `Old Optimizer, New Norm: An Anthology
    <https://arxiv.org/abs/2409.20325>`_, 2024; Jordan et al., `Muon
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.
  """
  steps = ns_coefficients(ns_coeffs, ns_steps)
  check_preconditioning(preconditioning)
  mesh = _mesh_of(mats)
  axes, n_dev = _split_axes(mesh) if grouped else ((), 1)
  # Each matrix in its wide orientation (m <= n): the Gram matrix is m x m.
  oriented: list[tuple[Any, bool]] = []
  groups: dict[Any, list[int]] = {}
  for i, x in enumerate(mats):
    x = x.astype(acc_dtype(x))
    wide = x.shape[-2] <= x.shape[-1]
    x = x if wide else jnp.swapaxes(x, -1, -2)
    oriented.append((x, wide))
    key = (x.shape[-2:], x.dtype) if grouped else i
    groups.setdefault(key, []).append(i)
  out: list[Any] = [None] * len(mats)
  for members in groups.values():
    xs = [oriented[i][0] for i in members]
    sizes = [x.shape[0] for x in xs]
    specs = {_explicit_spec(x) for x in xs}
    if mesh is not None and _explicit(mesh) and (
        len(specs) > 1 or (n_dev == 1 and any(a is not None for sp in specs for a in sp or ()))):
      # Concatenation needs one layout (members laid out alike stay as they
      # are), and a matrix split along its rows or columns is gathered unless
      # the group is split by matrix below: a matmul of split matrices has no
      # legal Explicit sharding.
      xs = [_constrain(x, mesh, jax.sharding.PartitionSpec()) for x in xs]
    batch = xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=0)
    if n_dev > 1:
      pad = -batch.shape[0] % n_dev
      if pad:  # zero matrices (they stay zero), padded in place of any layout
        batch = jnp.pad(batch, ((0, pad), (0, 0), (0, 0)))
      batch = _constrain(batch, mesh, jax.sharding.PartitionSpec(axes))
    if (n_dev == 1 and len(members) > 1 and max(sizes) == 1
        and jax.default_backend() == "cpu"):
      # Separate matrices (an unrolled model) on CPU: XLA:CPU runs a batched
      # matmul slower than a loop of plain ones, so loop one compiled body
      # over the group. Groups holding stacked leaves stay batched, as
      # optax's vmap runs them (the loop cost them compile time).
      res = jax.lax.map(
          lambda m: newton_schulz(m[None], steps, eps, gram, preconditioning=preconditioning)[0],
          batch)
    else:
      res = newton_schulz(batch, steps, eps, gram, preconditioning=preconditioning)
    if n_dev > 1:
      res = _constrain(res, mesh, jax.sharding.PartitionSpec())
    if len(members) > 1 and n_dev == 1 and res.size and jax.default_backend() == "cpu":
      starts = runtime_offsets(np.cumsum([0, *sizes[:-1]]).tolist(), res)
    else:
      starts = np.cumsum([0, *sizes[:-1]]).tolist()
    for i, n, start in zip(members, sizes, starts, strict=True):
      if len(members) > 1 or n != res.shape[0]:
        y = jax.lax.dynamic_slice_in_dim(res, start, n)
      else:
        y = res
      out[i] = y if oriented[i][1] else jnp.swapaxes(y, -1, -2)
  return out



class Norm(NamedTuple):
  """One row of the norms table.

  Exactly one of ``scale``, ``elementwise`` and ``matrix`` is set:
  ``scale(norm, n)`` gives the factor ``d_b = g_b · scale`` from the block's
  Euclidean norm and element count; ``elementwise(g)`` gives ``d`` directly;
  ``matrix`` marks a norm on each leaf's matrices (by :func:`polar_factors`).
  ``modes`` lists the block modes the norm is defined for (``None``: all).
  """

  scale: Callable[[Any, Any], Any] | None = None
  elementwise: Callable[[Any], Any] | None = None
  matrix: bool = False
  modes: tuple[str, ...] | None = None


#: The norms of :func:`normopt.block_normalize`, by name.
NORMS: dict[str, Norm] = {
    "l2": Norm(scale=lambda n, size: 1.0),
    "rms": Norm(scale=lambda n, size: jnp.sqrt(jnp.asarray(size, jnp.float32))),
    "sign": Norm(elementwise=jnp.sign),
    "spectral": Norm(matrix=True, modes=("leaf",)),
}


def _leaf_norm_names(tree, paths, leaves, norm, name):
  """The norm name of every flattened leaf, checked against the table."""
  if isinstance(norm, str):
    names = [norm] * len(leaves)
  else:
    names = per_leaf(norm, tree, paths, leaves, name, "norm", "names")
  for p, n in zip(paths, names, strict=True):
    if n not in NORMS:
      raise ValueError(
          f"{name}: unknown norm {n!r} for {jax.tree_util.keystr(p)}; "
          f"known: {sorted(NORMS)}.")
  return names


def check_norm(norm: NormSpec, blocks: BlockSpec, axis_name: Any, name: str) -> None:
  """Raises early for a single norm name that the block mode forbids."""
  if isinstance(norm, str):
    if norm not in NORMS:
      raise ValueError(f"{name}: unknown norm {norm!r}; known: {sorted(NORMS)}.")
    _check_mode(norm, blocks, axis_name, name, "")


def _check_mode(norm_name, blocks, axis_name, name, where):
  row = NORMS[norm_name]
  if row.modes is not None and (callable(blocks) or blocks not in row.modes):
    raise ValueError(
        f"{name}: norm={norm_name!r} is defined per leaf (one matrix per leaf "
        f"or stacked slice) and needs blocks in {row.modes}, got "
        f"blocks={blocks!r}{where}.")
  if row.matrix and axis_name is not None:
    raise ValueError(
        f"{name}: norm={norm_name!r} with axis_name={axis_name!r}: a matrix split "
        f"across a mapped axis cannot be orthogonalized shard by shard. Run the "
        f"spectral leaves without axis_name (leaves whole on each shard, or "
        f"split only along a stacked axis), e.g. in their own optax.partition "
        f"group, or under jit with a NamedSharding, where the result is global{where}.")


def directions(
    updates: Any,
    *,
    norm: NormSpec = "l2",
    blocks: BlockSpec = "layer",
    stacked: StackedSpec = None,
    layout: Any = None,
    axis_name: str | None = None,
    eps: Any = 1e-12,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    grouped: bool = True,
    gram: bool = False,
    name: str = "block_normalize",
    **ns_options: Any,
) -> Any:
  """Every block's direction ``d_b`` under its norm (see the module docstring).

  ``layout`` (:mod:`normopt.layouts`) gives each ``"spectral"`` leaf its
  matrices and each ``"unit"`` block its axes; by default the shape rule.
  ``ns_options`` go to :func:`polar_factors`. Returns a pytree like
  ``updates``, each leaf in its own dtype.
  """
  paths, leaves, counts, lays, treedef = flatten_layouts(
      updates, stacked, layout, "unit", name)
  if not leaves:
    return updates
  # The resolved layouts, by path, for the block machinery below.
  by_path = {jax.tree_util.keystr(p): pl for p, pl in zip(paths, lays, strict=True)}
  stacked = with_layout(None, lambda p, x: by_path[jax.tree_util.keystr(p)])
  names = _leaf_norm_names(updates, paths, leaves, norm, name)
  keys = leaf_blocks(updates, blocks, stacked=stacked, name=name)
  first: dict[Any, tuple[str, Any]] = {}
  for p, n, (key, _) in zip(paths, names, keys, strict=True):
    if key in first and first[key][0] != n:
      raise ValueError(
          f"{name}: leaves of one block must share a norm, got {first[key][0]!r} "
          f"at {jax.tree_util.keystr(first[key][1])} and {n!r} at "
          f"{jax.tree_util.keystr(p)}.")
    first.setdefault(key, (n, p))
  for n in set(names):
    _check_mode(n, blocks, axis_name, name, "")
  for p, x, n, pl in zip(paths, leaves, names, lays, strict=True):
    if NORMS[n].matrix and pl.kind == "unknown":
      raise unknown_error(name, jax.tree_util.keystr(p), jnp.shape(x), f"norm={n!r}")
  out: list[Any] = [None] * len(leaves)

  def subtree(sel):
    return jax.tree_util.tree_unflatten(
        treedef, [x if s else None for x, s in zip(leaves, sel, strict=True)])

  # Norms that scale each block by a function of its Euclidean norm.
  scaled = [NORMS[n].scale is not None for n in names]
  # Leaves that are no matrix (biases, norm scales) under "spectral" get
  # their l2 direction, one block per stacked slice.
  vec = [NORMS[n].matrix and not pl.is_matrix for n, pl in zip(names, lays, strict=True)]
  for sel, mode in ((scaled, blocks), (vec, "leaf")):
    if not any(sel):
      continue
    inv = jax.tree.leaves(block_norm_map(
        lambda n: inv_norm(n, eps), subtree(sel),
        blocks=mode, stacked=stacked, axis_name=axis_name))
    idx = [i for i, s in enumerate(sel) if s]
    for i, s in zip(idx, inv, strict=True):
      x = leaves[i]
      scale_fn = NORMS[names[i]].scale
      if sel is scaled and scale_fn is not None:
        size: Any = keys[i][1]
        if axis_name is not None:  # the block's count over all shards
          size = jax.lax.psum(jnp.asarray(size, jnp.float32), axis_name)
        f = scale_fn(None, size)
        s = s if isinstance(f, float) and f == 1.0 else s * f
      out[i] = (x * s).astype(jnp.result_type(x))
  for i, (x, n) in enumerate(zip(leaves, names, strict=True)):
    fn = NORMS[n].elementwise
    if fn is not None:
      out[i] = fn(x).astype(jnp.result_type(x))
  mat_idx = [i for i, n in enumerate(names) if NORMS[n].matrix and not vec[i]]
  if mat_idx:
    mats = []
    for i in mat_idx:
      x, pl = leaves[i], lays[i]
      shape = tuple(jnp.shape(x))
      view = pl.matrix_shape(shape)
      spec = _explicit_spec(x)
      if spec is not None and any(s is not None for s in spec) and (
          pl.perm != tuple(range(len(shape)))
          or tuple(d for d in shape if d != 1) != tuple(d for d in view if d != 1)):
        # A reshape that merges axes of an Explicit-sharded leaf needs its
        # output sharding spelled out; gather the leaf instead (once).
        x = _constrain(x, jax.typeof(x).sharding.mesh, jax.sharding.PartitionSpec())
      mats.append(pl.to_matrix(x))
    polars = polar_factors(
        mats, ns_steps=ns_steps, ns_coeffs=ns_coeffs, eps=eps, grouped=grouped,
        gram=gram, **ns_options)
    for i, y in zip(mat_idx, polars, strict=True):
      x = leaves[i]
      y = lays[i].from_matrix(y, jnp.shape(x)).astype(jnp.result_type(x))
      spec = _explicit_spec(x)
      if spec is not None:
        y = _constrain(y, jax.typeof(x).sharding.mesh, spec)
      out[i] = y
  return jax.tree_util.tree_unflatten(treedef, out)
