"""The datasets solv_jax reads, one module each, looked up by config.data.name.

  dataset = datasets.get("ytvis19")        # its rules: datasets/ytvis19.py
  source = datasets.open_source(config.data)  # a sources.VideoSource, opened (or built)

  synthetic   built on first use under data_dir/synthetic/<tag>/1.0.0
  movi_e      Kubric's release (gs://kubric-public/tfds or a local mirror)
  ytvis19     data_dir/ytvis19/1.0.0, written by tools/convert_ytvis.py
  davis17     data_dir/davis17/1.0.0, written by tools/convert_davis.py
"""
from __future__ import annotations

import os

from solv_jax.data import records
from solv_jax.data.datasets import davis17, movi_e, synthetic, ytvis19  # noqa: F401 (register)
from solv_jax.data.datasets.base import DATASETS, Dataset, register  # noqa: F401
from solv_jax.data.sources import VideoSource


def names() -> tuple[str, ...]:
  return tuple(DATASETS)


def get(name: str) -> Dataset:
  if name not in DATASETS:
    raise ValueError(f"config.data.name must be one of {names()}, got {name!r}.")
  return DATASETS[name]


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def locate(data_config) -> tuple[str, str, str]:
  """(name, data_dir, dataset directory) of config.data; reads and builds nothing.

  config.data comes from a recipe (configs/*.py), which sets every field of its dataset;
  an empty data_dir is $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  dataset = get(data_config.name)
  data_dir = data_config.data_dir or default_data_dir()
  data_dir = os.path.expanduser(data_dir) if "://" not in data_dir else data_dir
  if "://" not in data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise NotADirectoryError(f"config.data.data_dir {data_dir!r} is a file, not a folder; "
                             "point it at the folder that holds (or will hold) the dataset.")
  return dataset.name, data_dir, dataset.locate(data_config, data_dir)


def open_source(data_config) -> VideoSource:
  """Opens (and for 'synthetic', builds on first use) the dataset of config.data; a local one
  with a missing or cut shard fails here, naming the file and the fix."""
  name, data_dir, path = locate(data_config)
  dataset = get(name)
  source = dataset.open(data_config, data_dir, path)
  source.fix = dataset.fix(data_config, data_dir, source.path)
  if "://" in source.path:  # remote (Kubric's bucket): not stat-ed shard by shard
    return source
  for split in source.splits:
    try:
      records.check_split_files(source.builder.info.splits[split])
    except OSError as e:
      raise OSError(f"The {source.name} dataset at {source.path} is damaged (an interrupted "
                    f"copy or write?): {e} {source.fix}") from None
  return source
