"""YouTube-VIS 2019 (docs/METHOD.md §6): 336x504, K = 8, merging, 180 epochs ~ 300K iterations.

Convert the raw dataset first: python tools/convert_ytvis.py --root RAW --out DATA_DIR
then: python -m solv_jax.main --config=configs/ytvis19.py --config.data.data_dir=DATA_DIR \
      --config.model.encoder_weights=dinov2_vitb14.npz --workdir=WORKDIR
DINOv3 instead: --config=configs/ytvis19.py:encoder=dinov3_vitb16 (336x512; docs/TRAINING.md).
"""
from solv_jax import schema


def get_config(arg=None):
  return schema.get_config(arg, recipe)


def recipe(config):
  config.data.name = config.data.tfds_name = "ytvis19"
  config.data.train_split = "train+valid+test"
  config.data.eval_split = "train"
