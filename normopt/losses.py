"""Regularized softmax for ND-Adam (Zhang et al. 2018, §4).

With weight vectors on the unit sphere the scale of the logits is no longer
set by the weights' norms, and plain softmax cross-entropy can push the
logits of the last layer up without bound. ND-Adam's §4 regularizes the
softmax in one of two ways:

* :func:`logit_l2_penalty`: add ``weight/2 · mean_batch(Σ_c z_c²)`` to the
  loss (the official code's ``logitDecay``).
* BN-softmax: batch-normalize the logits, then multiply them by ONE fixed
  scale ``γ_C`` shared by all classes (no trainable per-class scale), so that
  ``γ_C`` alone sets the softmax's temperature. :func:`batch_normalize_logits`
  is the pure function; ``BNSoftmax`` in :mod:`normopt.flax_losses` is the
  Flax Linen module with train/eval modes (running statistics at eval).

This module needs only JAX. flax is an optional dependency, imported only by
:mod:`normopt.flax_losses`, which imports this module (never the reverse).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def logit_l2_penalty(logits: jax.Array, weight: float | jax.Array) -> jax.Array:
  r"""L2 penalty on the logits: ``weight/2 · mean over the batch of Σ_c z_c²``.

  .. math::
    \frac{\lambda}{2}\,\frac{1}{B}\sum_{i=1}^{B}\sum_{c=1}^{C} z_{ic}^2

  Args:
    logits: array of shape ``(..., C)``; all leading axes are batch axes.
    weight: ``λ`` (the official code uses ``1e-3``).

  Returns:
    A scalar in float32 or wider.

  Example:
    >>> import jax.numpy as jnp, normopt
    >>> z = jnp.array([[3.0, 4.0], [0.0, 0.0]])      # Σ z² = 25 and 0
    >>> float(normopt.losses.logit_l2_penalty(z, 0.1))  # 0.1/2 · 12.5
    0.625

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018, §4.
  """
  z = jnp.asarray(logits)
  z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
  if z.ndim == 0:
    raise ValueError("logit_l2_penalty: logits must have a class axis, got a scalar.")
  return 0.5 * weight * jnp.mean(jnp.sum(jnp.square(z), axis=-1))


def batch_normalize_logits(
    logits: jax.Array,
    gamma: float | jax.Array = 2.5,
    eps: float = 1e-5,
    mean: Any = None,
    var: Any = None,
) -> jax.Array:
  r"""BN-softmax logits: ``γ_C · (z - μ_c) / sqrt(σ²_c + eps)`` per class.

  ``μ_c`` and ``σ²_c`` are the batch mean and (biased) variance of class
  ``c``'s logit over all leading axes, unless ``mean`` and ``var`` are given
  (running statistics at eval time). ``γ_C`` is one fixed scale for all
  classes.

  Args:
    logits: array of shape ``(..., C)``.
    gamma: the shared scale ``γ_C`` (a hyperparameter, not trained).
    eps: added to the variance.
    mean: optional per-class means of shape ``(C,)``.
    var: optional per-class variances of shape ``(C,)``.

  Returns:
    The normalized logits, of the dtype of ``logits``.

  Example:
    >>> import jax, jax.numpy as jnp, normopt
    >>> z = 10.0 * jax.random.normal(jax.random.key(0), (512, 3)) + 7.0
    >>> y = normopt.losses.batch_normalize_logits(z, gamma=2.0, eps=0.0)
    >>> jnp.round(jnp.std(y, axis=0), 4).tolist()
    [2.0, 2.0, 2.0]

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018, §4.
  """
  z = jnp.asarray(logits)
  z32 = z.astype(jnp.promote_types(z.dtype, jnp.float32))
  axes = tuple(range(z.ndim - 1))
  if mean is None:
    mean = jnp.mean(z32, axis=axes)
  if var is None:
    var = jnp.mean(jnp.square(z32 - mean), axis=axes)
  return (gamma * (z32 - mean) * jax.lax.rsqrt(var + eps)).astype(z.dtype)


__all__ = ("batch_normalize_logits", "logit_l2_penalty")
