"""Checkpoint export to flat numpy arrays, and the loaders that read exports and workdirs.

An export is one .npz: trainable params as 'params/<a>/<b>/...' keys, the frozen DINOv2 params
as 'encoder/...' (so the file alone can segment a video) and the run's config as JSON in
'__config__'. `load_export` round-trips it to (config, params).
"""
from __future__ import annotations

import json
import os

import numpy as np
from flax import traverse_util

from solv_jax import files


def _upgrade(saved: dict):
  from solv_jax import schema
  return schema.upgrade(saved)


def _renamed(saved: dict) -> dict:
  from solv_jax import schema
  return schema.renamed(saved)


def _flat(tree, prefix):
  return {f"{prefix}/" + "/".join(k): np.asarray(v)
          for k, v in traverse_util.flatten_dict(tree).items()}


def save_export(path: str, config, params: dict, encoder: dict | None = None) -> None:
  arrays = _flat(params, "params")
  if encoder is not None:
    arrays.update(_flat(encoder, "encoder"))
  arrays["__config__"] = np.array(config.to_json() if hasattr(config, "to_json")
                                  else json.dumps(config))
  with files.replacing(path) as tmp:  # a full disk leaves no partial file behind
    np.savez(tmp, **arrays)


def load_export(path: str):
  """-> (config ConfigDict, trainable params, encoder params or None)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Export file not found: {path!r} (create it with "
                            "python tools/export_numpy.py --workdir W --out model.npz).")
  with np.load(path, allow_pickle=False) as f:
    config = _upgrade(json.loads(str(f["__config__"])))
    groups: dict[str, dict] = {"params": {}, "encoder": {}}
    for key in f.files:
      if key == "__config__":
        continue
      group, _, rest = key.partition("/")
      groups[group][tuple(rest.split("/"))] = f[key]
  unflat = lambda d: traverse_util.unflatten_dict(d) if d else None  # noqa: E731
  return config, unflat(groups["params"]), unflat(groups["encoder"])


def read_config(path: str):
  """The config of a workdir (config.json) or of an export .npz (its '__config__' only)."""
  if os.path.isdir(path):
    return load_config(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Export file not found: {path!r}.")
  try:
    with np.load(path, allow_pickle=False) as f:
      return _upgrade(json.loads(str(f["__config__"])))
  except (KeyError, ValueError, OSError) as e:
    raise ValueError(f"Cannot read export {path!r} ({type(e).__name__}: no readable "
                     "'__config__'): expected a .npz written by tools/export_numpy.py or "
                     "tools/convert_solv_checkpoint.py.") from e


def _with_generator_defaults(config: dict) -> dict:
  """A synthetic dataset's knobs that a config leaves out take the generator's defaults (the
  values it ran with: configs/demo.py lists them all since 2026-12-01, earlier ones did not)."""
  data = config.get("data")
  if not isinstance(data, dict) or data.get("name") != "synthetic":
    return config
  import dataclasses
  from solv_jax.data import synthetic
  defaults = json.loads(json.dumps(dataclasses.asdict(synthetic.SyntheticConfig())))
  return {**config, "data": {**data, "synthetic": {**defaults, **data.get("synthetic", {})}}}


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
  """'key: old -> new' for every leaf that differs between two (JSON) config dicts."""
  if not prefix:
    old, new = _with_generator_defaults(old), _with_generator_defaults(new)
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_changes(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return out


def save_config(workdir: str, config) -> list[str]:
  """Writes WORKDIR/config.json; returns how it differs from the one there before (if any)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2)
  changes = []
  if os.path.exists(path):
    with open(path) as f:
      try:
        changes = config_changes(_renamed(json.load(f)), json.loads(text))
      except ValueError:  # unreadable: nothing to compare against
        changes = ["config.json: unreadable -> rewritten"]
  files.write_text(path, text)
  return changes


def load_config(workdir: str):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path!r} not found: is {workdir!r} a solv_jax workdir?")
  try:
    with open(path) as f:
      saved = json.load(f)
  except ValueError as e:  # torn or not JSON
    raise ValueError(f"{path!r} is not a readable config ({e.__class__.__name__}: {e}); it was "
                     "cut short or overwritten: restore it, or start the run in a new "
                     "workdir.") from None
  if not isinstance(saved, dict):
    raise ValueError(f"{path!r} is not a solv_jax config (a JSON object was expected).")
  return _upgrade(saved)
