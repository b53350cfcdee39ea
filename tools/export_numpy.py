"""Exports a trained run as flat numpy arrays.

  python tools/export_numpy.py --workdir WORKDIR --out model.npz [--step N]

Writes the trainable params ('params/...'), the frozen DINOv2 params ('encoder/...') and the
config (JSON, '__config__'); `solv_jax.export.load_export(path)` reads it back.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--no-encoder", action="store_true", help="leave the DINOv2 params out")
  args = parser.parse_args(argv)
  from solv_jax import export
  from solv_jax.models import build
  if not os.path.isdir(args.workdir):
    print(f"error: --workdir {args.workdir!r} is not a folder (a training workdir).",
          file=sys.stderr)
    return 1
  try:
    loaded = build.load(args.workdir, args.step, with_encoder_params=not args.no_encoder)
  except (FileNotFoundError, ValueError) as e:  # LoadError, a torn config.json
    print(f"error: {e}", file=sys.stderr)
    return 1
  params = {k: v for k, v in loaded.params.items() if k != "encoder"}
  try:
    export.save_export(args.out, loaded.config, params, loaded.params.get("encoder"))
  except OSError as e:  # a full or read-only disk: nothing is left behind
    print(f"error: cannot write --out {args.out!r} ({e.strerror or e}); nothing was written. "
          "Free space or choose another folder.", file=sys.stderr)
    return 1
  print(f"wrote {args.out} (step {loaded.step})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
