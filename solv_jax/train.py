"""Training: one jit-compiled step over a device mesh, periodic logging, eval and checkpoints.

The frozen DINOv2 params are a separate, non-donated argument of the step; the optimizer and
the checkpoints only ever see the trainable params (STYLE.md).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from solv_jax import checkpoints, sharding
from solv_jax.models import dinov2
from solv_jax.models.solv import SOLV, build_model


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # () int32, number of updates applied
  params: Any                  # trainable params only
  opt_state: Any
  num_nonfinite: jax.Array     # () int32, updates skipped for a NaN/Inf loss or gradient
  first_nonfinite: jax.Array   # () int32, step of the first such update, -1 if none


# ----------------------------------------------------------------------------------------------
# Config checks: before anything is built, so a typo costs seconds, not a compile.
# ----------------------------------------------------------------------------------------------
FREE_FORM = ("config.data.synthetic",)  # checked by the synthetic generator itself


def validate_config(config) -> None:
  """Raises ValueError listing every unknown key (against configs/base.py) and every value the
  method cannot run with, each with the value seen and what to set instead."""
  import difflib
  from configs import base
  from solv_jax.models.merging import BACKENDS

  problems = []

  def keys(cfg, ref, prefix):
    for key in cfg.keys():
      name = f"{prefix}.{key}"
      if key not in ref:
        close = difflib.get_close_matches(key, list(ref.keys()), n=1)
        hint = (f"did you mean {prefix}.{close[0]}?" if close else
                f"known keys of {prefix}: {sorted(ref.keys())}")
        problems.append(f"{name} is not a config key ({hint}).")
      elif (name not in FREE_FORM and hasattr(ref[key], "keys")
            and hasattr(cfg[key], "keys")):
        keys(cfg[key], ref[key], name)

  keys(config, base.get_config(), "config")
  if problems:  # values of misspelled keys would only add noise
    raise ValueError("Invalid config:\n  " + "\n  ".join(problems))

  def check(ok, key, value, rule):
    if not ok:
      problems.append(f"config.{key} = {value!r}: {rule}")

  d, m, t = config.data, config.model, config.train
  res = tuple(d.resolution)
  res_ok = len(res) == 2 and all(
      isinstance(r, (int, np.integer)) and r >= dinov2.PATCH_SIZE for r in res)
  if not res_ok:
    check(False, "data.resolution", res, "must be (H, W), two ints >= 14.")
  else:
    fit = tuple(max(1, round(r / dinov2.PATCH_SIZE)) * dinov2.PATCH_SIZE for r in res)
    res_ok = fit == res
    check(res_ok, "data.resolution", res,
          f"H and W must be multiples of the DINOv2 patch size {dinov2.PATCH_SIZE}; e.g. "
          f"--config.data.resolution='{fit}'.")
  check(d.num_context >= 0, "data.num_context", d.num_context,
        "the window t-n..t+n needs n >= 0 (2 in the paper).")
  check(m.encoder in dinov2.VARIANTS, "model.encoder", m.encoder,
        f"not a DINOv2 variant; choose one of {sorted(dinov2.VARIANTS)}.")
  check(m.encoder_dtype in ("float32", "bfloat16"), "model.encoder_dtype", m.encoder_dtype,
        "must be 'float32' or 'bfloat16'.")
  check(m.compute_dtype in ("float32", "bfloat16"), "model.compute_dtype", m.compute_dtype,
        "must be 'float32' or 'bfloat16'.")
  if m.encoder in dinov2.VARIANTS:
    depth = dinov2.VARIANTS[m.encoder]["depth"]
    blocks = m.get("encoder_blocks", 0)
    check(0 <= blocks <= depth, "model.encoder_blocks", blocks,
          f"must be 0 (all blocks) or 1..{depth} for {m.encoder}.")
  check(m.num_slots >= 1, "model.num_slots", m.num_slots,
        "needs at least 1 slot (8 for YTVIS, 18 for MOVi-E in the paper).")
  check(m.slot_iters >= 1, "model.slot_iters", m.slot_iters, "needs >= 1 iteration (3).")
  check(0.0 <= m.token_drop < 1.0, "model.token_drop", m.token_drop,
        "the token drop ratio must be in [0, 1) (0.5 in the paper; 0 keeps every token).")
  if 0.0 <= m.token_drop < 1.0 and res_ok:
    tokens = (res[0] // dinov2.PATCH_SIZE) * (res[1] // dinov2.PATCH_SIZE)
    check(int(tokens * (1.0 - m.token_drop)) >= 1, "model.token_drop", m.token_drop,
          f"keeps no token of the {tokens} at resolution {res}; lower it.")
  check(m.spatial_binding in ("invariant", "vanilla"), "model.spatial_binding",
        m.spatial_binding, "must be 'invariant' or 'vanilla'.")
  check(m.merge_backend in BACKENDS, "model.merge_backend", m.merge_backend,
        f"must be one of {BACKENDS}.")
  if m.temporal_binding:
    check(m.temporal_heads >= 1 and m.slot_dim % m.temporal_heads == 0,
          "model.temporal_heads", m.temporal_heads,
          f"must divide config.model.slot_dim = {m.slot_dim}.")
  for key in ("batch_size", "num_steps", "num_epochs", "log_every", "checkpoint_every",
              "keep_checkpoints"):
    check(t[key] >= 1, f"train.{key}", t[key], "must be >= 1.")
  check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "must be > 0.")
  check(0.0 <= t.warmup_frac < 1.0, "train.warmup_frac", t.warmup_frac, "must be in [0, 1).")
  check(t.nonfinite in ("stop", "skip"), "train.nonfinite", t.nonfinite,
        "must be 'stop' or 'skip'.")
  check(config.eval.batch_windows >= 1, "eval.batch_windows", config.eval.batch_windows,
        "must be >= 1.")
  if problems:
    raise ValueError("Invalid config:\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------------------------
# Schedules (SPEC §6).
# ----------------------------------------------------------------------------------------------
def learning_rate_schedule(peak: float, num_steps: int, warmup_frac: float = 0.05):
  """Linear warm-up from 1e-5*peak to peak over the first warmup_frac of the steps, then
  exponential decay halving the rate every (T - W)/3 steps (peak/8 at the end)."""
  warmup = max(int(round(warmup_frac * num_steps)), 1)
  half_life = max(num_steps - warmup, 1) / 3.0

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * (1e-5 + (1.0 - 1e-5) * step / warmup)
    decay = peak * jnp.exp2(-(step - warmup) / half_life)
    return jnp.where(step < warmup, warm, decay)

  return schedule


def merge_probability(step, num_steps: int, num_epochs: int):
  """p(epoch) = ln(epoch + 1)/ln(E): the chance a training sample is merged (SPEC §4)."""
  if num_epochs <= 1:
    return jnp.float32(1.0)
  epoch = jnp.floor(jnp.asarray(step, jnp.float32) * num_epochs / num_steps)
  return jnp.minimum(jnp.log(epoch + 1.0) / math.log(num_epochs), 1.0)


def make_optimizer(train_config) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(train_config.learning_rate, train_config.num_steps,
                                    train_config.warmup_frac)
  return optax.chain(optax.clip_by_global_norm(train_config.grad_clip),
                     optax.adam(schedule))


# ----------------------------------------------------------------------------------------------
# Parameters.
# ----------------------------------------------------------------------------------------------
def encoder_params(config, model: SOLV) -> dict:
  """The frozen DINOv2 params: converted weights if configured, else a seeded random init."""
  path = config.model.encoder_weights
  if path:
    _, params = dinov2.load_params(path, expected_variant=config.model.encoder)
    return jax.tree_util.tree_map(jnp.asarray, params)
  return dinov2.init_params(model.encoder_variant, jax.random.key(config.seed + 1),
                            image_hw=(dinov2.PATCH_SIZE, dinov2.PATCH_SIZE))


def init_trainable(model: SOLV, rng) -> dict:
  """Trainable params (everything but 'encoder'), initialised without running DINOv2."""
  h, w = model.resolution
  video = jnp.zeros((1, model.num_frames, h, w, 3), jnp.float32)
  mask = jnp.ones((1, model.num_frames), bool)
  def init(rng):
    params = model.init(rng, video, mask, train=False)["params"]
    return {k: v for k, v in params.items() if k != "encoder"}

  return jax.jit(init)(rng)


def initial_params(config, model: SOLV) -> dict:
  """The run's step-0 trainable params (seeded by config.seed)."""
  return init_trainable(model, jax.random.key(config.seed))


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
  """(state, encoder_params, batch, rng) -> (state, metrics); jit it with shardings."""
  num_steps, num_epochs = config.train.num_steps, config.train.num_epochs
  merge_on = bool(config.model.merge)

  def step_fn(state: TrainState, frozen, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    r_drop, r_dropout, r_merge = jax.random.split(rng, 3)
    merge_prob = merge_probability(state.step, num_steps, num_epochs) if merge_on else 0.0

    def loss_fn(params):
      out = model.apply({"params": {**params, "encoder": frozen}}, batch["video"],
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
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep),
                 donate_argnums=(0,))


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


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------
class _Preempted:
  """SIGTERM sets a flag; the loop then writes a checkpoint and exits cleanly."""

  def __init__(self):
    self.flag = False
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None

  def _handle(self, signum, frame):
    self.flag = True

  def restore(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _truncate_metrics(path: str, step: int) -> None:
  """Drops the rows a killed run logged after the checkpoint it resumes from (they are logged
  again), so metrics.jsonl holds each step once. Rewritten atomically."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line)
    except (ValueError, KeyError, TypeError):  # a row cut short by the kill
      pass
  if len(keep) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)


def train(config, workdir: str, stop_at: int | None = None) -> TrainState:
  """Trains (resuming from WORKDIR/checkpoints if any) and returns the final state.

  stop_at: leave after that many steps with a checkpoint, as a preempted run would.
  """
  from clu import metric_writers, periodic_actions
  from solv_jax.data import pipeline  # tensorflow is imported only when data is needed

  validate_config(config)
  if config.train.distributed:
    jax.distributed.initialize()
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  local_batch = sharding.check_batch_size(config.train.batch_size, mesh)
  model = build_model(config)
  tx = make_optimizer(config.train)
  frozen = jax.device_put(encoder_params(config, model), sharding.replicated(mesh))
  state = jax.device_put(create_train_state(config, model, tx), sharding.replicated(mesh))
  logging.info("Trainable parameters: %d", count_params(state.params))

  ckpt = checkpoints.Checkpoints(workdir, keep=config.train.keep_checkpoints)
  data = pipeline.make_train_iterator(config, local_batch, jax.process_index(),
                                      jax.process_count())
  restored = ckpt.restore(checkpoints.abstract_like(state))
  if restored is not None:
    step0, state, data_state = restored
    data.set_state(data_state)
    print(f"Resumed from {ckpt.directory}/{step0}", flush=True)
  elif config.train.init_from:
    state = state.replace(params=_params_from(config.train.init_from, state.params))
    print(f"Initialised from {config.train.init_from}", flush=True)

  if jax.process_index() == 0:
    _truncate_metrics(os.path.join(workdir, "metrics.jsonl"), int(state.step))
  step_fn = jit_train_step(make_train_step(model, tx, config), mesh)
  rng = jax.random.key(config.seed + 2)
  writer = metric_writers.create_default_writer(
      os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0)
  total = config.train.num_steps
  step = int(state.step)
  progress = periodic_actions.ReportProgress(num_train_steps=total, writer=writer)
  preempted = _Preempted()
  console = _Console(total, step)
  try:
    while step < total:
      batch = sharding.shard_batch(next(data), mesh)
      state, metrics = step_fn(state, frozen, batch, rng)
      step += 1
      progress(step)
      # Read the SIGTERM flag once per step: a signal arriving later in this step (while it
      # waits for the device) is acted on at the next one, never with its checkpoint skipped.
      preempt = preempted.flag
      last = step == total or preempt or step == stop_at
      if step % config.train.log_every == 0 or last:
        check_finite(state, config)
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars["lr"] = float(learning_rate_schedule(
            config.train.learning_rate, total, config.train.warmup_frac)(step - 1))
        scalars["nonfinite_updates"] = int(state.num_nonfinite)
        writer.write_scalars(step, scalars)
        console(step, scalars)
        if jax.process_index() == 0:
          with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
      if step % config.train.checkpoint_every == 0 or last:
        check_finite(state, config)
        ckpt.save(step, state, data.get_state(), force=True)
      if preempt:
        print(f"SIGTERM: saved checkpoint at step {step}, exiting.", flush=True)
        break
      if step == stop_at:
        break
  finally:
    preempted.restore()
    ckpt.close()
    writer.flush()
  return state


def _params_from(path: str, like):
  """Trainable params from another run's workdir or an exported .npz (DAVIS fine-tuning)."""
  from solv_jax import export
  params = export.load_trainable(path)
  flat_like = flax.traverse_util.flatten_dict(like)
  flat = flax.traverse_util.flatten_dict(params)
  for k, v in flat_like.items():
    if k not in flat or flat[k].shape != v.shape:
      raise ValueError(f"init_from {path!r}: param {'/'.join(k)} is "
                       f"{flat[k].shape if k in flat else 'missing'}, expected {v.shape}.")
  return jax.tree_util.tree_map(jnp.asarray, flax.traverse_util.unflatten_dict(
      {k: flat[k] for k in flat_like}))


class _Console:
  """One line per log step: step, loss, steps/s and ETA.

  The rate is measured from the first log line on, so that it leaves out the compilation
  (and a resume's restore) that the first interval carries; the first line has only that
  interval to go by."""

  def __init__(self, total: int, start: int, clock=time.time):
    self.total, self.clock = total, clock
    self.mark, self.past_first = (start, clock()), False

  def __call__(self, step: int, scalars: dict):
    now = self.clock()
    rate = (step - self.mark[0]) / max(now - self.mark[1], 1e-9)
    if not self.past_first:
      self.mark, self.past_first = (step, now), True
    eta = (self.total - step) / rate if rate > 0 else float("inf")
    print(f"step {step}/{self.total}  loss {scalars['loss']:.4f}  "
          f"grad_norm {scalars['grad_norm']:.3f}  lr {scalars['lr']:.2e}  "
          f"merge_p {scalars['merge_prob']:.2f}  slots {scalars['valid_slots']:.1f}  "
          f"{rate:.2f} steps/s  ETA {_fmt(eta)}", flush=True)


def _fmt(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
