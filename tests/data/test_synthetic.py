"""The procedural default dataset (solv_jax/data/synthetic.py)."""

import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from solv_jax.data import records
from solv_jax.data import synthetic
from tests.data.conftest import TINY_SYNTHETIC


def test_generator_is_deterministic_and_varied():
  cfg = synthetic.SyntheticConfig(num_frames=8, height=48, width=64)
  a = synthetic.generate_video(cfg, synthetic.video_rng(cfg, "train", 3))
  b = synthetic.generate_video(cfg, synthetic.video_rng(cfg, "train", 3))
  c = synthetic.generate_video(cfg, synthetic.video_rng(cfg, "validation", 3))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  assert a[0].shape == (8, 48, 64, 3) and a[0].dtype == np.uint8
  assert a[1].shape == (8, 48, 64) and a[1].dtype == np.uint8


def test_objects_counts_sizes_and_border_crossings():
  cfg = synthetic.SyntheticConfig()
  crossings, big = 0, []
  for i in range(12):
    frames, ids = synthetic.generate_video(cfg, synthetic.video_rng(cfg, "train", i))
    present = set(np.unique(ids)) - {0}
    assert present and max(present) <= cfg.max_objects
    areas = np.stack([(ids == k).sum(axis=(1, 2)) for k in range(1, max(present) + 1)])
    # An object entering or leaving: absent in some frames, present in others,
    # or cut by the image border.
    border = np.concatenate([ids[:, 0], ids[:, -1], ids[:, :, 0], ids[:, :, -1]], 1)
    crossings += sum(((a == 0).any() and (a > 0).any()) or (border == k + 1).any()
                     for k, a in enumerate(areas))
    big += list(areas.max(axis=1))
  assert crossings >= 6
  # Objects are not tiny: typical ones span >= 2 patches of 14 px at 112 px.
  assert np.median(big) >= (2 * 14 * 128 / 112) ** 2 * 0.5


def test_camera_pans_background():
  cfg = synthetic.SyntheticConfig(num_frames=2, camera_speed=(3.0, 3.0), noise=0.0,
                                  min_objects=1, max_objects=1, radius=(0.1, 0.1))
  frames, ids = synthetic.generate_video(cfg, synthetic.video_rng(cfg, "train", 0))
  f0, f1 = frames.astype(int)
  best = None
  for dy in range(-5, 6):
    for dx in range(-5, 6):
      shifted = np.roll(f0, (-dy, -dx), axis=(0, 1))
      bg = (np.roll(ids[0], (-dy, -dx), axis=(0, 1)) == 0) & (ids[1] == 0)
      err = np.abs(shifted - f1)[8:-8, 8:-8][bg[8:-8, 8:-8]].mean()
      if best is None or err < best[0]:
        best = (err, dy, dx)
  err, dy, dx = best
  assert err < 1e-6 and 2 <= np.hypot(dy, dx) <= 5


def test_config_from():
  cfg = synthetic.config_from(ml_collections.ConfigDict(dict(num_train=5, radius=[0.1, 0.2])))
  assert cfg.num_train == 5 and cfg.radius == (0.1, 0.2)
  assert cfg.tag() != synthetic.SyntheticConfig().tag()
  with pytest.raises(ValueError, match="Unknown synthetic data option"):
    synthetic.config_from({"num_trian": 3})


def test_build_writes_the_generated_videos_and_is_idempotent(synthetic_dir):
  cfg = synthetic.config_from(TINY_SYNTHETIC)
  path = os.path.join(synthetic_dir, "synthetic", cfg.tag(), "1.0.0")
  index = records.read_index(path)
  assert len(index["splits"]["train"]["num_frames"]) == 6
  assert len(index["splits"]["validation"]["num_frames"]) == 3
  ds = tfds.builder_from_directory(path).as_dataset(split="validation", shuffle_files=False)
  for i, ex in enumerate(tfds.as_numpy(ds)):
    frames, ids = synthetic.generate_video(cfg, synthetic.video_rng(cfg, "validation", i))
    np.testing.assert_array_equal(ex["video"], frames)
    np.testing.assert_array_equal(ex["segmentations"][..., 0], ids)
    assert ex["metadata"]["video_name"].decode() == f"validation_{i:05d}"
  stamp = os.stat(os.path.join(path, "dataset_info.json")).st_mtime_ns
  assert synthetic.build(cfg, synthetic_dir) == path
  assert os.stat(os.path.join(path, "dataset_info.json")).st_mtime_ns == stamp


def test_shading_scales_object_colours_by_lambert_and_changes_nothing_else():
  base = dict(num_frames=3, height=64, width=64, min_objects=1, max_objects=1,
              colours_per_object=(1, 1), noise=0.0, cross_prob=0.0, radius=(0.3, 0.3))
  plain_cfg = synthetic.SyntheticConfig(**base)
  shaded_cfg = synthetic.SyntheticConfig(**base, shading=0.8)
  assert plain_cfg.tag() == synthetic.SyntheticConfig(**base, shading=0.0).tag()
  assert shaded_cfg.tag() != plain_cfg.tag()
  plain, ids = synthetic.generate_video(plain_cfg, synthetic.video_rng(plain_cfg, "train", 1))
  shaded, shaded_ids = synthetic.generate_video(shaded_cfg,
                                                synthetic.video_rng(shaded_cfg, "train", 1))
  np.testing.assert_array_equal(shaded_ids, ids)  # same layout
  np.testing.assert_array_equal(shaded[ids == 0], plain[ids == 0])  # background untouched
  obj = ids == 1
  assert obj.sum() > 200
  colour = plain[obj].astype(float)  # one flat colour
  assert np.ptp(colour, axis=0).max() <= 1
  ratio = shaded[obj].astype(float).mean(-1) / colour.mean(-1)
  # Lambert factor 1 - s + s * max(0, n . l) lies in [0.2, 1] (uint8 rounding aside) and a
  # lit sphere spans most of that range: bright where it faces the light, dark at its rim.
  assert ratio.min() >= 0.2 - 0.02 and ratio.max() <= 1.0 + 0.02
  assert ratio.max() - ratio.min() > 0.5
  # At the object's centre the normal faces the viewer: factor 1 - s + s cos(tilt), with the
  # light's tilt in [0.45, 1.05] rad.
  t, ys, xs = np.nonzero(obj)
  first = t == 0
  cy, cx = ys[first].mean(), xs[first].mean()
  centre = shaded[0, int(round(cy)), int(round(cx))].astype(float).mean()
  factor = centre / colour.mean()
  assert 0.2 + 0.8 * np.cos(1.05) - 0.05 <= factor <= 0.2 + 0.8 * np.cos(0.45) + 0.05


def test_a_built_dataset_is_read_without_any_write(synthetic_dir, data_config, monkeypatch):
  # A complete dataset shared on a read-only mount: every write fails (injected, since tests
  # may run as root), yet the data check and both readers work.
  import builtins
  from solv_jax.data import pipeline
  real_open = builtins.open

  def read_only(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
      raise PermissionError(13, "Read-only file system", str(file))
    return real_open(file, mode, *args, **kwargs)

  def no_dirs(path, *args, **kwargs):
    raise PermissionError(13, "Read-only file system", str(path))

  monkeypatch.setattr(builtins, "open", read_only)
  monkeypatch.setattr(os, "makedirs", no_dirs)
  cfg = data_config(data_dir=synthetic_dir, synthetic=TINY_SYNTHETIC, num_context=1)
  assert "train train (6 videos)" in pipeline.check_data(cfg)
  assert len(list(pipeline.eval_videos(cfg))) == 3
  it = pipeline.make_train_iterator(cfg, 2, 0, 1)
  assert next(it)["video"].shape == (2, 3, 28, 42, 3)
  it.close()


def test_building_says_it_writes_and_downloads_nothing(tmp_path, capfd):
  cfg = synthetic.config_from(dict(num_train=1, num_validation=1, num_frames=2, height=16,
                                   width=16, min_objects=1, max_objects=1))
  synthetic.build(cfg, str(tmp_path))
  out = capfd.readouterr().out
  assert "Writing the synthetic dataset to" in out and "nothing is downloaded" in out, out
  assert "Downloading" not in out and "download:" not in out, out
