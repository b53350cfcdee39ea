"""Every recipe in configs/ loads and runs one train step on tiny shapes (no recipe rots)."""
import importlib
import os

import jax
import numpy as np
import pytest

from configs import base
from solv_jax import sharding, train_step
from solv_jax.models import build
from solv_jax.models.build import build_model

# Every config file in configs/ but the shared schema, found on disk (a new recipe is tested
# without being listed here).
RECIPES = sorted(os.path.splitext(name)[0] for name in os.listdir(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
    if name.endswith(".py") and name not in ("__init__.py", "base.py"))


def _shrink(config):
  config.data.resolution = (42, 56)
  config.model.encoder = "vits14"
  config.model.slot_dim = 16
  config.model.decoder_hidden = 32
  config.model.temporal_heads = 2
  config.model.num_slots = min(config.model.num_slots, 5)
  config.train.batch_size = 2
  return config


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_a_step(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  original = config.copy_and_resolve_references()
  model = build_model(_shrink(config))
  tx = train_step.make_optimizer(config.train)
  state = train_step.create_train_state(config, model, tx)
  mesh = sharding.make_mesh(jax.devices()[:1])
  step = train_step.jit_train_step(train_step.make_train_step(model, tx, config), mesh)
  f = model.num_frames  # the recipe's window
  batch = {"video": np.random.default_rng(0).normal(size=(2, f, 42, 56, 3)).astype(np.float32),
           "frame_mask": np.ones((2, f), bool)}
  state, metrics = step(state, build.encoder_params(config, model), batch, jax.random.key(0))
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
  h, w = original.data.resolution
  assert h % 14 == 0 and w % 14 == 0


def test_recipes_follow_the_paper_table():
  movi, ytvis, davis = (importlib.import_module(f"configs.{n}").get_config()
                        for n in ("movi_e", "ytvis19", "davis17"))
  assert tuple(movi.data.resolution) == (336, 336) and movi.model.num_slots == 18
  assert tuple(ytvis.data.resolution) == (336, 504) and ytvis.model.num_slots == 8
  assert movi.model.merge and ytvis.model.merge and not davis.model.merge
  assert ytvis.train.learning_rate == 4e-4 and davis.train.learning_rate == 1e-4
  for c in (movi, ytvis, davis):
    assert c.train.batch_size == 48 and c.train.grad_clip == 1.0
    assert c.model.token_drop == 0.5 and c.data.num_context == 2 and c.model.slot_iters == 3


@pytest.mark.parametrize("model,expected", [("A", (False, "vanilla", False)),
                                            ("B", (True, "vanilla", False)),
                                            ("C", (True, "vanilla", True)),
                                            ("D", (True, "invariant", False)),
                                            ("E", (True, "invariant", True))])
def test_table3_models_from_the_config_argument(model, expected):
  c = importlib.import_module("configs.ytvis19").get_config(f"model={model}")
  assert (c.model.merge, c.model.spatial_binding, c.model.temporal_binding) == expected


def test_ablation_arguments_and_unknown_argument():
  c = importlib.import_module("configs.ytvis19").get_config("slots=12,merge=0,encoder=vits14,drop=0.3")
  assert (c.model.num_slots, c.model.merge, c.model.encoder, c.model.token_drop) == (
      12, False, "vits14", 0.3)
  with pytest.raises(ValueError, match="Unknown config argument 'slot'"):
    base.get_config("slot=3")
