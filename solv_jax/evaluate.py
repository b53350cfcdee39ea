"""`python -m solv_jax.evaluate`: every metric variant of a trained model, in one table.

  python -m solv_jax.evaluate --checkpoint=runs/ytvis19
  python -m solv_jax.evaluate --checkpoint=solv_ytvis19.npz --config=configs/ytvis19.py \
      --config.data.data_dir=DATA --out=eval/authors_ytvis19
  python -m solv_jax.evaluate --checkpoint=runs/davis17 --step=40000 --max_videos=5 --out=e/

--checkpoint is a training workdir (its newest good checkpoint, or --step) or an .npz written
by tools/export_numpy.py or tools/convert_solv_checkpoint.py, loaded by
`inference.load_model`.
The model is always the checkpoint's: its config.model, at its config.data.resolution and
num_context. The data are the checkpoint's own config.data, unless --config is given: then
config.data and config.eval come from that config file (with its --config.* overrides). A
--config that would change the resolution, the window (num_context) or any param shape is
refused; other differences in its model section (e.g. model.use_merge=False of
configs/davis17.py) are listed and ignored.

The protocol is `evaluation.evaluate` (docs/METHOD.md §7), the one the end of training runs. Written
to --out (default WORKDIR/eval for a workdir; required for an .npz): results.json with every metric
variant under its own name (docs/METRICS.md says which paper reports which) plus "checkpoint" (what
was evaluated, on which data), and a PNG strip and GIF of each of the first
config.eval.num_visualize videos. A non-empty --out is refused unless --overwrite, which replaces
results.json and the pictures of the same names and leaves other files alone. Printed: one table of
every variant, with the convention it follows and who reports it.

Exit status: 0 done; 1 a bad input, as one line (missing checkpoint or data, a --config that
changes the model, a non-empty --out); 2 a bad command line.
"""
from __future__ import annotations

import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf.data only feeds numpy here

PROG = "python -m solv_jax.evaluate"
_CHECKPOINT_KINDS = ("a training workdir, or an .npz from tools/export_numpy.py or "
                     "tools/convert_solv_checkpoint.py")

# Keys of results.json that are not metrics of the table.
NOT_METRICS = ("step", "frames_per_second", "videos", "checkpoint")
# The table's rows are metrics.METRICS: (key, what it is, who reports it) in its order.


class EvalError(ValueError):
  """An input the command cannot use; the message names it, the value seen and what to do."""


# ----------------------------------------------------------------------------------------------
# The evaluation config.
# ----------------------------------------------------------------------------------------------
def eval_config(checkpoint_config, given=None, checkpoint: str = "the checkpoint"):
  """-> (config to evaluate with, notes). The checkpoint's config, with config.data and
  config.eval replaced by those of `given` (a --config) when it is given.

  The model stays the checkpoint's config.model. A `given` whose data.resolution or
  data.num_context differ from the checkpoint's, or whose model section changes any param
  shape, raises EvalError; other model differences are returned as a note.
  """
  import ml_collections
  from solv_jax import schema
  from solv_jax import export

  config = ml_collections.ConfigDict(checkpoint_config.to_dict())  # an unlocked copy
  if given is None:
    return config, []
  schema.validate(given)
  have, want = checkpoint_config.data, given.data
  res, given_res = (tuple(int(r) for r in c.resolution) for c in (have, want))
  if given_res != res:
    from solv_jax.models import build
    (h, w), (gh, gw) = res, build.build_model(checkpoint_config).grid_hw
    raise EvalError(
        f"--config sets data.resolution={given_res}, but the model in {checkpoint!r} runs at "
        f"{h}x{w} only (its decoder position embedding and G_abs are learned per token of the "
        f"{gh}x{gw} grid); add --config.data.resolution='({h}, {w})'.")
  if int(want.num_context) != int(have.num_context):
    raise EvalError(
        f"--config sets data.num_context={want.num_context}, but the model in {checkpoint!r} "
        f"was trained with windows of {2 * int(have.num_context) + 1} frames; add "
        f"--config.data.num_context={int(have.num_context)}.")
  changes = export.config_changes(checkpoint_config.model.to_dict(), given.model.to_dict(),
                                  "model.")
  notes = []
  if changes:
    candidate = ml_collections.ConfigDict(checkpoint_config.to_dict())
    candidate.model = ml_collections.ConfigDict(given.model.to_dict())
    if _param_shapes(candidate) != _param_shapes(checkpoint_config):
      raise EvalError(
          f"--config would change the model of {checkpoint!r} ({'; '.join(changes)}) and with "
          "it the param shapes; the model is always the checkpoint's config.model: drop those "
          "--config.model.* overrides or config arguments.")
    notes.append(f"Note: --config's model section differs from the checkpoint's "
                 f"({'; '.join(changes)}); no param shape changes and it is ignored: the model "
                 "is the checkpoint's config.model.")
  config.data = ml_collections.ConfigDict(given.data.to_dict())
  config.eval = ml_collections.ConfigDict(given.eval.to_dict())
  return config, notes


def _param_shapes(config) -> dict:
  """{'a/b/c': (shape, dtype)} of the trainable params of config's model (nothing computed)."""
  from flax import traverse_util
  from solv_jax.models import build
  shapes = build.trainable_shapes(build.build_model(config))
  return {"/".join(k): (tuple(v.shape), str(v.dtype))
          for k, v in traverse_util.flatten_dict(shapes).items()}


# ----------------------------------------------------------------------------------------------
# The table.
# ----------------------------------------------------------------------------------------------
def _value(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return "nan" if math.isnan(v) else f"{v:.4f}"
  return str(v)


def format_table(results: dict) -> str:
  """Every metric of `results` (metrics.METRICS, then any other numeric key), one row each."""
  from solv_jax import metrics
  rows = [(m.key, _value(results.get(m.key)), m.what, m.reported_by) for m in metrics.METRICS]
  known = set(metrics.METRIC) | set(NOT_METRICS)
  rows += [(key, _value(v), "see docs/METRICS.md", "")
           for key, v in results.items()
           if key not in known and isinstance(v, (int, float)) and not isinstance(v, bool)]
  header = ("metric", "value", "what it is", "reported by")
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
  line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
  return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


# ----------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------
def _flags(argv: list[str]):
  """A private absl FlagValues (not the global FLAGS of solv_jax.main) parsed from argv."""
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None, "Config file (configs/*.py[:args]) whose config.data and config.eval "
      "replace the checkpoint's; --config.* overrides apply to it. Default: the checkpoint's "
      "own config.", flag_values=fv, lock_config=True, sys_argv=[PROG, *argv])
  flags.DEFINE_string("checkpoint", None, f"Training workdir or export .npz ({_CHECKPOINT_KINDS}).",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "Output folder (default WORKDIR/eval; required for an .npz).",
                      flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step of a workdir (default: the newest good).",
                       flag_values=fv)
  flags.DEFINE_integer("max_videos", 0, "Evaluate the first N videos only (0: all; sets "
                       "config.data.eval_max_videos).", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Write into a non-empty --out, replacing results.json "
                    "and the pictures of the same names.", flag_values=fv)
  return fv


def _refuse_renamed(argv: list[str]) -> None:
  """An override with a key's old name (solv_jax/schema.py's RENAMED) ends in one line naming
  the new name."""
  from solv_jax import schema
  message = schema.renamed_override(argv)
  if message:
    raise EvalError(message) from None


def _parse(argv: list[str]):
  """-> parsed FlagValues; raises EvalError (one line) for a bad command line."""
  from absl import flags
  fv = _flags(argv)
  try:
    fv([PROG, *argv])
    if fv.config is not None:
      path = fv["config"].config_filename.split(":", 1)[0]
      if not os.path.isfile(path):
        raise EvalError(f"--config {path!r} does not exist (a config file, e.g. "
                        "configs/davis17.py).")
      fv.config.keys()  # a config file that failed to load raises here, not at parse time
  except flags.Error as e:
    _refuse_renamed(argv)
    text = str(e).strip()
    if "Traceback" in text:  # the config file raised: its own message is the last line
      last = text.splitlines()[-1]
      text = "--config: " + (last.split(": ", 1)[1] if ": " in last else last)
    elif "flag 'config." in text and not any(a.startswith("--config=") for a in argv):
      text += ": --config.* overrides need --config=FILE (e.g. --config=configs/davis17.py)"
    raise EvalError(_one_line(text)) from None
  except (AttributeError, KeyError, TypeError, OSError) as e:  # an override or the file
    _refuse_renamed(argv)
    text = str(e).strip("'\"")
    for arg in (a for a in argv if a.startswith("--config.")):
      key = arg[len("--config."):].split("=", 1)[0]
      if f"'{key.rsplit('.', 1)[-1]}'" in str(e):
        raise EvalError(f"{arg.split('=', 1)[0]}: config.{key} is not a config key.") from None
    raise EvalError("--config: " + _one_line(text)) from None
  if not fv.checkpoint:
    raise EvalError(f"--checkpoint is required ({_CHECKPOINT_KINDS}).")
  return fv


def _one_line(e) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  if not lines:
    return type(e).__name__
  if len(lines) > 1 and lines[0].endswith(":"):  # 'Invalid config:' + one problem a line
    return f"{lines[0]} {'; '.join(lines[1:])}"
  return "; ".join(lines)


def _user_errors():
  """The errors that mean 'fix the input', shown as one line without a traceback."""
  from solv_jax import checkpoints
  return (OSError, ValueError, checkpoints.CheckpointError)  # ValueError: Load/Config/EvalError


def prepare(fv):
  """Parsed flags -> (config, inference.LoadedModel, output folder, provenance for
  results.json).
  Every input is checked here, before the evaluation's long part; raises _user_errors()."""
  from solv_jax import export, outputs, sharding

  checkpoint = fv.checkpoint
  if not os.path.exists(checkpoint):
    raise EvalError(f"--checkpoint {checkpoint!r} does not exist (expected {_CHECKPOINT_KINDS}).")
  is_workdir = os.path.isdir(checkpoint)
  if not is_workdir and fv.step is not None:
    raise EvalError(f"--step={fv.step} selects a checkpoint of a workdir; {checkpoint!r} is an "
                    "export file, which holds one set of params: omit --step.")
  if fv.max_videos < 0:
    raise EvalError(f"--max_videos must be >= 0 (0: all videos), got {fv.max_videos}.")
  out = fv.out or (os.path.join(checkpoint, "eval") if is_workdir else None)
  if out is None:
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    raise EvalError(f"--out is required for an export file ({checkpoint!r} is not a workdir to "
                    f"write into), e.g. --out=eval/{stem}.")
  outputs.check_out_dir(out, fv.overwrite)  # OutputError, a ValueError: before the long part
  checkpoint_config = export.read_config(checkpoint)  # reads config.json / '__config__' only
  # Before JAX opens a backend (the restore and the shape checks open one).
  sharding.apply_xla_flags(checkpoint_config.get("xla_flags", ""), strict=False)
  config, notes = eval_config(checkpoint_config, fv.config, checkpoint)
  if fv.max_videos:
    config.data.eval_max_videos = fv.max_videos
  from solv_jax.data import pipeline
  print("Data: " + pipeline.check_data(config, "eval"), flush=True)  # seconds, before the model
  for note in notes:
    print(note, flush=True)

  from solv_jax import inference
  loaded = inference.load_model(checkpoint, step=fv.step)
  step = "" if loaded.info["step"] is None else f", step {loaded.info['step']}"
  print(f"Model: {checkpoint} ({loaded.info['kind']}{step}); encoder "
        f"{loaded.info['encoder']}: "
        f"{loaded.info['encoder_weights']}; device: {loaded.info['device']}", flush=True)
  info = {"path": os.path.abspath(checkpoint), "kind": loaded.info["kind"],
          "step": loaded.info["step"], "encoder_weights": loaded.info["encoder_weights"],
          "config": fv["config"].config_filename if fv.config is not None else None,
          "data": {k: config.data.get(k) for k in ("name", "data_dir", "eval_split",
                                                   "ytvis_eval_subset", "eval_max_videos")}}
  return config, loaded, os.path.abspath(out), info


def run(config, loaded, out: str, info: dict) -> dict:
  """Evaluates `loaded` with `config` into `out`, prints the table, returns the results."""
  from solv_jax import evaluation
  first = config.data.get("eval_max_videos", 0)
  print(f"Evaluating on {config.data.name}:{config.data.eval_split}"
        f"{f' (its first {first} videos)' if first else ''} ...", flush=True)
  if os.path.isfile(os.path.join(out, "results.json")):  # --overwrite: never a stale one
    os.remove(os.path.join(out, "results.json"))
  segmenter = loaded.segmenter
  results = evaluation.evaluate(config, segmenter.model, segmenter.params, os.path.dirname(out),
                                loaded.info["step"], subdir=os.path.basename(out),
                                extra={"checkpoint": info})
  print(format_table(results))
  print(f"Results: {os.path.join(out, 'results.json')} (docs/METRICS.md: which number is "
        "which)", flush=True)
  return results


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help", "-help", "--helpfull", "-?") for a in argv):
    print(__doc__)
    print(_flags([]).module_help(__name__))
    return 0
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
  try:
    fv = _parse(argv)
  except EvalError as e:
    print(f"error: {e} (--help lists the flags)", file=sys.stderr, flush=True)
    return 2
  try:
    prepared = prepare(fv)
  except _user_errors() as e:
    print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
    return 1
  try:
    run(*prepared)
  except OSError as e:  # a damaged record or frame, named by the pipeline
    print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
    return 1
  except KeyboardInterrupt:
    print(f"error: interrupted (Ctrl-C); {prepared[2]} holds no results.json of this run.",
          file=sys.stderr, flush=True)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
