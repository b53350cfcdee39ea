"""What a dataset is to solv_jax: one `Dataset` object per dataset, holding its rules (where it
lives, how it opens, its evaluation subset, the training videos it holds out, how to repair
it), and the registry that config.data.name looks up. A new dataset is a module in this
package with a Dataset subclass registered by `register` (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import os

from solv_jax.data import records
from solv_jax.data.sources import VideoSource


class Dataset:
  """A dataset's rules. Subclasses set `name` and override what differs from these defaults:
  TFDS records under data_dir/<name>/1.0.0, every ground-truth id kept, evaluation on
  config.data.eval_split as it is, no training video held out."""
  name: str = ""
  # Ground truth restricted to the objects present in frame 0 (YTVIS/DAVIS protocol,
  # docs/METHOD.md §7); MOVi-E and the synthetic videos keep every id.
  first_frame_objects: bool = False
  converter: str = ""  # the tool that writes the records from the raw release, if any

  def locate(self, data_config, data_dir: str) -> str:
    """The dataset's directory (reads and builds nothing)."""
    return records.dataset_dir(data_dir, self.name, "1.0.0")

  def open(self, data_config, data_dir: str, path: str) -> VideoSource:
    """Opens the dataset at `path` (FileNotFoundError naming how to create it)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if records.read_index(path) is None:
      state = ("is incomplete (interrupted conversion?)" if os.path.exists(path)
               else "does not exist")
      raise FileNotFoundError(
          f"{self.name} records not found: {path} {state}. Create them with `python "
          f"{self.converter} --root /path/to/raw/{self.name} --out {data_dir}`, or point "
          "config.data.data_dir at the directory given to --out.")
    return VideoSource(self.name, tfds.builder_from_directory(path), path,
                       first_frame_objects=self.first_frame_objects)

  def fix(self, data_config, data_dir: str, path: str) -> str:
    """What to do when the records are damaged (ends the error messages)."""
    return (f"Convert it again: python {self.converter} --root /path/to/raw/{self.name} "
            f"--out {data_dir} --overwrite")

  def eval_split_spec(self, data_config, source: VideoSource, split: str) -> str:
    """The TFDS split string of the evaluation videos of `split`."""
    return split

  def excluded_videos(self, data_config, source: VideoSource, split: str) -> set[int]:
    """Training videos of `split` held out so that evaluation is disjoint from training."""
    return set()

  def planned_frames(self, data_config) -> int:
    """For a dataset built on first use: the frames of its longest video, before building."""
    raise NotImplementedError

  def not_built(self, data_config, data_dir: str, path: str, splits: list[str]) -> str | None:
    """For a dataset built on first use: the summary line while it is not built yet (after
    checking that `splits` exist), else None."""
    return None


DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
  if not dataset.name or dataset.name in DATASETS:
    raise ValueError(f"A dataset needs a new name; {dataset.name!r} is taken or empty.")
  DATASETS[dataset.name] = dataset
  return dataset
