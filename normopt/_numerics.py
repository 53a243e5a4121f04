"""Shared numerics: accumulation dtypes, zero-safe guards, Adam moments.

Private: every public module imports these names from here, so each piece of
math exists once (see ``docs/design.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax


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


def zeros_typed(aval: Any, like: Any = ()) -> jax.Array:
  """Zeros of an abstract value's shape, dtype and sharding.

  For state built from ``jax.eval_shape`` of what the update computes: under
  sharding in types the zeros carry the update's sharding, so the state's
  type does not change after a step; inside ``shard_map`` they are invariant
  across the mapped axes, like any freshly made constant.

  Outside ``jax.set_mesh`` an Explicit sharding from ``eval_shape`` names only
  an abstract mesh, which has no devices to put the zeros on; they go on the
  devices of the first leaf of ``like`` (the params) on that mesh, as
  ``jnp.zeros_like(leaf)`` places them.
  """
  mesh = getattr(aval.sharding, "mesh", None)
  if isinstance(mesh, jax.sharding.AbstractMesh):
    concrete = (x for x in jax.tree.leaves(like) if not isinstance(x, jax.core.Tracer))
    for leaf in concrete:
      leaf_mesh = getattr(getattr(leaf, "sharding", None), "mesh", None)
      if isinstance(leaf_mesh, jax.sharding.Mesh) and leaf_mesh.abstract_mesh == mesh:
        with jax.set_mesh(leaf_mesh):
          return jnp.zeros(aval.shape, aval.dtype, out_sharding=aval.sharding)
  return jnp.zeros(aval.shape, aval.dtype, out_sharding=aval.sharding)


def decayed_weights(
    weight_decay: Any, mask: Any
) -> optax.GradientTransformationExtraArgs:
  """``optax.add_decayed_weights(weight_decay, mask)`` with one state for any rate.

  The state is ``optax.add_decayed_weights(weight_decay)``'s, without the
  ``MaskedState`` wrapper a mask adds (masking gives it no state of its own):
  ``EmptyState`` for a constant rate, a count for a schedule. So an alias's
  state tree has the same structure and types whether ``weight_decay`` is a
  number or an array ``optax.inject_hyperparams`` made of it, with or without
  a mask, and after ``update`` as after ``init``.

  A Python-number 0 adds nothing and needs no ``params``. A traced rate
  (``inject_hyperparams`` binds the default 0 as an array too) cannot be told
  from 0 while tracing: an ``update`` without ``params`` skips it, as before
  the option existed. A nonzero number or a schedule needs ``params``
  (optax's error otherwise).
  """
  plain = optax.add_decayed_weights(weight_decay)
  masked = None if mask is None else optax.masked(plain, mask)
  is_number = isinstance(weight_decay, numbers.Real)
  is_zero = is_number and weight_decay == 0
  traced = not is_number and not callable(weight_decay)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if is_zero or (traced and params is None):
      return updates, state
    if masked is None:
      return plain.update(updates, state, params)
    updates, state = masked.update(updates, optax.MaskedState(inner_state=state), params)
    return updates, state.inner_state

  return optax.GradientTransformationExtraArgs(plain.init, update_fn)


def where_pos(x: jax.Array, fn: Any) -> jax.Array:
  """``fn(x)`` where ``x > 0``, else 0 (no NaN from the other branch)."""
  pos = x > 0
  return jnp.where(pos, fn(jnp.where(pos, x, 1)), 0)


def runtime_offsets(offsets: Sequence[int], like: jax.Array) -> tuple[Any, ...]:
  """``offsets`` as int32 scalars that XLA cannot fold into constants.

  XLA:CPU compiles one kernel per distinct fused computation (~10 ms each)
  and reuses a kernel for identical ones. Slicing a group back into its
  members at constant offsets makes one distinct kernel per member (150
  separate 128x128 matrices: 1.6 s of compile time); at offsets that are
  runtime values the members' kernels are identical and compile once.
  Used where a stacked array is sliced back into many pieces. The
  values come out of a two-trip loop that adds a zero XLA cannot prove
  (``isnan(x) & isinf(x)`` of one entry of ``like``); should a later XLA fold
  it, the offsets become constants again: slower to compile, same result.
  See docs/design.md, "Slicing at offsets XLA cannot fold".
  """
  x = like.reshape(-1)[0]
  zero = (jnp.isnan(x) & jnp.isinf(x)).astype(jnp.int32)
  init = tuple(jnp.int32(o) for o in offsets)
  return jax.lax.fori_loop(0, 2, lambda _, c: tuple(o + zero for o in c), init)


def canonical_dtype(dtype: Any) -> Any:
  """``None`` or the canonical JAX dtype of ``dtype`` (for ``mu_dtype``)."""
  return None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)


def bias_corrections(
    b1: Any, b2: Any, count: jax.Array, dtype: Any = jnp.float32
) -> tuple[jax.Array, ...]:
  """``(β1, β2, 1 - β1^t, 1 - β2^t)`` in ``dtype`` for step ``t = count`` (int).

  Hyperparameters become arrays of ``dtype`` first, so that ``1 - b2`` is the
  same number whether ``b2`` is a Python float or traced (inject_hyperparams).
  """
  dtype = jax.dtypes.canonicalize_dtype(dtype)
  beta1 = jnp.asarray(b1, dtype)
  beta2 = jnp.asarray(b2, dtype)
  # An integer exponent: exp(t·log β) would lose ~1e-4 of 1 - β2^t to
  # cancellation at small t.
  return beta1, beta2, 1 - beta1**count, 1 - beta2**count


def first_moment(x: jax.Array, m: jax.Array, decay: Any) -> jax.Array:
  """``m ← decay·m + (1 − decay)·x``: Adam's first-moment update."""
  return (1 - decay) * x + decay * m


def second_moment(x: jax.Array, v: jax.Array, decay: Any) -> jax.Array:
  """``v ← decay·v + (1 − decay)·x²``: Adam's second-moment update.

  The square is spelled ``((1 − decay)·x)·x`` so that XLA cannot merge it with
  an ``x·x`` elsewhere in the step (see docs/design.md).
  """
  return ((1 - decay) * x) * x + decay * v


def adam_direction(
    m: jax.Array, v: jax.Array, bc1: jax.Array | None, bc2: jax.Array,
    eps: Any, eps_root: Any = 0.0,
) -> jax.Array:
  """``m̂ / (√(v̂ + eps_root) + eps)`` with ``m̂ = m/bc1``, ``v̂ = v/bc2``.

  The corrections are cast to each moment's dtype, as optax does;
  ``bc1=None``: ``m`` is bias-corrected already. A literal 0 ``eps_root``
  adds nothing to the program (a traced one is added).
  """
  m_hat = m if bc1 is None else m / bc1.astype(m.dtype)
  v_hat = v / bc2.astype(v.dtype)
  if not (isinstance(eps_root, (int, float)) and eps_root == 0):
    v_hat = v_hat + eps_root
  return m_hat / (jnp.sqrt(v_hat) + eps)
