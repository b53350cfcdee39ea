"""Exports a trained run as flat numpy arrays.

  python tools/export_numpy.py --workdir WORKDIR --out model.npz [--step N]

Writes the trainable params ('params/...'), the frozen DINOv2 params ('encoder/...') and the
config (JSON, '__config__'); `solv_jax.export.load_export(path)` reads it back.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--step", type=int, default=None)
  parser.add_argument("--no-encoder", action="store_true", help="leave the DINOv2 params out")
  args = parser.parse_args(argv)
  from solv_jax import export, train
  from solv_jax.models.solv import build_model
  try:
    config = export.load_config(args.workdir)
    step, params = export.restore_workdir(args.workdir, args.step)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  encoder = None if args.no_encoder else train.encoder_params(config, build_model(config))
  export.save_export(args.out, config, params, encoder)
  print(f"wrote {args.out} (step {step})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
