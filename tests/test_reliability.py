"""Issue 18's fault cases, each rerun as the issue describes them on the tiny config
(tests/tiny.py: 6 steps of batch 2, checkpoints at 2, 4, 6): a damaged or silently corrupted
checkpoint, a shape-changing config, two runs in one workdir, a diverging run with
nonfinite=skip, bad command lines and SIGTERM. Each ends in a one-line error or recovers with
nothing lost (the uninterrupted run's params and metrics, bit for bit).

One trained workdir is made once and copied per case; every later process reads the first
one's XLA compilation cache, so it starts in seconds.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from solv_jax import checkpoints, export, segment
from solv_jax.data import synthetic
from tests.test_train import (PAUSE_FIRST_COMMIT, _assert_bitwise_equal, _metric_rows, _Run,
                              _steps)
from tools import export_numpy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The shared dataset, compilation cache and one uninterrupted run (its workdir: .reference)."""
  root = tmp_path_factory.mktemp("reliability")
  run = types.SimpleNamespace(data_dir=str(root / "data"), reference=str(root / "reference"),
                              root=root)
  run.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                 JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  res = _main(run, run.reference)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  assert _steps(run.reference) == ([2, 4, 6], [])
  return run


def _main(run, workdir, *flags, mode="train", timeout=900):
  """`python -m solv_jax.main` on the tiny config, to completion."""
  return subprocess.run(
      [sys.executable, "-m", "solv_jax.main", "--config=tests/tiny.py",
       f"--config.data.data_dir={run.data_dir}", f"--mode={mode}", f"--workdir={workdir}",
       *flags], cwd=REPO, env=run.env, capture_output=True, text=True, timeout=timeout)


def _copy(run, tmp_path, name="run"):
  return shutil.copytree(run.reference, str(tmp_path / name))


def _state_file(workdir, step):
  """The largest data file of a step's train state (what a cluster's faults hit most)."""
  d = os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_0", "d")
  return max((os.path.join(d, n) for n in os.listdir(d)), key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip(path, n=400):
  """Inverts n bytes in the middle of a file; its size is unchanged."""
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    data = f.read(n)
    f.seek(size // 2)
    f.write(bytes(b ^ 0xFF for b in data))
  assert os.path.getsize(path) == size


def _rejected(workdir):
  d = os.path.join(workdir, "checkpoints", checkpoints.REJECTED)
  return sorted(n for n in os.listdir(d) if not n.endswith(".json")) if os.path.isdir(d) else []


def _digests(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      with open(os.path.join(dirpath, name), "rb") as f:
        out[os.path.relpath(os.path.join(dirpath, name), root)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def _error_line(stderr):
  """The one `error: ...` line, which must be the last thing printed; no traceback."""
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert lines and lines[-1].startswith("error: "), stderr[-3000:]
  assert sum(line.startswith("error: ") for line in lines) == 1, stderr[-3000:]
  return lines[-1]


def _damage_warnings(text, workdir, step):
  lines = [line for line in text.splitlines() if line.startswith("warning: checkpoint")]
  assert len(lines) == 1, text[-3000:]
  assert f"{workdir}/checkpoints/{step} is damaged" in lines[0], lines[0]
  assert f"moved it to {workdir}/checkpoints/rejected/{step}-" in lines[0], lines[0]
  assert len(lines[0]) < 500, lines[0]  # one readable line, not a TensorStore spec
  return lines[0]


def _metrics(workdir):
  """metrics.jsonl rows without the wall-clock rate."""
  return [{k: v for k, v in row.items() if k != "steps_per_sec"} for row in _metric_rows(workdir)]


def _frames(tmp_path):
  cfg = synthetic.SyntheticConfig(num_frames=4, height=28, width=42, min_objects=2,
                                  max_objects=3)
  frames, _ = synthetic.generate_video(cfg, np.random.default_rng(7))
  folder = tmp_path / "frames"
  folder.mkdir()
  for t, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f"{t:03d}.png")
  return str(folder)


# ----------------------------------------------------------------------------------------------
# 1. A damaged latest checkpoint: every reader falls back; no crash loop.
# ----------------------------------------------------------------------------------------------
def test_1_truncated_latest_checkpoint_resumes_from_the_older_step_without_a_crash_loop(
    trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  _truncate(_state_file(workdir, 6))
  res = _main(trained, workdir)
  out = res.stdout + res.stderr
  assert res.returncode == 0, out[-3000:]
  _damage_warnings(out, workdir, 6)
  assert f"Resumed from {workdir}/checkpoints/4\n" in res.stdout
  [moved] = _rejected(workdir)
  assert moved.startswith("6-")  # moved aside, not deleted
  assert _steps(workdir) == ([2, 4, 6], [])  # step 6 trained again; keep = 3
  # Nothing lost: the uninterrupted run's params and metrics.
  _assert_bitwise_equal(checkpoints.restore_params(workdir)[1],
                        checkpoints.restore_params(trained.reference)[1])
  assert _metrics(workdir) == _metrics(trained.reference)

  again = _main(trained, workdir)  # the rerun does not crash-loop
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert f"Resumed from {workdir}/checkpoints/6\n" in again.stdout
  assert "StepAlreadyExists" not in again.stdout + again.stderr
  assert "warning: checkpoint" not in again.stdout + again.stderr
  assert len(_rejected(workdir)) == 1


def test_1_eval_export_and_segment_fall_back_from_a_damaged_latest_checkpoint(
    trained, tmp_path, capsys):
  # --mode=eval with the latest step's _METADATA deleted.
  workdir = _copy(trained, tmp_path, "eval")
  os.remove(os.path.join(workdir, "checkpoints", "6", "state", "_METADATA"))
  res = _main(trained, workdir, mode="eval")
  out = res.stdout + res.stderr
  assert res.returncode == 0, out[-3000:]
  assert "Traceback" not in out
  _damage_warnings(out, workdir, 6)
  assert "Evaluating step 4 on " in res.stdout
  assert [n.split("-")[0] for n in _rejected(workdir)] == ["6"]

  # tools/export_numpy.py with a truncated file in the latest step.
  workdir = _copy(trained, tmp_path, "export")
  _truncate(_state_file(workdir, 6))
  npz = str(tmp_path / "model.npz")
  assert export_numpy.main(["--workdir", workdir, "--out", npz]) == 0
  out = capsys.readouterr()
  _damage_warnings(out.out + out.err, workdir, 6)
  assert f"wrote {npz} (step 4)" in out.out
  _, params, _ = export.load_export(npz)
  _assert_bitwise_equal(params, checkpoints.restore_params(trained.reference, 4)[1])

  # python -m solv_jax.segment with the latest step's _METADATA deleted.
  workdir = _copy(trained, tmp_path, "segment")
  os.remove(os.path.join(workdir, "checkpoints", "6", "state", "_METADATA"))
  seg = str(tmp_path / "seg")
  assert segment.main([f"--checkpoint={workdir}", f"--video={_frames(tmp_path)}",
                       f"--out={seg}"]) == 0
  out = capsys.readouterr()
  assert "Traceback" not in out.out + out.err
  _damage_warnings(out.out + out.err, workdir, 6)
  with open(os.path.join(seg, "summary.json")) as f:
    assert json.load(f)["model"]["step"] == 4


# ----------------------------------------------------------------------------------------------
# 2. Silent corruption: found by the manifest; no NaN export; NaN params refused by name.
# ----------------------------------------------------------------------------------------------
def test_2_flipped_bytes_are_found_by_the_manifest_and_nan_params_are_refused_by_name(
    trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  damaged = _state_file(workdir, 6)
  _flip(damaged)
  npz = str(tmp_path / "model.npz")
  assert export_numpy.main(["--workdir", workdir, "--out", npz]) == 0
  out = capsys.readouterr()
  warning = _damage_warnings(out.out + out.err, workdir, 6)
  assert "differ from the manifest" in warning
  assert os.path.relpath(damaged, os.path.join(workdir, "checkpoints", "6")) in warning
  assert f"wrote {npz} (step 4)" in out.out
  [moved] = _rejected(workdir)
  assert moved.startswith("6-") and not os.path.exists(os.path.join(workdir, "checkpoints", "6"))
  config, params, encoder = export.load_export(npz)
  assert all(np.isfinite(v).all() for v in _leaves(params))
  _assert_bitwise_equal(params, checkpoints.restore_params(trained.reference, 4)[1])

  # An export with a NaN param: segment names it, in one line, before writing anything.
  name, leaf = _first_leaf(params)
  _set(params, name, np.full_like(leaf, np.nan))
  bad = str(tmp_path / "nan.npz")
  export.save_export(bad, config, params, encoder)
  seg = str(tmp_path / "seg")
  assert segment.main(["--checkpoint", bad, "--video", _frames(tmp_path), "--out", seg]) == 1
  out = capsys.readouterr()
  line = _error_line(out.err)
  assert "non-finite params" in line and "/".join(name) in line, line
  assert not os.path.exists(os.path.join(seg, "summary.json"))


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _first_leaf(tree, prefix=()):
  for k in sorted(tree):
    v = tree[k]
    if isinstance(v, dict):
      return _first_leaf(v, prefix + (k,))
    return prefix + (k,), np.asarray(v)


def _set(tree, path, value):
  for k in path[:-1]:
    tree[k] = dict(tree[k])
    tree = tree[k]
  tree[path[-1]] = value


# ----------------------------------------------------------------------------------------------
# 3. A shape-changing config: refused before anything is written; checkpoints not blamed.
# ----------------------------------------------------------------------------------------------
def test_3_shape_changing_config_is_refused_and_the_workdir_left_as_it_was(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = _digests(workdir)
  res = _main(trained, workdir, "--config.model.slot_dim=32")
  assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
  line = _error_line(res.stderr)
  assert "model.slot_dim: 16 -> 32" in line and "data.resolution" not in line, line
  assert "--workdir" in line and f"--config.train.init_from={workdir}" in line, line
  out = (res.stdout + res.stderr).lower()
  assert "broken" not in out and "damaged" not in out and "unreadable" not in out
  assert _digests(workdir) == before  # config.json byte for byte, checkpoints, metrics
  assert not _rejected(workdir)


# ----------------------------------------------------------------------------------------------
# 4. One run per workdir: a second is refused naming the first; a dead run's lock is taken over.
# ----------------------------------------------------------------------------------------------
def test_4_second_run_in_a_workdir_is_refused_and_a_dead_runs_lock_taken_over(
    trained, tmp_path):
  workdir = str(tmp_path / "run")
  first = _Run(trained, workdir, PAUSE_FIRST_COMMIT)  # holds the lock while checkpoint 2 commits
  try:
    first.wait_for(r"^COMMITTING ")
    with open(os.path.join(workdir, "run.lock")) as f:
      assert json.load(f)["pid"] == first.proc.pid
    second = _main(trained, workdir)
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    line = _error_line(second.stderr)
    assert f"{workdir} is in use by another run (pid {first.proc.pid} on " in line, line
    assert "step " not in second.stdout and "Resumed" not in second.stdout  # it did not start
  finally:
    first.proc.kill()
    first.finish()

  # The first run is gone (SIGKILL), its lock left behind: the next run takes it over and
  # finishes as the uninterrupted run did.
  assert os.path.exists(os.path.join(workdir, "run.lock"))
  third = _main(trained, workdir)
  assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
  assert f"was left by run {first.proc.pid} on " in third.stdout
  assert "taking it over" in third.stdout
  assert not os.path.exists(os.path.join(workdir, "run.lock"))  # released at the end
  assert _steps(workdir) == ([2, 4, 6], [])
  _assert_bitwise_equal(checkpoints.restore_params(workdir)[1],
                        checkpoints.restore_params(trained.reference)[1])
  assert _metrics(workdir) == _metrics(trained.reference)


# ----------------------------------------------------------------------------------------------
# 5. nonfinite=skip with a dead model fails with a summary; non-finite params are never read.
# ----------------------------------------------------------------------------------------------
def test_5_diverging_run_with_nonfinite_skip_fails_with_a_summary(trained, tmp_path):
  import re
  workdir = str(tmp_path / "run")
  res = _main(trained, workdir, "--config.train.learning_rate=1e6",
              "--config.train.nonfinite=skip")
  assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
  line = _error_line(res.stderr)
  m = re.search(r"(\d+) of 6 updates were skipped for a non-finite loss or gradient", line)
  assert m and int(m.group(1)) >= 1, line
  assert "config.train.max_nonfinite_frac=0.01" in line and "learning_rate" in line, line
  step, params = checkpoints.restore_params(workdir)  # what was saved is finite
  assert step == 6 and all(np.isfinite(v).all() for v in _leaves(params))


def test_5_nonfinite_params_in_a_checkpoint_are_refused_by_name(trained, tmp_path, capsys):
  import jax
  workdir = _copy(trained, tmp_path)
  ckpt = checkpoints.Checkpoints(workdir, async_save=False)
  _, state, data_state = ckpt.restore()
  name, leaf = _first_leaf(state["params"])
  _set(state["params"], name, jax.numpy.full_like(leaf, np.nan))
  ckpt.save(8, state, data_state, force=True)  # with its manifest: the files are as written
  ckpt.close()
  capsys.readouterr()
  step, params = checkpoints.restore_params(workdir)  # what evaluation, export, segment read
  assert step == 6
  _assert_bitwise_equal(params, checkpoints.restore_params(trained.reference)[1])
  warning = _damage_warnings(capsys.readouterr().out, workdir, 8)
  assert f"non-finite values in {'/'.join(name)}" in warning, warning


# ----------------------------------------------------------------------------------------------
# 8. Bad command lines in one line (exit 2); SIGTERM checkpoints and exits 143.
# ----------------------------------------------------------------------------------------------
def test_8_unknown_override_and_bad_config_argument_are_one_line(tmp_path):
  def main(*args):
    res = subprocess.run([sys.executable, "-m", "solv_jax.main", *args,
                          f"--workdir={tmp_path / 'w'}"], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr[-3000:]
    return _error_line(res.stderr)

  line = main("--config=tests/tiny.py", "--config.model.slotdim=3")
  assert "config.model.slotdim is not a config key (did you mean config.model.slot_dim?)" \
      in line, line
  line = main("--config=configs/ytvis19.py:model=Z")
  assert "model='Z'" in line and "A, B, C, D, E" in line, line
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_8_sigterm_and_ctrl_c_save_a_checkpoint_and_exit(trained, tmp_path, sig, code):
  workdir = str(tmp_path / "run")
  run = _Run(trained, workdir)
  run.wait_for(r"^step 3/6 ")
  assert run.signal(sig) == code, run.tail()
  name = signal.Signals(sig).name
  saved = int(run.wait_for(rf"^{name}: saved checkpoint at step (\d+), exiting", 1).group(1))
  assert not any("Traceback" in line for line in run.output), run.tail()
  complete, tmps = _steps(workdir)
  assert saved in complete and saved < 6 and not tmps
  assert checkpoints.restore_params(workdir)[0] == saved
  assert not os.path.exists(os.path.join(workdir, "run.lock"))
