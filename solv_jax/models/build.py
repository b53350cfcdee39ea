"""The seam from a config, a workdir or an exported .npz to a runnable SOLV and its params.

  model = build_model(config)                      # SOLV from config.model + config.data
  trainable = init_trainable(model, rng)           # everything but 'encoder'
  encoder = encoder_params(config)                 # the frozen encoder: converted or random
  params = with_encoder(trainable, encoder)        # the full tree SOLV.apply takes
  loaded = load("workdir/demo")                    # or load("model.npz"): config, model, params

Training, evaluation, export, segmentation, the baselines, the benchmarks and the notebooks
all get their model and params here; checkpoints are read through
`solv_jax.checkpoints.restore_params`, the one restore path.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from solv_jax.models import encoders
from solv_jax.models.solv import SOLV


def build_model(config) -> SOLV:
  """SOLV from the full config: config.model plus config.data.resolution and num_context."""
  return SOLV.from_config(config.model, resolution=config.data.resolution,
                          num_frames=2 * config.data.num_context + 1)


def encoder_params(config, model: SOLV | None = None) -> dict:
  """The frozen encoder's params (its entry in models/encoders.py): converted weights if
  configured, else a seeded random init (seed config.seed + 1)."""
  variant = model.encoder_variant if model is not None else config.model.encoder_variant
  spec = encoders.get(variant)
  path = config.model.encoder_weights
  if path:
    return jax.tree_util.tree_map(jnp.asarray, spec.load_params(path))
  return spec.init_params(jax.random.key(config.seed + 1))


def init_trainable(model: SOLV, rng) -> dict:
  """Trainable params (everything but 'encoder'), initialised without running DINOv2."""
  h, w = model.resolution
  video = jnp.zeros((1, model.num_frames, h, w, 3), jnp.float32)
  mask = jnp.ones((1, model.num_frames), bool)

  def init(rng):
    params = model.init(rng, video, mask, train=False)["params"]
    return {k: v for k, v in params.items() if k != "encoder"}

  return jax.jit(init)(rng)


def initial_params(config, model: SOLV) -> dict:
  """The run's step-0 trainable params (seeded by config.seed)."""
  return init_trainable(model, jax.random.key(config.seed))


def trainable_shapes(model: SOLV) -> dict:
  """ShapeDtypeStructs of the trainable params, without computing them."""
  return jax.eval_shape(lambda: init_trainable(model, jax.random.key(0)))


def with_encoder(trainable: dict, encoder: dict) -> dict:
  """The full param tree SOLV.apply takes: trainable params plus the frozen DINOv2."""
  return {**trainable, "encoder": encoder}


class LoadError(ValueError):
  pass


def param_differences(params: dict, expected: dict) -> list[str]:
  """How a param tree differs from the expected one (ShapeDtypeStructs): each name missing,
  extra, or of another shape or dtype, as 'name: what' lines."""
  from flax import traverse_util
  have = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  want = {"/".join(k): v for k, v in traverse_util.flatten_dict(expected).items()}
  out = []
  for name in sorted(set(have) | set(want)):
    if name not in have:
      out.append(f"{name}: missing")
    elif name not in want:
      out.append(f"{name}: not a param of this model")
    else:
      h, w = np.asarray(have[name]), want[name]
      if (h.shape, str(h.dtype)) != (tuple(w.shape), str(w.dtype)):
        out.append(f"{name}: {h.dtype}{list(h.shape)} where the model has "
                   f"{w.dtype}{list(w.shape)}")
  return out


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A trained model ready to run: `model.apply({"params": params}, ...)`."""
  config: Any
  model: SOLV
  params: dict             # full tree (trainable + 'encoder'), numpy
  step: int | None         # the checkpoint's step (None for an export)
  kind: str                # 'workdir' or 'export'
  encoder_source: str      # where the DINOv2 params came from


def load(path: str, step: int | None = None, *, with_encoder_params: bool = True) -> Loaded:
  """A training workdir (its newest good checkpoint, or `step`) or an exported / converted
  .npz -> Loaded. Non-finite params are refused by name."""
  from solv_jax import checkpoints, export

  if os.path.isdir(path):
    config = export.load_config(path)
    try:
      step, trainable = checkpoints.restore_params(path, step)
    except checkpoints.CheckpointError as e:
      raise LoadError(str(e)) from e
    encoder, kind = None, "workdir"
  else:
    try:
      config, trainable, encoder = export.load_export(path)
    except FileNotFoundError:
      raise
    except (KeyError, ValueError, OSError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise LoadError(f"Cannot read export {path!r} ({first}): expected a .npz written by "
                      "tools/export_numpy.py or tools/convert_solv_checkpoint.py.") from e
    kind = "export"
  bad = checkpoints.nonfinite_leaves(trainable)
  if bad:
    raise LoadError(f"{path!r} holds non-finite params ({len(bad)} array(s), e.g. {bad[0]}): "
                    "the run diverged or the file is damaged; use an earlier checkpoint.")
  model = build_model(config)
  if kind == "export":  # a file from elsewhere: every name, shape and dtype as the model's
    expected = {"params": trainable_shapes(model)}
    found = {"params": trainable or {}}
    if encoder is not None:
      expected["encoder"] = jax.eval_shape(encoders.get(model.encoder_variant).init_params,
                                           jax.random.key(0))
      found["encoder"] = encoder
    wrong = param_differences(found, expected)
    if wrong:
      raise LoadError(f"{path!r} does not hold the params of the model its config describes "
                      f"({len(wrong)} differ, e.g. {wrong[0]}): re-export it with "
                      "tools/export_numpy.py or tools/convert_solv_checkpoint.py.")
  if encoder is not None:
    source = f"{path} (exported)"
  elif with_encoder_params:
    encoder = jax.tree_util.tree_map(np.asarray, encoder_params(config, model))
    source = config.model.encoder_weights or f"random init (seed {config.seed + 1})"
  else:
    source = "not loaded"
  params = with_encoder(trainable, encoder) if encoder is not None else dict(trainable)
  return Loaded(config, model, params, step, kind, source)
