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
  except (FileNotFoundError, build.LoadError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  params = {k: v for k, v in loaded.params.items() if k != "encoder"}
  export.save_export(args.out, loaded.config, params, loaded.params.get("encoder"))
  print(f"wrote {args.out} (step {loaded.step})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
