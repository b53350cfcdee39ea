"""Evaluation metrics of SOLV (SPEC §7), on the host with numpy and scipy.

Pipeline for one video, as `evaluate.py` runs it:

  slots, valid, masks per frame  -- model outputs, K slots per frame
    -> `track_slots`      track id per slot: Hungarian matching between consecutive frames
    -> `masks_to_ids`     per-pixel track id: masks bilinearly upsampled (`upsample_masks`,
                          torch `F.interpolate(mode="bilinear", align_corners=False)`), argmax
                          over valid slots
    -> `evaluate_video`   every metric below from one contingency table
    -> `MetricAccumulator` (or `aggregate`) the dataset numbers.

Ground truth `gt` (T, H, W) int: 0 background, 1.. objects, -1 (any negative) void. Void pixels
are ignored by every metric. Predicted ids may be any integers (they need not be 0..K-1).
All counts are int64 and derived quantities float64: the pair counts of a 24x256x256 video
(~1.2e12) are far beyond float32's exact-integer range.

Metrics (`evaluate_video` keys; `aggregate` says how videos are combined):
  fg_ari          ARI on ground-truth-foreground pixels of each frame, raw prediction, averaged
                  over the frames that have foreground (the MOVi-E standard, and how the
                  authors' release skips frames; VideoSAUR's per-frame ARI skips them too).
  fg_ari_matched  the same on the prediction after `match_to_ground_truth` (unmatched ids merged
                  into background): the variant the authors report for YTVIS19 / DAVIS17.
  video_fg_ari    one contingency table over all frames (SAVi / VideoSAUR `VideoARI`).
  miou            per ground-truth object video IoU after Hungarian matching (SPEC §7).
  mbo             mean best overlap: for each ground-truth object the best IoU with any predicted
                  id, IoU over the whole video volume, averaged over the video's objects (the
                  VideoSAUR `VideoIoU(matching="overlap")` convention that SlotContrast reports).
Degenerate cases: an ARI whose two partitions are both a single cluster or both all singletons
is 1 (sklearn, SAVi); a video without foreground gives NaN and is skipped when aggregating
(SAVi would count such a video as 1.0; MOVi-E has none).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

_COS_EPS = 1e-8  # added to slot norms before the cosine similarity, as the authors do


# ----------------------------------------------------------------------------------------------
# Slots -> per-pixel track ids.
# ----------------------------------------------------------------------------------------------
def track_slots(slots: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Track ids of the slots of one video (SPEC §7, temporal consistency).

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
  """Per-pixel track id: argmax over the valid slots of each frame (SPEC §7, masks).

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


# ----------------------------------------------------------------------------------------------
# Contingency table: everything below is computed from it.
# ----------------------------------------------------------------------------------------------
class Contingency(NamedTuple):
  """Per-frame pixel counts of (ground-truth id, predicted id) pairs, void pixels excluded."""
  table: np.ndarray        # (T, G, P) int64
  gt_labels: np.ndarray    # (G,) sorted ground-truth ids present (0 = background included)
  pred_labels: np.ndarray  # (P,) sorted predicted ids present on non-void pixels


def _encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(sorted unique labels, index of each value in them); np.unique, faster for small ids."""
  if values.size and values.min() >= 0 and values.max() < 1 << 16:
    present = np.bincount(values) > 0
    return np.flatnonzero(present), (np.cumsum(present) - 1)[values]
  return np.unique(values, return_inverse=True)


def contingency(pred_ids: np.ndarray, gt: np.ndarray) -> Contingency:
  """Counts pixels per frame for each (ground-truth id, predicted id) pair, ignoring void."""
  pred_ids, gt = np.asarray(pred_ids), np.asarray(gt)
  if pred_ids.shape != gt.shape or gt.ndim != 3:
    raise ValueError(f"Expected prediction and ground truth of the same shape (T, H, W); got "
                     f"{pred_ids.shape} and {gt.shape}. Upsample masks to the ground-truth "
                     "resolution first (masks_to_ids(..., out_hw=gt.shape[1:])).")
  for name, x in (("pred_ids", pred_ids), ("gt", gt)):
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{name} must hold integer ids; got dtype {x.dtype}.")
  keep = gt >= 0
  frame = np.nonzero(keep)[0]  # frame index of each kept pixel
  gt_labels, g = _encode(gt[keep].astype(np.int64))
  pred_labels, p = _encode(pred_ids[keep].astype(np.int64))
  shape = (gt.shape[0], gt_labels.size, pred_labels.size)
  flat = (frame * shape[1] + g) * shape[2] + p
  table = np.bincount(flat, minlength=int(np.prod(shape))).astype(np.int64).reshape(shape)
  return Contingency(table, gt_labels, pred_labels)


def adjusted_rand_index(table: np.ndarray) -> np.ndarray:
  """Adjusted Rand index (Hubert & Arabie, 1985) of contingency tables (..., G, P).

  Pair counts are exact in int64; the final ratio is float64, in the pair-confusion form that
  sklearn.metrics.adjusted_rand_score uses. Identical partitions (including the degenerate
  cases: both one cluster, both all singletons, fewer than two points) give 1.
  """
  table = np.asarray(table, np.int64)
  pairs = lambda n: n * (n - 1) // 2  # noqa: E731
  n = table.sum(axis=(-2, -1))
  same_both = pairs(table).sum(axis=(-2, -1))
  same_true = pairs(table.sum(axis=-1)).sum(axis=-1)
  same_pred = pairs(table.sum(axis=-2)).sum(axis=-1)
  fn = same_true - same_both  # pairs together in the ground truth only
  fp = same_pred - same_both  # pairs together in the prediction only
  tn = pairs(n) - same_true - same_pred + same_both
  tp, fn, fp, tn = (x.astype(np.float64) for x in (same_both, fn, fp, tn))
  denom = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
  agree = (fn == 0) & (fp == 0)
  return np.where(agree, 1.0, 2.0 * (tp * tn - fn * fp) / np.where(agree, 1.0, denom))


def _foreground(c: Contingency) -> np.ndarray:
  return c.table[:, c.gt_labels > 0, :]  # (T, G_fg, P)


def _frame_fg_ari(fg_table: np.ndarray) -> float:
  """Mean over frames with foreground of the per-frame ARI; NaN when no frame has any."""
  has_fg = fg_table.sum(axis=(1, 2)) > 0
  return float(adjusted_rand_index(fg_table[has_fg]).mean()) if has_fg.any() else float("nan")


def _video_fg_ari(fg_table: np.ndarray) -> float:
  volume = fg_table.sum(axis=0)
  return float(adjusted_rand_index(volume)) if volume.sum() else float("nan")


def _video_iou(c: Contingency) -> np.ndarray:
  """(G_fg, P) video IoU: per-frame IoU averaged over the frames where the union is non-empty."""
  inter = _foreground(c)                               # (T, G_fg, P)
  gt_area = inter.sum(axis=2)                          # (T, G_fg)
  pred_area = c.table.sum(axis=1)                      # (T, P), background pixels included
  union = gt_area[:, :, None] + pred_area[:, None, :] - inter
  iou = np.divide(inter, union, out=np.zeros(union.shape), where=union > 0)
  return iou.sum(axis=0) / np.maximum((union > 0).sum(axis=0), 1)


def _volume_iou(c: Contingency) -> np.ndarray:
  """(G_fg, P) IoU of the masks over the whole video volume (t, h, w)."""
  inter = _foreground(c).sum(axis=0)                   # (G_fg, P)
  union = inter.sum(axis=1)[:, None] + c.table.sum(axis=(0, 1))[None, :] - inter
  return np.divide(inter, union, out=np.zeros(union.shape), where=union > 0)


# ----------------------------------------------------------------------------------------------
# Matching predictions to ground-truth objects.
# ----------------------------------------------------------------------------------------------
class GroundTruthMatch(NamedTuple):
  relabelled: np.ndarray   # (T, H, W) int32: matched predicted id -> its object id, others -> 0
  gt_ids: np.ndarray       # (G_fg,) ground-truth object ids of the video (sorted)
  pred_ids: np.ndarray     # (G_fg,) predicted id matched to each object; meaningful where matched
  matched: np.ndarray      # (G_fg,) bool
  object_ious: np.ndarray  # (G_fg,) float64 video IoU of each object after matching (0 unmatched)


def _match(c: Contingency) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Hungarian matching on video IoU -> (pred column per object, matched, object IoUs)."""
  iou = _video_iou(c)                                  # (G_fg, P)
  rows, cols = linear_sum_assignment(iou, maximize=True)
  keep = iou[rows, cols] > 0  # a pair with no overlap at all is no match: stays background
  rows, cols = rows[keep], cols[keep]
  column = np.zeros(iou.shape[0], np.int64)
  matched = np.zeros(iou.shape[0], bool)
  column[rows], matched[rows] = cols, True
  object_ious = np.zeros(iou.shape[0])
  object_ious[rows] = iou[rows, cols]
  return column, matched, object_ious


def _matched_table(c: Contingency, column: np.ndarray, matched: np.ndarray) -> np.ndarray:
  """(T, G, G_fg + 1) contingency of the relabelled prediction: matched columns kept (as object
  j + 1), every unmatched predicted id merged into background (column 0)."""
  merge = np.zeros((c.pred_labels.size, column.size + 1), np.int64)  # (P, G_fg + 1)
  merge[:, 0] = 1
  merge[column[matched], 0] = 0
  merge[column[matched], np.flatnonzero(matched) + 1] = 1
  return c.table @ merge


def match_to_ground_truth(pred_ids: np.ndarray, gt: np.ndarray) -> GroundTruthMatch:
  """One Hungarian matching per video between predicted ids and ground-truth objects (SPEC §7).

  Cost: video IoU (per-frame IoU averaged over the frames where the union is non-empty; void
  pixels excluded). Matched predicted ids take their object's id and every other predicted id
  becomes background. The relabelling goes by the matched predicted id's value (the authors'
  release used its row index in the cost matrix, which scores a perfect prediction whose ids are
  {2, 5} as 0).
  """
  c = contingency(pred_ids, gt)
  column, matched, object_ious = _match(c)
  gt_ids = c.gt_labels[c.gt_labels > 0]
  pred_for_gt = np.where(matched, c.pred_labels[column] if c.pred_labels.size else 0, 0)
  pred_ids = np.asarray(pred_ids)
  relabelled = np.zeros(pred_ids.shape, np.int32)
  for obj, pred in zip(gt_ids[matched], pred_for_gt[matched]):
    relabelled[pred_ids == pred] = obj
  return GroundTruthMatch(relabelled, gt_ids, pred_for_gt, matched, object_ious)


# ----------------------------------------------------------------------------------------------
# Metrics of one video.
# ----------------------------------------------------------------------------------------------
def fg_ari(pred_ids: np.ndarray, gt: np.ndarray) -> float:
  """Per-frame FG-ARI on the raw prediction, averaged over frames with foreground (NaN: none)."""
  return _frame_fg_ari(_foreground(contingency(pred_ids, gt)))


def fg_ari_matched(pred_ids: np.ndarray, gt: np.ndarray) -> float:
  """Per-frame FG-ARI on the prediction after `match_to_ground_truth` (the authors' variant)."""
  c = contingency(pred_ids, gt)
  table = _matched_table(c, *_match(c)[:2])
  return _frame_fg_ari(table[:, c.gt_labels > 0, :])


def video_fg_ari(pred_ids: np.ndarray, gt: np.ndarray) -> float:
  """FG-ARI of one contingency table over all frames (SAVi / VideoSAUR); NaN without foreground."""
  return _video_fg_ari(_foreground(contingency(pred_ids, gt)))


def object_ious(pred_ids: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """(G_fg,) video IoU of each ground-truth object after matching; mIoU averages these over all
  objects of all videos."""
  return _match(contingency(pred_ids, gt))[2]


def best_overlaps(pred_ids: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """(G_fg,) best volume IoU of each ground-truth object with any predicted id; mBO is their
  mean per video, averaged over videos."""
  iou = _volume_iou(contingency(pred_ids, gt))
  return iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0])


def evaluate_video(pred_ids: np.ndarray, gt: np.ndarray) -> dict:
  """All metrics of one video from a single contingency table.

  Args:
    pred_ids: (T, H, W) int predicted ids (e.g. track ids from `masks_to_ids`).
    gt: (T, H, W) int ground truth, 0 background, -1 void.
  Returns:
    dict with floats 'fg_ari', 'fg_ari_matched', 'video_fg_ari', 'miou', 'mbo' (NaN for a video
    without foreground objects) and arrays 'object_ious', 'best_overlaps' (one per object).
  """
  c = contingency(pred_ids, gt)
  fg = _foreground(c)
  column, matched, ious = _match(c)
  volume_iou = _volume_iou(c)
  overlaps = volume_iou.max(axis=1) if volume_iou.shape[1] else np.zeros(volume_iou.shape[0])
  mean = lambda x: float(x.mean()) if x.size else float("nan")  # noqa: E731
  return {
      "fg_ari": _frame_fg_ari(fg),
      "fg_ari_matched": _frame_fg_ari(_matched_table(c, column, matched)[:, c.gt_labels > 0]),
      "video_fg_ari": _video_fg_ari(fg),
      "miou": mean(ious),
      "mbo": mean(overlaps),
      "object_ious": ious,
      "best_overlaps": overlaps,
  }


# ----------------------------------------------------------------------------------------------
# Dataset numbers.
# ----------------------------------------------------------------------------------------------
def aggregate(results: Iterable[dict]) -> dict:
  """Combines `evaluate_video` results (SPEC §7).

  fg_ari, fg_ari_matched, video_fg_ari: mean over videos (videos without foreground skipped).
  miou: mean over all objects of all videos. mbo: mean over videos of the per-video mean.
  """
  results = list(results)

  def video_mean(key):
    values = np.array([r[key] for r in results], np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")

  ious = np.concatenate([np.zeros(0)] + [np.asarray(r["object_ious"]) for r in results])
  return {
      "fg_ari": video_mean("fg_ari"),
      "fg_ari_matched": video_mean("fg_ari_matched"),
      "video_fg_ari": video_mean("video_fg_ari"),
      "miou": float(ious.mean()) if ious.size else float("nan"),
      "mbo": video_mean("mbo"),
      "num_videos": len(results),
      "num_objects": int(ious.size),
  }


class MetricAccumulator:
  """Collects per-video results; `compute()` gives the dataset numbers of `aggregate`."""

  def __init__(self):
    self.results: list[dict] = []

  def update(self, pred_ids: np.ndarray, gt: np.ndarray) -> dict:
    """Evaluates one video, keeps its result and returns it."""
    result = evaluate_video(pred_ids, gt)
    self.results.append(result)
    return result

  def add(self, result: dict) -> None:
    """Adds an `evaluate_video` result computed elsewhere (e.g. another process)."""
    self.results.append(result)

  def compute(self) -> dict:
    return aggregate(self.results)

  def reset(self) -> None:
    self.results = []
