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

import os
import sys

if __package__ in (None, ""):  # run as a script: python tools/convert_dinov3.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solv_jax.models import dinov3  # noqa: E402
from tools.convert_dinov2 import run  # noqa: E402


def main(argv=None) -> int:
  return run(argv, dinov3, __doc__, source_hint=dinov3.hint)


if __name__ == "__main__":
  sys.exit(main())
