"""Shared fixtures of the data tests."""

import pytest


@pytest.fixture
def data_config():
  """A config.data-like ConfigDict factory."""
  import ml_collections

  def make(**kw):
    base = dict(name="synthetic", tfds_name="", data_dir="", resolution=(28, 42),
                num_context=2, train_split="", eval_split="", shuffle_buffer=64,
                ytvis_eval_subset="authors", eval_max_videos=0)
    base.update(kw)
    return ml_collections.ConfigDict(base)

  return make


TINY_SYNTHETIC = dict(num_train=6, num_validation=3, num_frames=6, height=32,
                      width=48, radius=(0.2, 0.3))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
  """data_dir holding the tiny synthetic dataset (built once per session)."""
  from solv_jax.data import synthetic
  data_dir = str(tmp_path_factory.mktemp("synthetic"))
  synthetic.build(synthetic.config_from(TINY_SYNTHETIC), data_dir)
  return data_dir
