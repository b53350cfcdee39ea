"""Every recipe in configs/ loads and runs one train step on tiny shapes (no recipe rots)."""
import importlib
import os

import jax
import numpy as np
import pytest

from solv_jax import schema
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
  config.model.encoder_variant = "vits14"
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
  assert movi.model.use_merge and ytvis.model.use_merge and not davis.model.use_merge
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
  assert (c.model.use_merge, c.model.spatial_binding_type,
          c.model.use_temporal_binding) == expected


@pytest.mark.parametrize("name,expected", [("ytvis19", (336, 512)), ("davis17", (336, 512)),
                                           ("movi_e", (336, 336)), ("demo", (112, 112))])
def test_the_encoder_argument_fits_the_resolution_to_the_patch_size(name, expected):
  recipe = importlib.import_module(f"configs.{name}")
  c = recipe.get_config("encoder=dinov3_vitb16")
  assert c.model.encoder_variant == "dinov3_vitb16" and tuple(c.data.resolution) == expected
  schema.validate(c)
  # a DINOv2 encoder keeps the recipe's resolution, a multiple of 14 already
  assert tuple(recipe.get_config("encoder=vits14").data.resolution) == tuple(
      recipe.get_config().data.resolution)


def test_ablation_arguments_and_unknown_argument():
  c = importlib.import_module("configs.ytvis19").get_config("slots=12,merge=0,encoder=vits14,drop=0.3")
  assert (c.model.num_slots, c.model.use_merge, c.model.encoder_variant,
          c.model.token_drop) == (12, False, "vits14", 0.3)
  with pytest.raises(ValueError, match="Unknown config argument 'slot'"):
    schema.get_config("slot=3")


def test_model_keys_are_the_fields_of_solv():
  """config.model holds SOLV's fields under their own names (and encoder_weights): no key
  is renamed or dropped on the way to the model."""
  import dataclasses
  from solv_jax.models import solv
  fields = {f.name for f in dataclasses.fields(solv.SOLV) if f.init} - {
      "parent", "name", "resolution", "num_frames"}
  assert set(schema.get_config().model) == fields | set(solv.CONFIG_ONLY)
  config = importlib.import_module("configs.davis17").get_config("model=C,slots=5,drop=0.25")
  model = build_model(config)
  for key, value in config.model.items():
    if key not in solv.CONFIG_ONLY:
      assert getattr(model, key) == value, key
  assert (model.use_merge, model.spatial_binding_type, model.use_temporal_binding,
          model.num_slots, model.token_drop) == (True, "vanilla", True, 5, 0.25)


# The model keys' names before they became SOLV's field names: new -> old.
OLD_NAMES = {"encoder_variant": "encoder", "spatial_binding_type": "spatial_binding",
             "use_temporal_binding": "temporal_binding", "use_merge": "merge"}


def test_upgrade_reads_the_old_model_key_names(tmp_path):
  """Configs saved before the model keys took SOLV's field names load under the new names:
  a dict, a workdir's config.json and an export's __config__."""
  import copy
  import json
  from solv_jax import export
  old = {"data": {"name": "davis17"},
         "model": {"encoder": "vits14", "spatial_binding": "vanilla",
                   "temporal_binding": False, "merge": False, "num_slots": 5}}
  saved = copy.deepcopy(old)
  config = schema.upgrade(saved)
  assert saved == old  # the caller's dict is left alone
  m = config.model
  assert (m.encoder_variant, m.spatial_binding_type, m.use_temporal_binding, m.use_merge,
          m.num_slots) == ("vits14", "vanilla", False, False, 5)
  assert not set(OLD_NAMES.values()) & set(m)
  assert m.param_init == "torch" and config.train.batch_size == 48  # the schema's defaults
  schema.validate(config)

  # The davis17 recipe saved in the old format: it loads as the recipe, and writing the
  # recipe's config over it reports no change.
  davis = importlib.import_module("configs.davis17").get_config()
  stored = json.loads(davis.to_json_best_effort())
  for new, old_name in OLD_NAMES.items():
    stored["model"][old_name] = stored["model"].pop(new)
  as_json = lambda c: json.loads(c.to_json_best_effort())  # noqa: E731
  (tmp_path / "config.json").write_text(json.dumps(stored))
  assert as_json(export.load_config(str(tmp_path))) == as_json(davis)
  assert export.save_config(str(tmp_path), davis) == []
  npz = str(tmp_path / "model.npz")
  np.savez(npz, __config__=np.array(json.dumps(stored)))
  assert as_json(export.read_config(npz)) == as_json(davis)


def test_old_model_key_names_are_errors_that_name_the_new_ones():
  config = schema.get_config()
  config.model.merge = False  # as code written before the rename would
  with pytest.raises(schema.ConfigError, match=r"config\.model\.merge is not a config key "
                     r"\(renamed to config\.model\.use_merge\)"):
    schema.validate(config)
  # On the command line (solv_jax.main and solv_jax.evaluate print this line; tests/test_main.py).
  assert schema.renamed_override(["--config=configs/demo.py", "--noconfig.model.merge"]) == (
      "--noconfig.model.merge: config.model.merge was renamed to config.model.use_merge; "
      "pass --noconfig.model.use_merge instead.")
  assert schema.renamed_override(["--config.model.encoder=vits14"]) == (
      "--config.model.encoder: config.model.encoder was renamed to "
      "config.model.encoder_variant; pass --config.model.encoder_variant=vits14 instead.")
  assert schema.renamed_override(["--config.model.encoder_variant=vits14",
                                "--config=configs/ytvis19.py:merge=0,encoder=vits14"]) is None


def test_recipes_set_their_datasets():
  """Each recipe sets its config.data (the data code fills in nothing): MOVi-E reads Kubric's
  bucket by default, the others a local data_dir (default $TFDS_DATA_DIR)."""
  from solv_jax.data import datasets, movi
  from tests import tiny
  expected = {"movi_e": ("movi_e", "movi_e/256x256", movi.KUBRIC_DATA_DIR, "train", "validation"),
              "ytvis19": ("ytvis19", "ytvis19", "", "train+valid+test", "train"),
              "davis17": ("davis17", "davis17", "", "train", "val"),
              "demo": ("synthetic", "synthetic", "", "train", "validation")}
  expected["tiny"] = expected["demo"]
  configs = {n: importlib.import_module(f"configs.{n}").get_config() for n in RECIPES}
  configs["tiny"] = tiny.get_config()
  for name, config in configs.items():
    d = config.data
    assert d.name in datasets.names() and d.tfds_name and d.train_split and d.eval_split, name
    if name in expected:
      assert (d.name, d.tfds_name, d.data_dir, d.train_split, d.eval_split) == expected[name]
  assert datasets.locate(configs["movi_e"].data)[1:] == (
      "gs://kubric-public/tfds", "gs://kubric-public/tfds/movi_e/256x256/1.0.0")


def test_every_generator_knob_of_the_demo_is_a_config_key():
  """configs/demo.py lists every SyntheticConfig field, so each can be set on the command line
  (a locked ConfigDict refuses keys it does not hold), and listing them leaves the dataset,
  its tag and directory, as the recipe's own settings alone make it."""
  import dataclasses
  from solv_jax.data import synthetic
  from configs import demo
  config = demo.get_config()
  fields = {f.name: f.default for f in dataclasses.fields(synthetic.SyntheticConfig)}
  assert set(config.data.synthetic) == set(fields)
  recipe_only = {k: v for k, v in config.data.synthetic.items() if v != fields[k]}
  assert synthetic.config_from(config.data.synthetic) == synthetic.config_from(recipe_only)
  assert synthetic.config_from(config.data.synthetic).tag() == "112x112_680164e1e3"
  config.lock()  # as the entry point's --config flag holds it
  config.data.synthetic.num_train = 7
  config.data.synthetic.radius = (0.1, 0.2)
  cfg = synthetic.config_from(config.data.synthetic)
  assert (cfg.num_train, cfg.radius, cfg.palette_size) == (7, (0.1, 0.2), 3)
  base_config = schema.get_config()
  base_config.lock()
  with pytest.raises(AttributeError):  # what the demo would say without the listed knobs
    base_config.data.synthetic.num_train = 7
