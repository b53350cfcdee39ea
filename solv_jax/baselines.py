"""A k-means baseline on the frozen encoder's features, scored with the SOLV protocol.

Per frame: k-means of the full-token DINOv2 features (N, D) with the ORACLE number of segments,
i.e. the number of ground-truth objects visible in that frame plus one for the background.
Across frames: the clusters' mean features play the role of slots and are tracked with the
model's own tracker (`tracking.track_slots`: Hungarian matching on cosine similarity between
consecutive frames). Masks: one-hot cluster masks on the token grid, upsampled and argmaxed
like the model's (`tracking.masks_to_ids`), then scored by `metrics.evaluate_video`.

Whatever the model gains over this number comes from binding, not from the features alone:
the model is not told how many objects a frame has.

  python -m solv_jax.baselines --config=configs/demo.py [--config.data.eval_max_videos=5]
  python -m solv_jax.baselines --config=configs/demo.py --baseline=kmeans,token_oracle

`token_oracle` is not a baseline but a ceiling: the ground truth pushed through the token
grid and the model's mask upsampling, the best any model at that resolution can score.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Iterable

import numpy as np

from solv_jax import files, metrics, tracking


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 4, max_iter: int = 100,
           tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray, float]:
  """Lloyd's k-means with greedy k-means++ seeding; the best of n_init runs by inertia.

  Args:
    x: (N, D) float points.
    k: number of clusters (clipped to the number of distinct points).
  Returns:
    labels (N,) int in [0, k), centres (k, D) float64, inertia (sum of squared distances).
  """
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  k = int(min(k, len(np.unique(x, axis=0))))
  if k < 1:
    raise ValueError(f"kmeans needs k >= 1 and at least one point, got k={k}, N={n}.")
  rng = np.random.default_rng(seed)
  sq = np.einsum("nd,nd->n", x, x)

  def dist2(c):  # (N, k) squared distances, clipped at 0 against rounding
    return np.maximum(sq[:, None] - 2.0 * x @ c.T + np.einsum("kd,kd->k", c, c)[None], 0.0)

  def seeding():
    trials = 2 + int(np.log(k))
    centres = [x[rng.integers(n)]]
    closest = dist2(np.asarray(centres))[:, 0]
    for _ in range(1, k):
      total = closest.sum()
      if total <= 0:  # every point sits on a centre already
        cand = rng.integers(n, size=trials)
      else:
        cand = np.searchsorted(np.cumsum(closest), rng.uniform(size=trials) * total)
        cand = np.minimum(cand, n - 1)
      cand_d = np.minimum(closest[:, None], dist2(x[cand]))  # (N, trials)
      best = int(np.argmin(cand_d.sum(axis=0)))
      centres.append(x[cand[best]])
      closest = cand_d[:, best]
    return np.asarray(centres)

  best = None
  for _ in range(n_init):
    centres = seeding()
    for _ in range(max_iter):
      labels = np.argmin(dist2(centres), axis=1)
      new = centres.copy()
      for j in range(k):
        members = labels == j
        if members.any():
          new[j] = x[members].mean(axis=0)
        else:  # an empty cluster restarts at the point farthest from its centre
          far = int(np.argmax(dist2(new)[np.arange(n), labels]))
          new[j] = x[far]
          labels[far] = j
      shift = float(np.sum((new - centres) ** 2))
      centres = new
      if shift <= tol * float(np.mean(np.var(x, axis=0)) + 1e-30):
        break
    labels = np.argmin(dist2(centres), axis=1)
    inertia = float(dist2(centres)[np.arange(n), labels].sum())
    if best is None or inertia < best[2]:
      best = (labels, centres, inertia)
  return best


def kmeans_segment_video(features: np.ndarray, num_segments: Iterable[int],
                         grid_hw: tuple[int, int], out_hw: tuple[int, int], *,
                         seed: int = 0, n_init: int = 4) -> np.ndarray:
  """Per-frame k-means of token features, tracked across frames, as per-pixel ids.

  Args:
    features: (T, N, D) full-token features of each frame, N = h * w row-major.
    num_segments: T ints, the number of clusters per frame (oracle objects + background).
    grid_hw: (h, w) token grid.
    out_hw: (H, W) resolution of the returned ids.
  Returns:
    (T, H, W) int32 track ids.
  """
  features = np.asarray(features, np.float64)
  t, n, d = features.shape
  counts = [int(c) for c in num_segments]
  k_max = max(counts)
  centres = np.zeros((t, k_max, d))
  valid = np.zeros((t, k_max), bool)
  masks = np.zeros((t, k_max, n), np.float32)
  for i in range(t):
    labels, c, _ = kmeans(features[i], counts[i], seed=seed + i, n_init=n_init)
    centres[i, :len(c)], valid[i, :len(c)] = c, True
    masks[i, labels, np.arange(n)] = 1.0
  track_ids = tracking.track_slots(centres, valid)
  return tracking.masks_to_ids(masks.reshape(t, k_max, *grid_hw), track_ids, out_hw=out_hw)


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) box-filter weights: output cell j averages the input span it covers."""
  edges = np.arange(n_out + 1) * (n_in / n_out)  # output cell edges in input units
  lo, hi = edges[:-1, None], edges[1:, None]  # (n_out, 1)
  overlap = np.clip(np.minimum(hi, np.arange(1, n_in + 1)) - np.maximum(lo, np.arange(n_in)),
                    0.0, None)  # (n_out, n_in)
  return overlap / overlap.sum(axis=1, keepdims=True)


def token_oracle_video(gt: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
  """The best any token-grid segmenter can do: ground truth through the model's mask path.

  Each ground-truth segment's one-hot mask is area-averaged onto the (h, w) token grid (the
  soft mask a perfect slot would have), then upsampled and argmaxed exactly like the model's
  decoder masks (`tracking.masks_to_ids`). Objects smaller than a token, and every boundary
  inside a token, are lost as they are for the model; the score is an upper bound on what
  SOLV can reach at that resolution (docs/METHOD.md §7).

  Args:
    gt: (T, H, W) int ground truth, 0 background, -1 void (counted in no segment).
    grid_hw: (h, w) token grid of the model.
  Returns:
    (T, H, W) int32 ids (the ground-truth ids that survive).
  """
  gt = np.asarray(gt)
  t, height, width = gt.shape
  labels = np.unique(gt[gt >= 0])
  onehot = (gt[:, None] == labels[None, :, None, None]).astype(np.float32)  # (T, G, H, W)
  rows = area_matrix(height, grid_hw[0]).astype(np.float32)  # (h, H)
  cols = area_matrix(width, grid_hw[1]).astype(np.float32)  # (w, W)
  pooled = np.matmul(rows, np.matmul(onehot, cols.T))  # (T, G, h, w)
  ids = np.broadcast_to(labels, (t, len(labels)))
  return tracking.masks_to_ids(pooled, ids, out_hw=(height, width))


def oracle_num_segments(gt: np.ndarray) -> np.ndarray:
  """(T,) number of ground-truth objects visible in each frame, plus one for the background."""
  return np.array([int(np.sum(np.unique(f) > 0)) + 1 for f in np.asarray(gt)])


def evaluate_token_oracle(config, *, max_videos: int | None = None) -> dict:
  """`token_oracle_video` over the evaluation split at config's resolution (no model)."""
  from solv_jax.data import pipeline
  from solv_jax.models.build import build_model

  grid_hw = build_model(config).grid_hw  # no params built; checks the resolution
  acc = metrics.MetricAccumulator()
  for video in pipeline.eval_videos(config, max_videos=max_videos):
    if video.get("has_annotations", True):
      gt = np.asarray(video["segmentations"])
      acc.update(token_oracle_video(gt, grid_hw), gt)
  return acc.compute()


def evaluate_kmeans(config, *, max_videos: int | None = None, seed: int = 0,
                    n_init: int = 4) -> dict:
  """The baseline over the evaluation split with config's (random or converted) encoder."""
  import jax
  from solv_jax.data import pipeline
  from solv_jax.data.frames import resize_frames
  from solv_jax.models import build
  from solv_jax.models.build import build_model
  from solv_jax.models.solv import SOLV

  model = build_model(config)
  params = {"encoder": build.encoder_params(config, model)}
  encode = jax.jit(lambda p, f: model.apply({"params": p}, model.normalize(f),
                                            method=SOLV.encode))
  acc = metrics.MetricAccumulator()
  for video in pipeline.eval_videos(config, max_videos=max_videos):
    if not video.get("has_annotations", True):
      continue
    frames = resize_frames(video["video"], tuple(config.data.resolution))
    feats = np.concatenate([np.asarray(encode(params, frames[s:s + 8]))
                            for s in range(0, len(frames), 8)])
    gt = np.asarray(video["segmentations"])
    pred = kmeans_segment_video(feats, oracle_num_segments(gt), model.grid_hw, gt.shape[1:3],
                                seed=seed, n_init=n_init)
    acc.update(pred, gt)
  return acc.compute()


BASELINES = {"kmeans": evaluate_kmeans, "token_oracle": evaluate_token_oracle}


def main(argv):
  from absl import flags
  config = flags.FLAGS.config
  unknown = [n for n in flags.FLAGS.baseline if n not in BASELINES]
  if unknown:
    raise ValueError(f"Unknown --baseline {unknown}; known: {sorted(BASELINES)}.")
  results = {}
  for name in flags.FLAGS.baseline:
    results[name] = BASELINES[name](config, max_videos=config.data.eval_max_videos or None)
    print(json.dumps({"baseline": name, **results[name]}), flush=True)
  if flags.FLAGS.out:
    os.makedirs(os.path.dirname(flags.FLAGS.out) or ".", exist_ok=True)
    files.write_json(flags.FLAGS.out, results if len(results) > 1 else results[name])


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file.")
  flags.DEFINE_list("baseline", ["kmeans"], "kmeans (oracle count, tracked) and/or "
                    "token_oracle (ground truth through the token grid: the ceiling).")
  flags.DEFINE_string("out", "", "Also write the results as JSON here.")
  app.run(main)
