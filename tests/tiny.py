"""A tiny SOLV config for tests: vits14 at 42x56 (12 tokens), 4 slots, small decoder."""
from configs import base


def tiny_config(**model_overrides):
  config = base.get_config()
  config.data.resolution = (42, 56)
  config.model.encoder = "vits14"
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
