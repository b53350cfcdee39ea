"""The evaluation protocol over a dataset's evaluation split (docs/METHOD.md §7): `evaluate()`
segments each video with `inference.VideoSegmenter`, scores it against its ground truth with
`metrics.py` and writes results.json and the mask pictures. Training's periodic and final
evaluations and `python -m solv_jax.evaluate` (solv_jax/evaluate.py) run it.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterable

import jax
import numpy as np

from solv_jax import metrics, visualize
from solv_jax.data.frames import resize_frames
from solv_jax.inference import VideoSegmenter
from solv_jax.models.solv import SOLV

# The metrics a one-line summary of an evaluation shows (main, periodic evaluation).
SUMMARY_KEYS = ("fg_ari", "fg_ari_matched", "video_fg_ari", "miou", "mbo", "frame_mbo",
                "jf_mean", "num_videos")

# The metrics results.json lists for each video ("videos"); the dataset numbers carry every key
# of metrics.aggregate. docs/METRICS.md says which paper reports which.
PER_VIDEO_KEYS = ("fg_ari", "fg_ari_matched", "video_fg_ari", "miou", "mbo", "frame_mbo",
                  "j_mean", "f_mean", "jf_mean")
METRICS_NOTE = ("mbo: per-video (volume) mBO, VideoSAUR/SlotContrast; frame_mbo: per-frame "
                "(image-level) mBO; j_*/f_*/jf_*: DAVIS unsupervised J&F (mean, recall, decay; "
                "jf_mean = official J&F-Mean), pooled over the objects of the first frames "
                "(davis_num_objects). See docs/METRICS.md.")


def summary(results: dict) -> str:
  """The one line of SUMMARY_KEYS an evaluation prints: scores to 4 places, counts as counts."""
  return " ".join(f"{k}={results[k]:.4f}" if isinstance(results[k], float) else
                  f"{k}={results[k]}" for k in SUMMARY_KEYS if k in results)


def evaluate(config, model: SOLV, params: dict, workdir: str, step: int | None,
             videos: Iterable[dict] | None = None, subdir: str = "eval",
             extra: dict | None = None) -> dict:
  """Runs the protocol over the evaluation split; writes WORKDIR/eval/results.json + pictures.

  step: the checkpoint's step (None for an export). extra: JSON-able keys added to the results
  (the command line records what it evaluated there).

  In a multi-process run every process evaluates every video on its own devices (the params
  are replicated, so all get the same results) and process 0 alone writes the files."""
  from solv_jax.data import pipeline

  out_dir = os.path.join(workdir, subdir)
  writes = jax.process_index() == 0
  if writes:
    os.makedirs(out_dir, exist_ok=True)
  segmenter = VideoSegmenter(model, params, batch_windows=config.eval.batch_windows)
  if videos is None:
    videos = pipeline.eval_videos(config)
  acc = metrics.MetricAccumulator()
  per_video = []
  t0, num_frames = time.time(), 0
  for i, video in enumerate(videos):
    frames = resize_frames(video["video"], tuple(config.data.resolution))
    out = segmenter(frames)
    gt = np.asarray(video["segmentations"])
    pred = metrics.masks_to_ids(out["masks"], out["track_ids"], out_hw=gt.shape[1:3])
    num_frames += len(frames)
    name = _name(video, i)
    if not video.get("has_annotations", True):
      continue
    result = acc.update(pred, gt)
    per_video.append({"video": name, **{k: float(result[k]) for k in PER_VIDEO_KEYS}})
    if i < config.eval.num_visualize and writes:
      safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
      raw = np.asarray(video["video"])
      visualize.save_strip(os.path.join(out_dir, f"{safe}.png"), raw, gt, pred)
      visualize.save_gif(os.path.join(out_dir, f"{safe}.gif"), raw, gt, pred)
  results = {**acc.compute(), "step": None if step is None else int(step),
             "frames_per_second": num_frames / max(time.time() - t0, 1e-9), "videos": per_video,
             "fg_ari_note": ("fg_ari: per-frame ARI on GT foreground of the raw prediction "
                             "(MOVi-E standard); fg_ari_matched: the authors' YTVIS/DAVIS "
                             "variant on the matched prediction; video_fg_ari: one table per "
                             "video (SAVi/VideoSAUR)"),
             "metrics_note": METRICS_NOTE, **(extra or {})}
  if writes:
    with open(os.path.join(out_dir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results


def _name(video: dict, i: int) -> str:
  name = video.get("video_name", f"video_{i:04d}")
  if isinstance(name, bytes):
    name = name.decode()
  return str(name)
