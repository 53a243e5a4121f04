"""AdaNorm gradient-norm correction (Dubey et al., WACV 2023) and diffGrad.

AdaNorm keeps an exponential moving average ``e`` of past gradient norms and,
when the current norm falls below it, scales the gradient up to norm ``e``.
The paper feeds this corrected gradient ``s`` into the FIRST moment of Adam,
diffGrad, RAdam and AdaBelief only; the second moment (and diffGrad's
friction) keeps seeing the raw gradient ``g``.

Two layers:

* :func:`adanorm_rescale` returns ``s`` itself. Chained before a stock optax
  optimizer, both of its moments see ``s`` (the paper's "both moments"
  ablation).
* :func:`scale_by_adanorm_moments` is the single moment primitive behind all
  faithful optimizers: it takes the first-moment input ``s`` and the raw
  gradient ``g`` separately, and ``kind`` selects the Adam, diffGrad, RAdam or
  AdaBelief rule. :func:`scale_by_diffgrad` is the same primitive with the
  correction switched off (``s = g``).

The Adam-family conventions are optax's (``m̂ / (√v̂ + eps)``, optax's RAdam
threshold and rectification, AdaBelief's ``eps_root`` added to the stored
second moment), so with ``gamma=0`` every ``*_norm`` optimizer equals its
optax base (``optax.adam``, ``optax.radam``, ``optax.adabelief``) or
:func:`normopt.diffgrad`.

Differences from the official PyTorch code (shivram1987/AdaNorm), on purpose:

* a zero gradient block after nonzero ones gives ``s = 0`` there (the official
  code divides by the zero norm and returns NaN);
* ``e`` persists across steps in every variant (the official RAdamNorm resets
  it to 0 every step, so its correction never fires);
* eps conventions follow optax, not the official code's
  ``√(v + eps)/√bc2 + eps``.
"""

from __future__ import annotations

from typing import Any, get_args, Literal, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from normopt._numerics import adam_direction
from normopt._numerics import bias_corrections
from normopt._numerics import canonical_dtype
from normopt._numerics import first_moment
from normopt._numerics import second_moment
from normopt._numerics import zeros_typed
from normopt.blocks import block_norms
from normopt.blocks import block_sq_map
from normopt.blocks import BlockSpec
from normopt.blocks import check_blocks
from normopt.blocks import NORM_SCALE
from normopt.blocks import StackedSpec
from normopt.blocks import with_layout

Kind = Literal["adam", "diffgrad", "radam", "adabelief"]
KINDS = get_args(Kind)


class AdaNormState(NamedTuple):
  """State of :func:`adanorm_rescale`."""

  count: jax.Array  # type: ignore[assignment]  # shape=(), int32: number of updates so far.
  e: Any  # per leaf, EMA of its block's gradient norm (keepdims shape).


class ScaleByAdaNormState(NamedTuple):
  """State of :func:`scale_by_adanorm_moments`."""

  count: jax.Array  # type: ignore[assignment]  # shape=(), int32.
  e: Any  # per leaf, EMA of its block's gradient norm (keepdims shape).
  mu: Any  # first moment, of the corrected gradient s.
  nu: Any  # second moment, of g (Adam/diffGrad/RAdam) or of (g - m).
  g_prev: Any  # previous raw gradient (diffGrad), else optax.EmptyState().


class ScaleByDiffGradState(NamedTuple):
  """State of :func:`scale_by_diffgrad`."""

  count: jax.Array  # type: ignore[assignment]  # shape=(), int32.
  mu: Any
  nu: Any
  g_prev: Any  # previous gradient, zeros at init.


# ---------------------------------------------------------------------------
# Shared pure pieces.


def _init_e(params, blocks, stacked):
  """Zeros typed as ``block_norms``' output (shape, dtype and sharding)."""
  types = jax.eval_shape(
      lambda p: block_norms(p, blocks, stacked=stacked), params
  )
  return jax.tree.map(lambda t: zeros_typed(t, params), types)


def _rsqrt_and_norm(total):
  r"""Per block, from its prescaled sum of squares: ``(r, n)``.

  ``n = ‖g_b‖`` and ``r = 1/sqrt(total)``, so ``1/n = r / NORM_SCALE``: one
  ``rsqrt`` per block where ``n`` and then ``1/max(n, eps)`` took a
  ``sqrt`` and a division, each a separate scalar kernel on XLA:CPU. A total
  that is not positive (0, NaN) gives ``r = n = 0``, as ``safe_sqrt`` does;
  an infinite one ``n = inf`` (``r`` is clamped to stay finite there).
  """
  pos = total > 0
  q = lax.select(pos, total, jnp.ones_like(total))
  r = lax.select(
      pos, lax.rsqrt(jnp.minimum(q, jnp.finfo(q.dtype).max)),
      jnp.zeros_like(q),
  )
  return r, q * r * NORM_SCALE


def _correct(updates, e, gamma, blocks, stacked, eps, axis_name):
  r"""One AdaNorm step: returns ``(factor, e_new)``, per leaf.

  ``e ← γ e + (1 − γ) ‖g_b‖``; ``s_b = g_b · factor`` with
  ``factor = e/‖g_b‖`` if ``e > ‖g_b‖`` else 1; a zero block gets factor 0.
  Both are per-block scalars (keepdims rows for ``"unit"`` blocks): every
  full-size kernel that needs ``s`` takes ``g`` and one scalar operand.
  ``1/max(‖g_b‖, eps)`` is ``min(r / NORM_SCALE, 1/eps)``, cheap from the
  block's one ``rsqrt`` (see docs/design.md).
  """
  r, norms = block_sq_map(
      _rsqrt_and_norm, updates, blocks=blocks, stacked=stacked,
      axis_name=axis_name,
  )
  inv_eps: Any
  if isinstance(eps, (int, float)):
    inv_eps = None if eps == 0 else 1.0 / eps
  else:
    inv_eps = 1.0 / jnp.asarray(eps)

  def leaf(e_, r_, n):
    e_new = (gamma * e_ + (1 - gamma) * n).astype(e_.dtype)
    inv = r_ * (1.0 / NORM_SCALE)
    if isinstance(inv_eps, float):  # past the dtype's range: no clamp
      inv = jnp.minimum(inv, min(inv_eps, float(jnp.finfo(inv.dtype).max)))
    elif inv_eps is not None:
      inv = jnp.minimum(inv, inv_eps)
    lifted = (e_new * inv).astype(n.dtype)
    return lax.select(e_new > n, lifted, jnp.ones_like(n)), e_new

  out = jax.tree.map(leaf, e, r, norms)
  factor = jax.tree.map(lambda _, o: o[0], e, out)
  e_new = jax.tree.map(lambda _, o: o[1], e, out)
  return factor, e_new


def _scaled(g, factor):
  """``s = g · factor`` in ``g``'s dtype."""
  return (g * factor).astype(jnp.result_type(g))


def _moments_init(params, mu_dtype, with_g_prev):
  mu = optax.tree.zeros_like(params, dtype=mu_dtype)
  nu = optax.tree.zeros_like(params)
  g_prev = optax.tree.zeros_like(params) if with_g_prev else optax.EmptyState()
  return mu, nu, g_prev


def _moments_update(
    kind, g, factor, mu, nu, g_prev, count, *, b1, b2, eps, eps_root,
    threshold, nesterov, mu_dtype, residual_uses_corrected,
):
  """The one Adam-family update shared by every optimizer in this module.

  ``s = g · factor`` (``factor=None``: ``s = g``) enters the first moment,
  ``g`` the second moment (AdaBelief: the residual ``g − m``, or ``s − m``
  with ``residual_uses_corrected``) and diffGrad's friction. Returns
  ``(updates, mu, nu, g_prev, count_inc)``. Built leaf by leaf from the
  shared moment updates, so that ``s`` is never stored (see docs/design.md).
  """
  count_inc = optax.safe_increment(count)
  # In the widest enabled float: float64 params get float64 corrections.
  wide = jnp.float64
  _, _, bc1, bc2 = bias_corrections(b1, b2, count_inc, wide)
  if nesterov:
    bc1_next = bias_corrections(b1, b2, optax.safe_increment(count_inc), wide)[2]
  if kind == "radam":
    ro_inf = 2.0 / (1.0 - b2) - 1.0
    b2t = b2**count_inc
    ro = ro_inf - 2 * count_inc * b2t / (1 - b2t)
    r_sq = (ro - 4.0) * (ro - 2.0) * ro_inf / (
        (ro_inf - 4.0) * (ro_inf - 2.0) * ro
    )
    # The clamp only matters where optax would take sqrt of a negative
    # (threshold < 4); there it gives 0 instead of NaN.
    r = jnp.sqrt(jnp.maximum(r_sq, 0.0))
    rectify = ro >= threshold

  def leaf(gt, f, m, v, gp):
    dtype = jnp.result_type(gt)
    s = gt if f is None else _scaled(gt, f)
    m_new = first_moment(s, m, b1)
    if kind == "adabelief":  # eps_root sits inside the stored v.
      resid = (s if residual_uses_corrected else gt) - m_new
      v_new = second_moment(resid, v, b2) + eps_root
      root = 0.0
    else:
      v_new = second_moment(gt, v, b2)
      root = eps_root
    if nesterov:
      m_hat = b1 * (m_new / bc1_next.astype(m_new.dtype)) + (1 - b1) * (
          s / bc1.astype(s.dtype)
      )
    else:
      m_hat = m_new / bc1.astype(m_new.dtype)
    u = adam_direction(m_hat, v_new, None, bc2, eps, root)  # m_hat: corrected
    if kind == "radam":
      # jnp.where without its nested jit per leaf: select_n takes the scalar
      # predicate as it is.
      ru = r.astype(m_hat.dtype) * u
      dt = jnp.result_type(ru, m_hat)
      u = lax.select_n(rectify, m_hat.astype(dt), ru.astype(dt))
    if kind == "diffgrad":
      u = jax.nn.sigmoid(jnp.abs(gp - gt)) * u
      gp = gt.astype(jnp.result_type(gp))
    m_new = m_new if mu_dtype is None else m_new.astype(mu_dtype)
    return u.astype(dtype), m_new, v_new.astype(jnp.result_type(v)), gp

  leaves, treedef = jax.tree.flatten(g)
  factors = (
      [None] * len(leaves) if factor is None
      else treedef.flatten_up_to(factor)
  )
  prevs = (
      treedef.flatten_up_to(g_prev) if kind == "diffgrad"
      else [None] * len(leaves)
  )
  out = [
      leaf(*args)
      for args in zip(
          leaves, factors, treedef.flatten_up_to(mu),
          treedef.flatten_up_to(nu), prevs, strict=True,
      )
  ]
  u, new_mu, new_nu, new_prev = (
      jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(4)
  )
  if kind == "diffgrad":
    g_prev = new_prev
  return u, new_mu, new_nu, g_prev, count_inc


# ---------------------------------------------------------------------------
# Public transformations.


def adanorm_rescale(
    gamma: float = 0.95,
    blocks: BlockSpec = "leaf",
    eps: float = 1e-12,
    axis_name: str | None = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaNorm gradient-norm correction: lifts small gradients to their EMA norm.

  Per block ``b`` (default: per leaf, as the official code does per tensor):

  .. math::
    e_t = \gamma e_{t-1} + (1-\gamma)\|g_{b,t}\|, \quad e_0 = 0, \qquad
    s_{b,t} = \begin{cases} g_{b,t}\, e_t / \|g_{b,t}\| & e_t > \|g_{b,t}\| \\
      g_{b,t} & \text{otherwise} \end{cases}

  A zero block gives ``s_b = 0`` (no division by a zero norm). With
  ``gamma=0`` this is the identity.

  Chained before a stock optimizer, e.g.
  ``optax.chain(adanorm_rescale(), optax.adam(1e-3))``, BOTH moments see ``s``:
  that is the paper's "both moments" ablation. The paper's optimizers feed
  ``s`` to the first moment only: use :func:`adam_norm` and friends (built on
  :func:`scale_by_adanorm_moments`) for those.

  Args:
    gamma: EMA decay ``γ`` of the norm history (paper: 0.95).
    blocks: ``"leaf"``, ``"layer"``, ``"global"``, ``"unit"`` or a callable
      ``(path, leaf) -> hashable`` (see :mod:`normopt.blocks`).
    eps: gradient norms below ``eps`` divide by ``eps`` instead.
    axis_name: mapped axis across which leaves are sharded (``shard_map``,
      ``pmap``); partial squared norms are summed over it.
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`); ``e`` has one entry
      per slice.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`AdaNormState`
    (``e`` per leaf with the keepdims shape of :func:`normopt.block_norms`).

  Example:
    >>> import jax.numpy as jnp, optax, normopt
    >>> tx = normopt.adanorm_rescale(gamma=0.5)
    >>> s = tx.init(jnp.zeros(2))
    >>> _, s = tx.update(jnp.array([3.0, 4.0]), s)      # e = 2.5 < 5: unchanged
    >>> u, s = tx.update(jnp.array([0.3, 0.4]), s)      # e = 1.5 > 0.5: lifted
    >>> round(float(optax.tree.norm(u)), 4)
    1.5

  References:
    Dubey et al., `AdaNorm: Adaptive Gradient Norm Correction based Optimizer
    for CNNs <https://arxiv.org/abs/2210.06364>`_, WACV 2023.
  """
  stacked = with_layout(stacked, layout)
  check_blocks(blocks, "adanorm_rescale")

  def init_fn(params):
    return AdaNormState(
        count=jnp.zeros([], jnp.int32), e=_init_e(params, blocks, stacked)
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    factor, e = _correct(
        updates, state.e, gamma, blocks, stacked, eps, axis_name
    )
    s = jax.tree.map(_scaled, updates, factor)
    return s, AdaNormState(count=optax.safe_increment(state.count), e=e)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_adanorm_moments(
    kind: Kind = "adam",
    gamma: float = 0.95,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
    residual_uses_corrected: bool = False,
    blocks: BlockSpec = "leaf",
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaNorm-corrected Adam / diffGrad / RAdam / AdaBelief moments.

  With ``s`` from :func:`adanorm_rescale` (same ``gamma``, ``blocks``) and
  the raw gradient ``g``, step ``t``:

  .. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) s_t, \quad
    \hat m_t = m_t / (1-\beta_1^t)

  * ``"adam"``: :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`,
    update :math:`\hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)`.
  * ``"diffgrad"``: Adam's update times the friction
    :math:`\xi_t = \mathrm{sigmoid}(|g_{t-1} - g_t|)`, :math:`g_0 = 0`.
  * ``"radam"``: optax's rectification: with
    :math:`\rho_\infty = 2/(1-\beta_2) - 1`,
    :math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)`, the update is
    :math:`r_t \hat m_t/(\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)` if
    :math:`\rho_t \ge` ``threshold``, else :math:`\hat m_t`.
  * ``"adabelief"``: :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2)(g_t - m_t)^2
    + \epsilon_{root}`, update :math:`\hat m_t / (\sqrt{\hat v_t} + \epsilon)`
    (optax's convention). ``residual_uses_corrected=True`` uses
    :math:`(s_t - m_t)` instead, as the official AdaBeliefNorm code does.

  ``gamma=0`` switches the correction off (``s = g``): the result equals
  ``optax.scale_by_adam`` / ``scale_by_radam`` / ``scale_by_belief`` or
  :func:`scale_by_diffgrad`.

  Args:
    kind: ``"adam"``, ``"diffgrad"``, ``"radam"`` or ``"adabelief"``.
    gamma: AdaNorm EMA decay ``γ``; 0 turns the correction off.
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to the denominator ``√v̂``.
    eps_root: added inside the square root (AdaBelief: to the stored ``v``).
    threshold: RAdam's tractability threshold on ``ρ_t`` (``"radam"`` only).
    mu_dtype: optional dtype of the first moment.
    nesterov: Nesterov momentum on the first moment (its input is ``s``).
    residual_uses_corrected: AdaBelief only: residual ``s − m`` (official code)
      instead of the paper's ``g − m``.
    blocks: AdaNorm blocks (default ``"leaf"``, see :mod:`normopt.blocks`).
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`); ``e`` has one entry per slice.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: gradient norms below this divide by it in the correction.
    axis_name: mapped axis across which leaves are sharded.

  Returns:
    An ``optax.GradientTransformation`` with state
    :class:`ScaleByAdaNormState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> tx = optax.chain(normopt.scale_by_adanorm_moments("adabelief"),
    ...                  optax.scale_by_learning_rate(0.1))
    >>> w = jnp.zeros(3); s = tx.init(w)
    >>> step = jax.jit(lambda w, s: tx.update(jax.grad(loss)(w), s))
    >>> for _ in range(200):
    ...   u, s = step(w, s)
    ...   w = optax.apply_updates(w, u)
    >>> bool(loss(w) < 1e-3 * loss(jnp.zeros(3)))
    True

  References:
    Dubey et al., `AdaNorm: Adaptive Gradient Norm Correction based Optimizer
    for CNNs <https://arxiv.org/abs/2210.06364>`_, WACV 2023.
  """
  stacked = with_layout(stacked, layout)
  if kind not in KINDS:
    raise ValueError(
        f"scale_by_adanorm_moments: kind must be one of {KINDS}, got {kind!r}."
    )
  check_blocks(blocks, "scale_by_adanorm_moments")
  mu_dtype = canonical_dtype(mu_dtype)

  def init_fn(params):
    mu, nu, g_prev = _moments_init(params, mu_dtype, kind == "diffgrad")
    return ScaleByAdaNormState(
        count=jnp.zeros([], jnp.int32), e=_init_e(params, blocks, stacked),
        mu=mu, nu=nu, g_prev=g_prev,
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    factor, e = _correct(
        updates, state.e, gamma, blocks, stacked, eps_norm, axis_name
    )
    u, mu, nu, g_prev, count = _moments_update(
        kind, updates, factor, state.mu, state.nu, state.g_prev, state.count,
        b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold,
        nesterov=nesterov, mu_dtype=mu_dtype,
        residual_uses_corrected=residual_uses_corrected,
    )
    return u, ScaleByAdaNormState(
        count=count, e=e, mu=mu, nu=nu, g_prev=g_prev
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_diffgrad(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mu_dtype: Any = None,
    eps_root: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""diffGrad: Adam scaled by a friction from the last gradient change.

  .. math::
    \xi_t = \mathrm{sigmoid}(|g_{t-1} - g_t|) \ (g_0 = 0), \qquad
    u_t = \xi_t \, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)

  with Adam's bias-corrected moments (optax conventions). The friction is in
  ``[0.5, 1)`` per coordinate: a coordinate whose gradient barely changes
  takes half a step. optax has no diffGrad.

  Args:
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to the denominator ``√v̂``.
    eps_root: added inside the square root.
    mu_dtype: optional dtype of the first moment.

  Returns:
    An ``optax.GradientTransformation`` with state
    :class:`ScaleByDiffGradState`.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.scale_by_diffgrad()
    >>> g = jnp.array([1.0, 1.0])
    >>> s = tx.init(g)
    >>> u, s = tx.update(g, s)   # xi = sigmoid(1); Adam's first step is ~1
    >>> u, s = tx.update(g, s)   # same gradient again: xi = sigmoid(0) = 0.5
    >>> [round(float(x), 4) for x in u]
    [0.5, 0.5]

  References:
    Dubey et al., `diffGrad: An Optimization Method for Convolutional Neural
    Networks <https://arxiv.org/abs/1909.11015>`_, IEEE TNNLS 2020.
  """
  mu_dtype = canonical_dtype(mu_dtype)

  def init_fn(params):
    mu, nu, g_prev = _moments_init(params, mu_dtype, True)
    return ScaleByDiffGradState(
        count=jnp.zeros([], jnp.int32), mu=mu, nu=nu, g_prev=g_prev
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    u, mu, nu, g_prev, count = _moments_update(
        "diffgrad", updates, None, state.mu, state.nu, state.g_prev,
        state.count, b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=0.0,
        nesterov=False, mu_dtype=mu_dtype, residual_uses_corrected=False,
    )
    return u, ScaleByDiffGradState(count=count, mu=mu, nu=nu, g_prev=g_prev)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
