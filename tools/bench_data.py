#!/usr/bin/env python
"""Measures the data side: converter frames/s, training clips/s, synthetic build.

    python tools/bench_data.py [--workdir /tmp/bench_data] [--videos 6] [--cores 1,2]

Writes a YTVIS19-like raw tree (720x1280 JPEG frames, one letterboxed video so
the crop/re-encode path is exercised too) and a DAVIS17-like one (480x854),
converts both, then times training batches at 336x504 (the paper's YTVIS input)
from the 720p records, once per entry of --cores in a process pinned to that
many cores (as `taskset` would), and reports the host->device bytes of a clip
(what a batch holds, per clip), then times the default synthetic dataset's build.
Numbers depend on the machine: compare only runs on one machine, back to back.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_clips(args):
  """Training batches at 336x504 from the converted 720p records, on this process's cores."""
  from solv_jax import schema  # pylint: disable=g-import-not-at-top
  from solv_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  # sharding.keep_host_memory is not called, as on a GPU host, where the entry point skips it.
  cfg = schema.load_recipe(os.path.join(REPO, "configs", "ytvis19.py")).data  # 336x504, n = 2
  cfg.update(data_dir=os.path.join(args.workdir, "tfds"), train_split="train",
             shuffle_buffer=256)  # converted: train only
  it = pipeline.make_train_iterator(cfg, args.batch, 0, 1, seed=0)
  t = time.perf_counter()
  batch = next(it)
  first = time.perf_counter() - t
  rates = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    for _ in range(args.steps):
      batch = next(it)
    rates.append(args.steps * args.batch / (time.perf_counter() - t))
  it.close()
  per_clip = sum(v.nbytes for v in batch.values()) / args.batch
  cores = len(os.sched_getaffinity(0))
  print(f"train clips at 336x504 (YTVIS 720p JPEG source), {cores} core(s): "
        f"{statistics.median(rates):.1f} clips/s (rounds: "
        f"{', '.join(f'{r:.1f}' for r in rates)}; batch {batch['video'].shape} "
        f"{batch['video'].dtype}, first batch {first:.1f}s); host->device "
        f"{per_clip / 1e6:.3f} MB a clip", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="/tmp/bench_data")
  parser.add_argument("--videos", type=int, default=6)
  parser.add_argument("--frames", type=int, default=20)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed rounds of --steps batches; each is printed, then the median")
  parser.add_argument("--cores", default="1,2",
                      help="comma-separated core counts to time the training clips on")
  parser.add_argument("--skip_synthetic", action="store_true")
  parser.add_argument("--measure_only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure_only:  # a child pinned to its cores: the records exist
    measure_clips(args)
    return
  from solv_jax.data import convert, synthetic  # pylint: disable=g-import-not-at-top

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

  for cores in [int(c) for c in args.cores.split(",") if c]:
    cpus = sorted(os.sched_getaffinity(0))
    if cores > len(cpus):
      print(f"train clips on {cores} cores: skipped, this process may use {len(cpus)}")
      continue
    cmd = [sys.executable, os.path.abspath(__file__), "--workdir", args.workdir,
           "--batch", str(args.batch), "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--measure_only"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    subprocess.run(cmd, check=True, env=env,
                   preexec_fn=lambda n=cores: os.sched_setaffinity(0, cpus[:n]))

  if not args.skip_synthetic:
    t = time.perf_counter()
    synthetic.build(synthetic.SyntheticConfig(), os.path.join(args.workdir, "synth"))
    print(f"synthetic default build: {time.perf_counter() - t:.1f}s", flush=True)


if __name__ == "__main__":
  main()
