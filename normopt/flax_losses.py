"""Flax Linen layers for the regularized softmax of :mod:`normopt.losses`.

This module imports flax (``pip install normopt[flax]``); :mod:`normopt.losses`
holds the pure-JAX functions and never imports this module, so ``import normopt``
needs only JAX. Import the layer explicitly::

  from normopt.flax_losses import BNSoftmax
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from normopt.losses import batch_normalize_logits


class BNSoftmax(nn.Module):
  r"""BN-softmax (ND-Adam §4): batch-normalized logits times one fixed ``γ_C``.

  ``y = γ_C · (z - μ) / sqrt(σ² + eps)`` per class. In training mode
  (``train=True``) ``μ, σ²`` are the batch statistics and the running averages
  in the ``"batch_stats"`` collection are updated (call ``apply`` with
  ``mutable=["batch_stats"]``); with ``train=False`` the running averages are
  used. There is no trainable scale or shift: ``γ_C`` is a hyperparameter
  shared by all classes. Feed the output to softmax cross-entropy.

  Attributes:
    gamma: the shared scale ``γ_C``.
    momentum: decay of the running averages (as ``flax.linen.BatchNorm``).
    epsilon: added to the variance.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from normopt.flax_losses import BNSoftmax
    >>> m = BNSoftmax(gamma=3.0)
    >>> z = 5.0 * jax.random.normal(jax.random.key(0), (256, 4)) + 2.0
    >>> v = m.init(jax.random.key(1), z, train=False)
    >>> y, upd = m.apply(v, z, train=True, mutable=["batch_stats"])
    >>> jnp.round(jnp.std(y, axis=0), 2).tolist()
    [3.0, 3.0, 3.0, 3.0]

  References:
    Zhang et al., `Normalized Direction-preserving Adam
    <https://arxiv.org/abs/1709.04546>`_, 2018, §4.
  """

  gamma: float = 2.5
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, logits, train: bool):
    num_classes = logits.shape[-1]
    ra_mean = self.variable(
        "batch_stats", "mean", lambda: jnp.zeros((num_classes,), jnp.float32)
    )
    ra_var = self.variable(
        "batch_stats", "var", lambda: jnp.ones((num_classes,), jnp.float32)
    )
    if not train:
      return batch_normalize_logits(
          logits, self.gamma, self.epsilon, ra_mean.value, ra_var.value
      )
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    axes = tuple(range(z.ndim - 1))
    mean = jnp.mean(z, axis=axes)
    var = jnp.mean(jnp.square(z - mean), axis=axes)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return batch_normalize_logits(logits, self.gamma, self.epsilon, mean, var)


__all__ = ("BNSoftmax",)
