"""The learning-rate and merge-probability schedules of SPEC §6 / §4, hand-computed values."""
import math

import numpy as np
import pytest

from solv_jax.train import learning_rate_schedule, merge_probability


def test_learning_rate_warmup_and_halvings():
  peak, total = 4e-4, 300_000
  lr = learning_rate_schedule(peak, total, 0.05)
  warm = 15_000  # 5% of the steps
  third = (total - warm) / 3  # 95_000 steps per halving
  np.testing.assert_allclose(float(lr(0)), 4e-9, rtol=1e-6)
  np.testing.assert_allclose(float(lr(warm // 2)), 4e-9 + (4e-4 - 4e-9) * 0.5, rtol=1e-5)
  np.testing.assert_allclose(float(lr(warm)), 4e-4, rtol=1e-6)
  for k in (1, 2, 3):
    np.testing.assert_allclose(float(lr(warm + k * third)), 4e-4 / 2**k, rtol=1e-5)
  np.testing.assert_allclose(float(lr(total)), 5e-5, rtol=1e-5)  # ends at peak / 8


def test_learning_rate_is_monotone_around_the_peak():
  lr = learning_rate_schedule(1e-4, 1000, 0.05)
  values = np.array([float(lr(s)) for s in range(0, 1000, 10)])
  peak_at = int(np.argmax(values))
  assert values[peak_at] == pytest.approx(1e-4)
  assert np.all(np.diff(values[: peak_at + 1]) > 0) and np.all(np.diff(values[peak_at:]) < 0)


def test_merge_probability_log_schedule():
  total, epochs = 1800, 180  # 10 steps per epoch
  assert float(merge_probability(0, total, epochs)) == 0.0
  assert float(merge_probability(9, total, epochs)) == 0.0  # still epoch 0
  np.testing.assert_allclose(float(merge_probability(10, total, epochs)),
                             math.log(2) / math.log(180), rtol=1e-6)
  np.testing.assert_allclose(float(merge_probability(905, total, epochs)),
                             math.log(91) / math.log(180), rtol=1e-6)
  np.testing.assert_allclose(float(merge_probability(total - 1, total, epochs)), 1.0, rtol=1e-6)
  assert float(merge_probability(5, 10, 1)) == 1.0
