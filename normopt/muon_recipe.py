"""Muon from normopt's primitive: momentum, then the spectral block direction.

Muon (Jordan et al. 2024) is the normalized step under the spectral norm:
Nesterov momentum, then each matrix replaced by its polar factor ``U Vᵀ``
(:func:`normopt.block_normalize` with ``blocks="leaf", norm="spectral"``),
then a width scale ``√max(1, fan_out/fan_in)``; Adam for the other leaves.
Spelled out as a chain, for the matrices::

  optax.chain(
      normopt.scale_by_muon_momentum(beta=0.95, nesterov=True),
      normopt.block_normalize(blocks="leaf", norm="spectral", eps=1e-8,
                              stacked=stacked),
      normopt.scale_by_width(stacked=stacked),
      optax.add_decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )

:func:`muon` builds that chain and routes the other leaves to Adam with
``optax.partition``. Its updates equal ``optax.contrib.muon``'s to float32
roundoff (``tests/test_muon.py``); what it adds is normopt's block machinery:
``stacked=`` for scanned layers (each slice its own matrix), Conv kernels as
``(H·W·I, O)`` matrices, and Newton–Schulz grouped over the matrices of equal
shape (one batched program, split across a mesh's devices). Its options
``consistent_rms=`` (Moonlight's scale), ``adaptive=`` (the dual-norm scale)
and ``preconditioning=`` are optax's; NorMuon and AdaMuon, built from the
same pieces, are in :mod:`normopt.muon_family`.

Signum (Bernstein et al. 2018) is the same step under the max norm::

  optax.chain(optax.trace(decay=0.9), normopt.block_normalize(norm="sign"),
              optax.scale_by_learning_rate(learning_rate))
"""

from __future__ import annotations

from typing import Any, NamedTuple
import warnings

import jax
import jax.numpy as jnp
import optax

from normopt._numerics import acc_dtype
from normopt._numerics import canonical_dtype
from normopt._numerics import decayed_weights
from normopt.blocks import per_leaf
from normopt.blocks import StackedSpec
from normopt.layouts import resolve_layouts
from normopt.normalization import block_normalize
from normopt.norms import check_preconditioning
from normopt.norms import DEFAULT_NS_COEFFS


class ScaleByMuonMomentumState(NamedTuple):
  """State of :func:`scale_by_muon_momentum`: step count and momentum."""

  count: Any
  mu: Any


def scale_by_muon_momentum(
    beta: float = 0.95, nesterov: bool = True, mu_dtype: Any = None
) -> optax.GradientTransformationExtraArgs:
  r"""Muon's momentum: a bias-corrected EMA of the gradient, Nesterov by default.

  .. math::
    m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad
    u_t = \beta \frac{m_t}{1-\beta^{t+1}} + (1-\beta)\frac{g_t}{1-\beta^t}
    \ \ (\text{Nesterov}), \qquad u_t = \frac{m_t}{1 - \beta^t}\ \ (\text{else})

  The same momentum as ``optax.contrib.scale_by_muon`` (and the first moment
  of ``optax.scale_by_adam(nesterov=True)``), without the orthogonalization:
  follow it with ``normopt.block_normalize(blocks="leaf", norm="spectral")``.

  Args:
    beta: EMA decay.
    nesterov: use the Nesterov form.
    mu_dtype: optional dtype of the momentum.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.scale_by_muon_momentum(beta=0.5, nesterov=False)
    >>> s = tx.init(jnp.zeros(1))
    >>> u, s = tx.update(jnp.array([2.0]), s)      # m = 1, /(1 - 0.5) = 2
    >>> float(u[0])
    2.0

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.
  """
  mu_dtype = canonical_dtype(mu_dtype)

  def init_fn(params):
    return ScaleByMuonMomentumState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params, dtype=mu_dtype),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    mu = optax.tree.update_moment(updates, state.mu, beta, 1)
    count = optax.safe_increment(state.count)
    if nesterov:
      out = jax.tree.map(
          lambda m, g: beta * m + (1 - beta) * g,
          optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
          optax.tree.bias_correction(updates, beta, count),
      )
    else:
      out = optax.tree.bias_correction(mu, beta, count)
    out = jax.tree.map(lambda o, g: o.astype(jnp.result_type(g)), out, updates)
    return out, ScaleByMuonMomentumState(count=count, mu=optax.tree.cast(mu, mu_dtype))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_width(
    *, stacked: StackedSpec = None, layout: Any = None, consistent_rms: Any = None
) -> optax.GradientTransformationExtraArgs:
  r"""Muon's width scale: each matrix times ``√max(1, n/m)``, or ``r·√max(m, n)``.

  .. math::
    u = \sqrt{\max(1, n/m)}\; O \quad (\texttt{consistent\_rms=None}),
    \qquad u = r \sqrt{\max(m, n)}\; O \quad (\texttt{consistent\_rms}=r)

  with ``m = fan_in`` and ``n = fan_out``, the products of each leaf's
  reduction and output axes in its layout (:mod:`normopt.layouts`; by
  default the shape rule: all non-stacked axes but the last are the
  fan-in). The first is Muon's scale (Jordan et al.); the second is
  Moonlight's (Liu et al. 2025): an orthogonalized ``m × n`` update has
  RMS about ``1/√max(m, n)``, so the scaled one has RMS about ``r``, which
  lets Muon reuse AdamW's learning rate and weight decay (``r = 0.2``
  matches AdamW's typical update RMS; ``optax.contrib.muon``'s
  ``consistent_rms``). A leaf that is not a matrix (a bias, a norm scale,
  an ``"unknown"`` leaf) passes unchanged.

  Args:
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`).
    layout: per-leaf layouts (:func:`normopt.param_layouts`, a callable or
      a pytree prefix; see :mod:`normopt.layouts`).
    consistent_rms: ``None`` (Muon's ``√max(1, n/m)``) or the target RMS
      ``r`` of an orthogonal update (a number, or an array under
      ``optax.inject_hyperparams``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with empty state.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.scale_by_width()
    >>> u, _ = tx.update({"w": jnp.ones((2, 8))}, tx.init(None))
    >>> float(u["w"][0, 0])                          # √(8 / 2)
    2.0
    >>> o = jnp.eye(4, 16)                           # orthogonal rows: RMS 1/4
    >>> tx = normopt.scale_by_width(consistent_rms=0.2)
    >>> u, _ = tx.update({"w": o}, tx.init(None))
    >>> round(float(jnp.sqrt(jnp.mean(u["w"] ** 2))), 4)   # 0.2·√16 · 1/4
    0.2

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024; Liu et al., `Muon
    is Scalable for LLM Training <https://arxiv.org/abs/2502.16982>`_, 2025.
  """

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _, leaves, _, lays, treedef = resolve_layouts(updates, layout, stacked, "scale_by_width")
    out = []
    for x, pl in zip(leaves, lays, strict=True):
      if not pl.is_matrix:
        out.append(x)
        continue
      fan_in, fan_out = pl.fans(jnp.shape(x))
      if consistent_rms is None:
        scale: Any = max(1.0, fan_out / fan_in) ** 0.5
      else:
        scale = consistent_rms * max(fan_in, fan_out) ** 0.5
      out.append((x * scale).astype(jnp.result_type(x)))
    return jax.tree_util.tree_unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def muon_labels(stacked: StackedSpec, layout: Any, muon_mask: Any) -> Any:
  """``params -> tree of "muon"/"adam"``: hidden and conv matrices go to Muon.

  Embeddings, heads, norm scales, biases and ``"unknown"`` leaves go to Adam,
  the last with one warning naming them.
  """
  warned: list[bool] = []

  def labels(params):
    paths, leaves, _, lays, treedef = resolve_layouts(params, layout, stacked, "muon")
    if muon_mask is None:
      chosen = [pl.kind in ("hidden", "conv") and pl.is_matrix for pl in lays]
      unknown = [jax.tree_util.keystr(p) for p, pl in zip(paths, lays, strict=True)
                 if pl.kind == "unknown"]
      if unknown and not warned:
        warned.append(True)
        warnings.warn(
            f"muon: no layout says which axes of these {len(unknown)} leaves are their "
            f"inputs (3 non-stacked axes under the shape rule, or a parameter no known "
            f"layer owns), so they go to Adam: {', '.join(unknown)}. Give "
            f"stacked= for scanned layers, or layout=normopt.param_layouts(model, "
            f"*example_inputs) for attention kernels and Conv1D.", stacklevel=2)
    else:
      mask = muon_mask(params) if callable(muon_mask) else muon_mask
      chosen = per_leaf(mask, params, paths, leaves, "muon", "muon_mask", "bools")
    return jax.tree_util.tree_unflatten(
        treedef, ["muon" if c else "adam" for c in chosen])

  return labels


def spectral_direction(
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps: Any = 1e-8,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    grouped: bool = True,
    gram: bool = False,
    preconditioning: str = "frobenius",
    adaptive: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Muon's direction ``O = polar(x)`` of every matrix, optionally times ``⟨x, O⟩``.

  ``block_normalize(blocks="leaf", norm="spectral", ...)``; ``adaptive=True``
  scales each matrix (each batch index of its layout: a stacked slice, a
  head) by ``⟨x, O⟩``, the dual norm of ``x`` (its nuclear norm when ``O``
  is exact), as ``optax.contrib.scale_by_muon(adaptive=True)`` does per
  leaf. Shared by :func:`muon` and the Muon family
  (:mod:`normopt.muon_family`).
  """
  direction = block_normalize(
      blocks="leaf", eps=eps, stacked=stacked, layout=layout, norm="spectral",
      ns_steps=ns_steps, ns_coeffs=ns_coeffs, grouped=grouped, gram=gram,
      preconditioning=preconditioning)
  if not adaptive:
    return direction

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    o, state = direction.update(updates, state)
    _, xs, _, lays, treedef = resolve_layouts(updates, layout, stacked, "muon")
    out = []
    for x, y, pl in zip(xs, treedef.flatten_up_to(o), lays, strict=True):
      acc = acc_dtype(x)
      dual = per_matrix_sum(x.astype(acc) * y.astype(acc), pl)
      out.append((dual * y.astype(acc)).astype(jnp.result_type(y)))
    return jax.tree_util.tree_unflatten(treedef, out), state

  return optax.GradientTransformationExtraArgs(direction.init, update_fn)


def per_matrix_sum(x: jax.Array, pl: Any) -> jax.Array:
  """Sum of ``x`` over each matrix of its layout ``pl`` (its reduction and
  output axes), kept as size-1 axes: one entry per batch index."""
  return jnp.sum(x, axis=pl.reduction + pl.output, keepdims=True)


def muon_partition(
    matrices: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    *,
    stacked: StackedSpec,
    layout: Any,
    muon_mask: Any,
    weight_decay: Any,
    weight_decay_mask: Any,
    mu_dtype: Any,
    eps: Any,
    nesterov: bool,
    adam_b1: Any,
    adam_b2: Any,
    adam_eps_root: Any,
    adam_weight_decay: Any,
    adam_learning_rate: optax.ScalarOrSchedule | None,
) -> optax.GradientTransformationExtraArgs:
  """Muon's optimizer around a direction ``matrices`` of the Muon leaves.

  The Muon leaves (:func:`muon_labels`) get ``matrices``, then decoupled
  weight decay and ``learning_rate``; the others get Adam (``optax.adam``
  with Muon's ``eps``, ``mu_dtype`` and ``nesterov``, and its own decay and
  rate), as in ``optax.contrib.muon``.
  """
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate

  muon_leaves = optax.chain(
      matrices,
      decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  others = optax.chain(
      optax.scale_by_adam(
          b1=adam_b1, b2=adam_b2, eps=eps, eps_root=adam_eps_root,
          mu_dtype=mu_dtype, nesterov=nesterov),
      decayed_weights(adam_weight_decay, None),
      optax.scale_by_learning_rate(adam_learning_rate),
  )
  tx = optax.partition(
      {"muon": muon_leaves, "adam": others}, muon_labels(stacked, layout, muon_mask))
  return optax.GradientTransformationExtraArgs(tx.init, tx.update)


def muon(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.95,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    ns_steps: int = 5,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    eps: float = 1e-8,
    nesterov: bool = True,
    grouped: bool = True,
    gram: bool = False,
    muon_mask: Any = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: Any = 0.0,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    consistent_rms: Any = None,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
) -> optax.GradientTransformationExtraArgs:
  r"""Muon built from normopt's spectral block direction, Adam for the rest.

  Matrices (the ``"hidden"`` and ``"conv"`` leaves of ``layout``, or those
  ``muon_mask`` selects):

  .. math::
    u = -\eta\,\Big(\sqrt{\max(1, \tfrac{\text{fan\_out}}{\text{fan\_in}})}\;
        \mathrm{polar}(\hat m) + \lambda w\Big)

  with ``m̂`` Muon's Nesterov momentum (:func:`scale_by_muon_momentum`) and
  ``polar`` the Newton–Schulz polar factor of
  ``block_normalize(blocks="leaf", norm="spectral")``; the other leaves get
  ``optax.adam``. With the same settings it equals ``optax.contrib.muon``
  to float32 roundoff; ``stacked=`` treats each slice of a scanned leaf as
  its own matrix (optax needs ``MuonDimensionNumbers`` for that), and the
  Newton–Schulz runs grouped over matrices of equal shape.

  ``consistent_rms=r`` replaces the width scale by ``r·√max(fan_in,
  fan_out)`` (:func:`scale_by_width`: update RMS about ``r``, so AdamW's
  learning rate and weight decay carry over); ``adaptive=True`` multiplies
  each matrix's ``polar(m̂)`` by ``⟨m̂, polar(m̂)⟩``, the dual norm of the
  momentum, before the width scale, as optax's ``adaptive`` does (optax
  takes that inner product over a whole leaf, stacked axes included; here
  each batch index of the layout is its own matrix, as the unrolled model
  would be). ``ns_coeffs="polar_express"`` and ``preconditioning=`` choose
  the Newton–Schulz (:func:`normopt.polar_factors`).

  Args:
    learning_rate: step size (float or ``optax.Schedule``).
    beta: momentum decay.
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; default :func:`normopt.layouts_from_shapes`):
      ``"hidden"`` and ``"conv"`` leaves go to Muon, each as its layout's
      ``(B, fan_in, fan_out)`` matrices (so Flax's attention kernels
      ``(d, heads, head_dim)`` are the layer's ``d → heads·head_dim`` map, or
      one matrix per head with ``attention="head"``); ``"embedding"``,
      ``"head"``, ``"norm"`` and ``"bias"`` leaves go to Adam, and so do
      ``"unknown"`` ones (a leaf with 3 non-stacked axes under the shape
      rule), with one warning naming them.
    weight_decay: decoupled weight decay of the Muon leaves.
    weight_decay_mask: mask (pytree prefix of bools or callable) for it.
    mu_dtype: optional dtype of the momentum.
    ns_steps: Newton–Schulz steps.
    ns_coeffs: Newton–Schulz coefficients: one ``(a, b, c)``, one per step,
      or a preset name (``"polar_express"``: 8 steps; see
      :func:`normopt.polar_factors`).
    eps: added to each matrix's Frobenius norm, and Adam's ``eps`` (as in
      ``optax.contrib.muon``).
    nesterov: Nesterov momentum (Muon's and Adam's, as optax's Muon).
    grouped: group the Newton–Schulz over matrices of equal shape.
    gram: run the Newton–Schulz in its Gram form (see
      :func:`normopt.polar_factors`): the same iteration, cheaper on
      rectangular matrices (about 0.6x the time on ``d × 4d`` MLP kernels),
      dearer on square ones.
    muon_mask: ``None`` (matrices) or a pytree prefix of bools / a callable
      ``params -> such a tree`` choosing the Muon leaves (e.g. to leave an
      embedding table to Adam).
    adam_b1: Adam's first-moment decay for the other leaves.
    adam_b2: Adam's second-moment decay.
    adam_eps_root: Adam's ``eps_root``.
    adam_weight_decay: decoupled weight decay of the Adam leaves.
    adam_learning_rate: Adam's step size (default: ``learning_rate``).
    consistent_rms: ``None`` (Muon's ``√max(1, fan_out/fan_in)``) or the
      update RMS ``r`` of Liu et al. (``0.2`` matches AdamW's); see
      :func:`scale_by_width`.
    adaptive: scale each matrix's direction by ``⟨m̂, polar(m̂)⟩``.
    preconditioning: ``"frobenius"``, ``"aol"`` or ``"schatten"``: how each
      matrix is scaled before the first Newton–Schulz step (as
      ``optax.contrib.muon``'s option; see :func:`normopt.polar_factors`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> x = jax.random.normal(jax.random.key(0), (64, 8))
    >>> w_true = jax.random.normal(jax.random.key(1), (8, 4))
    >>> loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - x @ w_true) ** 2)
    >>> p = {"w": jnp.zeros((8, 4)), "b": jnp.zeros(4)}
    >>> tx = normopt.muon(optax.cosine_decay_schedule(0.1, 300))
    >>> s = tx.init(p)
    >>> step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    >>> l0 = loss(p)
    >>> for _ in range(300):
    ...   u, s = step(p, s)
    ...   p = optax.apply_updates(p, u)
    >>> bool(loss(p) < 1e-3 * l0)
    True

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024; Bernstein and
    Newhouse, `Old Optimizer, New Norm: An Anthology
    <https://arxiv.org/abs/2409.20325>`_, 2024.
  """
  check_preconditioning(preconditioning)
  matrices = optax.chain(
      scale_by_muon_momentum(beta=beta, nesterov=nesterov, mu_dtype=mu_dtype),
      spectral_direction(
          stacked=stacked, layout=layout, eps=eps, ns_steps=ns_steps,
          ns_coeffs=ns_coeffs, grouped=grouped, gram=gram,
          preconditioning=preconditioning, adaptive=adaptive),
      scale_by_width(stacked=stacked, layout=layout, consistent_rms=consistent_rms),
  )
  return muon_partition(
      matrices, learning_rate, stacked=stacked, layout=layout, muon_mask=muon_mask,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      mu_dtype=mu_dtype, eps=eps, nesterov=nesterov, adam_b1=adam_b1,
      adam_b2=adam_b2, adam_eps_root=adam_eps_root,
      adam_weight_decay=adam_weight_decay, adam_learning_rate=adam_learning_rate)
