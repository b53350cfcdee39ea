"""Converts DINOv2 weights to the params file read by `solv_jax.models.dinov2.load_params`.

  python tools/convert_dinov2.py --src dinov2_vitb14_pretrain.pth --variant vitb14 \
      --out dinov2_vitb14.npz
  python tools/convert_dinov2.py --src model.safetensors --variant vitb14 --out dinov2_vitb14.npz

Accepts the official facebookresearch/dinov2 state dict (`.pth`, read with torch, the only
place torch is used) and HuggingFace `facebook/dinov2-*` safetensors (old
`attention.attention.query` and new `attention.q_proj` key naming).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from solv_jax.models import dinov2


def read_state_dict(path: str, hint: str | None = None) -> dict[str, np.ndarray]:
  """A checkpoint's tensors as float32 numpy arrays: a .safetensors file, or a torch pickle
  read with weights_only=True (tensors only, no code runs); {'model': sd} is unwrapped.
  `hint` says how to obtain the file when it is missing."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--src {path!r} does not exist.\n"
                            + (hint or dinov2.hint("vitb14")))
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return load_file(path)
  try:
    import torch  # only the converter needs torch, for the official .pth pickle
  except ImportError as e:
    raise ImportError("Reading a .pth checkpoint needs torch: pip install torch "
                      "(or convert the HuggingFace .safetensors file instead).") from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
    sd = sd["model"]
  return {k: v.float().numpy() for k, v in sd.items()}


def run(argv, lib, description: str, source_hint=None) -> int:
  """The converter command of an encoder family's module `lib` (dinov2, dinov3): --src,
  --variant, --out; one `error:` line and exit status 1 for a file that cannot be read,
  converted or written. source_hint(variant) says how to get a missing --src (default: the
  DINOv2 hint)."""
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="official .pth or HuggingFace .safetensors")
  parser.add_argument("--variant", required=True, choices=sorted(lib.VARIANTS))
  parser.add_argument("--out", required=True, help="output .npz params file")
  args = parser.parse_args(argv)
  try:
    params = lib.convert_state_dict(
        read_state_dict(args.src, source_hint and source_hint(args.variant)), args.variant)
  except (KeyError, ValueError, FileNotFoundError, ImportError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    print(f"error: cannot convert {args.src!r} as {args.variant}: {msg}", file=sys.stderr)
    return 1
  try:
    lib.save_params(args.out, params, args.variant)
  except OSError as e:
    print(f"error: cannot write {args.out!r}: {e.strerror or e}", file=sys.stderr)
    return 1
  n = sum(np.asarray(x).size for x in __import__("jax").tree_util.tree_leaves(params))
  print(f"wrote {args.out} ({args.variant}, {n / 1e6:.1f}M parameters)")
  return 0


def main(argv=None) -> int:
  return run(argv, dinov2, __doc__)


if __name__ == "__main__":
  sys.exit(main())
