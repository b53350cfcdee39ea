"""Files written whole or not at all (solv_jax/files.py), and "already done" checks that read
what they trust: a full disk or a kill mid-write leaves the old file and no temporary one."""
import errno
import json
import os

import numpy as np
import pytest

from solv_jax import export, files, main
from solv_jax.models.build import build_model
from tests.tiny import tiny_config


def _disk_full(*args, **kwargs):
  raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "results.json"
  files.write_json(str(path), {"a": 1})
  with pytest.raises(OSError, match="No space left"):
    with files.replacing(str(path)) as tmp:
      with open(tmp, "w") as f:
        f.write('{"a": 2, "b"')  # half written when the disk fills
      _disk_full()
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(tmp_path) == ["results.json"]
  files.write_json(str(path), {"a": 3})
  assert files.read_json(str(path)) == {"a": 3} and os.listdir(tmp_path) == ["results.json"]
  path.write_text('{"a": 3, "b')  # torn by an older version's in-place write
  assert files.read_json(str(path)) is None and files.read_json(str(tmp_path / "no")) is None


def test_an_export_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
  config = tiny_config()
  out = tmp_path / "model.npz"
  params = {"decoder": {"w": np.ones((3, 2), np.float32)}}
  export.save_export(str(out), config, params)
  before = out.read_bytes()

  def savez_then_full(file, **arrays):
    with open(file, "wb") as f:
      f.write(b"PK\x03\x04 partial")
    _disk_full()

  monkeypatch.setattr(np, "savez", savez_then_full)
  with pytest.raises(OSError, match="No space left"):
    export.save_export(str(out), config, params)
  assert out.read_bytes() == before and os.listdir(tmp_path) == ["model.npz"]


def test_a_torn_step0_result_is_evaluated_again(tmp_path, monkeypatch, capsys):
  from solv_jax import evaluation
  config = tiny_config()
  model = build_model(config)
  calls = []
  monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(k) or {"step": 0})
  monkeypatch.setattr(evaluation, "summary", lambda results: "")
  torn = tmp_path / "eval_step0" / "results.json"
  torn.parent.mkdir()
  torn.write_text('{"fg_ari": 0.1, "step": 0, "num_vid')  # cut short by a kill or full disk
  main._evaluate_untrained(config, model, {}, str(tmp_path))
  assert len(calls) == 1 and "evaluating step 0 again" in capsys.readouterr().out
  files.write_json(str(torn), {"step": 0, "num_videos": 3})  # whole: done, not repeated
  main._evaluate_untrained(config, model, {}, str(tmp_path))
  assert len(calls) == 1


def test_a_torn_config_or_a_full_disk_is_one_line_from_the_export_tool(tmp_path, monkeypatch,
                                                                      capsys):
  from solv_jax import inference
  from solv_jax.models import build
  from tools import export_numpy
  workdir = tmp_path / "run"
  export.save_config(str(workdir), tiny_config())
  (workdir / "config.json").write_text('{"seed": 0, "data": {"resol')  # torn
  out = tmp_path / "model.npz"
  assert export_numpy.main(["--workdir", str(workdir), "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and "config.json" in err, err
  with pytest.raises(inference.InferenceError, match="config.json"):
    inference.load_model(str(workdir))

  # A full disk while writing the export: one line, and no partial file.
  loaded = build.Loaded(tiny_config(), None, {"decoder": {"w": np.ones(2, np.float32)}}, 3,
                        "workdir", "random")
  monkeypatch.setattr(build, "load", lambda *a, **k: loaded)
  monkeypatch.setattr(np, "savez", _disk_full)
  assert export_numpy.main(["--workdir", str(workdir), "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and "No space left" in err, err
  assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_full_disk_during_a_checkpoint_save_is_one_error_and_keeps_the_earlier_ones(
    tmp_path, monkeypatch):
  # Injected: orbax reports a full disk as RESOURCE_EXHAUSTED from the save or its wait (a
  # small tmpfs needs root). It used to end in hundreds of background-thread tracebacks.
  from solv_jax import checkpoints
  ckpt = checkpoints.Checkpoints(str(tmp_path), async_save=False)
  state = {"params": {"w": np.ones(3, np.float32)}}
  ckpt.save(2, state, {}, force=True)
  ckpt.wait()

  def full(*args, **kwargs):
    raise ValueError("RESOURCE_EXHAUSTED: writing .../ocdbt.process_0/d/0a1b: [Errno 28] No "
                     "space left on device")

  with monkeypatch.context() as m:
    m.setattr(ckpt.manager, "save", full)
    with pytest.raises(checkpoints.CheckpointError, match=r"step 4.*the disk is full.*\[2\]"):
      ckpt.save(4, state, {}, force=True)
    m.setattr(ckpt.manager, "save", lambda *a, **k: _raise(ValueError("a bug, not the disk")))
    with pytest.raises(ValueError, match="a bug, not the disk"):  # other errors pass as they are
      ckpt.save(4, state, {}, force=True)
    closed = []
    m.setattr(ckpt.manager, "wait_until_finished", full)
    m.setattr(ckpt.manager, "close", lambda: closed.append(True))
    with pytest.raises(checkpoints.CheckpointError, match="the disk is full"):
      ckpt.close()
    assert closed == [True]  # the manager is closed all the same: no threads left behind
  ckpt.manager.close()
  assert checkpoints.restore_params(str(tmp_path))[0] == 2
  assert issubclass(checkpoints.CheckpointError, main._user_errors())


def _raise(error):
  raise error


def test_a_full_disk_while_building_data_and_a_read_only_out_are_one_line(tmp_path,
                                                                          monkeypatch):
  import tensorflow as tf
  from solv_jax import outputs
  from solv_jax.data import datasets, synthetic
  config = tiny_config()
  config.data.name = "synthetic"
  config.data.data_dir = str(tmp_path / "data")

  def full(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, "/data/x.tfrecord; No space left on "
                                           "device")

  monkeypatch.setattr(synthetic, "build", full)
  with pytest.raises(OSError, match=r"Cannot build the synthetic dataset at .*the disk is "
                     r"full; nothing partial is left") as e:
    datasets.open_source(config.data)
  assert "\n" not in str(e.value) and issubclass(OSError, main._user_errors())

  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(
      str(tmp_path / "ro")) else real_access(p, mode))
  (tmp_path / "ro").mkdir()
  for out in (tmp_path / "ro", tmp_path / "ro" / "new" / "seg"):
    with pytest.raises(outputs.OutputError, match="cannot be written"):
      outputs.check_out_dir(str(out), overwrite=False)
  assert os.listdir(tmp_path / "ro") == []


def test_after_a_failed_save_only_the_closed_loop_noise_is_dropped(monkeypatch):
  # Measured on a 40 MB tmpfs with 4 MB free (tests/tiny.py, 12 steps): the run printed 1,092
  # lines, 250 'Event loop is closed' tracebacks from tensorstore's callbacks and orbax's and
  # asyncio's logs of the same write; with these filters, 13 lines ending in the one error.
  import logging
  import sys
  import types
  from solv_jax import checkpoints
  seen = []
  monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(value))
  monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_value))
  asyncio_logger = logging.getLogger("asyncio")
  monkeypatch.setattr(asyncio_logger, "filters", list(asyncio_logger.filters))
  checkpoints.quiet_closed_event_loops()
  closed, other = RuntimeError("Event loop is closed"), RuntimeError("something else")
  sys.excepthook(RuntimeError, closed, None)
  sys.unraisablehook(types.SimpleNamespace(exc_value=closed))
  sys.excepthook(RuntimeError, other, None)
  sys.unraisablehook(types.SimpleNamespace(exc_value=other))
  assert seen == [other, other]
  full = logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1, "Task exception was "
                           "never retrieved", None, None)
  full.message = "ValueError('RESOURCE_EXHAUSTED: ... No space left on device')"
  bug = logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1, "Task exception was "
                          "never retrieved", None, None)
  assert [f(full) for f in asyncio_logger.filters][-1] is False
  assert [f(bug) for f in asyncio_logger.filters][-1] is True
  orbax = logging.LogRecord("absl", logging.ERROR, "/x/orbax/checkpoint/future.py", 1,
                            "raised an exception: RESOURCE_EXHAUSTED: Error writing", None, None)
  assert checkpoints._not_orbax_write_failure(orbax) is False
  orbax.msg = "raised an exception: a bug"
  assert checkpoints._not_orbax_write_failure(orbax) is True
