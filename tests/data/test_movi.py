"""MOVi-E read from a directory in Kubric's published format (solv_jax/data/movi.py).

The fixture is written with TFDS using the feature spec of Kubric's
challenges/movi/movi_e.py (MoviE._info, config '128x128': 24 frames of
128x128), every feature present, TFRecord, example shuffling on as in Kubric's
release, and no registered builder class.
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from solv_jax.data import movi
from solv_jax.data import pipeline
from solv_jax.data import datasets

S, H, W = 24, 128, 128
CATEGORIES = ["Action Figures", "Bag", "Board Games", "Bottles and Cans and Cups",
              "Camera", "Car Seat", "Consumer Goods", "Hat", "Headphones",
              "Keyboard", "Legos", "Media Cases", "Mouse", "None", "Shoe",
              "Stuffed Toys", "Toys"]


def kubric_movi_e_features(s=S, h=H, w=W):
  """Kubric's MOVi-E FeaturesDict, as in its builder's _info()."""
  instance = {
      "mass": tf.float32,
      "friction": tf.float32,
      "restitution": tf.float32,
      "positions": tfds.features.Tensor(shape=(s, 3), dtype=tf.float32),
      "quaternions": tfds.features.Tensor(shape=(s, 4), dtype=tf.float32),
      "velocities": tfds.features.Tensor(shape=(s, 3), dtype=tf.float32),
      "angular_velocities": tfds.features.Tensor(shape=(s, 3), dtype=tf.float32),
      "bboxes_3d": tfds.features.Tensor(shape=(s, 8, 3), dtype=tf.float32),
      "image_positions": tfds.features.Tensor(shape=(s, 2), dtype=tf.float32),
      "bboxes": tfds.features.Sequence(tfds.features.BBoxFeature()),
      "bbox_frames": tfds.features.Sequence(
          tfds.features.Tensor(shape=(), dtype=tf.int32)),
      "visibility": tfds.features.Tensor(shape=(s,), dtype=tf.uint16),
      "asset_id": tfds.features.Text(),
      "category": tfds.features.ClassLabel(names=CATEGORIES),
      "scale": tf.float32,
      "is_dynamic": tf.bool,
  }
  return tfds.features.FeaturesDict({
      "metadata": {
          "video_name": tfds.features.Text(),
          "width": tf.int32,
          "height": tf.int32,
          "num_frames": tf.int32,
          "num_instances": tf.uint16,
          "depth_range": tfds.features.Tensor(shape=(2,), dtype=tf.float32),
          "forward_flow_range": tfds.features.Tensor(shape=(2,), dtype=tf.float32),
          "backward_flow_range": tfds.features.Tensor(shape=(2,), dtype=tf.float32),
      },
      "background": tfds.features.Text(),
      "instances": tfds.features.Sequence(feature=instance),
      "camera": {
          "focal_length": tf.float32,
          "sensor_width": tf.float32,
          "field_of_view": tf.float32,
          "positions": tfds.features.Tensor(shape=(s, 3), dtype=tf.float32),
          "quaternions": tfds.features.Tensor(shape=(s, 4), dtype=tf.float32),
      },
      "events": {
          "collisions": tfds.features.Sequence({
              "instances": tfds.features.Tensor(shape=(2,), dtype=tf.uint16),
              "frame": tf.int32,
              "force": tf.float32,
              "position": tfds.features.Tensor(shape=(3,), dtype=tf.float32),
              "image_position": tfds.features.Tensor(shape=(2,), dtype=tf.float32),
              "contact_normal": tfds.features.Tensor(shape=(3,), dtype=tf.float32),
          })
      },
      "video": tfds.features.Video(shape=(s, h, w, 3)),
      "segmentations": tfds.features.Sequence(
          tfds.features.Image(shape=(h, w, 1), dtype=tf.uint8), length=s),
      "forward_flow": tfds.features.Sequence(
          tfds.features.Tensor(shape=(h, w, 2), dtype=tf.uint16), length=s),
      "backward_flow": tfds.features.Sequence(
          tfds.features.Tensor(shape=(h, w, 2), dtype=tf.uint16), length=s),
      "depth": tfds.features.Sequence(
          tfds.features.Image(shape=(h, w, 1), dtype=tf.uint16), length=s),
      "normal": tfds.features.Video(shape=(s, h, w, 3), dtype=tf.uint16),
      "object_coordinates": tfds.features.Video(shape=(s, h, w, 3), dtype=tf.uint16),
  })


def kubric_example(rng, name, num_instances=3):
  """One record with every feature filled (values are arbitrary but valid)."""
  yy, xx = np.mgrid[0:H, 0:W]
  video = np.zeros((S, H, W, 3), np.uint8)
  seg = np.zeros((S, H, W, 1), np.uint8)
  for t in range(S):
    video[t] = (np.stack([xx, yy, xx + yy], -1) * 2 + 7 * t + rng.integers(0, 9)) % 256
    for k in range(num_instances):
      y0, x0 = 10 + 30 * k, (5 * t + 20 * k) % (W - 20)
      seg[t, y0:y0 + 20, x0:x0 + 20] = k + 1
      video[t, y0:y0 + 20, x0:x0 + 20] = 60 * (k + 1)
  f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
  u16 = lambda *shape: rng.integers(0, 65535, size=shape).astype(np.uint16)
  instances = [{
      "mass": 1.0, "friction": 0.5, "restitution": 0.5,
      "positions": f32(S, 3), "quaternions": f32(S, 4), "velocities": f32(S, 3),
      "angular_velocities": f32(S, 3), "bboxes_3d": f32(S, 8, 3),
      "image_positions": f32(S, 2),
      "bboxes": [tfds.features.BBox(0.1, 0.2, 0.3, 0.4)] * 2,
      "bbox_frames": np.array([0, 1], np.int32),
      "visibility": u16(S), "asset_id": f"asset_{k}", "category": CATEGORIES[k],
      "scale": 1.5, "is_dynamic": bool(k % 2)} for k in range(num_instances)]
  return {
      "metadata": {"video_name": name, "width": W, "height": H, "num_frames": S,
                   "num_instances": num_instances, "depth_range": [0.5, 20.0],
                   "forward_flow_range": [-3.0, 3.0],
                   "backward_flow_range": [-3.0, 3.0]},
      "background": "hdri_0",
      "instances": instances,
      "camera": {"focal_length": 35.0, "sensor_width": 32.0, "field_of_view": 0.8,
                 "positions": f32(S, 3), "quaternions": f32(S, 4)},
      "events": {"collisions": [{
          "instances": np.array([0, 65535], np.uint16), "frame": 3, "force": 2.0,
          "position": f32(3), "image_position": f32(2), "contact_normal": f32(3)}]},
      "video": video,
      "segmentations": list(seg),
      "forward_flow": list(u16(S, H, W, 2)),
      "backward_flow": list(u16(S, H, W, 2)),
      "depth": list(u16(S, H, W, 1)),
      "normal": u16(S, H, W, 3),
      "object_coordinates": u16(S, H, W, 3),
  }, video, seg[..., 0]


class _KubricLikeMoviE(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes data_dir/movi_e/128x128/1.0.0 like Kubric's Beam builder did."""
  name = "movi_e"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="128x128")]
  SPLIT_SIZES = {"train": 3, "validation": 2}

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):  # no source file lookup (importlib_resources is absent)
    return None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=kubric_movi_e_features())

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s, n) for s, n in self.SPLIT_SIZES.items()}

  def _generate_examples(self, split, n):
    rng = np.random.default_rng(0 if split == "train" else 1)
    for i in range(n):
      name = f"{split}_{i}"
      ex, video, seg = kubric_example(rng, name)
      self.truth[name] = (video, seg)
      yield name, ex


@pytest.fixture(scope="module")
def kubric_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("kubric"))
  builder = _KubricLikeMoviE(data_dir=data_dir)
  builder.truth = {}
  builder.download_and_prepare(file_format="tfrecord",
                               download_dir=data_dir + "/downloads")
  return data_dir, builder.truth


def test_spec_has_every_kubric_feature(kubric_dir):
  data_dir, _ = kubric_dir
  info = tfds.builder_from_directory(movi.builder_dir("movi_e/128x128", data_dir)).info
  assert set(info.features) == {
      "metadata", "background", "instances", "camera", "events", "video",
      "segmentations", "forward_flow", "backward_flow", "depth", "normal",
      "object_coordinates"}
  assert info.features["video"].shape == (S, H, W, 3)


def test_eval_and_train_read_only_what_they_use(kubric_dir, data_config, monkeypatch):
  data_dir, truth = kubric_dir
  decoded = []  # (feature class, dtype, shape) of everything TFDS decodes

  def spy(cls):
    original = cls.decode_example
    def wrapped(self, *args, **kwargs):
      decoded.append((cls.__name__, np.dtype(self.np_dtype).name, tuple(self.shape)))
      return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, "decode_example", wrapped)

  for cls in (tfds.features.Image, tfds.features.Tensor):
    spy(cls)

  cfg = data_config(name="movi_e", tfds_name="movi_e/128x128", data_dir=data_dir,
                    resolution=(28, 28))
  source = datasets.open_source(cfg)
  spec = source.read_eval_videos("validation").element_spec
  assert set(spec) == {"video", "segmentations", "metadata"}
  assert set(spec["metadata"]) == {"video_name", "num_instances"}

  videos = list(pipeline.eval_videos(cfg))
  assert sorted(v["video_name"] for v in videos) == ["validation_0", "validation_1"]
  for v in videos:
    video, seg = truth[v["video_name"]]
    np.testing.assert_array_equal(v["video"], video)  # PNG: lossless
    np.testing.assert_array_equal(v["segmentations"], seg.astype(np.int32))
    assert v["segmentations"].dtype == np.int32 and v["has_annotations"]
    assert v["num_instances"] == 3

  it = pipeline.make_train_iterator(cfg, 4, 0, 1)
  batch = next(it)
  it.close()
  assert batch["video"].shape == (4, 5, 28, 28, 3)
  assert batch["video"].dtype == np.uint8  # normalised on the device, in the step

  # Only uint8 frames, the name and num_instances were ever decoded: no depth,
  # flow, normals, object coordinates, instances, camera or events.
  kinds = set(decoded)
  assert kinds <= {("Image", "uint8", (H, W, 3)), ("Image", "uint8", (H, W, 1)),
                   ("Tensor", "object", ()), ("Tensor", "uint16", ())}, kinds
  assert ("Image", "uint8", (H, W, 1)) in kinds

  # Control: a plain as_dataset does decode depth, flows, normals (uint16).
  decoded.clear()
  source.builder.as_dataset(split="validation")
  assert ("Image", "uint16", (H, W, 1)) in set(decoded)
  assert ("Tensor", "uint16", (H, W, 2)) in set(decoded)


def test_missing_movi_dir_error(tmp_path, data_config):
  cfg = data_config(name="movi_e", tfds_name="movi_e/256x256", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"movi_e/256x256/1.0.0.*gsutil"):
    datasets.open_source(cfg)
