"""The evaluation protocol over a dataset's evaluation split (docs/METHOD.md §7): `evaluate()`
segments each video with `inference.VideoSegmenter`, scores it against its ground truth with
`metrics.py` and writes results.json and the mask pictures. Training's periodic and final
evaluations and `python -m solv_jax.evaluate` (solv_jax/evaluate.py) run it.
"""
from __future__ import annotations

import os
import time
from typing import Iterable

import jax
import numpy as np

from solv_jax import files, metrics, tracking, visualize
from solv_jax.data.frames import resize_frames
from solv_jax.inference import VideoSegmenter
from solv_jax.models.solv import SOLV

def _notes() -> dict:
  """The notes results.json carries on its metrics, from the metric table."""
  fg = "; ".join(f"{m.key}: {m.what} ({m.reported_by})" for m in metrics.METRICS
                 if m.key.endswith("fg_ari") or m.key == "fg_ari_matched")
  rest = "; ".join(f"{m.key}: {m.what}" for m in metrics.METRICS
                   if m.video is not None and "fg_ari" not in m.key)
  return {"fg_ari_note": fg, "metrics_note": f"{rest}. See docs/METRICS.md."}


def summary(results: dict) -> str:
  """The one line an evaluation prints (the metric table's 'summary' keys): scores to 4 places,
  counts as counts."""
  return " ".join(f"{k}={results[k]:.4f}" if isinstance(results[k], float) else
                  f"{k}={results[k]}" for k in metrics.keys("summary") if k in results)


def evaluate(config, model: SOLV, params: dict, workdir: str, step: int | None,
             videos: Iterable[dict] | None = None, subdir: str = "eval",
             extra: dict | None = None, writer=None) -> dict:
  """Runs the protocol over the evaluation split; writes WORKDIR/eval/results.json + pictures.

  step: the checkpoint's step (None for an export). extra: JSON-able keys added to the results
  (the command line records what it evaluated there). writer: a clu metric writer that also
  gets the mask pictures (`masks/<video>`: frames, ground truth, prediction) at `step`, for
  TensorBoard.

  In a multi-process run every process evaluates every video on its own devices (the params
  are replicated, so all get the same results) and process 0 alone writes the files."""
  from solv_jax.data import pipeline

  out_dir = os.path.join(workdir, subdir)
  writes = jax.process_index() == 0  # out_dir is made by the first file written into it
  segmenter = VideoSegmenter(model, params, batch_windows=config.eval.batch_windows)
  if videos is None:
    videos = pipeline.eval_videos(config)
  acc = metrics.MetricAccumulator()
  per_video, images = [], {}
  t0, num_frames = time.time(), 0
  for i, video in enumerate(videos):
    frames = resize_frames(video["video"], tuple(config.data.resolution))
    out = segmenter(frames)
    gt = np.asarray(video["segmentations"])
    pred = tracking.masks_to_ids(out["masks"], out["track_ids"], out_hw=gt.shape[1:3])
    num_frames += len(frames)
    name = _name(video, i)
    if not video.get("has_annotations", True):
      continue
    result = acc.update(pred, gt)
    per_video.append({"video": name,
                      **{k: float(result[k]) for k in metrics.keys("per_video")}})
    if i < config.eval.num_visualize and writes:
      safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
      raw = np.asarray(video["video"])
      visualize.save_strip(os.path.join(out_dir, f"{safe}.png"), raw, gt, pred)
      visualize.save_gif(os.path.join(out_dir, f"{safe}.gif"), raw, gt, pred)
      if writer is not None:
        images[f"masks/{safe}"] = visualize.strip_image(raw, gt, pred)[None]
  results = {**acc.compute(), "step": None if step is None else int(step),
             "frames_per_second": num_frames / max(time.time() - t0, 1e-9), "videos": per_video,
             **_notes(), **(extra or {})}
  if writes:
    os.makedirs(out_dir, exist_ok=True)
    files.write_json(os.path.join(out_dir, "results.json"), results)
    if images:
      writer.write_images(0 if step is None else int(step), images)
      writer.flush()
  return results


def _name(video: dict, i: int) -> str:
  name = video.get("video_name", f"video_{i:04d}")
  if isinstance(name, bytes):
    name = name.decode()
  return str(name)
