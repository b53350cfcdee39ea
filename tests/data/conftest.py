"""Shared fixtures of the data tests."""

import pytest


@pytest.fixture
def data_config():
  """config.data of the dataset's recipe (configs/<name>.py; tests/tiny.py for synthetic) at
  the tests' sizes, with the keyword arguments set; `synthetic` (the generator settings)
  replaces the recipe's."""
  import importlib
  import ml_collections
  from solv_jax import schema
  from tests import tiny

  def make(name="synthetic", synthetic=None, **kw):
    if name == "synthetic":
      config = tiny.get_config()
    elif name in ("movi_e", "ytvis19", "davis17"):
      config = importlib.import_module(f"configs.{name}").get_config()
    else:  # not a dataset: the schema's data section, named so
      config = schema.get_config()
    data = config.data
    data.update(dict(name=name, resolution=(28, 42), num_context=2, shuffle_buffer=64), **kw)
    data.synthetic = ml_collections.ConfigDict(synthetic or {})
    return data

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
