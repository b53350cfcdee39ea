"""The converted-weights file of a frozen encoder (tools/convert_dinov2.py, convert_dinov3.py):
a flat .npz of '/'-joined param names plus `__variant__`, checked name by name and shape by
shape when it is written and when it is read. No pickle: a file from a user runs no code."""
from __future__ import annotations

import os
from typing import Callable, Mapping

import numpy as np
from flax import traverse_util


class OfficialKeys:
  """Reads an official-layout ViT state dict (facebookresearch/dinov2 and dinov3 name their
  blocks alike) into our flat '/'-joined param names, each key used once: `take` names a
  missing key, `finish` every key left unread."""

  def __init__(self, sd: Mapping[str, np.ndarray], dropped=()):
    self.sd, self.out = sd, {}
    self.used = {k for k in dropped if k in sd}  # read and dropped: unused by the forward

  def take(self, key: str, name: str, fn=lambda a: a) -> None:
    if key not in self.sd:
      raise KeyError(f"Checkpoint is missing the key {key!r} (needed for {name}).")
    self.used.add(key)
    self.out[name] = fn(np.asarray(self.sd[key]))

  def take_blocks(self, depth: int, ffn: str) -> None:
    """The pre-norm blocks `blocks.N.{norm1, attn.qkv, attn.proj, ls1, norm2, mlp, ls2}`
    (torch Linear weights transposed); the feed-forward is fc1/fc2 (MLP) or w12/w3 (SwiGLU)."""
    lin = lambda a: a.T  # noqa: E731
    for i in range(depth):
      p, q = f"blocks.{i}.", f"blocks_{i}/"
      for n in ("norm1", "norm2"):
        self.take(p + n + ".weight", q + n + "/scale")
        self.take(p + n + ".bias", q + n + "/bias")
      self.take(p + "attn.qkv.weight", q + "attn/qkv/kernel", lin)
      self.take(p + "attn.qkv.bias", q + "attn/qkv/bias")
      self.take(p + "attn.proj.weight", q + "attn/proj/kernel", lin)
      self.take(p + "attn.proj.bias", q + "attn/proj/bias")
      self.take(p + "ls1.gamma", q + "ls1/gamma")
      self.take(p + "ls2.gamma", q + "ls2/gamma")
      for n in ("fc1", "fc2") if ffn == "mlp" else ("w12", "w3"):
        self.take(p + f"mlp.{n}.weight", q + f"mlp/{n}/kernel", lin)
        self.take(p + f"mlp.{n}.bias", q + f"mlp/{n}/bias")

  def finish(self, depth: int, ffn: str) -> dict:
    """The flat params; KeyError if any key of the state dict was not read."""
    extra = sorted(set(self.sd) - self.used)
    if extra:
      raise KeyError(f"Checkpoint has {len(extra)} unexpected keys for this variant, e.g. "
                     f"{extra[:5]}: is it the right --variant (depth {depth}, ffn {ffn})?")
    return self.out


def check_and_unflatten(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
                        variant) -> dict:
  """Flat converted tensors -> nested float32 params, after checking them against the
  variant's {name: shape}: KeyError names a missing or extra tensor, ValueError a tensor of
  another shape (with both shapes)."""
  for name, shape in expected.items():
    if name not in flat:
      raise KeyError(f"Checkpoint has no tensor for {name!r} (expected shape {shape}); "
                     f"is --variant {variant!r} right?")
    if tuple(flat[name].shape) != shape:
      raise ValueError(f"Shape mismatch for {name!r}: checkpoint has {tuple(flat[name].shape)},"
                       f" variant {variant!r} expects {shape}.")
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise KeyError(f"Checkpoint has tensors {extra} that variant {variant!r} does not have.")
  return traverse_util.unflatten_dict(
      {tuple(k.split("/")): np.asarray(v).astype(np.float32) for k, v in flat.items()})


def save(path: str, params: Mapping, variant: str) -> None:
  """Writes params as a flat .npz ('/'-joined keys) with the variant name, atomically (a full
  disk leaves no partial file behind)."""
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  from solv_jax import files
  with files.replacing(path) as tmp:
    np.savez(tmp, __variant__=np.array(variant), **flat)


def load(path: str, *, family: str, expected_variant: str | None, default_variant: str,
         shapes: Callable[[str], dict], hint: Callable[[str], str], tool: str
         ) -> tuple[str, dict]:
  """Reads a params file -> (variant, params). Errors name the file and say how to get a good
  one: FileNotFoundError (with `hint(variant)`), ValueError for an unreadable file, another
  variant than expected, or a tensor missing or of another shape."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{family} weights file not found: {path!r}.\n"
                            + hint(expected_variant or default_variant))
  try:
    with np.load(path, allow_pickle=False) as f:
      variant = str(f["__variant__"])
      flat = {k: f[k] for k in f.files if k != "__variant__"}
  except Exception as e:  # truncated or foreign file
    raise ValueError(f"Cannot read {family} params file {path!r} ({e}); re-create it with "
                     f"{tool}.") from e
  if expected_variant is not None and variant != expected_variant:
    raise ValueError(f"{family} params file {path!r} holds variant {variant!r} but the config "
                     f"asks for {expected_variant!r}; set config.model.encoder_variant="
                     f"{variant!r} or convert the {expected_variant} weights.")
  try:
    expected = shapes(variant)
  except ValueError as e:  # a variant name this version does not know
    raise ValueError(f"{family} params file {path!r}: {e}") from None
  for name, shape in expected.items():
    if name not in flat or tuple(flat[name].shape) != shape:
      got = tuple(flat[name].shape) if name in flat else "missing"
      raise ValueError(f"{family} params file {path!r} is not a valid {variant} file: {name!r} "
                       f"is {got}, expected {shape}.")
  return variant, traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
