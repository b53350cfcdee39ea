"""solv_jax entry point: train and/or evaluate SOLV from a config file.

  python -m solv_jax.main --config=configs/demo.py
  python -m solv_jax.main --config=configs/ytvis19.py:model=C --config.train.batch_size=8 \
      --config.data.data_dir=DATA --workdir=runs/ytvis_c --mode=train_and_eval
"""
from __future__ import annotations

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
flags.mark_flags_as_required(["config"])


def _default_workdir() -> str:
  path = flags.FLAGS["config"].config_filename
  name = os.path.splitext(os.path.basename(path.split(":")[0]))[0]
  return os.path.join("workdir", name)


def run(config, workdir: str, mode: str) -> dict | None:
  import jax
  from solv_jax import evaluate, export, train
  from solv_jax.models.solv import build_model

  train.validate_config(config)
  changes = export.save_config(workdir, config)
  checkpoints = os.path.join(workdir, "checkpoints")
  if changes and os.path.isdir(checkpoints) and os.listdir(checkpoints):
    print(f"Warning: {workdir} holds checkpoints of a run with a different config; its "
          f"checkpoint is used with this config, which differs in:\n  " + "\n  ".join(changes),
          flush=True)
  model = build_model(config)
  results = None
  if mode == "train_and_eval" and config.eval.get("untrained", False):
    _evaluate_untrained(config, model, workdir)
  if mode in ("train", "train_and_eval"):
    state = train.train(config, workdir)
    params, step = state.params, int(state.step)
  if mode in ("eval", "train_and_eval"):
    if mode == "eval":
      step, params = export.restore_workdir(workdir)
    full = {**jax.device_get(params), "encoder": train.encoder_params(config, model)}
    print(f"Evaluating step {step} on {config.data.name}:{config.data.eval_split} ...",
          flush=True)
    results = evaluate.evaluate(config, model, full, workdir, step)
    print("Evaluation:", _summary(results), flush=True)
    print(f"Results: {os.path.join(workdir, 'eval', 'results.json')}; masks: "
          f"{os.path.join(workdir, 'eval')}/*.png, *.gif", flush=True)
  return results


def _summary(results: dict) -> str:
  keys = ("fg_ari", "fg_ari_matched", "video_fg_ari", "miou", "mbo", "num_videos")
  return " ".join(f"{k}={results[k]:.4f}" if isinstance(results[k], float) else
                  f"{k}={results[k]}" for k in keys)


def _evaluate_untrained(config, model, workdir: str) -> None:
  """The baseline of a run: the initial (step-0) params through the same protocol."""
  import jax
  from solv_jax import evaluate, train
  path = os.path.join(workdir, "eval_step0", "results.json")
  if os.path.exists(path):  # a resumed run: already done
    return
  full = {**jax.device_get(train.initial_params(config, model)),
          "encoder": train.encoder_params(config, model)}
  print(f"Evaluating the untrained model (step 0) on {config.data.name}:"
        f"{config.data.eval_split} ...", flush=True)
  results = evaluate.evaluate(config, model, full, workdir, 0, subdir="eval_step0")
  print("Step 0:", _summary(results), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  if not flags.FLAGS["verbosity"].present:  # orbax and TFDS log every file at INFO
    logging.set_verbosity(logging.WARNING)
  workdir = flags.FLAGS.workdir or _default_workdir()
  logging.info("Config:\n%s", config)
  if not config.model.encoder_weights:
    print("Note: config.model.encoder_weights is empty, so DINOv2 is RANDOMLY initialised "
          "(no download needed). Pass converted weights for the paper's results.", flush=True)
  if config.model.get("encoder_blocks", 0):
    print(f"Note: only the first {config.model.encoder_blocks} DINOv2 block(s) run "
          "(config.model.encoder_blocks; 0 = all, as in the paper).", flush=True)
  from solv_jax import sharding
  sharding.apply_xla_flags(config.get("xla_flags", ""))
  run(config, workdir, flags.FLAGS.mode)


if __name__ == "__main__":
  sys.exit(app.run(main))
