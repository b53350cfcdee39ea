"""Device mesh and shardings: the batch is split over a 1-D `data` axis, params replicated.

The same code runs on 1 CPU, 8 GPUs or a TPU pod slice; multi-host runs call
`jax.distributed.initialize()` first (config.train.distributed) and each host feeds its own
slice of the global batch.
"""
from __future__ import annotations

import functools
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


def keep_host_memory(enabled: bool = True) -> bool:
  """Keeps freed host memory in the process for reuse (glibc's malloc: one arena, no mmap for
  large blocks, no trimming of the heap). XLA:CPU allocates a step's temporaries (1.6 GiB for
  the YTVIS19 step at batch 2) afresh on every call; by default glibc maps such blocks with
  mmap and unmaps them on free, so the kernel faults in and zeroes every page again each step:
  350-470 k minor page faults and 2.4-3.6 s of kernel CPU time per 14-16 s step on the 2-core
  CPU; with this, 1-91 k faults, 0.07-1.5 s, and 0.97x instead of 1.05x the authors' PyTorch
  step (BENCHMARKS.md). The process keeps its high-water mark of host memory instead of
  returning it between steps.

  Must run before JAX opens a backend (its threads take their malloc arenas then); returns
  whether it took effect. Does nothing where an accelerator plugin is installed (the step's
  temporaries live on the device there; unmeasured) or where libc has no mallopt (not glibc).
  config.keep_host_memory; the entry points call it, a script of your own may."""
  if not enabled or _accelerator_plugin_installed():
    return False
  import ctypes
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  global _KEEPING_HOST_MEMORY
  _KEEPING_HOST_MEMORY = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))  # -1: never trim
  return _KEEPING_HOST_MEMORY


# glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -3, -4, -8
_KEEPING_HOST_MEMORY = False


@functools.cache  # TF changes malloc once per process; so does this
def undo_tf_malloc_patch() -> bool:
  """Puts glibc's malloc back after TensorFlow's change to it; returns whether it could.

  The first tf.data `from_generator` iterator of a process sets M_TRIM_THRESHOLD to 128 KiB
  (TF logs "Memory patch applied"). That undoes keep_host_memory's "never trim" and, where
  keep_host_memory is off (a GPU host), also freezes glibc's mmap threshold at 128 KiB, so
  that every large temporary of the input pipeline (a 720p frame in float32 is 11 MB, see
  data/frames.py) is mapped, faulted in page by page and unmapped: 1,500 faults and 6.1 ms
  instead of 3.9 ms a resized frame (measured; 2-core EPYC). This triggers TF's change (once
  per process) and then restores keep_host_memory's settings if they were in effect, else
  sets what glibc's own dynamic thresholds grow to: mmap above 32 MiB, trim above 64 MiB."""
  import ctypes
  import tensorflow as tf
  spec = tf.TensorSpec((), tf.int32)
  list(tf.data.Dataset.from_generator(lambda: iter(()), output_signature=spec))
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return False
  if _KEEPING_HOST_MEMORY:
    return mallopt(_M_TRIM_THRESHOLD, -1) == 1
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20)))


def _accelerator_plugin_installed() -> bool:
  import importlib.metadata
  names = {(d.metadata["Name"] or "").lower().replace("_", "-")
           for d in importlib.metadata.distributions()}
  return any(n.startswith(("jax-cuda", "jax-rocm", "libtpu", "jax-tpu")) for n in names)


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
