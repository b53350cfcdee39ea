"""Pictures of segmentations: PNG strips and animated GIFs of a video, with PIL.

Each id has one fixed colour (`PALETTE[id % len(PALETTE)]`), the same in every frame, every
video and every file, so a track keeps its colour through a GIF. Ids below 0 (void) and the
`background` id, when one is given, are left untinted. Ground truth is drawn with
`background=0`; raw predictions (track ids from 0) with `pred_background=None`, so every slot is
coloured; a prediction relabelled by `metrics.match_to_ground_truth` shares the ground truth's ids
and colours, and is best drawn with `pred_background=0`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from solv_jax import files


def _make_palette(n: int = 64) -> np.ndarray:
  """(n, 3) uint8 colours, each as far (RGB distance) from those before it as a grid allows.

  Greedy farthest-point selection over a 6x6x6 RGB grid without greys and very dark colours
  (the idea of Glasbey et al., 2007); deterministic, so an id's colour never changes.
  """
  levels = np.linspace(0, 255, 6)
  grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
  spread = grid.max(axis=1) - grid.min(axis=1)
  grid = grid[(spread >= 100) & (grid.max(axis=1) >= 150)]
  chosen = [int(np.argmin(np.abs(grid - (255, 0, 0)).sum(axis=1)))]  # start from red
  dist = np.linalg.norm(grid - grid[chosen[0]], axis=1)
  for _ in range(n - 1):
    chosen.append(int(np.argmax(dist)))
    dist = np.minimum(dist, np.linalg.norm(grid - grid[chosen[-1]], axis=1))
  return np.round(grid[chosen]).astype(np.uint8)


PALETTE = _make_palette()


def id_colours(ids: np.ndarray) -> np.ndarray:
  """(..., 3) uint8 colour of each id (ids >= 0; negative ids get black)."""
  ids = np.asarray(ids)
  colours = PALETTE[np.mod(ids, len(PALETTE))]
  return np.where((ids < 0)[..., None], np.uint8(0), colours)


def overlay(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.55,
            background: int | None = None) -> np.ndarray:
  """Tints each pixel of `frame` with the colour of its id.

  Args:
    frame: (H, W, 3) uint8 image.
    ids: (H, W) int ids at the frame's resolution.
    alpha: weight of the id colour (1.0 paints the pure palette colour).
    background: id left untinted (ground-truth background is 0); void (< 0) is never tinted.
  Returns:
    (H, W, 3) uint8.
  """
  frame, ids = np.asarray(frame), np.asarray(ids)
  if frame.ndim != 3 or frame.shape[-1] != 3 or ids.shape != frame.shape[:2]:
    raise ValueError(f"overlay expects frame (H, W, 3) and ids (H, W); got {frame.shape} and "
                     f"{ids.shape}.")
  tint = ids >= 0
  if background is not None:
    tint &= ids != background
  mixed = (1.0 - alpha) * frame + alpha * id_colours(ids)
  out = np.where(tint[..., None], np.round(mixed), frame)
  return np.clip(out, 0, 255).astype(np.uint8)


def _check_video(frames, gt, pred):
  frames, gt, pred = np.asarray(frames), np.asarray(gt), np.asarray(pred)
  if frames.ndim != 4 or frames.shape[-1] != 3 or gt.shape != frames.shape[:3] \
      or pred.shape != frames.shape[:3]:
    raise ValueError(f"Expected frames (T, H, W, 3) uint8 with gt and pred (T, H, W) at the same "
                     f"resolution; got {frames.shape}, {gt.shape}, {pred.shape}.")
  if frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 (the evaluation video's 'video'); got {frames.dtype}.")
  return frames, gt, pred


def strip_image(frames: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                idx: Sequence[int] | None = None, pred_background: int | None = None
                ) -> np.ndarray:
  """(3H, n W, 3) uint8 grid: rows frame / ground truth / prediction, columns frames `idx`
  (default: first, middle and last frame)."""
  frames, gt, pred = _check_video(frames, gt, pred)
  num = frames.shape[0]
  idx = sorted({0, num // 2, num - 1}) if idx is None else list(idx)
  columns = [np.concatenate([frames[t], overlay(frames[t], gt[t], background=0),
                             overlay(frames[t], pred[t], background=pred_background)], axis=0)
             for t in idx]
  return np.concatenate(columns, axis=1)


def gif_frames(frames: np.ndarray, gt: np.ndarray, pred: np.ndarray,
               pred_background: int | None = None) -> np.ndarray:
  """(T, H, 3W, 3) uint8: frame | ground truth | prediction side by side."""
  frames, gt, pred = _check_video(frames, gt, pred)
  return np.stack([
      np.concatenate([frames[t], overlay(frames[t], gt[t], background=0),
                      overlay(frames[t], pred[t], background=pred_background)], axis=1)
      for t in range(frames.shape[0])])


def _make_parent(path: str) -> None:
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)


def save_strip(path: str, frames: np.ndarray, gt: np.ndarray, pred: np.ndarray,
               idx: Sequence[int] | None = None, pred_background: int | None = None) -> None:
  """Writes `strip_image` as a PNG."""
  _make_parent(path)
  with files.replacing(path) as tmp:
    Image.fromarray(strip_image(frames, gt, pred, idx, pred_background)).save(tmp, format="PNG")


def save_gif(path: str, frames: np.ndarray, gt: np.ndarray, pred: np.ndarray, fps: float = 4.0,
             pred_background: int | None = None) -> None:
  """Writes `gif_frames` as an animated GIF that loops, one GIF frame per video frame (PIL merges
  consecutive identical frames into one longer frame)."""
  _make_parent(path)
  images = [Image.fromarray(f) for f in gif_frames(frames, gt, pred, pred_background)]
  with files.replacing(path) as tmp:
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0)
