"""Tests of the evaluation command, `python -m solv_jax.evaluate` (solv_jax/evaluate.py).

The model is the tiny config (tests/tiny.py) at its seeded initialisation on a tiny synthetic
dataset, saved as a workdir checkpoint (as train.py leaves one) and as an export .npz
(export.save_export, DINOv2 inside, what tools/export_numpy.py writes). The command's
results.json is compared with `evaluation.evaluate` run here directly on the same params and
videos, its table with those results and with docs/METRICS.md.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import pytest

from solv_jax import checkpoints, evaluate, evaluation, export, metrics, sharding, train_step
from solv_jax.data import pipeline
from solv_jax.models import build
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "tiny.py")
STEP = 3


def _config(data_dir, num_validation=2):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.data.synthetic.num_validation = num_validation
  config.eval.batch_windows = 4
  config.eval.num_visualize = 1
  return config


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """(workdir, npz, config, model, full params, evaluation.evaluate's results on the
  checkpoint's own data)."""
  root = tmp_path_factory.mktemp("eval")
  config = _config(str(root / "tfds"))
  net = build.build_model(config)
  state = train_step.create_train_state(config, net, train_step.make_optimizer(config.train))
  workdir = str(root / "run")
  export.save_config(workdir, config)
  ckpt = checkpoints.Checkpoints(workdir, async_save=False)
  ckpt.save(STEP, state, {}, force=True)
  ckpt.close()
  encoder = build.encoder_params(config, net)
  npz = str(root / "model.npz")
  export.save_export(npz, config, state.params, encoder)
  params = {**jax.device_get(state.params), "encoder": jax.device_get(encoder)}
  expected = evaluation.evaluate(config, net, params, str(root / "reference"), STEP)
  return workdir, npz, config, net, params, expected


def _comparable(results):
  """results without what differs between two runs of the same evaluation (the speed, what
  the command adds), NaN made comparable."""
  out = json.loads(json.dumps({k: v for k, v in results.items()
                               if k not in ("frames_per_second", "checkpoint", "step")}))

  def nan_safe(x):
    if isinstance(x, float) and math.isnan(x):
      return "nan"
    if isinstance(x, dict):
      return {k: nan_safe(v) for k, v in x.items()}
    if isinstance(x, list):
      return [nan_safe(v) for v in x]
    return x

  return nan_safe(out)


def _saved(out_dir):
  with open(os.path.join(out_dir, "results.json")) as f:
    return json.load(f)


def _check_table(stdout, results):
  """Every metric variant is a row: its name, its value, what it is and who reports it."""
  rows = {line.split()[0]: line for line in stdout.splitlines() if line.strip()}
  for key, what, who in ((m.key, m.what, m.reported_by) for m in metrics.METRICS):
    assert key in rows, (key, stdout)
    assert evaluate._value(results[key]) in rows[key].split(), (key, rows[key])
    assert what in rows[key] and who in rows[key], rows[key]


def _one_line_error(capsys):
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and err.count("\n") == 0, err
  return err


def test_every_variant_is_in_the_table_and_in_metrics_md(model):
  expected = model[-1]
  variants = {k for k, v in expected.items()
              if k not in evaluate.NOT_METRICS and isinstance(v, (int, float))}
  assert variants == set(metrics.METRIC)
  with open(os.path.join(ROOT, "docs", "METRICS.md")) as f:
    doc = f.read()
  for key in variants:
    assert f"`{key}`" in doc, key
  # The doc's example of the printed table says what the metric table says.
  example = [line for line in doc.splitlines() if line.split(" ", 1)[0] in metrics.METRIC]
  assert len(example) >= 7, example
  for line in example:
    row = metrics.METRIC[line.split(" ", 1)[0]]
    assert row.what in line and row.reported_by in line, (line, row)
  assert "python -m solv_jax.evaluate" in doc


def test_workdir_prints_the_table_and_writes_what_evaluate_gives(model, capsys, monkeypatch):
  workdir, _, _, _, _, expected = model
  assert evaluate.main([f"--checkpoint={workdir}"]) == 0
  out = capsys.readouterr().out
  _check_table(out, expected)
  saved = _saved(os.path.join(workdir, "eval"))  # the default --out of a workdir
  assert _comparable(saved) == _comparable(expected)
  assert saved["step"] == STEP
  assert saved["checkpoint"]["kind"] == "workdir" and saved["checkpoint"]["step"] == STEP
  assert saved["checkpoint"]["path"] == os.path.abspath(workdir)
  assert saved["checkpoint"]["config"] is None  # the checkpoint's own data
  names = os.listdir(os.path.join(workdir, "eval"))  # num_visualize = 1: one strip, one GIF
  assert sum(n.endswith(".png") for n in names) == 1 and sum(n.endswith(".gif") for n in names) == 1

  # Run again: the default --out is not empty now, so it is refused unless --overwrite.
  assert evaluate.main([f"--checkpoint={workdir}"]) == 1
  err = _one_line_error(capsys)
  assert "not empty" in err and os.path.join(workdir, "eval") in err and "--overwrite" in err
  # --overwrite: the old results.json is gone before the evaluation writes its own (the
  # evaluation is replaced by its known results here: it ran above).
  seen = []
  monkeypatch.setattr(evaluation, "evaluate", lambda config, model, params, root, step, subdir,
                      **k: seen.append((os.listdir(os.path.join(root, subdir)), step, k))
                      or expected)
  assert evaluate.main([f"--checkpoint={workdir}", "--overwrite", f"--step={STEP}"]) == 0
  assert len(seen) == 1 and "results.json" not in seen[0][0] and seen[0][1] == STEP
  assert seen[0][2]["extra"]["checkpoint"]["step"] == STEP
  _check_table(capsys.readouterr().out, expected)


def test_npz_needs_out_and_gives_the_same_results(model, tmp_path, capsys):
  _, npz, _, _, _, expected = model
  assert evaluate.main([f"--checkpoint={npz}"]) == 1
  err = _one_line_error(capsys)
  assert "--out is required" in err and npz in err
  assert evaluate.main([f"--checkpoint={npz}", "--step=3", f"--out={tmp_path / 'x'}"]) == 1
  assert "--step" in _one_line_error(capsys)

  out = str(tmp_path / "npz_eval")
  assert evaluate.main([f"--checkpoint={npz}", f"--out={out}"]) == 0
  _check_table(capsys.readouterr().out, expected)
  saved = _saved(out)
  assert _comparable(saved) == _comparable(expected)
  assert saved["step"] is None and saved["checkpoint"]["kind"] == "export"


def test_config_swaps_the_data_and_keeps_the_checkpoints_model(model, tmp_path, capsys):
  workdir, _, config, net, params, expected = model
  other = str(tmp_path / "other_tfds")
  out = str(tmp_path / "swapped")
  # merge_threshold changes no param: reported, ignored (the model is the checkpoint's).
  assert evaluate.main([f"--checkpoint={workdir}", f"--config={TINY}",
                        f"--config.data.data_dir={other}",
                        "--config.data.synthetic.num_validation=3",
                        "--config.data.synthetic.width=40", "--config.eval.batch_windows=4",
                        "--config.eval.num_visualize=0", "--config.model.merge_threshold=0.3",
                        "--max_videos=2", f"--out={out}"]) == 0
  stdout = capsys.readouterr().out
  assert "model.merge_threshold: 0.12 -> 0.3" in stdout and "ignored" in stdout
  # The reference: the checkpoint's model on the videos of the swapped data config.
  swapped = _config(other, num_validation=3)
  swapped.data.synthetic.width = 40  # other videos, same model input
  swapped.eval.num_visualize = 0
  videos = list(pipeline.eval_videos(swapped))[:2]
  reference = evaluation.evaluate(config, net, params, str(tmp_path / "reference"), STEP,
                                videos=videos)
  _check_table(stdout, reference)
  saved = _saved(out)
  assert _comparable(saved) == _comparable(reference)
  assert saved["num_videos"] == 2 and _comparable(saved) != _comparable(expected)
  assert saved["checkpoint"]["config"] == TINY
  assert saved["checkpoint"]["data"]["data_dir"] == other
  assert not [n for n in os.listdir(out) if n.endswith((".png", ".gif"))]  # its eval section


@pytest.mark.parametrize("override, message", [
    ("--config.model.num_slots=6", "model.num_slots: 4 -> 6"),
    ("--config.model.slot_dim=32", "model.slot_dim: 16 -> 32"),
    ("--config.data.resolution=(56, 56)", "data.resolution=(56, 56)"),
    ("--config.data.num_context=1", "data.num_context=1"),
])
def test_config_that_changes_the_model_is_refused(model, override, message, tmp_path, capsys):
  workdir = model[0]
  out = tmp_path / "out"
  assert evaluate.main([f"--checkpoint={workdir}", f"--config={TINY}", override,
                        f"--out={out}"]) == 1
  err = _one_line_error(capsys)
  assert message in err and workdir in err, err
  assert not out.exists()


def test_bad_inputs_fail_with_one_line_naming_the_file(model, tmp_path, capsys):
  workdir, npz, config, _, _, _ = model
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not an npz")
  not_a_workdir = tmp_path / "folder"
  not_a_workdir.mkdir()
  no_checkpoints = tmp_path / "fresh_run"
  export.save_config(str(no_checkpoints), config)
  no_data = tmp_path / "no_data_run"
  shutil.copytree(workdir, no_data, ignore=shutil.ignore_patterns("eval"))
  moved = config.copy_and_resolve_references()
  moved.data.name = moved.data.tfds_name = "ytvis19"
  moved.data.data_dir = str(tmp_path / "no_such_data")
  export.save_config(str(no_data), moved)
  cases = [
      (str(tmp_path / "nope"), [], "does not exist", str(tmp_path / "nope")),
      (str(not_a_workdir), [], "config.json", str(not_a_workdir)),
      (str(bad), [f"--out={tmp_path / 'o1'}"], "Cannot read export", str(bad)),
      (str(no_checkpoints), [], "No checkpoint", str(no_checkpoints)),
      (str(no_data), [], "records not found", str(tmp_path / "no_such_data")),
      (npz, [f"--out={tmp_path / 'o2'}", f"--config={TINY}",
             f"--config.data.data_dir={tmp_path / 'no_such_data'}",
             "--config.data.name=davis17"], "records not found", str(tmp_path / "no_such_data")),
      (workdir, ["--max_videos=-1", f"--out={tmp_path / 'o3'}"], "--max_videos", "-1"),
  ]
  for checkpoint, extra, message, named in cases:
    assert evaluate.main([f"--checkpoint={checkpoint}", *extra]) == 1, checkpoint
    err = _one_line_error(capsys)
    assert message in err and named in err, (checkpoint, err)
  # A bad command line: exit 2, one line.
  assert evaluate.main([f"--checkpoint={workdir}", f"--config={TINY}",
                        "--config.data.nope=1"]) == 2
  assert "config.data.nope is not a config key" in _one_line_error(capsys)
  assert evaluate.main([]) == 2
  assert "--checkpoint is required" in _one_line_error(capsys)


def test_config_override_with_an_old_key_name_names_the_new_one(tmp_path, capsys):
  assert evaluate.main([f"--checkpoint={tmp_path}", f"--config={TINY}",
                        "--config.model.spatial_binding=vanilla"]) == 2
  assert _one_line_error(capsys) == (
      "error: --config.model.spatial_binding: config.model.spatial_binding was renamed to "
      "config.model.spatial_binding_type; pass --config.model.spatial_binding_type=vanilla "
      "instead. (--help lists the flags)")


def test_non_empty_out_is_refused_unless_overwrite(model, tmp_path, capsys):
  workdir = model[0]
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  assert evaluate.main([f"--checkpoint={workdir}", f"--out={out}"]) == 1
  err = _one_line_error(capsys)
  assert "not empty" in err and str(out) in err and "--overwrite" in err
  assert os.listdir(out) == ["notes.txt"]
  (tmp_path / "file").write_text("x")
  assert evaluate.main([f"--checkpoint={workdir}", f"--out={tmp_path / 'file'}"]) == 1
  assert "is not a folder" in _one_line_error(capsys)


def test_xla_flags_are_applied_before_the_restore(model, tmp_path, monkeypatch, capsys):
  # As `python -m solv_jax.main` does: the run's config.xla_flags go to XLA before a backend
  # opens. One is open in this process already, so the calls are recorded, not made, and the
  # evaluation itself is replaced by its known results.
  workdir, _, config, _, _, expected = model
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run, ignore=shutil.ignore_patterns("eval"))
  flagged = config.copy_and_resolve_references()
  flagged.xla_flags = "--xla_cpu_experimental_ynn_fusion_type="
  export.save_config(run, flagged)
  calls, restore = [], checkpoints.restore_params
  monkeypatch.setattr(sharding, "apply_xla_flags",
                      lambda flags, strict: calls.append(("flags", flags, strict)))
  monkeypatch.setattr(checkpoints, "restore_params",
                      lambda *a, **k: calls.append(("restore",)) or restore(*a, **k))
  monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(("evaluate",))
                      or expected)
  assert evaluate.main([f"--checkpoint={run}"]) == 0
  assert calls == [("flags", flagged.xla_flags, False), ("restore",), ("evaluate",)]
  _check_table(capsys.readouterr().out, expected)


def test_module_entry_point(tmp_path):
  # `python -m solv_jax.evaluate` is this command: --help, and a bad input as one line.
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}

  def run(*args):
    return subprocess.run([sys.executable, "-m", "solv_jax.evaluate", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)

  shown = run("--help")
  assert shown.returncode == 0 and "--checkpoint" in shown.stdout and "--max_videos" in shown.stdout
  missing = str(tmp_path / "no_such_run")
  failed = run(f"--checkpoint={missing}")
  assert failed.returncode == 1, failed.stderr
  assert failed.stderr.strip().count("\n") == 0 and missing in failed.stderr, failed.stderr
