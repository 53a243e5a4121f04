"""Ready-made optimizers: each is ``chain(primitives..., scale_by_learning_rate)``.

With the normalization switched off (a gradient whose blocks already have
unit norm), each BNG alias equals its optax base. ``weight_decay`` is
decoupled, as in ``optax.adamw``: ``optax.add_decayed_weights`` sits right
before ``scale_by_learning_rate``, so no moment, norm or accumulator sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import optax

from normopt._numerics import decayed_weights
from normopt.adanorm import scale_by_adanorm_moments
from normopt.adanorm import scale_by_diffgrad
from normopt.blocks import BlockSpec
from normopt.blocks import StackedSpec
from normopt.normalization import block_normalize
from normopt.normalization import ngadap_scale
from normopt.normalization import scale_by_adagrad_bng
from normopt.norms import NormSpec
from normopt.schedules import stagewise_schedule
from normopt.spherical import nd_adam_transform
from normopt.spherical import VectorAxes

ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule


def _decay_then_lr(learning_rate, weight_decay, weight_decay_mask):
  """Every alias's tail: decoupled weight decay (a no-op for a literal 0), then
  the learning rate, so the step is ``−lr·(direction + λ·w)``."""
  return (
      decayed_weights(weight_decay, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def _sgdm(learning_rate, momentum, nesterov, weight_decay, weight_decay_mask):
  return (
      optax.trace(decay=momentum, nesterov=nesterov),
      *_decay_then_lr(learning_rate, weight_decay, weight_decay_mask),
  )


def _adam(learning_rate, b1, b2, eps, mu_dtype, weight_decay, weight_decay_mask):
  return (
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype),
      *_decay_then_lr(learning_rate, weight_decay, weight_decay_mask),
  )


def sgd_ng(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    blocks: BlockSpec = "layer",
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    norm: NormSpec = "l2",
    ns_steps: int = 5,
    ns_coeffs: Any = (3.4445, -4.7750, 2.0315),
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with momentum on block-normalized gradients (BNG "SGDM-NG").

  .. math::
    \tilde g_b = g_b/\|g_b\|, \quad m \leftarrow \mu m + \tilde g, \quad
    w \leftarrow w - \eta m

  Args:
    learning_rate: step size ``η`` (float or ``optax.Schedule``).
    momentum: momentum ``μ``.
    nesterov: use Nesterov momentum.
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: block norms below this divide by it.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.
    norm: the block norm, see :func:`normopt.block_normalize` (with
      ``ns_steps`` and ``ns_coeffs``, its Newton–Schulz settings for
      ``"spectral"``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w["l"]["w"] - 3.0) ** 2)
    >>> w = {"l": {"w": jnp.zeros(4)}}
    >>> tx = normopt.sgd_ng(optax.exponential_decay(0.5, 10, 0.5))
    >>> s = tx.init(w)
    >>> l0 = loss(w)
    >>> for _ in range(100):
    ...   u, s = tx.update(jax.grad(loss)(w), s)
    ...   w = optax.apply_updates(w, u)
    >>> bool(loss(w) < 1e-3 * l0)
    True

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  return optax.chain(
      block_normalize(
          blocks=blocks, eps=eps_norm, axis_name=axis_name, stacked=stacked, layout=layout,
          norm=norm, ns_steps=ns_steps, ns_coeffs=ns_coeffs,
      ),
      *_sgdm(learning_rate, momentum, nesterov, weight_decay, weight_decay_mask),
  )


def adam_ng(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    blocks: BlockSpec = "layer",
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    norm: NormSpec = "l2",
    ns_steps: int = 5,
    ns_coeffs: Any = (3.4445, -4.7750, 2.0315),
) -> optax.GradientTransformationExtraArgs:
  r"""Adam on block-normalized gradients (BNG "Adam-NG").

  .. math::
    \tilde g_b = g_b/\|g_b\|, \quad
    u = -\eta\, \hat m(\tilde g) / (\sqrt{\hat v(\tilde g)} + \epsilon)

  Args:
    learning_rate: step size ``η`` (float or ``optax.Schedule``).
    b1: first-moment decay.
    b2: second-moment decay.
    eps: Adam's denominator constant (optax's convention).
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: block norms below this divide by it.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.
    norm: the block norm, see :func:`normopt.block_normalize` (with
      ``ns_steps`` and ``ns_coeffs``, its Newton–Schulz settings for
      ``"spectral"``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda p: jnp.sum((p["a"]["w"] - 1.0) ** 2) + jnp.sum(p["b"]["w"] ** 2)
    >>> p = {"a": {"w": jnp.zeros(3)}, "b": {"w": jnp.ones(3)}}
    >>> tx = normopt.adam_ng(optax.cosine_decay_schedule(0.1, 300))
    >>> s = tx.init(p)
    >>> l0 = loss(p)
    >>> for _ in range(300):
    ...   u, s = tx.update(jax.grad(loss)(p), s)
    ...   p = optax.apply_updates(p, u)
    >>> bool(loss(p) < 1e-3 * l0)
    True

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  return optax.chain(
      block_normalize(
          blocks=blocks, eps=eps_norm, axis_name=axis_name, stacked=stacked, layout=layout,
          norm=norm, ns_steps=ns_steps, ns_coeffs=ns_coeffs,
      ),
      *_adam(
          learning_rate, b1, b2, eps, mu_dtype, weight_decay, weight_decay_mask
      ),
  )


def adagrad_ng(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    blocks: BlockSpec = "layer",
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad (optax's form) on block-normalized gradients (BNG "AdaGrad-NG").

  .. math::
    \tilde g_b = g_b/\|g_b\|, \quad a \leftarrow a + \tilde g^2, \quad
    u = -\eta\, \tilde g / \sqrt{a + \epsilon}

  For the appendix variant that keeps the block magnitude, see
  :func:`adagrad_bng`.

  Args:
    learning_rate: step size ``η`` (float or ``optax.Schedule``).
    initial_accumulator_value: initial ``a``.
    eps: constant inside the square root (optax's convention).
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: block norms below this divide by it.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda p: jnp.sum((p["l"]["w"] - 2.0) ** 2)
    >>> p = {"l": {"w": jnp.zeros(4)}}
    >>> tx = normopt.adagrad_ng(0.5)
    >>> s = tx.init(p)
    >>> l0 = loss(p)
    >>> for _ in range(200):
    ...   u, s = tx.update(jax.grad(loss)(p), s)
    ...   p = optax.apply_updates(p, u)
    >>> bool(loss(p) < 1e-3 * l0)
    True

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  return optax.chain(
      block_normalize(
          blocks=blocks, eps=eps_norm, axis_name=axis_name, stacked=stacked, layout=layout
      ),
      optax.scale_by_rss(
          initial_accumulator_value=initial_accumulator_value, eps=eps
      ),
      *_decay_then_lr(learning_rate, weight_decay, weight_decay_mask),
  )


def sgd_ngadap(
    learning_rate: ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    blocks: BlockSpec = "layer",
    alpha: float = 0.02,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    min_param_norm: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with momentum on ``α‖w_b‖``-scaled block directions (BNG "NG_adap").

  .. math::
    \tilde g_b = \alpha \|w_b\|\, g_b/\|g_b\|, \quad
    m \leftarrow \mu m + \tilde g, \quad w \leftarrow w - \eta m

  The paper's rule; a block whose parameters are all zero steps by ``α``
  instead (see :func:`normopt.ngadap_scale`).

  Args:
    learning_rate: step size ``η`` (float or ``optax.Schedule``).
    momentum: momentum ``μ``.
    nesterov: use Nesterov momentum.
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    alpha: relative step ``α``.
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: gradient block norms below this divide by it.
    min_param_norm: floor on the parameter norm (0: the paper's rule; an
      ablation otherwise).
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda p: jnp.sum((p["l"]["w"] - 2.0) ** 2)
    >>> p = {"l": {"w": jnp.ones(4)}}
    >>> tx = normopt.sgd_ngadap(optax.exponential_decay(1.0, 30, 0.5), alpha=0.1)
    >>> s = tx.init(p)
    >>> l0 = loss(p)
    >>> for _ in range(300):
    ...   u, s = tx.update(jax.grad(loss)(p), s, p)
    ...   p = optax.apply_updates(p, u)
    >>> bool(loss(p) < 1e-3 * l0)
    True

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  return optax.chain(
      ngadap_scale(
          alpha=alpha, blocks=blocks, eps=eps_norm, axis_name=axis_name,
          stacked=stacked, layout=layout, min_param_norm=min_param_norm,
      ),
      *_sgdm(learning_rate, momentum, nesterov, weight_decay, weight_decay_mask),
  )


def adam_ngadap(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    blocks: BlockSpec = "layer",
    alpha: float = 0.02,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    min_param_norm: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam on ``α‖w_b‖``-scaled block directions (BNG "Adam-NG_adap").

  .. math::
    \tilde g_b = \alpha \|w_b\|\, g_b/\|g_b\|, \quad
    u = -\eta\, \hat m(\tilde g) / (\sqrt{\hat v(\tilde g)} + \epsilon)

  The paper's rule; a block whose parameters are all zero steps by ``α``
  instead (see :func:`normopt.ngadap_scale`).

  Args:
    learning_rate: step size ``η`` (float or ``optax.Schedule``).
    b1: first-moment decay.
    b2: second-moment decay.
    eps: Adam's denominator constant.
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    alpha: relative step ``α``.
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: gradient block norms below this divide by it.
    min_param_norm: floor on the parameter norm (0: the paper's rule; an
      ablation otherwise).
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda p: jnp.sum((p["l"]["w"] - 2.0) ** 2)
    >>> p = {"l": {"w": jnp.ones(4)}}
    >>> tx = normopt.adam_ngadap(optax.cosine_decay_schedule(0.1, 300))
    >>> s = tx.init(p)
    >>> l0 = loss(p)
    >>> for _ in range(300):
    ...   u, s = tx.update(jax.grad(loss)(p), s, p)
    ...   p = optax.apply_updates(p, u)
    >>> bool(loss(p) < 1e-3 * l0)
    True

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  return optax.chain(
      ngadap_scale(
          alpha=alpha, blocks=blocks, eps=eps_norm, axis_name=axis_name,
          stacked=stacked, layout=layout, min_param_norm=min_param_norm,
      ),
      *_adam(
          learning_rate, b1, b2, eps, mu_dtype, weight_decay, weight_decay_mask
      ),
  )


def adagrad_bng(
    learning_rate: ScalarOrSchedule,
    delta: float = 1e-8,
    blocks: BlockSpec = "layer",
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad-BNG, the BNG paper's appendix Algorithm 2.

  .. math::
    \hat g_b = g_b/\|g_b\|, \quad s = \sqrt{\textstyle\sum_t \hat g_t^2}, \quad
    w \leftarrow w - \eta\, \|g_b\|\, \hat g_b / (\delta + s)

  Args:
    learning_rate: step size ``η`` (float or ``optax.Schedule``).
    delta: the constant ``δ`` added to the denominator.
    blocks: block mode or callable (see :mod:`normopt.blocks`).
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: block norms below this divide by it.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda p: jnp.sum((p["l"]["w"] - 2.0) ** 2)
    >>> p = {"l": {"w": jnp.zeros(4)}}
    >>> tx = normopt.adagrad_bng(0.5)
    >>> s = tx.init(p)
    >>> l0 = loss(p)
    >>> for _ in range(100):
    ...   u, s = tx.update(jax.grad(loss)(p), s)
    ...   p = optax.apply_updates(p, u)
    >>> bool(loss(p) < 1e-3 * l0)
    True

  References:
    Yu et al., `Block-Normalized Gradient Method: An Empirical Study for
    Training Deep Neural Network <https://arxiv.org/abs/1707.04822>`_, 2017.
  """
  return optax.chain(
      scale_by_adagrad_bng(
          delta=delta, blocks=blocks, eps=eps_norm, axis_name=axis_name,
          stacked=stacked, layout=layout,
      ),
      *_decay_then_lr(learning_rate, weight_decay, weight_decay_mask),
  )


def sngd(
    learning_rate: ScalarOrSchedule,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    norm: NormSpec = "l2",
    ns_steps: int = 5,
    ns_coeffs: Any = (3.4445, -4.7750, 2.0315),
) -> optax.GradientTransformationExtraArgs:
  r"""Stochastic normalized gradient descent: ``w ← w − η g/‖g‖`` (global norm).

  Args:
    learning_rate: step size ``η`` (float or ``optax.Schedule``).
    stacked: accepted for a uniform signature: the global norm spans every
      slice of a stacked leaf, so stacking does not change it.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: global norms below this divide by it.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.
    norm: the block norm, see :func:`normopt.block_normalize` (with
      ``ns_steps`` and ``ns_coeffs``, its Newton–Schulz settings for
      ``"spectral"``).

  Returns:
    An ``optax.GradientTransformation`` with empty state.

  Example:
    >>> import jax, jax.numpy as jnp, normopt
    >>> tx = normopt.sngd(0.1)
    >>> g = {"a": jnp.full(3, 7.0), "b": jnp.full(2, -1.0)}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> round(float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(u)))), 4)
    0.1

  References:
    Zhao et al., `Convergence of Stochastic Normalized Gradient Descent
    <https://arxiv.org/abs/2104.07985>`_, 2021.
  """
  return optax.chain(
      block_normalize(
          blocks="global", eps=eps_norm, axis_name=axis_name, stacked=stacked, layout=layout,
          norm=norm, ns_steps=ns_steps, ns_coeffs=ns_coeffs,
      ),
      *_decay_then_lr(learning_rate, weight_decay, weight_decay_mask),
  )


def s_sngd(
    learning_rates: Sequence[float],
    stage_length: float,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Stagewise SNGD (S-SNGD, Algorithm 2): SNGD with stages ``M_t = ⌈S/α_t⌉``.

  Args:
    learning_rates: the stage step sizes ``α_t`` (decreasing).
    stage_length: ``S``; stage ``t`` lasts ``ceil(S / α_t)`` steps.
    stacked: as :func:`sngd` (the global norm is unchanged by stacking).
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: global norms below this divide by it.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> w = jnp.zeros(4)
    >>> tx = normopt.s_sngd([0.1, 0.01], stage_length=2.5)   # 25 + 250 steps
    >>> s = tx.init(w)
    >>> step = jax.jit(lambda w, s: tx.update(jax.grad(loss)(w), s))
    >>> for _ in range(300):
    ...   u, s = step(w, s)
    ...   w = optax.apply_updates(w, u)
    >>> bool(loss(w) < 1e-3)
    True

  References:
    Zhao et al., `Convergence of Stochastic Normalized Gradient Descent
    <https://arxiv.org/abs/2104.07985>`_, 2021.
  """
  return sngd(
      stagewise_schedule(learning_rates, stage_length),
      stacked=stacked, layout=layout,
      eps_norm=eps_norm,
      axis_name=axis_name,
      weight_decay=weight_decay,
      weight_decay_mask=weight_decay_mask,
  )


def nd_adam(
    learning_rate_vector: ScalarOrSchedule = 0.05,
    learning_rate_scalar: ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    vector_axes: VectorAxes = None,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""ND-Adam: Adam on the unit sphere for weight vectors, Adam for the rest.

  Vector leaves (see :mod:`normopt.spherical`; by default every leaf of
  ``ndim >= 2``, one vector per output unit) follow the paper's Algorithm 1:

  .. math::
    \bar g = g - (g\cdot\hat w)\hat w,\quad
    m \leftarrow \beta_1 m + (1-\beta_1)\bar g,\quad
    v \leftarrow \beta_2 v + (1-\beta_2)\|\bar g\|^2,\quad
    w \leftarrow \frac{w - \alpha_v \hat m/(\sqrt{\hat v}+\epsilon)}
                      {\|w - \alpha_v \hat m/(\sqrt{\hat v}+\epsilon)\|}

  i.e. ``spherical_project → scale_by_vector_adam → lr → spherical_retract``;
  all other leaves (biases, BatchNorm parameters) get ``optax.adam`` with
  ``learning_rate_scalar``. The whole step is one fused transformation
  (:func:`normopt.nd_adam_transform`, state
  :class:`normopt.NDAdamState`) that reads each vector leaf in
  three passes instead of the chain's five or more.
  Start from parameters on the sphere (:func:`normopt.normalize_vectors`); the
  first step puts them there anyway. The paper applies no weight decay to the
  vectors (their norm is fixed) and pairs ND-Adam with a regularized softmax
  (:mod:`normopt.losses`).

  Args:
    learning_rate_vector: step size ``α_v`` of the vectors (float or schedule;
      the paper uses 0.05 with cosine decay).
    learning_rate_scalar: Adam step size of the other leaves (float or
      schedule).
    b1: first-moment decay (both groups).
    b2: second-moment decay (both groups).
    eps: added to ``√v̂`` (both groups).
    vector_axes: ``None`` (the ``"unit"`` rule) or a callable
      ``(path, leaf) -> axes | None`` choosing which leaves are vectors.
    stacked: stacked (scanned) leading axes per leaf: ``None``, a callable
      ``(path, leaf) -> int`` such as :func:`normopt.stacked_under`, or a
      pytree prefix of ints (see :mod:`normopt.blocks`).
      The default vectors of a stacked leaf are those of each slice.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    axis_name: mapped axis across which the vectors are sharded.
    mu_dtype: optional dtype of the first moment.
    weight_decay: decoupled weight decay ``λ`` (float or schedule) of the
      leaves that are not vectors: their step is
      ``−learning_rate_scalar·(d + λw)``, as in ``optax.adamw``; the vectors
      stay on the sphere and never decay. Nonzero: ``update`` needs
      ``params`` (it always does here).
    weight_decay_mask: which of those leaves decay: a pytree prefix of the
      params holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> x = jax.random.normal(jax.random.key(0), (64, 3))
    >>> target = jnp.array([[1.0], [2.0], [2.0]]) / 3.0     # a unit vector
    >>> loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - x @ target - 0.5) ** 2)
    >>> p = normopt.normalize_vectors({"w": jnp.ones((3, 1)), "b": jnp.zeros(1)})
    >>> tx = normopt.nd_adam(0.05, 0.05)
    >>> s = tx.init(p)
    >>> @jax.jit
    ... def step(p, s):
    ...   u, s = tx.update(jax.grad(loss)(p), s, p)
    ...   return optax.apply_updates(p, u), s
    >>> l0 = loss(p)
    >>> for _ in range(300):
    ...   p, s = step(p, s)
    >>> bool(loss(p) < 1e-3 * l0), round(float(jnp.linalg.norm(p["w"])), 4)
    (True, 1.0)

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018.
  """
  return nd_adam_transform(
      learning_rate_vector=learning_rate_vector,
      learning_rate_scalar=learning_rate_scalar, b1=b1, b2=b2, eps=eps,
      vector_axes=vector_axes, stacked=stacked, layout=layout, axis_name=axis_name,
      weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
      mu_dtype=mu_dtype,
  )


# --- AdaNorm (Dubey et al., WACV 2023) and diffGrad -------------------------

def _adanorm_alias(kind, learning_rate, weight_decay, weight_decay_mask, **kwargs):
  return optax.chain(
      scale_by_adanorm_moments(kind=kind, **kwargs),
      *_decay_then_lr(learning_rate, weight_decay, weight_decay_mask),
  )


def adam_norm(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    gamma: float = 0.95,
    blocks: BlockSpec = "leaf",
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    eps_root: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamNorm: Adam whose first moment sees the AdaNorm-corrected gradient.

  ``e ← γe + (1−γ)‖g_b‖``; ``s_b = g_b·e/‖g_b‖`` if ``e > ‖g_b‖`` else
  ``g_b``; ``m ← β1 m + (1−β1) s``, ``v ← β2 v + (1−β2) g²``; update
  ``−η m̂/(√(v̂ + eps_root) + eps)``. ``gamma=0`` gives ``optax.adam``.

  Args:
    learning_rate: step size (float or ``optax.Schedule``).
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to ``√v̂``.
    eps_root: added inside the square root.
    mu_dtype: optional dtype of the first moment.
    gamma: AdaNorm EMA decay of the gradient-norm history (paper: 0.95).
    nesterov: Nesterov momentum (on ``s``).
    blocks: AdaNorm blocks (default ``"leaf"``: one ``e`` per tensor).
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`); ``e`` has one entry per slice.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: gradient norms below this divide by it in the correction.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> tx = normopt.adam_norm(0.05)
    >>> w = jnp.zeros(3); s = tx.init(w)
    >>> step = jax.jit(lambda w, s: tx.update(jax.grad(loss)(w), s))
    >>> for _ in range(300):
    ...   u, s = step(w, s)
    ...   w = optax.apply_updates(w, u)
    >>> bool(loss(w) < 1e-3 * loss(jnp.zeros(3)))
    True

  References:
    Dubey et al., `AdaNorm: Adaptive Gradient Norm Correction based Optimizer
    for CNNs <https://arxiv.org/abs/2210.06364>`_, WACV 2023.
  """
  return _adanorm_alias(
      "adam", learning_rate, weight_decay, weight_decay_mask,
      gamma=gamma, b1=b1, b2=b2, eps=eps,
      eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov, blocks=blocks,
      stacked=stacked, layout=layout, eps_norm=eps_norm, axis_name=axis_name,
  )


def diffgrad(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    stacked: StackedSpec = None,
    layout: Any = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    eps_root: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""diffGrad: ``−η · sigmoid(|g_prev − g|) · m̂/(√v̂ + eps)``, ``g_prev₀ = 0``.

  Args:
    learning_rate: step size (float or ``optax.Schedule``).
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to ``√v̂``.
    eps_root: added inside the square root.
    stacked: accepted for a uniform signature: diffGrad is element-wise, so a
      stacked leaf already behaves as its unrolled slices.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    mu_dtype: optional dtype of the first moment.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> tx = normopt.diffgrad(0.05)
    >>> w = jnp.zeros(3); s = tx.init(w)
    >>> step = jax.jit(lambda w, s: tx.update(jax.grad(loss)(w), s))
    >>> for _ in range(300):
    ...   u, s = step(w, s)
    ...   w = optax.apply_updates(w, u)
    >>> bool(loss(w) < 1e-3 * loss(jnp.zeros(3)))
    True

  References:
    Dubey et al., `diffGrad: An Optimization Method for Convolutional Neural
    Networks <https://arxiv.org/abs/1909.11015>`_, IEEE TNNLS 2020.
  """
  del stacked  # element-wise: stacking changes nothing.
  return optax.chain(
      scale_by_diffgrad(
          b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype, eps_root=eps_root
      ),
      *_decay_then_lr(learning_rate, weight_decay, weight_decay_mask),
  )


def diffgrad_norm(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    gamma: float = 0.95,
    blocks: BlockSpec = "leaf",
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    eps_root: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""diffGradNorm: diffGrad whose first moment sees the corrected gradient.

  ``m`` accumulates the AdaNorm-corrected ``s``; ``v`` and the friction
  ``ξ = sigmoid(|g_prev − g|)`` use the raw ``g``. ``gamma=0`` gives
  :func:`diffgrad`.

  Args:
    learning_rate: step size (float or ``optax.Schedule``).
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to ``√v̂``.
    gamma: AdaNorm EMA decay of the gradient-norm history (paper: 0.95).
    eps_root: added inside the square root.
    mu_dtype: optional dtype of the first moment.
    blocks: AdaNorm blocks (default ``"leaf"``).
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`); ``e`` has one entry per slice.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: gradient norms below this divide by it in the correction.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> tx = normopt.diffgrad_norm(1.0, gamma=0.5)
    >>> s = tx.init(jnp.zeros(1))
    >>> for g in (4.0, 4.0, 0.1):        # e: 2, 3, 1.55 > 0.1: corrected
    ...   u, s = tx.update(jnp.array([g]), s)
    >>> round(float(s[0].e), 4)
    1.55

  References:
    Dubey et al., `AdaNorm: Adaptive Gradient Norm Correction based Optimizer
    for CNNs <https://arxiv.org/abs/2210.06364>`_, WACV 2023.
  """
  return _adanorm_alias(
      "diffgrad", learning_rate, weight_decay, weight_decay_mask,
      gamma=gamma, b1=b1, b2=b2, eps=eps,
      eps_root=eps_root, mu_dtype=mu_dtype, blocks=blocks, stacked=stacked, layout=layout,
      eps_norm=eps_norm, axis_name=axis_name,
  )


def radam_norm(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    gamma: float = 0.95,
    blocks: BlockSpec = "leaf",
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""RAdamNorm: rectified Adam whose first moment sees the corrected gradient.

  optax's RAdam (rectification ``r_t`` when ``ρ_t ≥ threshold``, else the
  plain ``m̂``) with ``m`` accumulating the AdaNorm-corrected ``s``; ``e``
  persists across steps (the official RAdamNorm resets it every step, so its
  correction never fires). ``gamma=0`` gives ``optax.radam``.

  Args:
    learning_rate: step size (float or ``optax.Schedule``).
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to ``√v̂``.
    eps_root: added inside the square root.
    threshold: tractability threshold on ``ρ_t``.
    gamma: AdaNorm EMA decay of the gradient-norm history (paper: 0.95).
    nesterov: Nesterov momentum (on ``s``).
    blocks: AdaNorm blocks (default ``"leaf"``).
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`); ``e`` has one entry per slice.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: gradient norms below this divide by it in the correction.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> tx = normopt.radam_norm(0.05)
    >>> w = jnp.zeros(3); s = tx.init(w)
    >>> step = jax.jit(lambda w, s: tx.update(jax.grad(loss)(w), s))
    >>> for _ in range(300):
    ...   u, s = step(w, s)
    ...   w = optax.apply_updates(w, u)
    >>> bool(loss(w) < 1e-3 * loss(jnp.zeros(3)))
    True

  References:
    Dubey et al., `AdaNorm: Adaptive Gradient Norm Correction based Optimizer
    for CNNs <https://arxiv.org/abs/2210.06364>`_, WACV 2023.
  """
  return _adanorm_alias(
      "radam", learning_rate, weight_decay, weight_decay_mask,
      gamma=gamma, b1=b1, b2=b2, eps=eps,
      eps_root=eps_root, threshold=threshold, mu_dtype=mu_dtype,
      nesterov=nesterov, blocks=blocks, stacked=stacked, layout=layout, eps_norm=eps_norm,
      axis_name=axis_name,
  )


def adabelief_norm(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    *,
    gamma: float = 0.95,
    blocks: BlockSpec = "leaf",
    stacked: StackedSpec = None,
    layout: Any = None,
    eps_norm: float = 1e-12,
    axis_name: str | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: Any = None,
    eps_root: float = 1e-16,
    nesterov: bool = False,
    residual_uses_corrected: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaBeliefNorm: AdaBelief whose first moment sees the corrected gradient.

  ``m ← β1 m + (1−β1) s``; ``v ← β2 v + (1−β2)(g − m)² + eps_root``;
  update ``−η m̂/(√v̂ + eps)`` (optax's conventions). The paper's residual
  uses the raw ``g``; the official AdaBeliefNorm code uses the corrected
  ``s`` (``(s − m)²``): pass ``residual_uses_corrected=True`` for that.
  ``gamma=0`` gives ``optax.adabelief`` either way.

  Args:
    learning_rate: step size (float or ``optax.Schedule``).
    b1: decay of the first moment.
    b2: decay of the second moment (of the residual).
    eps: added to ``√v̂``.
    eps_root: added to the stored second moment each step.
    gamma: AdaNorm EMA decay of the gradient-norm history (paper: 0.95).
    nesterov: Nesterov momentum (on ``s``).
    residual_uses_corrected: residual ``s − m`` (official code) instead of
      ``g − m`` (paper, default).
    blocks: AdaNorm blocks (default ``"leaf"``).
    stacked: stacked (scanned) leading axes per leaf (see
      :mod:`normopt.blocks`); ``e`` has one entry per slice.
    layout: what each leaf is (:func:`normopt.param_layouts` of the model,
      a callable or a pytree prefix; see :mod:`normopt.layouts`): its
      stacked axes, and the output units of ``"unit"`` blocks.
    eps_norm: gradient norms below this divide by it in the correction.
    axis_name: mapped axis across which leaves are sharded.
    weight_decay: decoupled weight decay ``λ`` (float or schedule): the step
      is ``−η(d + λw)`` for the direction ``d`` above, as in ``optax.adamw``;
      no moment or norm sees it. Nonzero: ``update`` needs ``params`` (a
      rate traced by ``optax.inject_hyperparams`` is skipped without them).
    weight_decay_mask: the leaves that decay: a pytree prefix of the params
      holding bools, or a callable ``params -> such a tree`` (as
      ``optax.adamw``'s ``mask``); ``None``: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, normopt
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> tx = normopt.adabelief_norm(0.05)
    >>> w = jnp.zeros(3); s = tx.init(w)
    >>> step = jax.jit(lambda w, s: tx.update(jax.grad(loss)(w), s))
    >>> for _ in range(300):
    ...   u, s = step(w, s)
    ...   w = optax.apply_updates(w, u)
    >>> bool(loss(w) < 1e-3 * loss(jnp.zeros(3)))
    True

  References:
    Dubey et al., `AdaNorm: Adaptive Gradient Norm Correction based Optimizer
    for CNNs <https://arxiv.org/abs/2210.06364>`_, WACV 2023.
  """
  return _adanorm_alias(
      "adabelief", learning_rate, weight_decay, weight_decay_mask,
      gamma=gamma, b1=b1, b2=b2, eps=eps,
      eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov,
      residual_uses_corrected=residual_uses_corrected, blocks=blocks,
      stacked=stacked, layout=layout, eps_norm=eps_norm, axis_name=axis_name,
  )
