"""Schedules: stagewise step sizes for S-SNGD (Zhao et al. 2021, Alg. 2)."""

from __future__ import annotations

from collections.abc import Sequence
import math

import optax


def _stage_steps(stage_length: float, lr: float) -> int:
  """``ceil(S/α)``, where a quotient within float rounding of an integer is
  that integer (``1 / (1/27)`` is ``27.000000000000007`` in floats: 27, not 28)."""
  q = stage_length / lr
  n = round(q)
  return n if math.isclose(q, n, rel_tol=1e-9) else math.ceil(q)


def stage_boundaries(learning_rates: Sequence[float], stage_length: float) -> list[int]:
  """Step at which each stage after the first starts: cumsum of ``ceil(S/α_t)``."""
  bounds, step = [], 0
  for lr in learning_rates[:-1]:
    step += _stage_steps(stage_length, lr)
    bounds.append(step)
  return bounds


def stagewise_schedule(
    learning_rates: Sequence[float], stage_length: float
) -> optax.Schedule:
  r"""Stagewise constant step sizes with stage lengths ``M_t = ⌈S / α_t⌉``.

  Stage ``t`` (from 0) runs ``M_t = ceil(stage_length / learning_rates[t])``
  steps at ``learning_rates[t]``; after the last stage the last rate holds.
  Each stage thus covers the same "distance" ``α_t M_t ≈ S``, as in S-SNGD.

  Args:
    learning_rates: positive step sizes ``α_0, α_1, ...`` (usually
      decreasing), Python floats.
    stage_length: ``S``, the product of step size and stage length.

  Returns:
    An ``optax.Schedule`` (``count -> step size``), usable under ``jit``.

  Example:
    >>> import normopt
    >>> sched = normopt.stagewise_schedule([0.1, 0.01], stage_length=1.0)
    >>> [round(float(sched(i)), 6) for i in (0, 9, 10, 500)]
    [0.1, 0.1, 0.01, 0.01]

  References:
    Zhao et al., `Convergence of Stochastic Normalized Gradient Descent
    <https://arxiv.org/abs/2104.07985>`_ (S-SNGD, Algorithm 2), 2021.
  """
  learning_rates = [float(a) for a in learning_rates]
  if not learning_rates:
    raise ValueError("stagewise_schedule: learning_rates must not be empty.")
  if any(not a > 0 for a in learning_rates):
    raise ValueError(
        f"stagewise_schedule: learning rates must be > 0, got {learning_rates}."
    )
  if not stage_length > 0:
    raise ValueError(
        f"stagewise_schedule: stage_length must be > 0, got {stage_length}."
    )
  return optax.join_schedules(
      [optax.constant_schedule(a) for a in learning_rates],
      stage_boundaries(learning_rates, stage_length),
  )
