"""Device mesh and shardings: the batch is split over a 1-D `data` axis, params replicated.

The same code runs on 1 CPU, 8 GPUs or a TPU pod slice; multi-host runs call
`jax.distributed.initialize()` first (config.train.distributed) and each host feeds its own
slice of the global batch.
"""
from __future__ import annotations

import os
import warnings

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def merge_xla_flags(current: str, extra: str) -> str:
  """`current` (an XLA_FLAGS string) plus each flag of `extra` whose name it does not set."""
  have = {f.split("=", 1)[0] for f in current.split()}
  return " ".join(current.split() + [f for f in extra.split() if f.split("=", 1)[0] not in have])


def apply_xla_flags(extra: str, strict: bool = True) -> str:
  """Adds config.xla_flags to the XLA_FLAGS environment variable, which XLA reads once, when
  JAX first opens a backend; the user's own XLA_FLAGS take precedence flag by flag. Returns
  the XLA_FLAGS in effect. If a backend is already open and the flags would change, raises
  (strict) or warns and leaves them as they are (the flags only change speed)."""
  current = os.environ.get("XLA_FLAGS", "")
  merged = merge_xla_flags(current, extra or "")
  if merged != " ".join(current.split()):
    from jax._src import xla_bridge  # no public API says whether a backend is open
    if xla_bridge.backends_are_initialized():
      message = (f"config.xla_flags={extra!r} must be applied before JAX opens a backend "
                 "(call apply_xla_flags first, or set XLA_FLAGS).")
      if strict:
        raise RuntimeError(message)
      warnings.warn(f"{message} Running without them.", RuntimeWarning, stacklevel=2)
      return current
    os.environ["XLA_FLAGS"] = merged
  return os.environ.get("XLA_FLAGS", "")


def make_mesh(devices=None) -> Mesh:
  # Auto axis: with_sharding_constraint / jit shardings take plain PartitionSpecs.
  return Mesh(np.array(jax.devices() if devices is None else devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Per-process batch size; the global batch must split evenly over devices."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f"config.train.batch_size={global_batch} must be a multiple of the number "
                     f"of devices ({n}); try --config.train.batch_size={max(n, global_batch // n * n)}.")
  return global_batch // jax.process_count()


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """This process's slice of the global batch (numpy) -> global jax Arrays sharded on `data`."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
