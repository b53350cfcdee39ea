"""The embedded demo: SOLV on procedurally generated videos, on a laptop CPU, no download.

  python -m solv_jax.main --config=configs/demo.py

Builds the synthetic dataset on first use (config.data.data_dir, default
~/tensorflow_datasets), trains, evaluates on held-out videos and writes masks under
workdir/demo/eval/. DINOv2 is RANDOMLY initialised here (official init, LayerScale 1e-5), so
no weights are needed; set --config.model.encoder_weights to use converted ones.
Arguments as in configs/base.py (e.g. configs/demo.py:model=A for Table 3's model A).
"""
from configs import base


def get_config(arg=None):
  config = base.get_config(arg)
  config.data.name = config.data.tfds_name = "synthetic"
  config.data.resolution = (112, 112)  # 8 x 8 tokens
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.shuffle_buffer = 256

  if "encoder=" not in (arg or ""):
    config.model.encoder = "vits14"
  if "slots=" not in (arg or ""):
    config.model.num_slots = 8
  config.model.decoder_hidden = 256

  config.train.batch_size = 8
  config.train.num_steps = 600
  config.train.num_epochs = 10
  config.train.learning_rate = 4e-4
  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.eval.num_visualize = 6
  return config
