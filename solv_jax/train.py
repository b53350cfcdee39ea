"""Training: the loop around the jit-compiled step (train_step.py) with its periodic actions:
log, checkpoint, evaluate (config.train.eval_every); resume and preemption.

The frozen DINOv2 params are a separate, non-donated argument of the step; the optimizer and
the checkpoints only ever see the trainable params (docs/CONVENTIONS.md).
"""
from __future__ import annotations

import json
import math
import os
import signal
import time

import flax
import jax
import jax.numpy as jnp
from absl import logging

from solv_jax import checkpoints, sharding, train_step
from solv_jax.models import build
from solv_jax.models.solv import SOLV
from solv_jax.train_step import TrainState


# ----------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------
class _Preempted:
  """SIGTERM or SIGINT (Ctrl-C) sets a flag; the loop then writes a checkpoint and exits
  cleanly. A second Ctrl-C stops at once (KeyboardInterrupt; the earlier checkpoints stay).

  In a multi-process run the processes must stop at the same step (the checkpoint is written
  by all together), so there jax.distributed's preemption service, which catches SIGTERM on
  any process, names that step (`reached_preemption_sync_point`); a Python handler here
  would replace its own."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.flag = False
    self.signum = signal.SIGTERM
    self._old = {}
    self._sync = jax.process_count() > 1
    if self._sync:
      return
    try:
      self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    except ValueError:  # not the main thread
      self._old = {}

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.flag:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now
    if signum == signal.SIGINT:
      print("\nCtrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again to "
            "stop at once).", flush=True)
    self.flag, self.signum = True, signum

  def at(self, step: int) -> bool:
    """Whether to checkpoint and stop after `step`; called once per step on every process."""
    if self._sync:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.flag

  def restore(self):
    for s, old in self._old.items():
      signal.signal(s, old)


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


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; the run saved a checkpoint at `step` and stopped. exit_code:
  128 + the signal, as a shell reports a process ended by it (143 SIGTERM, 130 Ctrl-C)."""

  def __init__(self, step: int, signum: int = signal.SIGTERM):
    super().__init__(f"{signal.Signals(signum).name}: saved checkpoint at step {step}, "
                     "exiting.")
    self.step, self.exit_code = step, 128 + int(signum)


EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: Ctrl-C


def train(config, workdir: str, stop_at: int | None = None, *, model: SOLV | None = None,
          encoder: dict | None = None) -> TrainState:
  """Trains (resuming from WORKDIR/checkpoints if any) and returns the final state.

  The config is validated by the caller (main.run). model / encoder: the SOLV and frozen
  DINOv2 params the caller built already (built here if None).
  stop_at: leave after that many steps with a checkpoint, as a preempted run would.
  Raises Preempted after the checkpoint a SIGTERM asked for.
  """
  from clu import metric_writers
  from solv_jax.data import pipeline  # tensorflow is imported only when data is needed

  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh()
  local_batch = sharding.check_batch_size(config.train.batch_size, mesh)
  model = model if model is not None else build.build_model(config)
  tx = train_step.make_optimizer(config.train)
  if encoder is None:
    encoder = build.encoder_params(config, model)
  frozen = jax.device_put(encoder, sharding.replicated(mesh))
  state = jax.device_put(train_step.create_train_state(config, model, tx),
                         sharding.replicated(mesh))
  logging.info("Trainable parameters: %d", train_step.count_params(state.params))

  ckpt = checkpoints.Checkpoints(workdir, keep=config.train.keep_checkpoints)
  data = pipeline.make_train_iterator(config, local_batch, jax.process_index(),
                                      jax.process_count())
  restored = ckpt.restore(checkpoints.abstract_like(state))
  if restored is not None:
    step0, state, data_state = restored
    data.set_state(data_state)
    _print(f"Resumed from {ckpt.directory}/{step0}")
  elif config.train.init_from:
    state = state.replace(params=_params_from(config.train.init_from, state.params))
    _print(f"Initialised from {config.train.init_from}")

  if jax.process_index() == 0:
    _truncate_metrics(os.path.join(workdir, "metrics.jsonl"), int(state.step))
  step_fn = train_step.compiled_train_step(config, model, tx, mesh)
  rng = jax.random.key(config.seed + 2)
  writer = metric_writers.create_default_writer(
      os.path.join(workdir, "tensorboard"), just_logging=jax.process_index() > 0)
  total = config.train.num_steps
  schedule = train_step.schedule_of(config.train)
  step = start = int(state.step)
  preempted = _Preempted()
  console = _Console(total, step)
  eval_every = config.train.eval_every
  try:
    while step < total:
      batch = sharding.shard_batch(next(data), mesh)
      state, metrics = step_fn(state, frozen, batch, rng)
      step += 1
      # Read the SIGTERM flag once per step: a signal arriving later in this step (while it
      # waits for the device) is acted on at the next one, never with its checkpoint skipped.
      preempt = preempted.at(step)
      last = step == total or preempt or step == stop_at
      if step % config.train.log_every == 0 or last:
        train_step.check_finite(state, config)
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars["lr"] = float(schedule(step - 1))
        scalars["nonfinite_updates"] = int(state.num_nonfinite)
        rate = console(step, scalars)  # steps/s: to TensorBoard, not to metrics.jsonl,
        writer.write_scalars(step, {**scalars, **rate})  # which a resumed run reproduces
        if jax.process_index() == 0:
          with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
      if step % config.train.checkpoint_every == 0 or last:
        train_step.check_finite(state, config)
        ckpt.save(step, state, data.get_state(), force=True)
      if eval_every and step % eval_every == 0 and step < total and not preempt:
        _periodic_eval(config, model, state, encoder, workdir, step, writer)
      if preempt:
        ckpt.wait()
        raise Preempted(step, preempted.signum)
      if step == stop_at:
        break
  finally:
    preempted.restore()
    ckpt.close()
    writer.flush()
  _nonfinite_summary(state, config, step - start)
  return state


def _print(message: str) -> None:
  """Console output, once per run (process 0 of a multi-process run)."""
  if jax.process_index() == 0:
    print(message, flush=True)


def _periodic_eval(config, model, state, encoder, workdir, step, writer) -> None:
  """config.train.eval_every: the evaluation protocol on the current params, its scalars to
  TensorBoard as eval/<metric>, its files under WORKDIR/eval_steps/<step>/."""
  from solv_jax import evaluation
  params = build.with_encoder(jax.device_get(state.params), encoder)
  results = evaluation.evaluate(config, model, params, workdir, step,
                                subdir=os.path.join("eval_steps", str(step)), writer=writer)
  scalars = {f"eval/{k}": float(v) for k, v in results.items()
             if isinstance(v, (int, float)) and k != "step"}
  writer.write_scalars(step, scalars)
  _print(f"eval at step {step}: " + evaluation.summary(results))


def _nonfinite_summary(state, config, steps_run: int) -> None:
  """With train.nonfinite=skip: how many updates were skipped; an error (non-zero exit) when
  more than train.max_nonfinite_frac of this run's updates were."""
  n = int(state.num_nonfinite)
  if not n:
    return
  total = int(state.step)
  frac = n / max(total, 1)
  message = (f"{n} of {total} updates were skipped for a non-finite loss or gradient "
             f"(first at step {int(state.first_nonfinite) + 1}).")
  if frac > config.train.max_nonfinite_frac:
    raise train_step.NonFiniteError(
        f"{message} That is more than config.train.max_nonfinite_frac="
        f"{config.train.max_nonfinite_frac}: the model did not train. Lower "
        "--config.train.learning_rate or check the data.")
  _print(f"Note: {message}")


def _params_from(path: str, like):
  """Trainable params from another run's workdir or an exported .npz (DAVIS fine-tuning)."""
  loaded = build.load(path, with_encoder_params=False)
  params = {k: v for k, v in loaded.params.items() if k != "encoder"}
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
    _print(f"step {step}/{self.total}  loss {scalars['loss']:.4f}  "
          f"grad_norm {scalars['grad_norm']:.3f}  lr {scalars['lr']:.2e}  "
          f"merge_p {scalars['merge_prob']:.2f}  slots {scalars['valid_slots']:.1f}  "
          f"{rate:.2f} steps/s  ETA {_fmt(eta)}")
    return {"steps_per_sec": rate}


def _fmt(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
