"""Evaluation protocol of SPEC §7.

Per video: DINOv2 once per frame with all tokens, spatial binding once per frame (it depends
only on its frame, so the five windows that contain a frame reuse it), n masked zero frames
padded at both ends, every frame the middle of its window, merging on. Masks are upsampled to
the ground-truth resolution, slots tracked frame to frame (Hungarian on cosine similarity),
and the video matched to its ground truth for the metrics in `metrics.py`.

The command line, `python -m solv_jax.evaluate --checkpoint=WORKDIR_OR_NPZ [--config=...]`,
is in `eval_cli.py`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from solv_jax import metrics, visualize
from solv_jax.data.frames import normalize_frames, resize_frames
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


class VideoSegmenter:
  """Jit-compiled per-frame and per-window functions of a trained SOLV model."""

  def __init__(self, model: SOLV, params: dict, batch_windows: int = 16, frame_chunk: int = 16):
    self.model, self.params = model, jax.device_put(params)  # to the device once
    self.batch_windows, self.frame_chunk = batch_windows, frame_chunk
    self.n = model.num_frames // 2
    self.grid_hw = model.grid_hw

    def per_frame(params, frames):  # (C, H, W, 3) uint8 -> slots (C, K, Ds), attn (C, K, N)
      feats = model.apply({"params": params}, normalize_frames(frames), method=SOLV.encode)
      return model.apply({"params": params}, feats, method=SOLV.bind_spatial)

    def per_window(params, slots, attn, frame_mask):
      out = model.apply({"params": params}, slots, attn, frame_mask, merge_prob=1.0,
                        method=SOLV.decode_window)
      return {k: out[k] for k in ("masks", "valid", "slots")}

    def naive_window(params, frames, frame_mask):  # the authors' path: re-binds every frame
      frames = normalize_frames(frames, frame_mask)  # padding frames are zeros, as in training
      feats = model.apply({"params": params}, frames, method=SOLV.encode)  # (W, F, N, D)
      slots, attn = model.apply({"params": params}, feats, method=SOLV.bind_spatial)
      return per_window(params, slots, attn, frame_mask)

    self._per_frame = jax.jit(per_frame)
    self._per_window = jax.jit(per_window)
    self._naive_window = jax.jit(naive_window)

  def _batched(self, fn, make_inputs, total: int, size: int):
    """Calls fn(params, *inputs) on rows [s, e) padded to `size` (one compiled shape for all
    videos) and concatenates the unpadded results."""
    results = []
    for s in range(0, total, size):
      e = min(s + size, total)
      inputs = [jnp.asarray(_pad_to(np.asarray(a), size)) for a in make_inputs(s, e)]
      res = fn(self.params, *inputs)
      results.append(jax.tree_util.tree_map(lambda v: np.asarray(v)[: e - s], res))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *results)

  def __call__(self, frames: np.ndarray, naive: bool = False) -> dict:
    """frames (T, H, W, 3) uint8 at the model's resolution (`frames.resize_frames`), normalised
    on the device (float frames are taken as ImageNet-normalised already).

    naive=True re-runs DINOv2 and spatial binding for every window (the authors' path, for
    benchmarks); the default computes them once per frame. Results are identical.
    Returns numpy dict: 'masks' (T, K, h, w) on the token grid, 'valid' (T, K),
    'slots' (T, K, Ds) merged slots, 'track_ids' (T, K).
    """
    if not naive:
      return self.decode(*self.bind_frames(frames))
    t, n = frames.shape[0], self.n
    idx, frame_mask = self._windows(t)
    frames_p = _pad_video(frames, n)
    out = self._batched(self._naive_window, lambda s, e: (frames_p[idx[s:e]], frame_mask[s:e]),
                        t, self.batch_windows)
    return self._finish(out)

  def bind_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-frame part: DINOv2 and spatial binding of each frame, in batches of frame_chunk.

    frames (C, H, W, 3) uint8 at the model's resolution -> slots (C, K, Ds), attn (C, K, N).
    Each frame depends only on itself, so a long video can be bound in pieces (whose lengths
    are multiples of frame_chunk to batch exactly as one call would) and concatenated for
    `decode`.
    """
    return self._batched(self._per_frame, lambda s, e: (frames[s:e],), frames.shape[0],
                         self.frame_chunk)

  def decode(self, slots: np.ndarray, attn: np.ndarray) -> dict:
    """The per-window part on a whole video's `bind_frames` outputs, (T, K, Ds) and (T, K, N):
    every frame the middle of its window, then tracking. Returns what __call__ returns."""
    t = slots.shape[0]
    idx, frame_mask = self._windows(t)
    slots_p, attn_p = _pad_video(slots, self.n), _pad_video(attn, self.n)
    out = self._batched(
        self._per_window, lambda s, e: (slots_p[idx[s:e]], attn_p[idx[s:e]], frame_mask[s:e]),
        t, self.batch_windows)
    return self._finish(out)

  def _windows(self, t: int) -> tuple[np.ndarray, np.ndarray]:
    """-> idx (T, F), the rows of the padded video in each frame's window, and frame_mask
    (T, F), False on the n zero frames padded at both ends."""
    f = 2 * self.n + 1
    idx = np.arange(t)[:, None] + np.arange(f)[None, :]  # (T, F)
    return idx, _pad_video(np.ones(t, bool), self.n)[idx]

  def _finish(self, out: dict) -> dict:
    h, w = self.grid_hw
    out["masks"] = out["masks"].reshape(out["masks"].shape[0], -1, h, w)  # (T, K, h, w)
    out["track_ids"] = metrics.track_slots(out["slots"], out["valid"])
    return out


def _pad_video(x: np.ndarray, n: int) -> np.ndarray:
  """n zero rows before and after x (T, ...) -> (T + 2n, ...)."""
  zeros = np.zeros((n, *x.shape[1:]), x.dtype)
  return np.concatenate([zeros, x, zeros])


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
  if x.shape[0] == size:
    return x
  return np.concatenate([x, np.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)])


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


if __name__ == "__main__":  # python -m solv_jax.evaluate: the command line, in eval_cli.py
  import sys
  from solv_jax import eval_cli
  sys.exit(eval_cli.main(sys.argv[1:]))
