"""From the decoder's masks to per-pixel track ids, on the host with numpy and scipy.

  slots, valid, masks per frame  -- model outputs, K slots per frame
    -> `track_slots`      track id per slot: Hungarian matching between consecutive frames
    -> `masks_to_ids`     per-pixel track id: masks bilinearly upsampled (`upsample_masks`,
                          torch `F.interpolate(mode="bilinear", align_corners=False)`), argmax
                          over valid slots

The evaluation (`evaluation.py`), segmentation (`inference.py`) and the baselines all run it.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

_COS_EPS = 1e-8  # added to slot norms before the cosine similarity, as the authors do


# ----------------------------------------------------------------------------------------------
# Slots -> per-pixel track ids.
# ----------------------------------------------------------------------------------------------
def track_slots(slots: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Track ids of the slots of one video (docs/METHOD.md §7, temporal consistency).

  Frame 0's valid slots get ids 0, 1, ... in slot order. Between consecutive frames the valid
  slots are matched by the Hungarian algorithm on cosine similarity (maximised); a slot of frame
  t takes the id of its partner in frame t-1. When frame t has more valid slots than frame t-1,
  a slot left without a partner takes the id of its most similar slot in frame t-1 (so two
  slots can share an id, and their masks then form one segment).

  Args:
    slots: (T, K, Ds) float slots per frame.
    valid: (T, K) bool, False for slots removed by merging.
  Returns:
    (T, K) int32 track ids, -1 on invalid slots.
  """
  slots = np.asarray(slots, np.float64)
  valid = np.asarray(valid, bool)
  if slots.ndim != 3 or valid.shape != slots.shape[:2]:
    raise ValueError(f"track_slots expects slots (T, K, Ds) and valid (T, K); got shapes "
                     f"{slots.shape} and {valid.shape}.")
  empty = np.flatnonzero(~valid.any(axis=1))
  if empty.size:
    raise ValueError(f"Frames {empty.tolist()} have no valid slot; every frame needs at least "
                     "one (merging always keeps one).")
  unit = slots / (np.linalg.norm(slots, axis=-1, keepdims=True) + _COS_EPS)
  ids = np.full(valid.shape, -1, np.int32)
  cur = np.flatnonzero(valid[0])
  ids[0, cur] = np.arange(cur.size)
  for t in range(1, valid.shape[0]):
    prev, cur = np.flatnonzero(valid[t - 1]), np.flatnonzero(valid[t])
    sim = unit[t - 1, prev] @ unit[t, cur].T  # (K_prev, K_cur)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    partner = np.argmax(sim, axis=0)  # (K_cur,) most similar previous slot, for the unmatched
    partner[cols] = rows
    ids[t, cur] = ids[t - 1, prev[partner]]
  return ids


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's 1-D linear interpolation with align_corners=False."""
  scale = n_in / n_out
  src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)  # torch clamps at 0
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = src - i0
  weights = np.zeros((n_out, n_in), np.float64)
  np.add.at(weights, (np.arange(n_out), i0), 1.0 - w1)
  np.add.at(weights, (np.arange(n_out), i1), w1)
  return weights


def upsample_masks(masks: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of the last two axes, as torch F.interpolate(mode='bilinear',
  align_corners=False, antialias=False).

  Args:
    masks: (..., h, w) float, e.g. (T, K, h, w) decoder masks on the token grid.
    out_hw: (H, W) output size, e.g. the ground-truth resolution.
  Returns:
    (..., H, W) float32.
  """
  masks = np.asarray(masks, np.float32)
  if masks.ndim < 2:
    raise ValueError(f"upsample_masks expects (..., h, w) masks; got shape {masks.shape}.")
  (h, w), (out_h, out_w) = masks.shape[-2:], (int(out_hw[0]), int(out_hw[1]))
  rows = _bilinear_matrix(h, out_h).astype(np.float32)  # (H, h)
  cols = _bilinear_matrix(w, out_w).astype(np.float32)  # (W, w)
  return np.matmul(rows, np.matmul(masks, cols.T))  # (..., H, W)


def masks_to_ids(masks: np.ndarray, track_ids: np.ndarray,
                 out_hw: tuple[int, int] | None = None) -> np.ndarray:
  """Per-pixel track id: argmax over the valid slots of each frame (docs/METHOD.md §7, masks).

  Args:
    masks: (T, K, H, W) float slot masks; with `out_hw`, (T, K, h, w) masks that are upsampled
      here one frame at a time (keeps memory at one frame of full-resolution masks).
    track_ids: (T, K) int from `track_slots`, -1 marks invalid slots (never chosen).
    out_hw: optional (H, W) to upsample to with `upsample_masks`.
  Returns:
    (T, H, W) int32 track ids.
  """
  masks = np.asarray(masks)
  track_ids = np.asarray(track_ids)
  if masks.ndim != 4 or track_ids.shape != masks.shape[:2]:
    raise ValueError(f"masks_to_ids expects masks (T, K, H, W) and track_ids (T, K); got shapes "
                     f"{masks.shape} and {track_ids.shape}.")
  if not (track_ids >= 0).any(axis=1).all():
    raise ValueError("Every frame needs at least one valid slot (track id >= 0).")
  out = []
  for frame_masks, frame_ids in zip(masks, track_ids):
    if out_hw is not None:
      frame_masks = upsample_masks(frame_masks, out_hw)  # (K, H, W)
    scores = np.where((frame_ids >= 0)[:, None, None], frame_masks, -np.inf)
    out.append(frame_ids[np.argmax(scores, axis=0)])  # (H, W)
  return np.stack(out).astype(np.int32)
