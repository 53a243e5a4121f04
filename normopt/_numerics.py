"""Shared numerics: accumulation dtypes, zero-safe guards, Adam moments.

Private: every public module imports these names from here, so each piece of
math exists once (see ``docs/design.md``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def acc_dtype(x: Any) -> Any:
  """The dtype norms and second moments accumulate in: float32 or wider."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt`` whose gradient at 0 is 0 instead of inf (safe under jax.grad)."""
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1)), 0)


def inv_norm(norm: jax.Array, eps: Any) -> jax.Array:
  """``1 / max(norm, eps)``, and 0 for a zero norm (no NaN even with eps=0)."""
  pos = norm > 0
  return jnp.where(pos, 1.0 / jnp.where(pos, jnp.maximum(norm, eps), 1), 0)


def where_pos(x: jax.Array, fn: Any) -> jax.Array:
  """``fn(x)`` where ``x > 0``, else 0 (no NaN from the other branch)."""
  pos = x > 0
  return jnp.where(pos, fn(jnp.where(pos, x, 1)), 0)
