"""DAVIS 2017 (docs/METHOD.md §6): fine-tuned from a YTVIS19 run, no merging, lr 1e-4, 40K
iterations.

Convert first: python tools/convert_davis.py --root RAW --out DATA_DIR
then: python -m solv_jax.main --config=configs/davis17.py --config.data.data_dir=DATA_DIR \
      --config.train.init_from=YTVIS_WORKDIR --config.model.encoder_weights=... --workdir=W
"""
from solv_jax import schema


def get_config(arg=None):
  return schema.get_config(arg, recipe)


def recipe(config):
  config.data.name = config.data.tfds_name = "davis17"
  config.data.train_split = "train"
  config.data.eval_split = "val"
  config.model.use_merge = False  # an argument merge=1 or model=X turns it back on
  config.train.learning_rate = 1e-4
  config.train.num_steps = 40_000
  config.train.num_epochs = 300
