"""Kubric MOVi-E (docs/METHOD.md §6): 336x336, K = 18, merging, 60 epochs ~ 300K iterations.

Reads Kubric's TFDS release directly (default gs://kubric-public/tfds; pass a local mirror
with --config.data.data_dir=...).
"""
from solv_jax import schema


def get_config(arg=None):
  return schema.get_config(arg, recipe)


def recipe(config):
  config.data.name = "movi_e"
  config.data.tfds_name = "movi_e/256x256"
  config.data.data_dir = "gs://kubric-public/tfds"
  config.data.resolution = (336, 336)
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.model.num_slots = 18
  config.train.num_epochs = 60
