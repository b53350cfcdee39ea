"""MOVi-E straight from Kubric's TFDS release (docs/METHOD.md §8).

Kubric publishes `movi_e/256x256` and `movi_e/128x128` (version 1.0.0, TFRecord,
splits train / validation / test, 24 frames per video) under
gs://kubric-public/tfds. The builder class is not part of TFDS, so the dataset
is opened from its directory (`tfds.builder_from_directory`), which also works
for a local mirror of that directory. Each record also carries depth, normals,
flows, object coordinates, instances, camera and events; the pipeline asks TFDS
for `video`, `segmentations` and `metadata/{video_name,num_instances}` only
(`tfds.decode.PartialDecoding`), so the rest is neither parsed nor decoded.
"""

from __future__ import annotations

import os

KUBRIC_DATA_DIR = "gs://kubric-public/tfds"
DEFAULT_TFDS_NAME = "movi_e/256x256"
DEFAULT_VERSION = "1.0.0"


def builder_dir(tfds_name: str = DEFAULT_TFDS_NAME,
                data_dir: str = KUBRIC_DATA_DIR) -> str:
  """data_dir/movi_e/<config>/<version> for a name like 'movi_e/128x128[:1.0.0]'."""
  name, _, version = tfds_name.partition(":")
  parts = name.split("/")
  if len(parts) != 2 or parts[0] != "movi_e":
    raise ValueError(f"Expected a MOVi-E TFDS name like 'movi_e/256x256' or "
                     f"'movi_e/128x128', got {tfds_name!r}.")
  return "/".join([data_dir.rstrip("/"), name, version or DEFAULT_VERSION])


def open_builder(tfds_name: str = DEFAULT_TFDS_NAME,
                 data_dir: str = KUBRIC_DATA_DIR):
  """The read-only TFDS builder of a MOVi-E directory (local or gs://)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = builder_dir(tfds_name, data_dir)
  if not tf.io.gfile.exists(os.path.join(path, "dataset_info.json")):
    raise FileNotFoundError(
        f"MOVi-E not found at {path} (no dataset_info.json). Use "
        f"config.data.data_dir='{KUBRIC_DATA_DIR}' to read Kubric's public copy, "
        f"or mirror it first: gsutil -m cp -r {KUBRIC_DATA_DIR}/{tfds_name.split(':')[0]} "
        f"<DATA_DIR>/movi_e/ and set config.data.data_dir=<DATA_DIR>.")
  return tfds.builder_from_directory(path)
