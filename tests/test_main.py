"""End to end through the entry point on a tiny synthetic dataset: train, resume, evaluate,
export. Each run is a few steps of the tiny config (tests/tiny.py)."""
import json
import os

import jax
import numpy as np
import pytest

from solv_jax import checkpoints, evaluation, export, inference, main, train, train_step
from solv_jax.data import pipeline
from solv_jax.data.frames import resize_frames
from solv_jax.models import build
from solv_jax.models.build import build_model
from tests import tiny
from tools import export_numpy


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _config(data_dir, **train_overrides):
  config = tiny.get_config()  # the tiny synthetic run, a bit larger here
  config.data.data_dir = data_dir
  config.data.synthetic.update(dict(num_train=6, num_validation=2, height=48, width=64))
  config.train.batch_size = 4
  config.eval.num_visualize = 1
  config.eval.batch_windows = 4
  for k, v in train_overrides.items():
    config.train[k] = v
  return config


def _tensorboard_tags(folder):
  """{(step, tag)} of the image summaries in the event files under `folder`."""
  import tensorflow as tf
  from tensorboard.compat.proto import event_pb2
  out = set()
  for name in os.listdir(folder):
    for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          out.add((event.step, value.tag))
  return out


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows}


def test_train_and_eval_writes_results_pictures_and_exports(data_dir, tmp_path):
  config = _config(data_dir)
  config.eval.untrained = True
  workdir = str(tmp_path / "run")
  results = main.run(config, workdir, "train_and_eval")

  # The untrained baseline: the seed's initial params through the same protocol.
  with open(os.path.join(workdir, "eval_step0", "results.json")) as f:
    step0 = json.load(f)
  model = build_model(config)
  init = {**jax.device_get(train_step.create_train_state(config, model, train_step.make_optimizer(
      config.train)).params), "encoder": build.encoder_params(config, model)}
  expected = evaluation.evaluate(config, model, init, str(tmp_path / "check"), 0)
  assert step0["step"] == 0 and step0["fg_ari"] == pytest.approx(expected["fg_ari"])
  assert step0["miou"] == pytest.approx(expected["miou"])
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    saved = json.load(f)
  for key in ("fg_ari", "miou", "num_videos", "step", "mbo", "video_fg_ari", "fg_ari_matched"):
    assert key in saved
  assert saved["num_videos"] == 2 and saved["step"] == 6
  assert 0.0 <= saved["miou"] <= 1.0 and -1.0 <= saved["fg_ari"] <= 1.0
  assert results["miou"] == saved["miou"]
  names = os.listdir(os.path.join(workdir, "eval"))
  assert any(n.endswith(".png") for n in names) and any(n.endswith(".gif") for n in names)
  # ... and the same mask pictures in TensorBoard, at step 0 and at the final step.
  images = _tensorboard_tags(os.path.join(workdir, "tensorboard"))
  strip = [n[:-4] for n in names if n.endswith(".png")][0]
  assert {(0, f"masks/{strip}"), (6, f"masks/{strip}")} <= images, images
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert sorted(int(s) for s in names if s.isdigit()) == [2, 4, 6]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "manifests"))) == [
      "2.json", "4.json", "6.json"]  # each kept step verified, no stale manifest

  # Export round trip: the .npz holds the same params as the checkpoint.
  out = str(tmp_path / "model.npz")
  assert export_numpy.main(["--workdir", workdir, "--out", out]) == 0
  cfg, params, encoder = export.load_export(out)
  step, ckpt_params = checkpoints.restore_params(workdir)
  assert step == 6 and cfg.model.num_slots == config.model.num_slots
  flat_a = jax.tree_util.tree_leaves_with_path(params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(ckpt_params))
  assert len(flat_a) == len(flat_b)
  for path, value in flat_a:
    np.testing.assert_array_equal(value, flat_b[path])
  ref_encoder = build.encoder_params(config, build_model(config))
  for a, b in zip(jax.tree_util.tree_leaves(encoder), jax.tree_util.tree_leaves(ref_encoder)):
    np.testing.assert_array_equal(a, b)

  # eval mode from the workdir reproduces the train_and_eval numbers.
  again = main.run(config, workdir, "eval")
  assert again["miou"] == pytest.approx(saved["miou"]) and again["step"] == 6


def test_resume_continues_exactly(data_dir, tmp_path):
  config = _config(data_dir)
  full = str(tmp_path / "full")
  state_full = train.train(config, full)
  part = str(tmp_path / "part")
  train.train(config, part, stop_at=3)  # "preempted" after step 3 (checkpoint at 3)
  state_resumed = train.train(config, part)
  assert int(state_resumed.step) == 6
  losses_full, losses_part = _losses(full), _losses(part)
  for step in range(1, 7):
    assert losses_part[step] == losses_full[step], step
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state_full.params)),
                  jax.tree_util.tree_leaves(jax.device_get(state_resumed.params))):
    np.testing.assert_array_equal(a, b)


def test_evaluation_reuses_per_frame_binding_with_identical_results(data_dir):
  config = _config(data_dir)
  model = build_model(config)
  tx = train_step.make_optimizer(config.train)
  state = train_step.create_train_state(config, model, tx)
  params = {**state.params, "encoder": build.encoder_params(config, model)}
  video = next(iter(pipeline.eval_videos(config)))
  frames = resize_frames(video["video"], config.data.resolution)
  seg = inference.VideoSegmenter(model, params, batch_windows=4, frame_chunk=4)
  fast, naive = seg(frames), seg(frames, naive=True)
  np.testing.assert_allclose(fast["masks"], naive["masks"], atol=1e-5)
  np.testing.assert_array_equal(fast["valid"], naive["valid"])
  np.testing.assert_array_equal(fast["track_ids"], naive["track_ids"])
  assert fast["masks"].shape[0] == frames.shape[0]


def test_unknown_config_override_fails_clearly(tmp_path):
  import subprocess
  import sys
  for override, line in [
      ("--config.train.batch_sizee=8", "error: --config.train.batch_sizee: config.train."
       "batch_sizee is not a config key (did you mean config.train.batch_size?)."),
      # No key close to it: ml_collections' KeyError names only the leaf.
      ("--config.model.no_such_key=1",
       "error: --config.model.no_such_key: config.model.no_such_key is not a config key.")]:
    res = subprocess.run([sys.executable, "-m", "solv_jax.main", "--config=configs/demo.py",
                          override, f"--workdir={tmp_path}"],
                         capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [line]
    assert not os.listdir(tmp_path)


def test_config_override_with_an_old_key_name_names_the_new_one(tmp_path):
  import subprocess
  import sys
  res = subprocess.run([sys.executable, "-m", "solv_jax.main", "--config=configs/demo.py",
                        "--config.model.merge=False", f"--workdir={tmp_path}"],
                       capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert res.returncode == 2
  assert res.stderr.strip().splitlines() == [
      "error: --config.model.merge: config.model.merge was renamed to config.model.use_merge; "
      "pass --config.model.use_merge=False instead."]
  assert not os.listdir(tmp_path)


def test_an_encoder_override_fits_the_recipes_resolution_unless_one_is_given(tmp_path):
  """--config.model.encoder_variant on a DINOv2 recipe: its 336x504 becomes 336x512 for
  DINOv3's patch 16, said in one line; an explicit --config.data.resolution is left as given
  (and one that does not fit is refused, naming the fit). Stops at the missing dataset."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  base = [sys.executable, "-m", "solv_jax.main", "--config=configs/ytvis19.py",
          "--config.model.encoder_variant=dinov3_vitb16",
          f"--config.data.data_dir={tmp_path / 'no_data'}", f"--workdir={tmp_path / 'w'}"]
  res = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=repo)
  assert ("config.data.resolution (336, 504) -> (336, 512): the nearest multiples of "
          "dinov3_vitb16's patch size") in res.stdout
  assert res.returncode == 1 and "no_data" in res.stderr.strip().splitlines()[-1]
  res = subprocess.run(base + ["--config.data.resolution=(336, 504)"], capture_output=True,
                       text=True, timeout=300, cwd=repo)
  assert res.returncode == 1 and "->" not in res.stdout
  assert res.stderr.strip().splitlines()[-1].endswith(
      "--config.data.resolution='(336, 512)'.")
  assert not os.path.exists(tmp_path / "w")


def test_save_config_reports_what_changed_since_the_stored_config(tmp_path):
  from configs import demo
  config = demo.get_config()
  assert export.save_config(str(tmp_path), config) == []  # a new workdir
  assert export.save_config(str(tmp_path), config) == []  # the same config again
  steps, (h, w) = config.train.num_steps, config.data.resolution
  config.train.num_steps = steps + 1
  config.data.resolution = (h + 14, w)
  assert export.save_config(str(tmp_path), config) == [
      f"data.resolution: {[h, w]!r} -> {[h + 14, w]!r}",
      f"train.num_steps: {steps!r} -> {steps + 1!r}"]
  assert export.load_config(str(tmp_path)).train.num_steps == steps + 1
  # A demo workdir written before configs/demo.py listed every generator knob: the knobs it
  # left out ran at the generator's defaults, so they are no change; a knob set is one.
  with open(tmp_path / "config.json") as f:
    saved = json.load(f)
  saved["data"]["synthetic"] = {k: v for k, v in saved["data"]["synthetic"].items()
                                if k not in ("num_train", "shapes", "speed")}
  with open(tmp_path / "config.json", "w") as f:
    json.dump(saved, f)
  assert export.save_config(str(tmp_path), config) == []
  config.data.synthetic.num_train = 17
  assert export.save_config(str(tmp_path), config) == ["data.synthetic.num_train: 300 -> 17"]


def test_config_and_data_errors_come_before_anything_is_written(data_dir, tmp_path, monkeypatch):
  # Each used to be a traceback after config.json (and checkpoints/) were written.
  import types
  from solv_jax import schema, sharding
  workdir = tmp_path / "run"
  with monkeypatch.context() as m:  # batch 4 over 3 devices
    m.setattr(sharding, "make_mesh", lambda devices=None: types.SimpleNamespace(
        devices=np.empty(3)))
    with pytest.raises(schema.ConfigError, match=r"multiple of the number of devices \(3\)"):
      main.run(_config(data_dir), str(workdir), "train")
  short = _config(data_dir)
  short.data.synthetic.num_frames = 2  # shorter than the 5-frame window
  with pytest.raises(main.DataError, match=r"F = 2\*2\+1 = 5 frames but every video"):
    main.run(short, str(workdir), "train")
  a_file = tmp_path / "not_a_folder"
  a_file.write_text("x")
  with pytest.raises(main.DataError, match="is a file, not a folder"):
    main.run(_config(str(a_file)), str(workdir), "train")
  assert not workdir.exists()
  assert all(issubclass(e, main._user_errors()) for e in (schema.ConfigError, main.DataError))
