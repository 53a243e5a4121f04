"""stagewise_schedule: stage t lasts ceil(S / alpha_t) steps (S-SNGD Alg. 2)."""

import math

import jax
import numpy as np
import pytest

import normopt


@pytest.mark.parametrize("rates,S", [([0.1, 0.01, 0.001], 0.5), ([0.3, 0.07], 1.0), ([0.05], 2.0)])
def test_stage_lengths_follow_s_over_alpha(rates, S):
  sched = jax.jit(normopt.stagewise_schedule(rates, S))
  lengths = [math.ceil(S / a) for a in rates]
  want = np.concatenate([np.full(m, a) for m, a in zip(lengths, rates, strict=True)]
                        + [np.full(7, rates[-1])])
  got = np.array([float(sched(i)) for i in range(len(want))])
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_stage_lengths_are_exact_where_s_over_alpha_is_an_integer():
  # Rates alpha_0 / 3^t (S-SNGD's decay by 3): S / alpha_t is an integer in
  # exact arithmetic, but 1 / (1/27) is 27.000000000000007 in floats, which a
  # bare ceil turns into 28.
  rates = [1 / 3**t for t in range(6)]
  bounds = normopt.schedules.stage_boundaries(rates, 1.0)
  np.testing.assert_array_equal(np.diff([0] + bounds), [3**t for t in range(5)])
  sched = normopt.stagewise_schedule(rates, 1.0)
  assert float(sched(bounds[3] - 1)) == pytest.approx(rates[3])
  assert float(sched(bounds[3])) == pytest.approx(rates[4])
  # A quotient clearly above an integer still rounds up.
  assert normopt.schedules.stage_boundaries([0.3, 0.1], 1.0) == [4]


def test_invalid_input_is_a_clear_error():
  with pytest.raises(ValueError, match="must be > 0"):
    normopt.stagewise_schedule([0.1, 0.0], 1.0)
  with pytest.raises(ValueError, match="stage_length"):
    normopt.stagewise_schedule([0.1], 0.0)
  with pytest.raises(ValueError, match="empty"):
    normopt.stagewise_schedule([], 1.0)
