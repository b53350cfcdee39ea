"""solv_jax entry point: train and/or evaluate SOLV from a config file.

  python -m solv_jax.main --config=configs/demo.py
  python -m solv_jax.main --config=configs/ytvis19.py:model=C --config.train.batch_size=8 \
      --config.data.data_dir=DATA --workdir=runs/ytvis_c --mode=train_and_eval

Exit status: 0 done; 1 a clear error (printed last, one line); 2 a bad command line;
143 (128 + SIGTERM) preempted, 130 Ctrl-C: a checkpoint was saved, run the same command again to
resume (a second Ctrl-C stops at once, keeping the checkpoints saved before).
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf.data only feeds numpy here

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and evaluation outputs go "
                    "(default: workdir/<config name>).")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")
# Multi-process runs (--config.train.distributed=True); what is left unset is auto-detected by
# jax.distributed on Cloud TPU, SLURM and Open MPI (docs/many_machines.md).
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (default "
                    "$JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Number of processes (default $JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "This process's index (default $JAX_PROCESS_ID).")
flags.mark_flags_as_required(["config"])

EXIT_ERROR = 1


def _default_workdir() -> str:
  path = flags.FLAGS["config"].config_filename
  name = os.path.splitext(os.path.basename(path.split(":")[0]))[0]
  return os.path.join("workdir", name)


def _print(message: str) -> None:
  import jax
  if jax.process_index() == 0:
    print(message, flush=True)


def check_workdir(config, model, workdir: str) -> None:
  """Before anything in WORKDIR is written: its checkpoints must fit this config's model.
  Raises WorkdirError with the config keys that differ and the two ways out."""
  from solv_jax import checkpoints, export
  from solv_jax.models import build
  from solv_jax.workdir import WorkdirError

  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return
  ckpt = checkpoints.Checkpoints(workdir, async_save=False, reader=True)
  try:
    try:
      ckpt.check_params_fit(build.trainable_shapes(model))
    except checkpoints.ShapeMismatchError as e:
      try:
        old = export.load_config(workdir)
        # Both as JSON, so that a tuple and the list it was stored as are the same value.
        changes = export.config_changes(old.to_dict(),
                                        json.loads(config.to_json_best_effort()))
      except (FileNotFoundError, ValueError):
        changes = []
      keys = "; ".join(c for c in changes if c.startswith(("model.", "data.")))
      raise WorkdirError(
          f"{e} Config keys that differ from {workdir}/config.json: {keys or 'unknown'}. "
          f"Use a new --workdir, or start a new run from these params with "
          f"--config.train.init_from={workdir} (only if the shapes fit).") from None
  finally:
    ckpt.manager.close()


class DataError(RuntimeError):
  """The dataset of config.data cannot serve the run (found before any model set-up)."""


def run(config, workdir: str, mode: str) -> dict | None:
  """Config -> trains and/or evaluates in WORKDIR; returns the evaluation results.

  First, in seconds and before anything is built or written: the config against the schema
  (schema.validate), the dataset (pipeline.check_data), then the workdir's checkpoints
  against the config's model (check_workdir)."""
  import jax
  from solv_jax import schema
  from solv_jax import checkpoints, evaluation, export, train, workdir as workdir_lib
  from solv_jax.data import pipeline
  from solv_jax.models import build, encoders

  schema.validate(config)
  training = mode in ("train", "train_and_eval")
  if training:  # the global batch splits evenly over this run's devices
    from solv_jax import sharding
    try:
      sharding.check_batch_size(config.train.batch_size, sharding.make_mesh())
    except ValueError as e:
      raise schema.ConfigError(str(e)) from None
  try:
    # A dataset built on first use is built now, before the workdir is written.
    _print("Data: " + pipeline.check_data(config, mode, build=training))
  except (OSError, ValueError) as e:
    raise DataError(str(e)) from None
  family = encoders.get(config.model.encoder_variant).family
  if not config.model.encoder_weights:
    _print(f"Note: config.model.encoder_weights is empty, so {family} is RANDOMLY initialised "
           "(no download needed). Pass converted weights for the paper's results.")
  if config.model.encoder_blocks:
    _print(f"Note: only the first {config.model.encoder_blocks} {family} block(s) run "
           "(config.model.encoder_blocks; 0 = all, as in the paper).")
  model = build.build_model(config)
  with workdir_lib.lock(workdir, enabled=training and jax.process_index() == 0):
    check_workdir(config, model, workdir)
    if training and jax.process_index() == 0:
      changes = export.save_config(workdir, config)
      if changes and os.path.isdir(os.path.join(workdir, "checkpoints")):
        _print(f"Note: {workdir} holds checkpoints of a run with a different config; they are "
               "resumed with this config, which differs in:\n  " + "\n  ".join(changes))
    encoder = build.encoder_params(config, model)
    results = None
    if mode == "train_and_eval" and config.eval.untrained:
      _evaluate_untrained(config, model, encoder, workdir, _writer(workdir))
    if training:
      state = train.train(config, workdir, model=model, encoder=encoder)
      params, step = jax.device_get(state.params), int(state.step)
    if mode in ("eval", "train_and_eval"):
      if mode == "eval":
        step, params = checkpoints.restore_params(workdir)
      _print(f"Evaluating step {step} on {config.data.name}:{config.data.eval_split} ...")
      results = evaluation.evaluate(config, model, build.with_encoder(params, encoder), workdir,
                                    step, writer=_writer(workdir))
      _print("Evaluation: " + evaluation.summary(results))
      _print(f"Results: {os.path.join(workdir, 'eval', 'results.json')}; masks: "
             f"{os.path.join(workdir, 'eval')}/*.png, *.gif")
  return results


def _writer(workdir: str):
  """The run's TensorBoard writer (WORKDIR/tensorboard), for the evaluations' mask pictures."""
  import jax
  from clu import metric_writers
  return metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"),
                                              just_logging=jax.process_index() > 0)


def _evaluate_untrained(config, model, encoder, workdir: str, writer=None) -> None:
  """The baseline of a run: the initial (step-0) params through the same protocol."""
  import jax
  from solv_jax import evaluation
  from solv_jax.models import build
  from solv_jax import files
  path = os.path.join(workdir, "eval_step0", "results.json")
  done = files.read_json(path)
  if done is not None and done.get("step") == 0 and "num_videos" in done:
    return  # a resumed run: already done
  if os.path.exists(path):
    _print(f"Note: {path} is unreadable or incomplete (an interrupted run?); evaluating "
           "step 0 again.")
  params = build.with_encoder(jax.device_get(build.initial_params(config, model)), encoder)
  _print(f"Evaluating the untrained model (step 0) on {config.data.name}:"
         f"{config.data.eval_split} ...")
  results = evaluation.evaluate(config, model, params, workdir, 0, subdir="eval_step0",
                                writer=writer)
  _print("Step 0: " + evaluation.summary(results))


def _user_errors():
  """The errors that mean 'fix the input', shown as one line without a traceback."""
  from solv_jax import checkpoints, train_step, workdir
  from solv_jax.models import build
  from solv_jax import schema
  return (schema.ConfigError, DataError, workdir.WorkdirError, checkpoints.CheckpointError,
          build.LoadError, train_step.NonFiniteError, OSError)


def initialize_distributed() -> None:
  """jax.distributed.initialize with the flags, else the environment; None lets jax detect
  the cluster (TPU metadata, SLURM_*, OMPI_*). Must come before any other JAX call."""
  import jax

  def given(name: str, env: str, kind=str):
    value = flags.FLAGS[name].value
    if value is None and os.environ.get(env):
      value = kind(os.environ[env])
    return value

  jax.distributed.initialize(
      coordinator_address=given("coordinator_address", "JAX_COORDINATOR_ADDRESS"),
      num_processes=given("num_processes", "JAX_NUM_PROCESSES", int),
      process_id=given("process_id", "JAX_PROCESS_ID", int))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  if not flags.FLAGS["verbosity"].present:  # orbax and TFDS log every file at INFO
    logging.set_verbosity(logging.WARNING)
  workdir = flags.FLAGS.workdir or _default_workdir()
  # Before JAX opens a backend: the XLA flags, host memory, then the multi-process runtime.
  from solv_jax import sharding
  sharding.apply_xla_flags(config.get("xla_flags", ""))
  sharding.keep_host_memory(config.keep_host_memory)
  if config.train.distributed:
    initialize_distributed()
  from solv_jax import checkpoints, schema, train
  checkpoints.quiet_closed_event_loops()  # a full disk: one line, not tensorstore's noise
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  if "model.encoder_variant" in overrides and "data.resolution" not in overrides:
    old = schema.fit_resolution(config)  # e.g. DINOv3's patch 16 on a DINOv2 recipe
    if old:
      _print(f"config.data.resolution {old} -> {tuple(config.data.resolution)}: the nearest "
             f"multiples of {config.model.encoder_variant}'s patch size (set "
             f"--config.data.resolution to choose another)")
  logging.info("Config:\n%s", config)
  try:
    run(config, workdir, flags.FLAGS.mode)
  except train.Preempted as e:
    _print(str(e))
    return e.exit_code
  except KeyboardInterrupt:  # Ctrl-C outside the training steps (or twice)
    print("error: interrupted (Ctrl-C); the checkpoints saved so far are kept: run the same "
          "command again to resume.", file=sys.stderr, flush=True)
    return train.EXIT_INTERRUPTED
  except _user_errors() as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return EXIT_ERROR
  return 0


def parse_flags(argv):
  """absl's parsing, with a bad --config argument or override as one line, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e).strip()
    if "Traceback" in text:  # the config file raised: its own message is the last line
      last = text.splitlines()[-1]
      text = "--config: " + (last.split(": ", 1)[1] if ": " in last else last)
    message = f"{text} (--help lists the flags)"
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    message = _config_flag_error(argv, e)
  from solv_jax import schema
  print(f"error: {schema.renamed_override(argv[1:]) or message}", file=sys.stderr)
  sys.exit(2)


def _config_flag_error(argv, e: Exception) -> str:
  """One line for an exception raised while the config file or an override was applied."""
  text = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ").replace("\n", " ")
  overrides = [a for a in argv[1:] if a.startswith("--config.")]
  for arg in overrides:
    key = arg[len("--config."):].split("=", 1)[0]
    leaf = key.rsplit(".", 1)[-1]
    if text == leaf or f"'{leaf}'" in text or f'"{leaf}"' in text:  # KeyError: leaf only
      suggestion = ""
      if "Did you mean" in text:
        close = text.split('Did you mean "', 1)[1].split('"', 1)[0]
        suggestion = f" (did you mean config.{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close}?)"
      return f"{arg.split('=', 1)[0]}: config.{key} is not a config key{suggestion}."
  return f"--config: {text}"


if __name__ == "__main__":
  sys.exit(app.run(main, flags_parser=parse_flags))
