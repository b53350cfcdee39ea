#!/usr/bin/env python
"""Measures the data side: converter frames/s, training clips/s, synthetic build.

    python tools/bench_data.py [--workdir /tmp/bench_data] [--videos 6]

Writes a YTVIS19-like raw tree (720x1280 JPEG frames, one letterboxed video so
the crop/re-encode path is exercised too) and a DAVIS17-like one (480x854),
converts both, then times training batches at 336x504 (the paper's YTVIS input)
and the default synthetic dataset's build. Numbers depend on the machine's cores.
"""

import argparse
import json
import os
import shutil
import time

import numpy as np
from PIL import Image


def _frame(rng, h, w):
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  base = 110 + 60 * np.sin(x[..., None] / rng.uniform(40, 120) + rng.uniform(0, 6, 3))
  base += 40 * np.cos(y[..., None] / rng.uniform(30, 90))
  base += rng.normal(0, 8, (h, w, 3))  # texture so JPEG sizes are realistic
  return np.clip(base, 0, 255).astype(np.uint8)


def _save(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode).save(path, quality=90)


def make_raw(root, videos, frames, kind):
  rng = np.random.default_rng(0)
  h, w = (720, 1280) if kind == "ytvis" else (480, 854)
  template = _frame(rng, h, w)
  splits = {"train": videos} if kind == "ytvis" else {"train": videos, "val": 2}
  for split, n in splits.items():
    meta = {"videos": []}
    for v in range(n):
      name = f"{split}{v:03d}"
      names = []
      for t in range(frames):
        f = np.roll(template, 7 * t + 31 * v, axis=1)
        if v == 0:
          f = f.copy()
          f[:96] = 0  # letterbox: forces crop + re-encode of this video
          f[-96:] = 0
        ids = np.zeros((h, w), np.uint8)
        ids[200:400, (50 * t) % (w - 300):(50 * t) % (w - 300) + 200] = 1
        if kind == "ytvis":
          fn = f"{name}/{5 * t:05d}"
          names.append(fn + ".jpg")
          _save(os.path.join(root, split, "JPEGImages", fn + ".jpg"), f)
          _save(os.path.join(root, split, "Annotations", fn + ".png"), ids, "P")
        else:
          _save(os.path.join(root, "JPEGImages", "480p", name, f"{t:05d}.jpg"), f)
          _save(os.path.join(root, "Annotations", "480p", name, f"{t:05d}.png"),
                ids, "P")
      meta["videos"].append({"id": v + 1, "file_names": names, "length": frames,
                             "height": h, "width": w})
    if kind == "ytvis":
      with open(os.path.join(root, split, f"{split}.json"), "w") as f:
        json.dump(meta, f)
    else:
      os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
      with open(os.path.join(root, "ImageSets", "2017", f"{split}.txt"), "w") as f:
        f.write("\n".join(f"{split}{v:03d}" for v in range(n)))
  return sum(splits.values()) * frames


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="/tmp/bench_data")
  parser.add_argument("--videos", type=int, default=6)
  parser.add_argument("--frames", type=int, default=20)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--skip_synthetic", action="store_true")
  args = parser.parse_args()
  from configs import ytvis19  # pylint: disable=g-import-not-at-top
  from solv_jax.data import convert, pipeline, synthetic  # pylint: disable=g-import-not-at-top

  shutil.rmtree(args.workdir, ignore_errors=True)
  out = os.path.join(args.workdir, "tfds")
  for kind, fn in (("ytvis", convert.convert_ytvis), ("davis", convert.convert_davis)):
    raw = os.path.join(args.workdir, kind)
    n = make_raw(raw, args.videos, args.frames, kind)
    splits = ["train"] if kind == "ytvis" else ["train", "val"]
    t = time.perf_counter()
    fn(raw, out, splits=splits)
    dt = time.perf_counter() - t
    t = time.perf_counter()
    fn(raw, out, splits=splits)  # complete: no-op
    print(f"convert {kind}: {n} frames in {dt:.1f}s = {n / dt:.1f} frames/s "
          f"(re-run no-op {time.perf_counter() - t:.2f}s)", flush=True)

  cfg = ytvis19.get_config().data  # 336x504, n = 2
  cfg.update(data_dir=out, train_split="train", shuffle_buffer=256)  # converted: train only
  it = pipeline.make_train_iterator(cfg, args.batch, 0, 1, seed=0)
  t = time.perf_counter()
  next(it)
  first = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(args.steps):
    batch = next(it)
  dt = time.perf_counter() - t
  it.close()
  print(f"train clips at 336x504 (YTVIS 720p JPEG source): "
        f"{args.steps * args.batch / dt:.1f} clips/s (batch {batch['video'].shape}, "
        f"first batch {first:.1f}s)", flush=True)

  if not args.skip_synthetic:
    t = time.perf_counter()
    synthetic.build(synthetic.SyntheticConfig(), os.path.join(args.workdir, "synth"))
    print(f"synthetic default build: {time.perf_counter() - t:.1f}s", flush=True)


if __name__ == "__main__":
  main()
