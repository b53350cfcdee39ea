"""The embedded synthetic videos (solv_jax/data/synthetic.py): built on first use under
data_dir/synthetic/<tag>/1.0.0 from config.data.synthetic, so no download is needed."""
from __future__ import annotations

from solv_jax import files
from solv_jax.data import synthetic
from solv_jax.data.datasets.base import Dataset, register
from solv_jax.data.sources import VideoSource


class Synthetic(Dataset):
  name = "synthetic"

  def locate(self, data_config, data_dir: str) -> str:
    return synthetic.dataset_path(synthetic.config_from(data_config.synthetic), data_dir)

  def open(self, data_config, data_dir: str, path: str) -> VideoSource:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      path = synthetic.build(synthetic.config_from(data_config.synthetic), data_dir)
    except Exception as e:  # noqa: BLE001 - TF and the OS report a full disk differently
      problem = files.write_problem(e)
      if problem is None:
        raise
      raise OSError(f"Cannot build the synthetic dataset at {path}: {problem}; nothing "
                    "partial is left. Free space, or set config.data.data_dir to another "
                    "folder.") from None
    return VideoSource(self.name, tfds.builder_from_directory(path), path)

  def fix(self, data_config, data_dir: str, path: str) -> str:
    return f"Delete {path}; it is rebuilt on the next run."

  def planned_frames(self, data_config) -> int:
    return synthetic.config_from(data_config.synthetic).num_frames

  def not_built(self, data_config, data_dir: str, path: str, splits: list[str]) -> str | None:
    if synthetic.is_built(synthetic.config_from(data_config.synthetic), data_dir):
      return None
    unknown = [s for s in splits if s not in synthetic.SPLITS]
    if unknown:
      raise ValueError(f"The synthetic dataset has no split {unknown[0]!r}; splits: "
                       f"{list(synthetic.SPLITS)}.")
    return f"synthetic data not built yet: it is built at {path} on first use."


register(Synthetic())
