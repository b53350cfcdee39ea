"""The learning-rate and merge-probability schedules of docs/METHOD.md §6 / §4: hand-computed
values, and the learning rate and the optimizer against the authors' torch setup (their utils.py
get_scheduler and train.py loop: Adam, clip_grad_norm_(1.0), SequentialLR of LinearLR and
ExponentialLR stepped after every optimizer step)."""
import math
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from solv_jax.train_step import learning_rate_schedule, make_optimizer
from solv_jax.train_step import merge_probability


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


def _authors_scheduler(optimizer, total):
  """utils.get_scheduler of the authors' release, for T_max = total iterations."""
  warmup = int(total * 0.05)
  gamma = math.exp(math.log(0.5) / ((total - warmup) // 3))
  linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-5, total_iters=warmup)
  expo = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
  return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, expo], milestones=[warmup])


def _torch_rates(peak, total):
  """The rate of each update 0..T-1 in the authors' loop: optimizer.step(), then
  scheduler.step(), so update s runs at the rate left by s scheduler steps."""
  opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=peak)
  with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()", step(0)
    warnings.simplefilter("ignore")
    sched = _authors_scheduler(opt, total)
    rates = []
    for _ in range(total):
      rates.append(opt.param_groups[0]["lr"])
      sched.step()
  return np.array(rates)


@pytest.mark.parametrize("peak, total", [(4e-4, 40), (1e-4, 40_000), (4e-4, 300_000)])
def test_learning_rate_matches_torch_schedulers_at_every_step(peak, total):
  expected = _torch_rates(peak, total)
  got = np.asarray(jax.jit(learning_rate_schedule(peak, total, 0.05))(jnp.arange(total)))
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=0)
  warm = int(total * 0.05)
  assert expected[warm] == peak and got[warm] == np.float32(peak)


def test_learning_rate_at_40_steps_hand_computed():
  # T = 40: W = int(2.0) = 2, half-life (40 - 2) // 3 = 12 updates (not 38 / 3).
  lr = learning_rate_schedule(1.0, 40, 0.05)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 1, 2, 14, 26, 38)],
                             [1e-5, 1e-5 + (1 - 1e-5) / 2, 1.0, 0.5, 0.25, 0.125], rtol=1e-6)


def test_optimizer_matches_torch_adam_clip_and_scheduler():
  """Eight updates of the authors' loop against make_optimizer, on gradients whose global norm
  is above and below the clip (a missing or per-leaf clip changes Adam's trajectory)."""
  total = 40  # W = 2: updates 0 and 1 warm up, 2 is at the peak, then the decay
  config = ml_collections.ConfigDict(dict(learning_rate=4e-4, num_steps=total,
                                          warmup_frac=0.05, grad_clip=1.0))
  rng = np.random.default_rng(0)
  scales = [5.0, 0.3, 2.0, 0.05, 8.0, 0.7, 1.5, 0.2]
  grads = [{"a": (c * rng.normal(size=5)).astype(np.float32),
            "b": (c * rng.normal(size=(3, 2))).astype(np.float32)} for c in scales]

  ta, tb = torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(3, 2))
  opt = torch.optim.Adam([ta, tb], lr=config.learning_rate)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    sched = _authors_scheduler(opt, total)
    expected = []
    for g in grads:
      ta.grad, tb.grad = torch.tensor(g["a"]), torch.tensor(g["b"])
      torch.nn.utils.clip_grad_norm_([ta, tb], 1.0)
      opt.step()
      sched.step()
      expected.append((ta.detach().numpy().copy(), tb.detach().numpy().copy()))

  tx = make_optimizer(config)
  params = {"a": jnp.zeros(5), "b": jnp.zeros((3, 2))}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g, (ea, eb) in zip(grads, expected):
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    # float32 Adam (optax) against float32 Adam (torch): ~1e-5 of an update of ~lr per step
    np.testing.assert_allclose(params["a"], ea, rtol=3e-5, atol=5e-8)
    np.testing.assert_allclose(params["b"], eb, rtol=3e-5, atol=5e-8)
  assert np.abs(params["a"]).max() > 1e-4  # it moved: the rates after the warm-up applied
