"""Evaluation metrics of SOLV (docs/METHOD.md §7), on the host with numpy and scipy.

Pipeline for one video, as `evaluation.evaluate` runs it:

  slots, valid, masks per frame  -- model outputs, K slots per frame
    -> `tracking.track_slots`   track id per slot: Hungarian matching between consecutive frames
    -> `tracking.masks_to_ids`  per-pixel track id (masks upsampled, argmax over valid slots)
    -> `evaluate_video`   every metric of METRICS from one contingency table (and, for J&F, the
                          boundaries of the masks)
    -> `MetricAccumulator` (or `aggregate`) the dataset numbers.

METRICS is the metric table: one row per metric (its key, what it is, who reports it, its
per-video function and how videos pool); evaluate_video, aggregate, the evaluation's table and
summary line, results.json and tools/demo_sweep.py all read it. A new metric is a row there.

Ground truth `gt` (T, H, W) int: 0 background, 1.. objects, -1 (any negative) void. Void pixels
are ignored by every metric. Predicted ids may be any integers (they need not be 0..K-1).
All counts are int64 and derived quantities float64: the pair counts of a 24x256x256 video
(~1.2e12) are far beyond float32's exact-integer range.

The metrics (METRICS keys; `aggregate` says how videos are combined):
  fg_ari          ARI on ground-truth-foreground pixels of each frame, raw prediction, averaged
                  over the frames that have foreground (the MOVi-E standard, and how the
                  authors' release skips frames; VideoSAUR's per-frame ARI skips them too).
  fg_ari_matched  the same on the prediction after `match_to_ground_truth` (unmatched ids merged
                  into background): the variant the authors report for YTVIS19 / DAVIS17.
  video_fg_ari    one contingency table over all frames (SAVi / VideoSAUR `VideoARI`).
  miou            per ground-truth object video IoU after Hungarian matching (docs/METHOD.md §7).
  mbo             mean best overlap: for each ground-truth object the best IoU with any predicted
                  id, IoU over the whole video volume, averaged over the video's objects (the
                  VideoSAUR `VideoIoU(matching="overlap")` convention that SlotContrast reports).
  frame_mbo       per-frame (image-level) mBO: the same with IoU per frame, over the objects
                  present in the frame, averaged over the frames that have one.
  j_*, f_*, jf_*  DAVIS J&F, unsupervised protocol (`davis_j_and_f`): region similarity J and
                  boundary F-measure per object and frame after the official proposal-to-object
                  matching; statistics mean / recall / decay (DAVIS_STATS) per object, pooled
                  over all objects of all videos. jf_mean is the official "J&F-Mean".
See docs/METRICS.md for which paper reports which of these.
Degenerate cases: an ARI whose two partitions are both a single cluster or both all singletons
is 1 (sklearn, SAVi); a video without foreground gives NaN and is skipped when aggregating
(SAVi would count such a video as 1.0; MOVi-E has none).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

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


def _frame_iou(c: Contingency) -> tuple[np.ndarray, np.ndarray]:
  """(T, G_fg, P) IoU of each object with each predicted id in each frame (0 where the union is
  empty), and the (T, G_fg, P) bool of non-empty unions."""
  inter = _foreground(c)                               # (T, G_fg, P)
  gt_area = inter.sum(axis=2)                          # (T, G_fg)
  pred_area = c.table.sum(axis=1)                      # (T, P), background pixels included
  union = gt_area[:, :, None] + pred_area[:, None, :] - inter
  return np.divide(inter, union, out=np.zeros(union.shape), where=union > 0), union > 0


def _video_iou(c: Contingency) -> np.ndarray:
  """(G_fg, P) video IoU: per-frame IoU averaged over the frames where the union is non-empty."""
  iou, nonempty = _frame_iou(c)
  return iou.sum(axis=0) / np.maximum(nonempty.sum(axis=0), 1)


def _frame_mbo(c: Contingency) -> float:
  """Per-frame mBO of one video: in each frame, every object present there takes its best IoU
  with any predicted id of that frame; their mean is the frame's mBO; the video's is the mean
  over the frames that have an object (NaN when none has)."""
  iou, _ = _frame_iou(c)                               # (T, G_fg, P)
  present = _foreground(c).sum(axis=2) > 0             # (T, G_fg)
  best = iou.max(axis=2) if iou.shape[2] else np.zeros(present.shape)  # (T, G_fg)
  frames = present.any(axis=1)
  if not frames.any():
    return float("nan")
  per_frame = (best * present).sum(axis=1)[frames] / present.sum(axis=1)[frames]
  return float(per_frame.mean())


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
  """One Hungarian matching per video between predicted ids and ground-truth objects
  (docs/METHOD.md §7).

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
# DAVIS J&F: region similarity J and boundary F-measure, unsupervised protocol.
# ----------------------------------------------------------------------------------------------
DAVIS_BOUND_TH = 0.008  # boundary tolerance, a fraction of the image diagonal (official default)
DAVIS_STATS = ("j_mean", "j_recall", "j_decay", "f_mean", "f_recall", "f_decay")


def boundary_map(mask: np.ndarray) -> np.ndarray:
  """(H, W) bool boundary of a binary mask, as the DAVIS toolkit's `seg2bmap` draws it.

  A pixel is on the boundary when its value differs from that of its right, lower or lower-right
  neighbour, the image being extended by repeating its last row and column (so the last row
  compares only with the right neighbour, the last column only with the lower one, and the
  bottom-right pixel is never a boundary pixel). The boundary is one pixel wide and offset half
  a pixel towards the origin: below and right of the mask it runs over the mask's own last
  pixels, above and left of it over the background pixels just outside.
  """
  m = np.asarray(mask).astype(bool)
  if m.ndim != 2:
    raise ValueError(f"boundary_map expects one (H, W) mask; got shape {m.shape}.")
  return _label_edges(m.astype(np.int64))[0]


def _label_edges(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
  """Label-change map of an (H, W) int map and, per neighbour direction, the pixel's and the
  neighbour's labels where they differ. Pixel (y, x) of mask k is on k's boundary (`boundary_map`
  of labels == k) exactly when it differs from a neighbour and k is one of the two labels."""
  p = np.pad(labels, ((0, 1), (0, 1)), mode="edge")  # repeat the last row and column
  here = p[:-1, :-1]
  changed, pairs = np.zeros(here.shape, bool), []
  for nb in (p[:-1, 1:], p[1:, :-1], p[1:, 1:]):      # right, lower, lower-right
    diff = here != nb
    changed |= diff
    pairs.append((np.flatnonzero(diff), here[diff], nb[diff]))
  return changed, pairs


def _boundary_points(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Boundary pixels of every mask labels == k of an (H, W) map (-1 = no mask): (n, 2) float
  (y, x) and (n,) label k, one row per (pixel, mask) pair, sorted by label."""
  w = labels.shape[1]
  _, pairs = _label_edges(labels)
  flat = np.concatenate([np.concatenate([f, f]) for f, _, _ in pairs])
  lab = np.concatenate([np.concatenate([a, b]) for _, a, b in pairs]).astype(np.int64)
  keep = lab >= 0
  key = np.unique(lab[keep] * labels.size + flat[keep])  # distinct (label, pixel) pairs
  lab, flat = key // labels.size, key % labels.size
  return np.stack([flat // w, flat % w], axis=1).astype(np.float64), lab


def boundary_tolerance(hw: tuple[int, int], bound_th: float = DAVIS_BOUND_TH) -> int:
  """Radius in pixels of the disk a boundary pixel is matched within: bound_th itself when it is
  >= 1, else ceil(bound_th * image diagonal), as the toolkit does (8 px at 480x854)."""
  if bound_th >= 1:
    return int(bound_th)
  return int(np.ceil(bound_th * np.hypot(*hw)))


def _boundary_matches(pred: tuple[np.ndarray, np.ndarray], gt: tuple[np.ndarray, np.ndarray],
                      num_pred: int, num_gt: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
  """(P, G) counts of matched boundary pixels: of proposal p's boundary within `radius` of
  object g's, and of g's within `radius` of p's. Within the radius (Euclidean, inclusive) means
  inside the other boundary's dilation by a disk of that radius; found from one KD-tree pair."""
  (pred_yx, pred_lab), (gt_yx, gt_lab) = pred, gt
  if not (len(pred_yx) and len(gt_yx)):
    return np.zeros((2, num_pred, num_gt), np.int64)
  bound = np.sqrt(radius ** 2 + 0.5)  # squared pixel distances are integers: <= r^2 <=> < r^2+.5
  near = cKDTree(pred_yx).sparse_distance_matrix(cKDTree(gt_yx), bound, output_type="ndarray")
  a, b = near["i"], near["j"]  # every (predicted point, ground-truth point) pair within bound
  near_gt = np.zeros((len(pred_yx), num_gt), bool)
  near_gt[a, gt_lab[b]] = True     # predicted point a is near some point of object g
  near_pred = np.zeros((len(gt_yx), num_pred), bool)
  near_pred[b, pred_lab[a]] = True  # object point b is near some point of proposal p
  return _sum_by_label(near_gt, pred_lab, num_pred), _sum_by_label(near_pred, gt_lab, num_gt).T


def _sum_by_label(rows: np.ndarray, labels: np.ndarray, num_labels: int) -> np.ndarray:
  """(num_labels, C) sums of the (n, C) rows per label; labels (n,) sorted."""
  cum = np.concatenate([np.zeros((1, rows.shape[1]), np.int64), np.cumsum(rows, axis=0)])
  edges = np.searchsorted(labels, np.arange(num_labels + 1))
  return cum[edges[1:]] - cum[edges[:-1]]


def _f_measure(n_pred, n_gt, pred_matched, gt_matched) -> np.ndarray:
  """Boundary F from boundary sizes and matched counts, with the toolkit's conventions: no
  predicted boundary gives precision 1 (recall 0 if the ground truth has one), no ground-truth
  boundary gives recall 1 (precision 0 if the prediction has one), neither gives F = 1. (The
  parenthesised zeros follow from the counts: nothing can match an empty boundary.)"""
  n_pred, n_gt = np.asarray(n_pred, np.float64), np.asarray(n_gt, np.float64)
  precision = np.where(n_pred > 0, pred_matched / np.maximum(n_pred, 1), 1.0)
  recall = np.where(n_gt > 0, gt_matched / np.maximum(n_gt, 1), 1.0)
  total = precision + recall
  return np.divide(2 * precision * recall, total, out=np.zeros(total.shape), where=total > 0)


def _frame_boundary_f(pred_labels: np.ndarray, gt_labels: np.ndarray, num_pred: int,
                      num_gt: int, radius: int) -> np.ndarray:
  """(num_pred, num_gt) boundary F of every (proposal, object) pair of one frame; labels are
  (H, W) maps of proposal / object indices, -1 where no mask (void, background)."""
  pred, gt = _boundary_points(pred_labels), _boundary_points(gt_labels)
  pred_matched, gt_matched = _boundary_matches(pred, gt, num_pred, num_gt, radius)  # (P, G)
  n_pred = np.bincount(pred[1], minlength=num_pred)[:, None]  # boundary sizes
  n_gt = np.bincount(gt[1], minlength=num_gt)[None, :]
  return _f_measure(n_pred, n_gt, pred_matched, gt_matched)


def boundary_f_measure(pred_mask: np.ndarray, gt_mask: np.ndarray,
                       void: np.ndarray | None = None,
                       bound_th: float = DAVIS_BOUND_TH) -> float:
  """DAVIS boundary F-measure of one binary prediction against one binary ground-truth mask
  (H, W); void pixels (optional bool mask) are set to background in both before the boundaries
  are drawn. See `davis_j_and_f`."""
  pred_mask, gt_mask = np.asarray(pred_mask, bool), np.asarray(gt_mask, bool)
  if pred_mask.shape != gt_mask.shape or pred_mask.ndim != 2:
    raise ValueError(f"boundary_f_measure expects two (H, W) masks of one shape; got "
                     f"{pred_mask.shape} and {gt_mask.shape}.")
  keep = np.ones(gt_mask.shape, bool) if void is None else ~np.asarray(void, bool)
  radius = boundary_tolerance(gt_mask.shape, bound_th)
  return float(_frame_boundary_f(np.where(pred_mask & keep, 0, -1),
                                 np.where(gt_mask & keep, 0, -1), 1, 1, radius)[0, 0])


def davis_statistics(values: np.ndarray) -> tuple[float, float, float]:
  """(mean, recall, decay) of one object's per-frame J or F, as the toolkit's db_statistics.

  recall: fraction of frames above 0.5. decay: mean of the first quarter minus mean of the last:
  the frames are cut into 4 bins at round(linspace(1, T, 5)) - 1 (halves rounded up), each bin
  including its right edge, so neighbouring bins share a frame. (The toolkit stores those
  indices as uint8, which wraps beyond 256 frames; here they are int64. DAVIS17 val: <= 104.)
  """
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or not values.size:
    raise ValueError(f"davis_statistics expects a non-empty (T,) array; got shape {values.shape}.")
  edges = (np.round(np.linspace(1, values.size, 5) + 1e-10) - 1).astype(np.int64)
  bins = [values[edges[i]:edges[i + 1] + 1] for i in range(4)]
  return (float(np.nanmean(values)), float(np.mean(values > 0.5)),
          float(np.nanmean(bins[0]) - np.nanmean(bins[3])))


class DavisResult(NamedTuple):
  gt_ids: np.ndarray    # (G,) object ids 1..G (G = largest id in the first frame)
  pred_ids: np.ndarray  # (G,) predicted id matched to each object (meaningful where not empty)
  empty: np.ndarray     # (G,) bool: matched to an empty proposal (fewer ids than objects)
  j: np.ndarray         # (G, T) float64 per-frame region similarity of each object
  f: np.ndarray         # (G, T) float64 per-frame boundary F-measure of each object
  stats: np.ndarray     # (G, 6) per object: DAVIS_STATS (J mean/recall/decay, F mean/...)


def davis_j_and_f(pred_ids: np.ndarray, gt: np.ndarray,
                  bound_th: float = DAVIS_BOUND_TH) -> DavisResult:
  """DAVIS region similarity J and boundary F of one video, unsupervised protocol.

  What the official evaluation (github.com/davisvideochallenge/davis2017-evaluation,
  `davis2017/evaluation.py` and `metrics.py`, task "unsupervised") does, and this function with
  it:
  - Objects: the number of objects is the largest ground-truth id in the first frame; object k is
    the mask of id k in every frame (empty where it is absent). Ids above it count as background.
  - Proposals: each predicted id is one proposal mask per frame. When there are fewer proposals
    than objects, empty proposals are added until there are as many.
  - For every (proposal, object) pair and every frame: J is the intersection over union of the
    two masks counted on non-void pixels, 1 when the union is empty. F is a boundary F-measure:
    both masks, with void pixels set to background, are turned into 1-pixel boundaries
    (`boundary_map`); a boundary pixel of either one is matched when the other's boundary comes
    within a disk of radius ceil(bound_th * image diagonal) (`boundary_tolerance`; the toolkit
    dilates with skimage's disk through cv2); precision is the matched fraction of the
    predicted boundary, recall that of the ground-truth boundary, F = 2PR / (P + R) (0 when
    P + R = 0; conventions for empty boundaries in `_f_measure`).
  - Matching: one Hungarian assignment of proposals to objects for the whole video, maximising
    the sum over pairs of the mean over frames of (J + F) / 2. Each object's per-frame J and F
    are those of its proposal; statistics per object with `davis_statistics`.
  - Dataset numbers (`aggregate`): the mean over all objects of all videos of each statistic;
    J&F = (J mean + F mean) / 2.
  Where this differs from the released code: ids here are any integers, and every one of them
  is a proposal (SOLV has no background class; the toolkit reads ids 1..max from PNGs, treats 0
  as background, counts gaps in the ids as empty proposals and refuses more than 20 proposals).
  For ids written as PNGs 1..P without gaps, P <= 20, the numbers are the same. Void (gt < 0) is
  excluded from J and F, and the official toolkit's numbers on real DAVIS masks with void bands
  equal these (measured); replacing void by background (np.where(gt < 0, 0, gt)) does not
  reproduce them: F changes (e.g. 0.380 / 0.437 instead of 0.479 / 0.638 on bike-packing). The
  official unsupervised task
  scores against its own annotations (Annotations_unsupervised); this function scores against
  whatever `gt` holds (tools/convert_davis.py records: the semi-supervised Annotations/480p).

  Args:
    pred_ids: (T, H, W) int predicted ids.
    gt: (T, H, W) int ground truth, 0 background, 1.. objects, negative void.
    bound_th: boundary tolerance (fraction of the diagonal, or pixels when >= 1).
  """
  pred_ids, gt = np.asarray(pred_ids).astype(np.int64), np.asarray(gt).astype(np.int64)
  return _davis_j_and_f(contingency(pred_ids, gt), pred_ids, gt, bound_th)


def _davis_j_and_f(c: Contingency, pred_ids: np.ndarray, gt: np.ndarray,
                   bound_th: float = DAVIS_BOUND_TH) -> DavisResult:
  """`davis_j_and_f` given the video's contingency table."""
  num_frames = gt.shape[0]
  first = gt[0][gt[0] >= 0]
  num_gt = int(first.max(initial=0))
  gt_ids = np.arange(1, num_gt + 1)
  # Proposals: the ids present on non-void pixels (columns of c), then the ids seen only on void
  # pixels and padding to num_gt, all empty masks.
  num_pred = max(np.unique(pred_ids).size, num_gt)
  p_c = c.pred_labels.size
  rows = np.searchsorted(c.gt_labels, gt_ids)
  found = (rows < c.gt_labels.size) & (c.gt_labels[np.minimum(rows, c.gt_labels.size - 1)]
                                       == gt_ids)
  inter = np.zeros((num_frames, num_pred, num_gt), np.int64)  # (T, P, G)
  inter[:, :p_c, found] = c.table[:, rows[found], :].transpose(0, 2, 1)
  gt_area = inter.sum(axis=1)                                  # (T, G)
  pred_area = np.zeros((num_frames, num_pred), np.int64)
  pred_area[:, :p_c] = c.table.sum(axis=1)                     # (T, P)
  union = gt_area[:, None, :] + pred_area[:, :, None] - inter
  j = np.divide(inter, union, out=np.ones(union.shape), where=union > 0)  # (T, P, G)

  f = np.zeros(j.shape)
  if num_gt:
    radius = boundary_tolerance(gt.shape[1:], bound_th)
    for t in range(num_frames):
      void = gt[t] < 0
      pred_t = np.searchsorted(c.pred_labels, pred_ids[t])
      pred_t = np.where(void, -1, pred_t)                    # (H, W) proposal index
      gt_t = np.where(~void & (gt[t] >= 1) & (gt[t] <= num_gt), gt[t] - 1, -1)
      f[t] = _frame_boundary_f(pred_t, gt_t, num_pred, num_gt, radius)

  score = ((j + f) / 2).mean(axis=0)                           # (P, G)
  prop, obj = linear_sum_assignment(score, maximize=True)
  order = np.argsort(obj)
  prop, obj = prop[order], obj[order]
  j_obj, f_obj = j[:, prop, obj].T, f[:, prop, obj].T          # (G, T)
  stats = np.array([[*davis_statistics(jo), *davis_statistics(fo)]
                    for jo, fo in zip(j_obj, f_obj)]).reshape(num_gt, 6)
  empty = prop >= p_c
  pred_for_gt = np.where(empty, 0, np.append(c.pred_labels, 0)[np.minimum(prop, p_c)])
  return DavisResult(gt_ids, pred_for_gt, empty, j_obj, f_obj, stats)


def _davis_summary(stats: np.ndarray) -> dict:
  """DAVIS_STATS and jf_mean/recall/decay: means over the objects (rows) of `stats`."""
  stats = np.asarray(stats, np.float64).reshape(-1, 6)
  means = stats.mean(axis=0) if stats.shape[0] else np.full(6, np.nan)
  out = dict(zip(DAVIS_STATS, (float(m) for m in means)))
  for stat in ("mean", "recall", "decay"):
    out[f"jf_{stat}"] = (out[f"j_{stat}"] + out[f"f_{stat}"]) / 2
  return out


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


def frame_mbo(pred_ids: np.ndarray, gt: np.ndarray) -> float:
  """Per-frame (image-level) mBO of one video: mean over frames with objects of the frame's mean
  best IoU per object present; NaN without foreground."""
  return _frame_mbo(contingency(pred_ids, gt))


# ----------------------------------------------------------------------------------------------
# The metric table: every metric of results.json, how one video gives it and how videos pool.
# ----------------------------------------------------------------------------------------------
class VideoScores:
  """What one video's metrics are computed from, each part computed once when first used: the
  contingency table, the Hungarian matching, the volume IoU and (for J&F) the boundaries."""

  def __init__(self, pred_ids: np.ndarray, gt: np.ndarray):
    self.pred_ids, self.gt = pred_ids, gt
    self.c = contingency(pred_ids, gt)
    self.fg = _foreground(self.c)                      # (T, G_fg, P)

  @functools.cached_property
  def match(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _match(self.c)                              # column, matched, object IoUs

  @functools.cached_property
  def best_overlaps(self) -> np.ndarray:
    iou = _volume_iou(self.c)                          # (G_fg, P)
    return iou.max(axis=1) if iou.shape[1] else np.zeros(iou.shape[0])

  @functools.cached_property
  def davis(self) -> dict:
    # Signed ids: the boundary code subtracts 1 from labels (uint8 ground truth would wrap).
    stats = _davis_j_and_f(self.c, np.asarray(self.pred_ids).astype(np.int64),
                           np.asarray(self.gt).astype(np.int64)).stats
    return {**_davis_summary(stats), "davis_stats": stats}


def _mean(x: np.ndarray) -> float:
  return float(x.mean()) if x.size else float("nan")


def _mean_over_videos(key: str) -> Callable[[list[dict]], float]:
  """Pooling: the mean over videos of their values, videos without one (NaN) skipped."""
  def pool(results):
    values = np.array([r.get(key, np.nan) for r in results], np.float64)
    return _mean(values[~np.isnan(values)])
  return pool


def _objects(results: list[dict]) -> np.ndarray:
  return np.concatenate([np.zeros(0)] + [np.asarray(r["object_ious"]) for r in results])


def _davis_objects(results: list[dict]) -> np.ndarray:
  return np.concatenate([np.zeros((0, 6))] + [np.asarray(r["davis_stats"]).reshape(-1, 6)
                                              for r in results if "davis_stats" in r])


def _pooled_davis(key: str) -> Callable[[list[dict]], float]:
  """Pooling: the mean over all DAVIS objects of all videos, as the official evaluation."""
  return lambda results: _davis_summary(_davis_objects(results))[key]


@dataclasses.dataclass(frozen=True)
class Metric:
  """One row of the metric table."""
  key: str          # its name in results.json and in the evaluation table
  what: str         # what it is, in one line
  reported_by: str  # who reports it (docs/METRICS.md has the details)
  video: Callable[[VideoScores], float] | None  # one video's value; None: a count of the dataset
  pool: Callable[[list[dict]], float | int]     # the dataset's value from the videos' results
  davis: bool = False          # needs the boundaries: only with J&F (evaluate_video's j_and_f)
  show: frozenset = frozenset()  # also in: 'summary' (the one line an evaluation prints),
  #                                'per_video' (results.json "videos"), 'sweep' (demo_sweep)


def _m(key, what, who, video, pool, *show, davis=False) -> Metric:
  return Metric(key, what, who, video, pool, davis, frozenset(show))


def _davis(key, what, who, *show) -> Metric:
  """A DAVIS J&F row: the video's value from its DAVIS statistics, pooled over all objects."""
  return _m(key, what, who, lambda v: v.davis[key], _pooled_davis(key), *show, davis=True)


METRICS: tuple[Metric, ...] = (
    _m("fg_ari", "FG-ARI per frame, raw prediction", "SOLV on MOVi-E",
       lambda v: _frame_fg_ari(v.fg), _mean_over_videos("fg_ari"),
       "summary", "per_video", "sweep"),
    _m("fg_ari_matched", "FG-ARI per frame, Hungarian-matched prediction",
       "SOLV on YTVIS19 / DAVIS17",
       lambda v: _frame_fg_ari(_matched_table(v.c, *v.match[:2])[:, v.c.gt_labels > 0]),
       _mean_over_videos("fg_ari_matched"), "summary", "per_video"),
    _m("video_fg_ari", "FG-ARI per video (one table over all frames)",
       "SAVi, VideoSAUR, SlotContrast", lambda v: _video_fg_ari(v.fg),
       _mean_over_videos("video_fg_ari"), "summary", "per_video", "sweep"),
    _m("miou", "mIoU, one Hungarian matching per video", "SOLV on YTVIS19 / DAVIS17",
       lambda v: _mean(v.match[2]), lambda results: _mean(_objects(results)),
       "summary", "per_video", "sweep"),
    _m("mbo", "mBO per video (IoU over the video volume)", "VideoSAUR, SlotContrast",
       lambda v: _mean(v.best_overlaps), _mean_over_videos("mbo"),
       "summary", "per_video", "sweep"),
    _m("frame_mbo", "mBO per frame (image-level)", "image methods, e.g. DINOSAUR",
       lambda v: _frame_mbo(v.c), _mean_over_videos("frame_mbo"), "summary", "per_video"),
    _davis("jf_mean", "DAVIS J&F-Mean, unsupervised task", "DAVIS 2017, VOS literature",
           "summary", "per_video"),
    _davis("j_mean", "DAVIS J (region IoU): mean", "DAVIS 2017", "per_video"),
    _davis("j_recall", "DAVIS J: recall (frames with J > 0.5)", "DAVIS 2017"),
    _davis("j_decay", "DAVIS J: decay (first - last quarter)", "DAVIS 2017"),
    _davis("f_mean", "DAVIS F (boundary F-measure): mean", "DAVIS 2017", "per_video"),
    _davis("f_recall", "DAVIS F: recall (frames with F > 0.5)", "DAVIS 2017"),
    _davis("f_decay", "DAVIS F: decay (first - last quarter)", "DAVIS 2017"),
    _davis("jf_recall", "(J + F) / 2 of the recalls", "not in the official table"),
    _davis("jf_decay", "(J + F) / 2 of the decays", "not in the official table"),
    _m("num_videos", "videos scored", "", None, len, "summary"),
    _m("num_objects", "ground-truth objects (mIoU)", "", None,
       lambda results: int(_objects(results).size)),
    _m("davis_num_objects", "objects J&F counts (first frames' ids)", "", None,
       lambda results: int(_davis_objects(results).shape[0]), davis=True),
)
METRIC = {m.key: m for m in METRICS}


def keys(show: str) -> tuple[str, ...]:
  """The keys of the table shown in `show` ('summary', 'per_video' or 'sweep'), in order."""
  return tuple(m.key for m in METRICS if show in m.show)


def evaluate_video(pred_ids: np.ndarray, gt: np.ndarray, j_and_f: bool = True) -> dict:
  """Every per-video metric of METRICS from one contingency table (and the boundaries for J&F).

  Args:
    pred_ids: (T, H, W) int predicted ids (e.g. track ids from `masks_to_ids`).
    gt: (T, H, W) int ground truth, 0 background, -1 void.
    j_and_f: also compute DAVIS J&F (`davis_j_and_f`, the only part that looks at boundaries).
  Returns:
    dict with floats 'fg_ari', 'fg_ari_matched', 'video_fg_ari', 'miou', 'mbo', 'frame_mbo' (NaN
    for a video without foreground objects) and arrays 'object_ious', 'best_overlaps' (one per
    object); with j_and_f, the video's means over its DAVIS objects of DAVIS_STATS and
    'jf_mean', 'jf_recall', 'jf_decay' (NaN without objects in the first frame), and
    'davis_stats' (G, 6), one row of DAVIS_STATS per object, which `aggregate` pools.
  """
  v = VideoScores(pred_ids, gt)
  result = {m.key: m.video(v) for m in METRICS
            if m.video is not None and (j_and_f or not m.davis)}
  result.update(object_ious=v.match[2], best_overlaps=v.best_overlaps)
  if j_and_f:
    result["davis_stats"] = v.davis["davis_stats"]
  return result


def aggregate(results: Iterable[dict]) -> dict:
  """The dataset numbers of METRICS from `evaluate_video` results (docs/METHOD.md §7), each
  pooled as its table row says.

  fg_ari, fg_ari_matched, video_fg_ari: mean over videos (videos without foreground skipped).
  miou: mean over all objects of all videos. mbo, frame_mbo: mean over videos of the per-video
  value. DAVIS J&F (when the results have 'davis_stats'): each of DAVIS_STATS is the mean over
  all DAVIS objects of all videos, as the official evaluation reports them; jf_mean is
  (j_mean + f_mean) / 2 (the official "J&F-Mean"), jf_recall and jf_decay likewise (not in the
  official table). davis_num_objects: the objects J&F counts (those of the first frames).
  """
  results = list(results)
  with_davis = any("davis_stats" in r for r in results)
  return {m.key: m.pool(results) for m in METRICS if with_davis or not m.davis}


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
