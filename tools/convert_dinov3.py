"""Converts DINOv3 ViT weights to the params file read by `solv_jax.models.dinov3.load_params`.

  python tools/convert_dinov3.py --src dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth \
      --variant dinov3_vitb16 --out dinov3_vitb16.npz
  python tools/convert_dinov3.py --src model.safetensors --variant dinov3_vitb16 \
      --out dinov3_vitb16.npz

Accepts the official facebookresearch/dinov3 state dict (`.pth`, read with torch) and the
transformers layout (`facebook/dinov3-*-pretrain-lvd1689m` model.safetensors from the
HuggingFace hub, or a DINOv3ViTModel's save_pretrained). Every key is used once (the
masked-patch token and the CLS-only norms are read and dropped), every shape is checked, and
the RoPE periods of an official file must be base 100's. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

if __package__ in (None, ""):  # run as a script: python tools/convert_dinov3.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solv_jax.models import dinov3  # noqa: E402
from tools.convert_dinov2 import read_state_dict  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="official .pth or HuggingFace .safetensors")
  parser.add_argument("--variant", required=True, choices=sorted(dinov3.VARIANTS))
  parser.add_argument("--out", required=True, help="output .npz params file")
  args = parser.parse_args(argv)
  try:
    params = dinov3.convert_state_dict(
        read_state_dict(args.src, dinov3.hint(args.variant)), args.variant)
  except (KeyError, ValueError, FileNotFoundError, ImportError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    print(f"error: cannot convert {args.src!r} as {args.variant}: {msg}", file=sys.stderr)
    return 1
  try:
    dinov3.save_params(args.out, params, args.variant)
  except OSError as e:
    print(f"error: cannot write {args.out!r}: {e.strerror or e}", file=sys.stderr)
    return 1
  n = sum(np.asarray(x).size for x in __import__("jax").tree_util.tree_leaves(params))
  print(f"wrote {args.out} ({args.variant}, {n / 1e6:.1f}M parameters)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
