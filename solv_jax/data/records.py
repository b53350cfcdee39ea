"""TFDS video records written by this project (converters and synthetic data).

Every dataset we write has the MOVi-E feature names (docs/METHOD.md §8), so one input
pipeline reads Kubric's MOVi-E and our own records alike:

    video            Video, (T, H, W, 3) uint8, frames encoded one by one
    segmentations    Sequence(Image (H, W, 1) uint8): 0 background, 1..K objects,
                     255 void (DAVIS); all zeros where has_annotations is False
    metadata/        video_name, num_frames, height, width, num_instances,
                     crop = (top, bottom, left, right) border rows/cols removed
    has_annotations  bool

Records are TFRecord (the format of Kubric's release), written in the order the
examples are produced (no TFDS shuffling), so index i of a split is the i-th video
of the source listing. Next to TFDS's own files, `solv_index.json` holds the
per-video frame counts (read by the training sampler without touching the
records) and marks the dataset as complete; a directory without it is partial and
is rebuilt.
"""

from __future__ import annotations

import collections
import io
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.dataset_builders import adhoc_builder
from PIL import Image
from tqdm import tqdm

INDEX_FILE = "solv_index.json"
VOID_ID = 255  # stored id of void pixels ("ignore" in DAVIS); the loader maps it to -1
_SHARD_BYTES = 64 << 20  # shards are the sampler's read unit: keep them small


def _not_tfds_dtype_chatter(record) -> bool:
  """TFDS's own Video feature reads its deprecated `.dtype` (tensorflow-datasets 4.9) and
  logs a warning about it each time a dataset is built or loaded: nothing a user can act on."""
  return "`FeatureConnector.dtype` is deprecated" not in str(record.msg)


logging.get_absl_logger().addFilter(_not_tfds_dtype_chatter)


def video_features(num_frames=None, height=None, width=None, encoding="jpeg"):
  """Feature spec of our records; fixed sizes where every video shares them."""
  return tfds.features.FeaturesDict({
      "video": tfds.features.Video(
          shape=(num_frames, height, width, 3), encoding_format=encoding),
      "segmentations": tfds.features.Sequence(
          tfds.features.Image(shape=(height, width, 1), dtype=np.uint8),
          length=num_frames),
      "metadata": {
          "video_name": tfds.features.Text(),
          "num_frames": np.int32,
          "height": np.int32,
          "width": np.int32,
          "num_instances": np.uint16,
          "crop": tfds.features.Tensor(shape=(4,), dtype=np.int32),
      },
      "has_annotations": np.bool_,
  })


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 (H, W) or (H, W, 3) array (fast, lossless)."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array, np.uint8)).save(
      buf, format="PNG", compress_level=1)
  return buf.getvalue()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(rgb, np.uint8)).save(
      buf, format="JPEG", quality=quality)
  return buf.getvalue()


class _Builder(adhoc_builder.AdhocBuilder, skip_registration=True):
  """AdhocBuilder that does not look for its own source file.

  TFDS resolves `code_path` through `importlib_resources`, which is not part of
  our environment; a builder without downloads does not need it.
  """

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  # TFDS's own lines say "Downloading and preparing dataset ... (download: Unknown size)":
  # nothing is downloaded here, the examples are generated or converted on this machine.
  def _log_download_bytes(self) -> None:
    print(f"Writing the {self.name} dataset to {self.data_dir} (made on this machine from "
          "generated or local files; nothing is downloaded) ...", flush=True)

  def _log_download_done(self) -> None:
    print(f"Wrote the {self.name} dataset to {self.data_dir}; later runs read it as it is.",
          flush=True)


def ordered_map(fn: Callable, items: Iterable, workers: int,
                lookahead: int | None = None) -> Iterator:
  """`map(fn, items)` on a thread pool, in order, with bounded lookahead."""
  workers = max(1, workers)
  lookahead = lookahead or 2 * workers
  items = iter(items)
  with futures.ThreadPoolExecutor(workers) as pool:
    pending = collections.deque(
        pool.submit(fn, x) for x in itertools.islice(items, lookahead))
    while pending:
      result = pending.popleft().result()
      for x in itertools.islice(items, 1):
        pending.append(pool.submit(fn, x))
      yield result


def dataset_dir(data_dir, name, version, config=None) -> str:
  parts = [os.fspath(data_dir), name] + ([config] if config else []) + [version]
  return os.path.join(*parts)


def read_index(path) -> dict | None:
  """The completion index of a dataset directory, or None when absent/partial."""
  index_path = os.path.join(path, INDEX_FILE)
  if not (os.path.exists(index_path)
          and os.path.exists(os.path.join(path, "dataset_info.json"))):
    return None
  with open(index_path) as f:
    return json.load(f)


def tfrecord_count(path) -> tuple[int, str | None]:
  """(number of whole records, problem or None) of a local TFRecord file.

  Walks the record framing (uint64 length, 4-byte CRC, data, 4-byte CRC) by
  seeking, without reading the data, so it costs one small read per record.
  """
  size = os.path.getsize(path)
  count, pos = 0, 0
  with open(path, "rb") as f:
    while pos < size:
      if size - pos < 12:
        return count, f"a partial record header at byte {pos} of {size}"
      f.seek(pos)
      length = int.from_bytes(f.read(8), "little")
      end = pos + 12 + length + 4
      if end > size:
        return count, (f"record {count} at byte {pos} needs {end - pos} bytes but "
                       f"the file ends after {size - pos}")
      count, pos = count + 1, end
  return count, None


def check_split_files(split_info) -> None:
  """Raises OSError naming a missing, truncated or short shard of a local split.

  Cheap when the data is whole: the shards' sizes must add up to TFDS's
  recorded `num_bytes` plus 16 framing bytes per record. Only on a mismatch
  is each shard's framing walked, and only a shard that is missing, cut inside
  a record or holds another number of records than `shard_lengths` is an error.
  """
  paths = [os.fspath(p) for p in split_info.filepaths]
  lengths = list(split_info.shard_lengths or [])
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise OSError(f"Shard {missing[0]} is missing ({len(missing)} of {len(paths)} "
                  f"shards of split {split_info.name!r} are).")
  expected = int(split_info.num_bytes) + 16 * int(split_info.num_examples)
  if not split_info.num_bytes or sum(os.path.getsize(p) for p in paths) == expected:
    return
  for path, want in zip(paths, lengths or [None] * len(paths)):
    count, problem = tfrecord_count(path)
    if problem is None and want is not None and count != want:
      problem = f"it holds {count} records but the dataset lists {want}"
    if problem is not None:
      raise OSError(f"Shard {path} is truncated or corrupt: {problem}.")


def is_complete(path, fingerprint: Mapping[str, Any]) -> bool:
  index = read_index(path)
  return index is not None and index.get("fingerprint") == json.loads(
      json.dumps(dict(fingerprint)))


def _remove_partial(data_dir, name, config, path):
  if os.path.exists(path):
    shutil.rmtree(path)
  parent = os.path.dirname(path)
  if os.path.isdir(parent):  # TFDS's interrupted "incomplete.*" work directories
    for entry in os.listdir(parent):
      if entry.startswith("incomplete."):
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def write_dataset(
    *,
    name: str,
    data_dir,
    features: tfds.features.FeaturesDict,
    splits: Mapping[str, tuple[int, Callable[[], Iterable[dict]]]],
    fingerprint: Mapping[str, Any],
    version: str = "1.0.0",
    config: str | None = None,
    description: str = "",
    overwrite: bool = False,
) -> str:
  """Writes `splits` as a TFDS dataset; a no-op when a complete copy exists.

  Args:
    name: dataset name (directory under data_dir).
    data_dir: TFDS data directory.
    features: the feature spec (usually `video_features(...)`).
    splits: split name -> (number of videos, callable returning an iterable of
      examples in the order they must be stored).
    fingerprint: JSON-able description of what is written (source, options);
      an existing dataset with another fingerprint is rebuilt.
    version, config: TFDS version and optional config name.
    description: free text stored in dataset_info.json.
    overwrite: rebuild even when a complete copy exists.

  Returns:
    The dataset directory (data_dir/name[/config]/version).

  If writing fails (an example raises, an interrupt), the partial output is
  removed and a complete dataset that was being replaced is put back.
  """
  path = dataset_dir(data_dir, name, version, config)
  if not overwrite and is_complete(path, fingerprint):
    return path
  # A complete dataset being replaced is kept aside until the new one is whole,
  # and put back if writing fails; a partial one is removed.
  aside = os.path.join(os.path.dirname(path), f".replaced.{os.path.basename(path)}")
  shutil.rmtree(aside, ignore_errors=True)  # left by a rebuild that was killed
  replacing = read_index(path) is not None
  if replacing:
    os.replace(path, aside)
  _remove_partial(data_dir, name, config, path)
  os.makedirs(data_dir, exist_ok=True)
  try:
    _write(name=name, data_dir=data_dir, features=features, splits=splits,
           fingerprint=fingerprint, version=version, config=config,
           description=description, path=path)
  except BaseException:  # a bad input file, Ctrl-C, a full disk: leave nothing half-written
    _remove_partial(data_dir, name, config, path)
    if replacing:
      os.replace(aside, path)
    raise
  if replacing:
    shutil.rmtree(aside, ignore_errors=True)
  return path


def _write(*, name, data_dir, features, splits, fingerprint, version, config,
           description, path) -> None:
  """write_dataset's body: the TFDS write, then the index that marks completion."""
  index = {"fingerprint": json.loads(json.dumps(dict(fingerprint))), "splits": {}}

  def tracked(split, total, make_examples) -> Iterator[tuple[str, dict]]:
    entries = {"video_name": [], "num_frames": [], "has_annotations": []}
    index["splits"][split] = entries
    with tqdm(total=total, desc=f"{name}/{split}", unit="video") as bar:
      for i, example in enumerate(make_examples()):
        meta = example["metadata"]
        entries["video_name"].append(str(meta["video_name"]))
        entries["num_frames"].append(int(meta["num_frames"]))
        entries["has_annotations"].append(bool(example["has_annotations"]))
        bar.update(1)
        yield f"{i:08d}", example

  split_iters = {s: tracked(s, n, make) for s, (n, make) in splits.items()}
  tfds.disable_progress_bar()  # ours above counts videos; TFDS's would nest
  builder = _Builder(
      name=name, version=version, config=config, features=features,
      split_datasets=split_iters, data_dir=os.fspath(data_dir),
      description=description, disable_shuffling=True)
  with tempfile.TemporaryDirectory() as tmp:
    builder.download_and_prepare(
        file_format="tfrecord",
        download_dir=tmp,
        download_config=tfds.download.DownloadConfig(
            min_shard_size=min(_SHARD_BYTES, 8 << 20),
            max_shard_size=_SHARD_BYTES))
  # The index is written last: its presence marks the dataset as complete.
  tmp_index = os.path.join(path, INDEX_FILE + ".tmp")
  with open(tmp_index, "w") as f:
    json.dump(index, f)
  os.replace(tmp_index, os.path.join(path, INDEX_FILE))
