"""Kubric MOVi-E (Greff et al., 2022) from Kubric's own TFDS release (gs://kubric-public/tfds or a
local mirror): 24 frames a video, every object id kept."""
from __future__ import annotations

from solv_jax.data import movi
from solv_jax.data.datasets.base import Dataset, register
from solv_jax.data.sources import VideoSource


class MoviE(Dataset):
  name = "movi_e"

  def locate(self, data_config, data_dir: str) -> str:
    return movi.builder_dir(data_config.tfds_name, data_dir)

  def open(self, data_config, data_dir: str, path: str) -> VideoSource:
    return VideoSource(self.name, movi.open_builder(data_config.tfds_name, data_dir), path)

  def fix(self, data_config, data_dir: str, path: str) -> str:
    return f"Copy it again from {movi.KUBRIC_DATA_DIR}."


register(MoviE())
