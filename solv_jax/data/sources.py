"""An opened dataset: a TFDS builder plus its video index (`VideoSource`), which
`datasets.open_source` gives for config.data.

One reading path serves every dataset: `builder.as_dataset` on TFRecord shards with
`tfds.decode.PartialDecoding`, so only the features a consumer uses are parsed and decoded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from solv_jax.data import records


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
