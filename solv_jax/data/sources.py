"""Opening a dataset named by `config.data` as a TFDS builder plus its video index.

One reading path serves all four datasets: `builder.as_dataset` on TFRecord
shards with `tfds.decode.PartialDecoding`, so only the features a consumer uses
are parsed and decoded.

  synthetic   built on first use under data_dir/synthetic/<tag>/1.0.0
  movi_e      Kubric's release (gs://kubric-public/tfds or a local mirror)
  ytvis19     data_dir/ytvis19/1.0.0, written by tools/convert_ytvis.py
  davis17     data_dir/davis17/1.0.0, written by tools/convert_davis.py
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from solv_jax.data import movi
from solv_jax.data import records
from solv_jax.data import synthetic

NAMES = ("synthetic", "movi_e", "ytvis19", "davis17")

_CONVERTER = {"ytvis19": "tools/convert_ytvis.py", "davis17": "tools/convert_davis.py"}


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")


@dataclasses.dataclass
class VideoSource:
  """A TFDS video dataset plus what the samplers need to know about it."""
  name: str
  builder: Any
  path: str
  # Restrict ground truth to the objects present in frame 0 (YTVIS/DAVIS
  # protocol, docs/METHOD.md §7); MOVi-E and synthetic keep every id.
  first_frame_objects: bool = False
  fix: str = ""  # what to do when the records are damaged (ends error messages)
  _lengths: dict = dataclasses.field(default_factory=dict)

  @property
  def splits(self) -> list[str]:
    return list(self.builder.info.splits.keys())

  def check_split(self, split: str):
    if split not in self.builder.info.splits:
      raise ValueError(f"{self.name} at {self.path} has no split {split!r}; "
                       f"splits: {self.splits}.")

  def num_videos(self, split: str) -> int:
    self.check_split(split)
    return int(self.builder.info.splits[split].num_examples)

  def lengths(self, split: str) -> np.ndarray:
    """Frame count of every video of `split` (int64, in split order)."""
    self.check_split(split)
    if split not in self._lengths:
      index = records.read_index(self.path)
      static = self.builder.info.features["video"].shape[0]
      if index is not None and split in index["splits"]:
        lengths = index["splits"][split]["num_frames"]
      elif static is not None:  # MOVi-E: every video has 24 frames
        lengths = [static] * self.num_videos(split)
      else:  # last resort: one pass over the metadata
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        ds = self._read(split, {"metadata": {"num_frames": True}})
        lengths = [int(ex["metadata"]["num_frames"]) for ex in tfds.as_numpy(ds)]
      self._lengths[split] = np.asarray(lengths, np.int64)
    return self._lengths[split]

  def chunks(self, split: str) -> list[tuple[int, int]]:
    """Contiguous [start, stop) video ranges that are cheap to read: shards."""
    self.check_split(split)
    shard_lengths = list(self.builder.info.splits[split].shard_lengths or [])
    if not shard_lengths:
      n = self.num_videos(split)
      return [(a, min(a + 16, n)) for a in range(0, n, 16)]
    bounds = np.concatenate([[0], np.cumsum(shard_lengths)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

  def _read(self, split_spec: str, features, skip=()):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    decoders = {k: tfds.decode.SkipDecoding() for k in skip}
    return self.builder.as_dataset(
        split=split_spec,
        decoders=tfds.decode.PartialDecoding(features, decoders=decoders or None),
        shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1,
                                    try_autocache=False, add_tfds_id=False))

  def chunk_files(self, split: str, start: int, stop: int) -> list[tuple[str, int, int]]:
    """(TFRecord file, skip, take) holding videos [start, stop) of `split`."""
    instructions = self.builder.info.splits[f"{split}[{start}:{stop}]"].file_instructions
    return [(os.fspath(f.filename), int(f.skip), int(f.take)) for f in instructions]

  def encoded_video_parser(self):
    """serialized tf.Example -> its (T,) encoded frames; nothing else is parsed."""
    from tensorflow_datasets.core import example_parser  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    video = tfds.features.FeaturesDict({"video": self.builder.info.features["video"]})
    parser = example_parser.ExampleParser(video.get_serialized_info())
    return lambda serialized: parser.parse_example(serialized)["video"]

  def split_files(self, split_spec: str) -> list[str]:
    """The TFRecord files holding `split_spec` (e.g. 'train[600:900]'), in order."""
    instructions = self.builder.info.splits[split_spec].file_instructions
    return list(dict.fromkeys(os.fspath(f.filename) for f in instructions))

  def video_name(self, split: str, index: int) -> str:
    """Name of video `index` of `split` from the index file, else 'split[index]'."""
    index_file = records.read_index(self.path) if "://" not in self.path else None
    names = ((index_file or {}).get("splits", {}).get(split, {}).get("video_name") or [])
    return names[index] if index < len(names) else f"{split}[{index}]"

  def damaged_record_error(self, files: Sequence[str], error) -> OSError:
    """The error for TF's DataLossError raised while reading `files` (read order).

    Re-reads the files one by one (TF's own framing and CRC checks) to name
    the first damaged one; TF's message names only a byte offset.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    files = list(dict.fromkeys(files))
    for path in files:
      try:
        tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1)
      except (tf.errors.DataLossError, tf.errors.NotFoundError) as e:
        problem = f"shard {path} is corrupt ({tf_message(e)})"
        break
    else:  # not reproduced (a transient read error?): name what was being read
      problem = (f"reading {len(files)} shard(s) from {files[0] if files else '?'} on "
                 f"gave {tf_message(error)!r}")
    return OSError(f"The {self.name} dataset at {self.path} is damaged: {problem}. "
                   f"{self.fix}".strip())

  def bad_frame_error(self, videos: Sequence[tuple[str, int]], error) -> OSError:
    """The error for a frame that TF cannot decode, somewhere in `videos`.

    videos: (split, index) of the videos that were being decoded; each frame of
    them is decoded again to name the first bad one.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    parse = self.encoded_video_parser()
    for split, index in dict.fromkeys((s, int(i)) for s, i in videos):
      (path, skip, _), = self.chunk_files(split, index, index + 1)
      (serialized,) = tf.data.TFRecordDataset(path).skip(skip).take(1)
      for t, frame in enumerate(parse(serialized).numpy()):
        try:
          tf.io.decode_image(frame, channels=3, expand_animations=False)
        except tf.errors.InvalidArgumentError as e:
          return OSError(
              f"The {self.name} dataset at {self.path} holds a frame that does not decode: "
              f"video {self.video_name(split, index)!r} ({split} #{index}) frame {t}, in "
              f"{path} ({tf_message(e)}). {self.fix}".strip())
    names = [self.video_name(s, i) for s, i in videos]
    return OSError(f"The {self.name} dataset at {self.path} holds a frame that does not "
                   f"decode, in one of the videos {names} ({tf_message(error)}). "
                   f"{self.fix}".strip())

  def read_eval_videos(self, split_spec: str):
    """tf.data of decoded videos with ground truth for evaluation."""
    features = self.builder.info.features
    wanted = {"video": True, "segmentations": True,
              "metadata": {"video_name": True}}
    if "num_instances" in features["metadata"]:
      wanted["metadata"]["num_instances"] = True
    if "has_annotations" in features:
      wanted["has_annotations"] = True
    return self._read(split_spec, wanted)


def tf_message(error) -> str:
  """TF's error message on one line, without its op and function decorations."""
  text = getattr(error, "message", None) or str(error)
  text = re.sub(r"\{\{[^}]*\}\}", "", text)
  text = re.split(r"\s*\[\[|\s*\[Op:", text)[0]
  return " ".join(text.split())


def is_decode_error(error) -> bool:
  """Whether a tf InvalidArgumentError comes from decoding an image."""
  return bool(re.search(r"(?i)jpeg|png|gif|bmp|image", tf_message(error)))


def _check_records(source: VideoSource, fix: str) -> VideoSource:
  """Fails early, naming the file, when a local dataset has a missing or cut shard."""
  source.fix = fix
  if "://" in source.path:  # remote (Kubric's bucket): not stat-ed shard by shard
    return source
  for split in source.splits:
    try:
      records.check_split_files(source.builder.info.splits[split])
    except OSError as e:
      raise OSError(f"The {source.name} dataset at {source.path} is damaged (an interrupted "
                    f"copy or write?): {e} {fix}") from None
  return source


def locate(data_config) -> tuple[str, str, str]:
  """(name, data_dir, dataset directory) of config.data; reads and builds nothing.

  config.data comes from a recipe (configs/*.py), which sets every field of its dataset;
  an empty data_dir is $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  name = data_config.name
  if name not in NAMES:
    raise ValueError(f"config.data.name must be one of {NAMES}, got {name!r}.")
  data_dir = data_config.data_dir or default_data_dir()
  data_dir = os.path.expanduser(data_dir) if "://" not in data_dir else data_dir
  if name == "movi_e":
    return name, data_dir, movi.builder_dir(data_config.tfds_name, data_dir)
  if name == "synthetic":
    cfg = synthetic.config_from(data_config.synthetic)
    return name, data_dir, synthetic.dataset_path(cfg, data_dir)
  return name, data_dir, records.dataset_dir(data_dir, name, "1.0.0")


def open_source(data_config) -> VideoSource:
  """Opens (and for 'synthetic', builds on first use) the dataset of config.data."""
  name, data_dir, path = locate(data_config)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if name == "movi_e":
    builder = movi.open_builder(data_config.tfds_name, data_dir)
    return _check_records(VideoSource(name, builder, path),
                          f"Copy it again from {movi.KUBRIC_DATA_DIR}.")

  if name == "synthetic":
    cfg = synthetic.config_from(data_config.synthetic)
    path = synthetic.build(cfg, data_dir)
    return _check_records(VideoSource(name, tfds.builder_from_directory(path), path),
                          f"Delete {path}; it is rebuilt on the next run.")

  if records.read_index(path) is None:
    state = ("is incomplete (interrupted conversion?)" if os.path.exists(path)
             else "does not exist")
    raise FileNotFoundError(
        f"{name} records not found: {path} {state}. Create them with `python "
        f"{_CONVERTER[name]} --root /path/to/raw/{name} --out {data_dir}`, or point "
        "config.data.data_dir at the directory given to --out.")
  return _check_records(
      VideoSource(name, tfds.builder_from_directory(path), path, first_frame_objects=True),
      f"Convert it again: python {_CONVERTER[name]} --root /path/to/raw/{name} --out "
      f"{data_dir} --overwrite")
