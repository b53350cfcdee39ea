"""The train step: state, optimizer-free pieces of one update, and its jit over a device mesh.

The frozen DINOv2 params are a separate, non-donated argument of the step; the optimizer and
the checkpoints only ever see the trainable params (docs/CONVENTIONS.md). `compiled_train_step`
is the one function that builds the step training runs; `tools/benchmark.py` times the same one.
"""
from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from solv_jax import sharding
from solv_jax.models.build import initial_params
from solv_jax.models.solv import SOLV


# ----------------------------------------------------------------------------------------------
# Schedules (docs/METHOD.md §6).
# ----------------------------------------------------------------------------------------------
def learning_rate_schedule(peak: float, num_steps: int, warmup_frac: float = 0.05):
  """The authors' schedule in their integer arithmetic (docs/METHOD.md §6): torch's
  SequentialLR([LinearLR(start_factor=1e-5, total_iters=W), ExponentialLR(gamma)], [W]),
  stepped after every optimizer step, with W = int(warmup_frac * T) and
  gamma = 0.5 ** (1 / ((T - W) // 3)).

  schedule(s) is the rate of update s (0-based, optax's count), the rate torch's optimizer
  holds after s scheduler steps: peak * (1e-5 + (1 - 1e-5) * s / W) while s < W, then
  peak * 0.5 ** ((s - W) / ((T - W) // 3)), halving every (T - W) // 3 updates (about peak / 8
  at the end). W = 0 (T < 1 / warmup_frac) starts at the peak; a half-life of 0 (T - W < 3,
  a ZeroDivisionError in the authors' code) is taken as 1.
  """
  warmup = int(warmup_frac * num_steps)
  half_life = max((num_steps - warmup) // 3, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * (1e-5 + (1.0 - 1e-5) * step / max(warmup, 1))
    decay = peak * jnp.exp2(-(step - warmup) / half_life)
    return jnp.where(step < warmup, warm, decay)

  return schedule


def schedule_of(train_config):
  """The run's learning-rate schedule, from config.train: what the optimizer follows and the
  trainer logs."""
  return learning_rate_schedule(train_config.learning_rate, train_config.num_steps,
                                train_config.warmup_frac)


def make_optimizer(train_config) -> optax.GradientTransformation:
  """Adam (no weight decay) on `schedule_of(train_config)`, after the gradient-norm clip as
  torch's nn.utils.clip_grad_norm_ computes it: g * min(1, max_norm / (||g|| + 1e-6))."""
  schedule = schedule_of(train_config)
  max_norm = train_config.grad_clip

  def clip(updates, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / (optax.tree.norm(updates) + 1e-6))
    return jax.tree_util.tree_map(lambda g: (g * scale).astype(g.dtype), updates)

  return optax.chain(optax.stateless(clip), optax.adam(schedule))



@flax.struct.dataclass
class TrainState:
  step: jax.Array              # () int32, number of updates applied
  params: Any                  # trainable params only
  opt_state: Any
  num_nonfinite: jax.Array     # () int32, updates skipped for a NaN/Inf loss or gradient
  first_nonfinite: jax.Array   # () int32, step of the first such update, -1 if none


def merge_probability(step, num_steps: int, num_epochs: int):
  """p(epoch) = ln(epoch + 1)/ln(E): the chance a training sample is merged (docs/METHOD.md §4)."""
  if num_epochs <= 1:
    return jnp.float32(1.0)
  epoch = jnp.floor(jnp.asarray(step, jnp.float32) * num_epochs / num_steps)
  return jnp.minimum(jnp.log(epoch + 1.0) / math.log(num_epochs), 1.0)


def create_train_state(config, model: SOLV, tx) -> TrainState:
  params = initial_params(config, model)
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                    num_nonfinite=jnp.int32(0), first_nonfinite=jnp.int32(-1))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------------------------
# The step.
# ----------------------------------------------------------------------------------------------
def make_train_step(model: SOLV, tx, config):
  """(state, encoder_params, batch, rng) -> (state, metrics); jit it with shardings.

  batch: 'video' (B, F, H, W, 3) uint8 frames as the input pipeline ships them, normalised
  here on the device (float frames are taken as normalised), 'frame_mask' (B, F) bool."""
  num_steps, num_epochs = config.train.num_steps, config.train.num_epochs
  merge_on = bool(config.model.use_merge)

  def step_fn(state: TrainState, frozen, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    r_drop, r_dropout, r_merge = jax.random.split(rng, 3)
    merge_prob = merge_probability(state.step, num_steps, num_epochs) if merge_on else 0.0
    video = model.normalize(batch["video"], batch["frame_mask"])  # uint8 -> (B, F, H, W, 3)

    def loss_fn(params):
      out = model.apply({"params": {**params, "encoder": frozen}}, video,
                        batch["frame_mask"], train=True, merge_prob=merge_prob,
                        rngs={"token_drop": r_drop, "dropout": r_dropout, "merge": r_merge})
      return out["loss"], out

    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite update is never applied: params and moments stay at the last good values.
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        num_nonfinite=state.num_nonfinite + (~finite).astype(jnp.int32),
        first_nonfinite=jnp.where((state.first_nonfinite < 0) & ~finite, state.step,
                                  state.first_nonfinite))
    metrics = {"loss": loss, "grad_norm": grad_norm, "merge_prob": jnp.float32(merge_prob),
               "valid_slots": jnp.mean(jnp.sum(out["valid"], axis=-1).astype(jnp.float32))}
    return new_state, metrics

  return step_fn


def jit_train_step(step_fn, mesh):
  """The step as training runs it: state, frozen encoder params and RNG replicated, the batch
  split over `data`, the state donated (the encoder params are not)."""
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,))


def compiled_train_step(config, model: SOLV, tx, mesh):
  """The jitted train step of `train.train`; benchmarks time this same function."""
  return jit_train_step(make_train_step(model, tx, config), mesh)


class NonFiniteError(FloatingPointError):
  pass


def check_finite(state: TrainState, config) -> None:
  """Host-side check (at log/checkpoint points only, so the step loop never syncs)."""
  n = int(state.num_nonfinite)
  if n and config.train.nonfinite != "skip":
    raise NonFiniteError(
        f"Non-finite loss or gradient at step {int(state.first_nonfinite) + 1}: the update was "
        f"not applied and training stopped; the last good checkpoint is kept. Lower "
        f"--config.train.learning_rate, check the data, or set "
        f"--config.train.nonfinite=skip to skip such updates and count them.")
