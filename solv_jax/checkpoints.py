"""Orbax checkpoints, and the one restore path of the package.

A checkpoint holds the train state (step, trainable params, Adam moments, counters) and the
input pipeline's position, so a resumed run continues with the same data and RNG stream.
The frozen DINOv2 params are not in it: they are re-created from config.model.encoder_weights
(or from the seed, for the random demo encoder). Orbax writes each step to a temporary folder
and renames it when complete, so a run killed mid-write leaves no half-visible checkpoint.

Every reader — resume (`Checkpoints.restore` with the train state as target), evaluation,
export and segmentation (`restore_params`) — goes through `Checkpoints.restore`:
- Topology: arrays are restored onto the CURRENT devices (the target's shardings, or
  replicated over this process's mesh when there is no target), never onto the devices they
  were written from, so a checkpoint of N processes x M devices reads on one CPU.
- Verification: after each step is committed, a manifest of its files' SHA-256 is written to
  WORKDIR/checkpoints/manifests/<step>.json. A step whose files differ from its manifest,
  that fails to read, or that holds non-finite params (training never saves such params) is
  moved aside to WORKDIR/checkpoints/rejected/ (never deleted) with a one-line message, and
  the next older step is tried. A step written by a run killed between commit and manifest
  has no manifest: it is read and checked for finite params only.
- Shapes: a target whose shapes differ from the checkpoint's (a shape-changing config) is
  refused with the params that differ, before anything is read; the checkpoint is healthy and
  is left alone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time

import jax
from absl import logging as absl_logging
import numpy as np
import orbax.checkpoint as ocp

from solv_jax import files

MANIFESTS = "manifests"
REJECTED = "rejected"


class CheckpointError(RuntimeError):
  pass


def _logs_a_failed_write(record) -> bool:
  """Whether a log record is about a write that a full or read-only disk stopped: its
  message, its exception and asyncio's "never retrieved" context."""
  text = record.getMessage() + str(record.exc_info[1] if record.exc_info else "")
  for key in ("exception", "future", "message"):
    text += str(getattr(record, key, ""))
  return files.problem_in_text(text) is not None


def _not_orbax_write_failure(record) -> bool:
  """Orbax logs a save that a full or read-only disk stopped, with its traceback, from each of
  its threads; `Checkpoints.wait` reports it once, as one line (CheckpointError)."""
  return (record.levelno < 40 or "orbax" not in str(getattr(record, "pathname", ""))
          or not _logs_a_failed_write(record))


absl_logging.get_absl_logger().addFilter(_not_orbax_write_failure)


def quiet_closed_event_loops() -> None:
  """After a failed asynchronous save, tensorstore's remaining callbacks find orbax's asyncio
  loop closed and report 'RuntimeError: Event loop is closed' hundreds of times, and asyncio
  logs each failed write again at exit. Only those are dropped (entry points call this); the
  save's failure itself is reported once by `Checkpoints.wait`."""
  import logging
  import sys

  def closed_loop(value) -> bool:
    return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

  previous, previous_unraisable = sys.excepthook, sys.unraisablehook

  def hook(kind, value, tb):
    if not closed_loop(value):
      previous(kind, value, tb)

  def unraisable(info):
    if not closed_loop(info.exc_value):
      previous_unraisable(info)

  sys.excepthook, sys.unraisablehook = hook, unraisable
  logging.getLogger("asyncio").addFilter(lambda record: not _logs_a_failed_write(record))


class ShapeMismatchError(CheckpointError):
  """The target's shapes are not the checkpoint's: the config changed a shape."""


def _is_local(path: str) -> bool:
  return "://" not in path


def _file_digests(step_dir: str) -> dict[str, str]:
  """relative path -> SHA-256 of every file under a committed step folder."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
          digest.update(block)
      out[os.path.relpath(path, step_dir)] = digest.hexdigest()
  return out


class Checkpoints:
  """WORKDIR/checkpoints/<step>/{state, data}; manifests/ and rejected/ beside the steps."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True,
               reader: bool = False):
    """reader: open an existing run's checkpoints to read them (evaluation, export, segment):
    nothing is created or cleaned up, though a damaged step is still moved aside."""
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    if reader and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"No checkpoint under {self.directory!r}: train first, or pass "
                              "the right workdir.")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None if reader else keep, create=not reader,
            cleanup_tmp_directories=not reader, enable_async_checkpointing=async_save),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler()})

  # ------------------------------------------------------------------------------------------
  # Writing.
  # ------------------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, *, force: bool = False) -> None:
    # The previous save has had a whole checkpoint interval to finish: waiting costs nothing
    # and lets its manifest be written from its committed files.
    self.wait()
    with self._named_write_errors(f"step {int(step)}"):
      if int(step) in self.manager.all_steps():  # e.g. reached again after a rejected step
        self.manager.delete(int(step))
      self.manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def wait(self) -> None:
    with self._named_write_errors("the last save"):
      self.manager.wait_until_finished()
      self._write_manifests()

  @contextlib.contextmanager
  def _named_write_errors(self, what: str):
    """A save that a full or read-only disk stopped -> one CheckpointError line."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - orbax raises many types for a failed write
      problem = files.write_problem(e)
      if problem is None:
        raise
      raise CheckpointError(
          f"Cannot write a checkpoint ({what}) under {self.directory}: {problem}. The "
          f"checkpoints saved before are intact ({self.all_steps() or 'none yet'}); free space "
          "(or fix the permissions) and run the same command again to resume.") from None

  def _manifest_path(self, step: int) -> str:
    return os.path.join(self.directory, MANIFESTS, f"{step}.json")

  def _write_manifests(self) -> None:
    """A manifest for each committed step that has none; stale ones are removed."""
    if jax.process_index() != 0 or not _is_local(self.directory):
      return
    steps = set(self.manager.all_steps())
    os.makedirs(os.path.join(self.directory, MANIFESTS), exist_ok=True)
    for s in steps:
      path = self._manifest_path(s)
      if not os.path.exists(path):
        files.write_json(path, {"step": s, "sha256": _file_digests(
            os.path.join(self.directory, str(s)))}, indent=0)
    for name in os.listdir(os.path.join(self.directory, MANIFESTS)):
      stem = name.split(".")[0]
      if stem.isdigit() and int(stem) not in steps:
        os.remove(os.path.join(self.directory, MANIFESTS, name))

  # ------------------------------------------------------------------------------------------
  # Reading.
  # ------------------------------------------------------------------------------------------
  def _verify(self, step: int) -> str | None:
    """None if the step's files match its manifest (or it has none), else what differs."""
    path = self._manifest_path(step)
    if not (_is_local(self.directory) and os.path.exists(path)):
      return None
    try:
      with open(path) as f:
        expected = json.load(f)["sha256"]
    except (ValueError, KeyError, OSError):
      return None  # an unreadable manifest says nothing about the checkpoint
    actual = _file_digests(os.path.join(self.directory, str(step)))
    bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
    if bad:
      what = "missing" if bad[0] not in actual else "changed"
      return f"{len(bad)} file(s) differ from the manifest written at save ({bad[0]} {what})"
    return None

  def _reject(self, step: int, reason: str) -> None:
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, REJECTED, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    message = f"checkpoint {src} is damaged ({reason})"
    # Multi-process: every process has looked at the step before process 0 moves it (so that
    # none reads a half-moved folder), and sees the same steps after.
    _sync_processes(f"solv_jax.checkpoints reject {step}: found")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.move(src, dst)
      if os.path.exists(self._manifest_path(step)):
        shutil.move(self._manifest_path(step), dst + ".manifest.json")
      print(f"warning: {message}; moved it to {dst} and using an older one.", flush=True)
    _sync_processes(f"solv_jax.checkpoints reject {step}: moved")
    self.manager.reload()

  def abstract_state(self, step: int, shardings=None):
    """ShapeDtypeStructs of a step's saved state, on this process's devices (replicated)."""
    from solv_jax import sharding as sharding_lib
    meta = self.manager.item_metadata(step)["state"]
    target = shardings or sharding_lib.replicated(sharding_lib.make_mesh())
    return jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=target), meta)

  def _metadata_reads(self, step: int) -> bool:
    try:
      return self.manager.item_metadata(step)["state"] is not None
    except Exception:  # noqa: BLE001 - orbax raises many types for unreadable metadata
      return False

  def check_params_fit(self, params_shapes) -> None:
    """Raises ShapeMismatchError if the newest checkpoint whose metadata reads holds params of
    other shapes than `params_shapes` (ShapeDtypeStructs of the trainable params). No
    checkpoint, or only damaged ones, pass: `restore` verifies those and moves them aside."""
    for step in reversed(self.all_steps()):
      if self._metadata_reads(step):
        break
    else:
      return
    try:
      self._check_shapes(step, {"params": params_shapes})
    except ShapeMismatchError:
      raise
    except Exception:  # noqa: BLE001 - unreadable array metadata: a damaged step
      return

  def _check_shapes(self, step: int, abstract_state) -> None:
    meta = self.manager.item_metadata(step)["state"]
    saved = dict(_flat_shapes(meta))
    wanted = dict(_flat_shapes(abstract_state))
    diff = [f"{k}: checkpoint {saved.get(k, 'missing')}, config {wanted.get(k, 'missing')}"
            for k in sorted(set(saved) | set(wanted)) if k.startswith("params")
            and saved.get(k) != wanted.get(k)]
    if diff:
      raise ShapeMismatchError(
          f"The checkpoints in {self.directory} have other shapes than this config's model "
          f"({len(diff)} param(s), e.g. {diff[0]}).")

  def restore(self, abstract_state=None, step: int | None = None):
    """-> (step, state, data_state) of `step` or the newest good checkpoint, or None if there
    is none. abstract_state: the target (ShapeDtypeStructs with shardings); None restores the
    saved tree replicated on this process's devices.

    Damaged steps are moved aside and the next older one is tried; with an explicit `step`,
    damage is an error. Shape mismatches are an error at once (ShapeMismatchError).
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    if step is not None and step not in self.manager.all_steps():
      raise CheckpointError(f"No checkpoint of step {step} under {self.directory} (there are: "
                            f"{self.all_steps() or 'none'}).")
    rejected = []
    for s in steps:
      meta_ok = self._metadata_reads(s)
      if meta_ok and abstract_state is not None:
        try:
          self._check_shapes(s, abstract_state)
        except ShapeMismatchError:
          raise
        except Exception:  # noqa: BLE001 - unreadable array metadata: a damaged step
          meta_ok = False
      problem = None if meta_ok else "its metadata cannot be read"
      problem = problem or self._verify(s)
      if problem is None:
        try:
          target = abstract_state if abstract_state is not None else self.abstract_state(s)
          out = self.manager.restore(s, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
          state = out["state"]
          params = state["params"] if isinstance(state, dict) else state.params
          bad = nonfinite_leaves(params)
          if bad:
            problem = f"non-finite values in {bad[0]}"
          else:
            return s, state, dict(out["data"] or {})
        except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable files
          problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      if step is not None:
        raise CheckpointError(f"Checkpoint {os.path.join(self.directory, str(s))} is damaged "
                              f"({problem}).")
      self._reject(s, problem)
      rejected.append(s)
    if rejected:
      raise CheckpointError(f"No good checkpoint under {self.directory}: steps {rejected} were "
                            f"damaged and moved to {os.path.join(self.directory, REJECTED)}.")
    return None

  def close(self) -> None:
    try:
      self.wait()
    except BaseException:
      with contextlib.suppress(Exception):  # the failure is the wait's error, raised below
        self.manager.close()
      raise
    self.manager.close()


def _sync_processes(name: str) -> None:
  """A barrier of all processes of a multi-process run (nothing in a single process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def restore_params(workdir: str, step: int | None = None):
  """-> (step, trainable params as numpy) of the newest good (or given) checkpoint of a
  workdir, on any topology. Used by evaluation, export and segmentation."""
  ckpt = Checkpoints(workdir, async_save=False, reader=True)
  try:
    out = ckpt.restore(step=step)
  finally:
    ckpt.manager.close()
  if out is None:
    raise FileNotFoundError(f"No checkpoint under {ckpt.directory!r}: train first, or pass the "
                            "right workdir.")
  s, state, _ = out
  params = state["params"] if isinstance(state, dict) else state.params
  return s, jax.tree_util.tree_map(np.asarray, params)


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring into."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def nonfinite_leaves(tree) -> list[str]:
  """'a/b/c' names of the leaves of a param tree that hold a NaN or Inf."""
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not np.all(np.isfinite(np.asarray(leaf))):
      bad.append("/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path))
  return bad


def _flat_shapes(tree):
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)
    yield name, tuple(getattr(leaf, "shape", ()))
