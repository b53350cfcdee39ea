"""A tiny SOLV config for tests: vits14 at 42x56 (12 tokens), 4 slots, small decoder."""
from solv_jax import schema


def tiny_config(**model_overrides):
  config = schema.get_config()
  config.data.resolution = (42, 56)
  config.model.encoder_variant = "vits14"
  config.model.num_slots = 4
  config.model.slot_dim = 16
  config.model.decoder_hidden = 32
  config.model.temporal_heads = 2
  config.train.batch_size = 8
  config.train.num_steps = 20
  config.train.num_epochs = 4
  for k, v in model_overrides.items():
    config.model[k] = v
  return config


def get_config(arg=None):
  """The tiny config as a config file for the entry point, on a tiny synthetic dataset:
  python -m solv_jax.main --config=tests/tiny.py --config.data.data_dir=DIR --mode=train
  (6 steps of batch 2, a log line every step, a checkpoint every 2 steps)."""
  del arg
  config = tiny_config()
  config.data.name = config.data.tfds_name = "synthetic"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.shuffle_buffer = 8
  config.data.synthetic.update(dict(num_train=4, num_validation=1, num_frames=6, height=28,
                                    width=42, max_objects=3))
  # XLA_FLAGS as the test process has them: the entry point in a subprocess and train.train()
  # in this process must compile the same kernels to give bit-identical params.
  config.xla_flags = ""
  config.train.batch_size = 2
  config.train.num_steps = 6
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.eval.num_visualize = 0
  return config
