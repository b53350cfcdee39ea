"""Orbax checkpoints: periodic and final saves, keep-last-N, resume from the latest.

A checkpoint holds the train state (step, trainable params, Adam moments, counters) and the
input pipeline's position, so a resumed run continues with the same data and RNG stream.
The frozen DINOv2 params are not in it: they are re-created from config.model.encoder_weights
(or from the seed, for the random demo encoder). Orbax writes each step to a temporary folder
and renames it when complete, so a run killed mid-write leaves no half-visible checkpoint.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  pass


class Checkpoints:
  """WORKDIR/checkpoints/<step>/{state, data}."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict, *, force: bool = False) -> None:
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore(self, abstract_state, step: int | None = None):
    """-> (step, state, data_state) of `step` or the newest readable checkpoint, or None.

    A checkpoint that fails to read (corrupted on disk) is reported and the next older one is
    tried; with an explicit `step`, failure is an error.
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    errors = []
    for s in steps:
      try:
        out = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return s, out["state"], dict(out["data"] or {})
      except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable files
        msg = f"checkpoint {os.path.join(self.directory, str(s))} is unreadable ({type(e).__name__}: {str(e)[:300]})"
        logging.error(msg)
        print(f"warning: {msg}; trying an older one", flush=True)
        errors.append(msg)
    if step is not None or errors:
      raise CheckpointError("No readable checkpoint: " + "; ".join(errors) +
                            ". Delete the broken step folders to start over.")
    return None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of arrays, for restoring into."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)
