"""Tests of solv_jax/metrics.py against sklearn, torch, scipy-free brute force and hand counts
(DAVIS J&F: against hand-computed masks and scipy.ndimage dilation)."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from sklearn.metrics import adjusted_rand_score

from solv_jax import metrics, tracking

METRICS = ("fg_ari", "fg_ari_matched", "video_fg_ari", "miou", "mbo")


def _sklearn_frame_fg_ari(pred, gt):
  """Reference per-frame FG-ARI: sklearn per frame on gt > 0, frames without foreground skipped."""
  scores = [adjusted_rand_score(g[g > 0], p[g > 0]) for p, g in zip(pred, gt) if (g > 0).any()]
  return float(np.mean(scores)) if scores else float("nan")


def _random_video(rng, t=3, h=6, w=7, num_gt=4, num_pred=5, void=True):
  gt = rng.integers(-1 if void else 0, num_gt, (t, h, w)).astype(np.int32)
  pred = rng.integers(0, num_pred, (t, h, w)).astype(np.int32)
  return pred, gt


# ----------------------------------------------------------------------------------------------
# ARI
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_ari_of_contingency_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  true, pred = rng.integers(0, 4, 50), rng.integers(0, 6, 50) * 3 + 10
  table = np.zeros((4, 6), np.int64)
  np.add.at(table, (true, (pred - 10) // 3), 1)
  np.testing.assert_allclose(metrics.adjusted_rand_index(table),
                             adjusted_rand_score(true, pred), rtol=0, atol=1e-12)


@pytest.mark.parametrize("true,pred", [
    ([0, 0, 0], [1, 1, 1]),        # both one cluster
    ([0, 1, 2], [5, 3, 4]),        # both all singletons
    ([3], [4]),                    # a single point
    ([0, 0, 1, 1], [0, 1, 2, 3]),  # not degenerate
    ([0, 0, 0, 0], [0, 0, 1, 1]),
])
def test_ari_degenerate_cases_match_sklearn(true, pred):
  true, pred = np.asarray(true), np.asarray(pred)
  table = np.zeros((true.max() + 1, pred.max() + 1), np.int64)
  np.add.at(table, (true, pred), 1)
  np.testing.assert_allclose(metrics.adjusted_rand_index(table),
                             adjusted_rand_score(true, pred), atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_fg_ari_per_frame_and_video_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  pred, gt = _random_video(rng, t=4)
  gt[2] = np.where(gt[2] > 0, 0, gt[2])  # a frame without foreground is skipped
  fg = gt > 0
  assert metrics.fg_ari(pred, gt) == pytest.approx(_sklearn_frame_fg_ari(pred, gt), abs=1e-12)
  assert metrics.video_fg_ari(pred, gt) == pytest.approx(
      adjusted_rand_score(gt[fg], pred[fg]), abs=1e-12)


def test_fg_ari_matched_is_fg_ari_of_the_relabelled_prediction():
  rng = np.random.default_rng(7)
  pred, gt = _random_video(rng, t=3, h=8, w=8)
  match = metrics.match_to_ground_truth(pred, gt)
  assert metrics.fg_ari_matched(pred, gt) == pytest.approx(
      _sklearn_frame_fg_ari(match.relabelled, gt), abs=1e-12)
  assert metrics.evaluate_video(pred, gt)["fg_ari_matched"] == pytest.approx(
      _sklearn_frame_fg_ari(match.relabelled, gt), abs=1e-12)


def test_over_segmentation_raw_versus_matched():
  # One object split into ids 1 and 2 plus a second object predicted as id 3.
  gt = np.array([[[1, 1, 1, 1, 2, 2]]], np.int32)
  pred = np.array([[[1, 1, 2, 2, 3, 3]]], np.int32)
  match = metrics.match_to_ground_truth(pred, gt)
  # Raw FG-ARI sees the split; matched merges one half into background, another partition.
  assert metrics.fg_ari(pred, gt) == pytest.approx(adjusted_rand_score(gt[0, 0], pred[0, 0]))
  assert metrics.fg_ari_matched(pred, gt) == pytest.approx(
      adjusted_rand_score(gt[0, 0], match.relabelled[0, 0]))
  assert sorted(np.unique(match.relabelled).tolist()) == [0, 1, 2]
  np.testing.assert_allclose(match.object_ious, [0.5, 1.0])


def test_video_without_foreground_is_nan_and_skipped():
  gt = np.zeros((2, 3, 3), np.int32)
  gt[1, 0, 0] = -1
  pred = np.arange(18).reshape(2, 3, 3)
  result = metrics.evaluate_video(pred, gt)
  for key in METRICS:
    assert np.isnan(result[key])
  assert result["object_ious"].shape == (0,)
  perfect = metrics.evaluate_video(np.ones((1, 2, 2), np.int32), np.ones((1, 2, 2), np.int32))
  summary = metrics.aggregate([result, perfect])
  assert summary["num_videos"] == 2 and summary["num_objects"] == 1
  for key in METRICS:
    assert summary[key] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# IoU, matching, mBO
# ----------------------------------------------------------------------------------------------
def test_hand_computed_ious():
  # Frame 0:  gt  [[1 1 0]      pred [[4 4 4]
  #                [2 2 0]]           [9 9 9]]
  # Frame 1:  gt  [[1 0 0]      pred [[4 9 9]
  #                [0 0 0]]           [9 9 9]]
  gt = np.array([[[1, 1, 0], [2, 2, 0]], [[1, 0, 0], [0, 0, 0]]], np.int32)
  pred = np.array([[[4, 4, 4], [9, 9, 9]], [[4, 9, 9], [9, 9, 9]]], np.int32)
  # Object 1 vs id 4: frame 0 2/3, frame 1 1/1 -> video IoU 5/6.
  # Object 2 vs id 9: frame 0 2/3, frame 1 union = 5 (id 9 only) -> 0 -> video IoU 1/3.
  # Object 2 vs id 4: frame 0 union 5, inter 0; frame 1 union 1, inter 0 -> 0.
  match = metrics.match_to_ground_truth(pred, gt)
  np.testing.assert_array_equal(match.gt_ids, [1, 2])
  np.testing.assert_array_equal(match.pred_ids, [4, 9])
  np.testing.assert_allclose(match.object_ious, [5 / 6, 1 / 3])
  np.testing.assert_array_equal(match.relabelled, np.where(pred == 4, 1, 2))
  # Volume IoU for mBO: object 1 vs id 4 = 3 / 4; object 2 vs id 9 = 2 / 8.
  np.testing.assert_allclose(metrics.best_overlaps(pred, gt), [3 / 4, 2 / 8])
  result = metrics.evaluate_video(pred, gt)
  assert result["miou"] == pytest.approx((5 / 6 + 1 / 3) / 2)
  assert result["mbo"] == pytest.approx((3 / 4 + 2 / 8) / 2)


def test_unmatched_object_scores_zero_and_unmatched_prediction_is_background():
  gt = np.array([[[1, 1, 2, 2, 3, 3]]], np.int32)
  pred = np.array([[[5, 5, 5, 7, 7, 7]]], np.int32)
  match = metrics.match_to_ground_truth(pred, gt)
  # IoUs: (1,5) 2/3, (2,5) 1/5, (2,7) 1/5, (3,7) 2/3 -> objects 1 and 3 matched, 2 not.
  np.testing.assert_array_equal(match.matched, [True, False, True])
  np.testing.assert_allclose(match.object_ious, [2 / 3, 0, 2 / 3])
  np.testing.assert_array_equal(match.relabelled, [[[1, 1, 1, 3, 3, 3]]])
  # Id 11 overlaps no object: background.
  match = metrics.match_to_ground_truth(np.array([[[5, 5, 7, 7, 11, 11]]]),
                                        np.array([[[1, 1, 2, 2, 0, 0]]]))
  np.testing.assert_array_equal(match.relabelled, [[[1, 1, 2, 2, 0, 0]]])
  # Object 2 lies inside id 5, which object 1 takes; the only id left, 9, has IoU 0 with object 2:
  # a zero-IoU pair is no match, so 9 becomes background and object 2 scores 0.
  match = metrics.match_to_ground_truth(np.array([[[5, 5, 5, 9]]]), np.array([[[1, 1, 2, 0]]]))
  np.testing.assert_array_equal(match.matched, [True, False])
  np.testing.assert_allclose(match.object_ious, [2 / 3, 0])
  np.testing.assert_array_equal(match.relabelled, [[[1, 1, 1, 0]]])


def test_miou_averages_over_all_objects_of_all_videos():
  perfect = metrics.evaluate_video(np.ones((1, 2, 2), np.int32), np.ones((1, 2, 2), np.int32))
  gt = np.array([[[1, 2, 3, 0]]], np.int32)
  wrong = metrics.evaluate_video(np.zeros_like(gt), gt)  # one id covering everything
  np.testing.assert_allclose(wrong["object_ious"], [1 / 4, 0, 0])
  summary = metrics.aggregate([perfect, wrong])
  assert summary["miou"] == pytest.approx((1 + 1 / 4) / 4)          # over 4 objects
  assert summary["mbo"] == pytest.approx((1 + (3 * 1 / 4) / 3) / 2)  # per video, then mean
  acc = metrics.MetricAccumulator()
  acc.update(np.ones((1, 2, 2), np.int32), np.ones((1, 2, 2), np.int32))
  acc.add(wrong)
  assert acc.compute() == summary


@pytest.mark.parametrize("bg_id", [None, 7])
def test_perfect_prediction_with_ids_2_and_5_scores_one(bg_id):
  # The authors' release relabels by row index and scores this 0 (docs/METHOD.md §7).
  gt = np.zeros((2, 4, 4), np.int32)
  gt[:, :, :2] = 1
  gt[:, :, 2:] = 2
  if bg_id is not None:
    gt[:, 0, :] = 0
  pred = np.where(gt == 1, 2, np.where(gt == 2, 5, -100 if bg_id is None else bg_id))
  result = metrics.evaluate_video(pred, gt)
  for key in METRICS:
    assert result[key] == pytest.approx(1.0), key
  np.testing.assert_array_equal(metrics.match_to_ground_truth(pred, gt).relabelled, gt)


def test_predicted_ids_outside_0_to_k():
  rng = np.random.default_rng(3)
  pred, gt = _random_video(rng)
  big = np.array([1000, 7, -42, 123456789, 3])[pred]
  a, b = metrics.evaluate_video(pred, gt), metrics.evaluate_video(big, gt)
  for key in METRICS:
    assert a[key] == pytest.approx(b[key], abs=1e-12)
  ma, mb = metrics.match_to_ground_truth(pred, gt), metrics.match_to_ground_truth(big, gt)
  np.testing.assert_array_equal(ma.relabelled, mb.relabelled)
  np.testing.assert_array_equal(np.array([1000, 7, -42, 123456789, 3])[ma.pred_ids[ma.matched]],
                                mb.pred_ids[mb.matched])


def test_void_pixels_are_ignored():
  rng = np.random.default_rng(5)
  pred, gt = _random_video(rng, t=3, h=6, w=6, void=False)
  # Pad with a void border and a fully void frame, prediction arbitrary there.
  gt_v = np.full((4, 8, 8), -1, np.int32)
  gt_v[:3, 1:-1, 1:-1] = gt
  pred_v = rng.integers(0, 50, (4, 8, 8)).astype(np.int32)
  pred_v[:3, 1:-1, 1:-1] = pred
  a, b = metrics.evaluate_video(pred, gt), metrics.evaluate_video(pred_v, gt_v)
  for key in METRICS:
    assert a[key] == pytest.approx(b[key], abs=1e-12), key
  np.testing.assert_allclose(a["object_ious"], b["object_ious"])
  np.testing.assert_allclose(a["best_overlaps"], b["best_overlaps"])


def test_contingency_counts_are_exact_on_a_large_video():
  t, h, w = 24, 256, 256
  rng = np.random.default_rng(0)
  gt = rng.integers(-1, 12, (t, h, w)).astype(np.int32)
  pred = rng.integers(0, 10, (t, h, w)).astype(np.int32) * 3
  c = metrics.contingency(pred, gt)
  assert c.table.dtype == np.int64
  assert c.table.sum() == np.count_nonzero(gt >= 0)
  for (g, p, f) in [(0, 0, 0), (5, 27, 23), (11, 9, 12)]:
    gi, pi = np.searchsorted(c.gt_labels, g), np.searchsorted(c.pred_labels, p)
    assert c.table[f, gi, pi] == np.count_nonzero((gt[f] == g) & (pred[f] == p))
  # Pair counts (~8e11 here) need exact integers: compare with sklearn's Python-int arithmetic.
  fg = gt > 0
  result = metrics.evaluate_video(pred, gt, j_and_f=False)  # J&F: boundaries, not counts
  assert result["video_fg_ari"] == pytest.approx(adjusted_rand_score(gt[fg], pred[fg]),
                                                 rel=1e-9, abs=1e-15)
  # A whole-video structured case with a known answer: halves predicted exactly -> 1.
  gt2 = np.ones((t, h, w), np.int32)
  gt2[:, :, w // 2:] = 2
  assert metrics.video_fg_ari(gt2 * 7, gt2) == 1.0
  assert metrics.fg_ari(np.zeros_like(gt2), gt2) == pytest.approx(0.0, abs=1e-15)


def test_input_errors_speak_to_the_user():
  with pytest.raises(ValueError, match="same shape"):
    metrics.evaluate_video(np.zeros((2, 3, 3), np.int32), np.zeros((2, 4, 4), np.int32))
  with pytest.raises(ValueError, match="integer"):
    metrics.evaluate_video(np.zeros((2, 3, 3), np.float32), np.zeros((2, 3, 3), np.int32))


# ----------------------------------------------------------------------------------------------
# Hypothesis properties
# ----------------------------------------------------------------------------------------------
@st.composite
def videos(draw):
  shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
  gt = draw(hnp.arrays(np.int32, shape, elements=st.integers(-1, 3)))
  pred = draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 4)))
  return pred, gt


@settings(max_examples=60, deadline=None)
@given(videos(), st.permutations(range(5)), st.permutations(range(1, 4)))
def test_property_invariance_bounds_and_sklearn(video, pred_perm, gt_perm):
  pred, gt = video
  result = metrics.evaluate_video(pred, gt)
  # Bounds.
  for key in ("fg_ari", "fg_ari_matched", "video_fg_ari"):
    assert np.isnan(result[key]) or -1.0 <= result[key] <= 1.0 + 1e-12
  for key in ("miou", "mbo"):
    assert np.isnan(result[key]) or 0.0 <= result[key] <= 1.0 + 1e-12
  num_objects = np.unique(gt[gt > 0]).size
  assert result["object_ious"].shape == result["best_overlaps"].shape == (num_objects,)
  # Against sklearn.
  fg = gt > 0
  assert result["fg_ari"] == pytest.approx(_sklearn_frame_fg_ari(pred, gt), abs=1e-12,
                                           nan_ok=True)
  if fg.any():
    assert result["video_fg_ari"] == pytest.approx(adjusted_rand_score(gt[fg], pred[fg]),
                                                   abs=1e-12)
  # Renaming predicted ids, or ground-truth object ids, changes nothing that does not depend on
  # tie-breaking (the matched FG-ARI can, when two matchings tie).
  renamed_pred = (np.array(pred_perm) * 10 + 3)[pred]
  renamed_gt = np.where(gt > 0, np.array([0, *gt_perm])[np.maximum(gt, 0)], gt)
  for other in (metrics.evaluate_video(renamed_pred, gt),
                metrics.evaluate_video(pred, renamed_gt)):
    for key in ("fg_ari", "video_fg_ari", "miou", "mbo"):
      assert other[key] == pytest.approx(result[key], abs=1e-12, nan_ok=True), key


@settings(max_examples=40, deadline=None)
@given(videos(), st.integers(-5, 100))
def test_property_perfect_prediction_scores_one(video, shift):
  _, gt = video
  if not (gt > 0).any():
    gt = gt.copy()
    gt.flat[0] = 1
  pred = np.where(gt >= 0, gt * 3 + shift, 0)  # any injective renaming of ids, void arbitrary
  result = metrics.evaluate_video(pred, gt)
  for key in METRICS:
    assert result[key] == pytest.approx(1.0), key


# ----------------------------------------------------------------------------------------------
# Tracking, upsampling, masks -> ids
# ----------------------------------------------------------------------------------------------
def _brute_force_match(sim):
  """Best one-to-one assignment of the smaller side by enumerating all permutations."""
  rows, cols = sim.shape
  best, best_pairs = -np.inf, None
  if rows >= cols:
    for perm in itertools.permutations(range(rows), cols):
      score = sum(sim[r, c] for c, r in enumerate(perm))
      if score > best:
        best, best_pairs = score, {c: r for c, r in enumerate(perm)}
  else:
    for perm in itertools.permutations(range(cols), rows):
      score = sum(sim[r, c] for r, c in enumerate(perm))
      if score > best:
        best, best_pairs = score, {c: r for r, c in enumerate(perm)}
  return best_pairs  # current column -> previous row


def test_track_slots_recovers_known_permutations():
  rng = np.random.default_rng(0)
  k, d, t = 5, 16, 6
  objects = rng.normal(size=(k, d))
  perms = [np.arange(k)] + [rng.permutation(k) for _ in range(t - 1)]
  # Slot j of frame t holds object perms[t][j]; noise well below the gap between objects.
  slots = np.stack([objects[p] + 0.05 * rng.normal(size=(k, d)) for p in perms])
  valid = np.ones((t, k), bool)
  valid[-1, 1] = False  # a slot merged away in the last frame
  ids = tracking.track_slots(slots, valid)
  expected = np.stack([np.argsort(perms[0])[p] for p in perms])  # frame-0 slot of each object
  np.testing.assert_array_equal(ids[valid], expected[valid])
  assert ids[-1, 1] == -1
  assert ids.dtype == np.int32


def test_track_slots_is_hungarian_not_greedy_and_extra_slots_copy_nearest():
  # Frame 0: slots a, b (ids 0, 1). Frame 1: x with cosines (0.7 to a, 0.6 to b) and y (0.65,
  # 0.1). Greedy argmax would give both a's id; the Hungarian optimum is x -> b, y -> a
  # (1.25 > 0.8). Frame 2: x, y again plus z, which has no partner and copies its most similar
  # slot of frame 1, x (cosine 0.80 against 0.41 for y).
  def unit_with(ca, cb):
    return np.array([ca, cb, np.sqrt(1 - ca * ca - cb * cb)])

  a, b, zero = np.eye(3)[0], np.eye(3)[1], np.zeros(3)
  x, y, z = unit_with(0.7, 0.6), unit_with(0.65, 0.1), unit_with(0.2, 0.95)
  slots = np.stack([[a, b, zero], [x, y, zero], [z, x, y]]) * 3.0  # scale does not matter
  valid = np.array([[True, True, False], [True, True, False], [True, True, True]])
  ids = tracking.track_slots(slots, valid)
  np.testing.assert_array_equal(ids, [[0, 1, -1], [1, 0, -1], [1, 1, 0]])


@pytest.mark.parametrize("seed", range(3))
def test_track_slots_matches_brute_force_reference(seed):
  rng = np.random.default_rng(seed)
  t, k = 5, 4
  slots = rng.normal(size=(t, k, 6))
  valid = rng.random((t, k)) < 0.7
  valid[:, 0] = True
  ids = tracking.track_slots(slots, valid)
  unit = slots / (np.linalg.norm(slots, axis=-1, keepdims=True) + 1e-8)
  ref = np.full((t, k), -1)
  ref[0, valid[0]] = np.arange(valid[0].sum())
  for f in range(1, t):
    prev, cur = np.flatnonzero(valid[f - 1]), np.flatnonzero(valid[f])
    sim = unit[f - 1, prev] @ unit[f, cur].T
    pairs = _brute_force_match(sim)
    for j, slot in enumerate(cur):
      ref[f, slot] = ref[f - 1, prev[pairs.get(j, int(np.argmax(sim[:, j])))]]
  np.testing.assert_array_equal(ids, ref)


@pytest.mark.parametrize("in_hw,out_hw", [((4, 6), (17, 23)), ((5, 7), (3, 4)), ((3, 3), (3, 3)),
                                          ((1, 2), (4, 5))])
def test_upsample_masks_matches_torch(in_hw, out_hw):
  x = np.random.default_rng(0).random((2, 3, *in_hw)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=out_hw, mode="bilinear",
                                        align_corners=False).numpy()
  out = tracking.upsample_masks(x, out_hw)
  assert out.shape == (2, 3, *out_hw) and out.dtype == np.float32
  np.testing.assert_allclose(out, ref, atol=1e-6)


def test_masks_to_ids_matches_torch_argmax_over_valid_slots():
  rng = np.random.default_rng(1)
  t, k, h, w, out_hw = 3, 4, 4, 5, (13, 11)
  masks = rng.random((t, k, h, w)).astype(np.float32)
  track_ids = np.array([[0, 1, 2, -1], [1, 0, -1, 2], [2, 2, 0, 1]])
  masks[0, 3] += 10.0  # an invalid slot with the largest mask never wins
  up = torch.nn.functional.interpolate(torch.from_numpy(masks), size=out_hw, mode="bilinear",
                                       align_corners=False)
  up = torch.where(torch.from_numpy(track_ids >= 0)[:, :, None, None], up, -torch.inf)
  slot = up.argmax(dim=1).numpy()  # (T, H, W)
  expected = np.take_along_axis(track_ids[:, :, None, None], slot[:, None], axis=1)[:, 0]
  out = tracking.masks_to_ids(masks, track_ids, out_hw=out_hw)
  np.testing.assert_array_equal(out, expected)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(
      tracking.masks_to_ids(tracking.upsample_masks(masks, out_hw), track_ids), expected)


# ----------------------------------------------------------------------------------------------
# Per-frame mBO
# ----------------------------------------------------------------------------------------------
def _brute_force_frame_mbo(pred, gt):
  """Per frame: mean over objects present of the best IoU with any predicted id of the frame."""
  frames = []
  for p, g in zip(pred, gt):
    keep = g >= 0
    best = [max(np.sum((g == o) & (p == q) & keep) / np.sum(((g == o) | (p == q)) & keep)
                for q in np.unique(p[keep])) for o in np.unique(g[g > 0])]
    if best:
      frames.append(np.mean(best))
  return float(np.mean(frames)) if frames else float("nan")


def test_frame_mbo_by_hand_and_beside_video_mbo():
  # The video of test_hand_computed_ious. Frame 0: object 1 best 2/3 (id 4), object 2 best 2/3
  # (id 9); frame 1: object 1 is the one pixel of id 4 -> 1, object 2 absent. (2/3 + 1) / 2.
  gt = np.array([[[1, 1, 0], [2, 2, 0]], [[1, 0, 0], [0, 0, 0]]], np.int32)
  pred = np.array([[[4, 4, 4], [9, 9, 9]], [[4, 9, 9], [9, 9, 9]]], np.int32)
  result = metrics.evaluate_video(pred, gt)
  assert result["frame_mbo"] == pytest.approx(5 / 6)
  assert metrics.frame_mbo(pred, gt) == pytest.approx(5 / 6)
  assert result["mbo"] == pytest.approx((3 / 4 + 2 / 8) / 2)  # per video: a different number
  perfect = metrics.evaluate_video(gt, gt)
  assert metrics.aggregate([result, perfect])["frame_mbo"] == pytest.approx((5 / 6 + 1) / 2)


@pytest.mark.parametrize("seed", range(4))
def test_frame_mbo_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  pred, gt = _random_video(rng, t=4)
  gt[1] = np.where(gt[1] > 0, 0, gt[1])  # a frame without objects is skipped
  assert metrics.frame_mbo(pred, gt) == pytest.approx(_brute_force_frame_mbo(pred, gt),
                                                      abs=1e-12)


# ----------------------------------------------------------------------------------------------
# DAVIS J&F. The references here are written from the toolkit's description (davis_j_and_f's
# docstring), not from solv_jax.metrics: boundaries by the toolkit's literal shift rules,
# tolerance by scipy.ndimage.binary_dilation with a disk, matching by enumerating assignments.
# ----------------------------------------------------------------------------------------------
def _reference_bmap(mask):
  """seg2bmap as the toolkit states it: zero-filled shifts right (e), down (s), diagonal (se);
  last row compares with e only, last column with s only, bottom-right pixel 0."""
  seg = np.asarray(mask, bool)
  e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
  e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
  b = (seg ^ e) | (seg ^ s) | (seg ^ se)
  b[-1, :] = seg[-1, :] ^ e[-1, :]
  b[:, -1] = seg[:, -1] ^ s[:, -1]
  b[-1, -1] = False
  return b


def _disk(radius):
  y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
  return x ** 2 + y ** 2 <= radius ** 2


def _reference_f(pred, gt, void=None, bound_th=0.008):
  keep = np.ones(gt.shape, bool) if void is None else ~void
  radius = bound_th if bound_th >= 1 else int(np.ceil(bound_th * np.sqrt(gt.shape[0] ** 2 +
                                                                         gt.shape[1] ** 2)))
  fb, gb = _reference_bmap(pred & keep), _reference_bmap(gt & keep)
  fd = ndimage.binary_dilation(fb, _disk(radius))
  gd = ndimage.binary_dilation(gb, _disk(radius))
  n_f, n_g = fb.sum(), gb.sum()
  if n_f == 0 and n_g == 0:
    return 1.0
  if n_f == 0 or n_g == 0:
    return 0.0
  p, r = (fb & gd).sum() / n_f, (gb & fd).sum() / n_g
  return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _reference_stats(x):
  """Mean, recall and decay with the toolkit's four bins (edges round(linspace(1,T,5))-1, halves
  rounded up, each bin including its right edge)."""
  t = len(x)
  edges = [int(np.floor(v + 0.5)) - 1 for v in np.linspace(1, t, 5)]
  first, last = x[edges[0]:edges[1] + 1], x[edges[3]:edges[4] + 1]
  return np.mean(x), np.mean(x > 0.5), np.mean(first) - np.mean(last)


def _reference_davis(pred, gt):
  """(G, 6) per-object stats: proposals = distinct ids (+ empty ones up to G), objects 1..max of
  frame 0, best assignment of (J + F) / 2 by enumeration."""
  num_gt = int(gt[0][gt[0] >= 0].max(initial=0))
  ids = np.unique(pred)
  props = [pred == q for q in ids] + [np.zeros(pred.shape, bool)] * max(0, num_gt - len(ids))
  void = gt < 0
  j = np.zeros((len(props), num_gt, len(gt)))
  f = np.zeros_like(j)
  for a, prop in enumerate(props):
    for o in range(num_gt):
      obj = gt == o + 1
      for t in range(len(gt)):
        inter = (prop[t] & obj[t] & ~void[t]).sum()
        union = ((prop[t] | obj[t]) & ~void[t]).sum()
        j[a, o, t] = 1.0 if union == 0 else inter / union
        f[a, o, t] = _reference_f(prop[t], obj[t], void[t])
  score = ((j + f) / 2).mean(axis=2)
  best = max(itertools.permutations(range(len(props)), num_gt),
             key=lambda perm: sum(score[a, o] for o, a in enumerate(perm)))
  return np.array([[*_reference_stats(j[a, o]), *_reference_stats(f[a, o])]
                   for o, a in enumerate(best)]).reshape(num_gt, 6)


def test_boundary_map_by_hand():
  # A 4x4 square at rows/cols 2..5: the boundary is its last row and column (7 pixels) and the
  # background pixels just above and left of it (row 1 cols 1..5, col 1 rows 2..5: 9 pixels),
  # i.e. the outline of the square [1, 5] x [1, 5], half a pixel towards the origin.
  mask = np.zeros((10, 10), bool)
  mask[2:6, 2:6] = True
  expected = np.zeros((10, 10), bool)
  expected[1, 1:6] = expected[5, 1:6] = expected[1:6, 1] = expected[1:6, 5] = True
  np.testing.assert_array_equal(metrics.boundary_map(mask), expected)
  assert expected.sum() == 16
  # On the last row, only the right neighbour counts: mask = row 3, cols 1..2 of a 4x5 image.
  mask = np.zeros((4, 5), bool)
  mask[3, 1:3] = True
  expected = np.zeros((4, 5), bool)
  expected[3, [0, 2]] = True     # right neighbour differs
  expected[2, [0, 1, 2]] = True  # lower-right, lower, lower neighbour is in the mask
  np.testing.assert_array_equal(metrics.boundary_map(mask), expected)
  # A mask filling the image has no boundary; nor does an empty one.
  assert not metrics.boundary_map(np.ones((5, 7), bool)).any()
  assert not metrics.boundary_map(np.zeros((5, 7), bool)).any()


@pytest.mark.parametrize("seed", range(6))
def test_boundary_map_matches_the_literal_rules(seed):
  rng = np.random.default_rng(seed)
  h, w = rng.integers(1, 12, 2)
  mask = rng.random((h, w)) < rng.uniform(0.1, 0.9)
  np.testing.assert_array_equal(metrics.boundary_map(mask), _reference_bmap(mask))


@pytest.mark.parametrize("k, bound_th, expected_f, expected_j", [
    (1, 0.008, 1.0, 90 / 110),    # 40x40: tolerance ceil(0.008 * 56.6) = 1 px >= the shift
    (2, 0.008, 22 / 40, 80 / 120),
    (3, 2, 24 / 40, 70 / 130),    # bound_th >= 1 is a radius in pixels
])
def test_shifted_square_by_hand(k, bound_th, expected_f, expected_j):
  # A 10x10 square (rows/cols 10..19) and the same shifted right by k. Both boundaries are 40-px
  # outlines; with k = 2 and radius 1, of the prediction's 40 pixels the horizontal sides match
  # but for their last pixel (2 x 10), the left side only next to the corners (2), the right side
  # never: 22, and by symmetry 22 of the ground truth's: P = R = F = 22/40. With k = 3 and
  # radius 2: 2 x 10 + 4 = 24. J = 10 (10 - k) / (10 (10 + k)).
  gt = np.zeros((40, 40), bool)
  gt[10:20, 10:20] = True
  pred = np.roll(gt, k, axis=1)
  assert metrics.boundary_f_measure(pred, gt, bound_th=bound_th) == pytest.approx(expected_f)
  assert _reference_f(pred, gt, bound_th=bound_th) == pytest.approx(expected_f)
  result = metrics.davis_j_and_f(pred[None].astype(np.int32) * 5, gt[None].astype(np.int32),
                                 bound_th=bound_th)
  np.testing.assert_allclose(result.j, [[expected_j]])
  np.testing.assert_allclose(result.f, [[expected_f]])
  np.testing.assert_array_equal(result.pred_ids, [5])
  assert metrics.boundary_tolerance((40, 40)) == 1 and metrics.boundary_tolerance((480, 854)) == 8


def _blobs(rng, h, w, n):
  """(h, w) int map of n random overlapping ellipses painted in order (0 = none)."""
  yy, xx = np.mgrid[:h, :w]
  out = np.zeros((h, w), np.int32)
  for i in range(1, n + 1):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(2, h / 2), rng.uniform(2, w / 2)
    out[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = i
  return out


@pytest.mark.parametrize("seed", range(8))
def test_boundary_f_matches_scipy_dilation(seed):
  rng = np.random.default_rng(seed)
  h, w = rng.integers(20, 140, 2)  # tolerance 1 or 2 px
  gt, pred = _blobs(rng, h, w, 1) > 0, _blobs(rng, h, w, 2) == rng.integers(1, 3)
  void = (_blobs(rng, h, w, 1) > 0) if seed % 2 else None
  for bound_th in (0.008, 0.03, 3):
    assert metrics.boundary_f_measure(pred, gt, void, bound_th) == pytest.approx(
        _reference_f(pred, gt, void, bound_th), abs=1e-12), bound_th


def test_davis_statistics_by_hand():
  x = np.arange(10) / 10
  # T = 10: bin edges 0, 2, 5, 7, 9 -> first bin x[0:3], last x[7:10]; recall: 0.6 .. 0.9.
  mean, recall, decay = metrics.davis_statistics(x)
  assert (mean, recall, decay) == pytest.approx((0.45, 0.4, 0.1 - 0.8))
  # T = 3: linspace 1, 1.5, 2, 2.5, 3 rounds halves up -> edges 0, 1, 1, 2, 2: last bin x[2:3].
  assert metrics.davis_statistics(np.array([1.0, 0.5, 0.0]))[2] == pytest.approx(0.75 - 0.0)
  assert metrics.davis_statistics(np.array([0.7]))[2] == 0.0
  for t in range(1, 30):
    y = np.random.default_rng(t).random(t)
    assert metrics.davis_statistics(y) == pytest.approx(_reference_stats(y))


def test_davis_matching_absent_objects_and_empty_proposals():
  # Two frames. Object 1 only in frame 0 (predicted exactly by id 3, absent in frame 1 too);
  # object 2 in both, predicted exactly by id 4; background id 0.
  gt = np.zeros((2, 12, 12), np.int32)
  gt[0, 2:5, 2:5] = 1
  gt[:, 7:10, 6:11] = 2
  pred = np.where(gt == 1, 3, np.where(gt == 2, 4, 0))
  result = metrics.davis_j_and_f(pred, gt)
  np.testing.assert_array_equal(result.gt_ids, [1, 2])
  np.testing.assert_array_equal(result.pred_ids, [3, 4])
  np.testing.assert_allclose(result.j, 1.0)  # frame 1, object 1: both empty -> 1
  np.testing.assert_allclose(result.f, 1.0)
  np.testing.assert_allclose(result.stats, [[1, 1, 0, 1, 1, 0]] * 2)
  # Id 3 reappears in frame 1 where object 1 is absent: J = 0 and F = 0 there (no ground-truth
  # boundary, some predicted boundary: precision 0).
  pred[1, 0:2, 0:2] = 3
  result = metrics.davis_j_and_f(pred, gt)
  np.testing.assert_allclose(result.j[0], [1, 0])
  np.testing.assert_allclose(result.f[0], [1, 0])
  # One id covering everything (fewer proposals than objects): it goes to the object it scores
  # best on (J = area / 144; a full-image mask has no boundary, so F = 0), the other object gets
  # an empty proposal (J = F = 0 where present, 1 where absent).
  result = metrics.davis_j_and_f(np.full_like(gt, 7), gt)
  np.testing.assert_array_equal(result.empty, [True, False])
  np.testing.assert_allclose(result.j, [[0, 1], [15 / 144, 15 / 144]])
  np.testing.assert_allclose(result.f, [[0, 1], [0, 0]])
  # Objects are 1..(largest id of frame 0): an object first seen later is not one.
  late = gt.copy()
  late[1, 0:2, 0:2] = 5
  assert metrics.davis_j_and_f(pred, late).gt_ids.tolist() == [1, 2]


def test_davis_void_pixels_are_excluded():
  # The prediction = the object plus a blob lying on void pixels only: J = F = 1. With void as
  # background instead, the blob costs J and F.
  gt = np.zeros((1, 30, 30), np.int32)
  gt[0, 5:15, 5:15] = 1
  gt[0, 20:28, 18:28] = -1
  pred = (gt == 1).astype(np.int32)
  pred[0, 21:26, 20:26] = 1
  result = metrics.davis_j_and_f(pred, gt)
  np.testing.assert_allclose([result.j[0, 0], result.f[0, 0]], [1.0, 1.0])
  as_background = metrics.davis_j_and_f(pred, np.maximum(gt, 0))
  assert as_background.j[0, 0] == pytest.approx(100 / 130)
  assert as_background.f[0, 0] == pytest.approx(_reference_f(pred[0] == 1, gt[0] == 1))
  assert as_background.f[0, 0] < 1


@pytest.mark.parametrize("seed", range(6))
def test_davis_j_and_f_matches_reference(seed):
  rng = np.random.default_rng(seed)
  t, h, w = int(rng.integers(1, 5)), int(rng.integers(16, 40)), int(rng.integers(16, 40))
  num_gt, num_pred = int(rng.integers(1, 4)), int(rng.integers(1, 5))
  gt = np.stack([_blobs(rng, h, w, num_gt) for _ in range(t)])
  gt[0, :2, :2] = num_gt  # every object id occurs in frame 0
  pred = np.stack([_blobs(rng, h, w, num_pred) for _ in range(t)]) * 7 - 3
  if seed % 2:
    gt[:, :, : w // 4] = -1  # a void strip
  stats = metrics.davis_j_and_f(pred, gt).stats
  np.testing.assert_allclose(stats, _reference_davis(pred, gt), atol=1e-12)
  result = metrics.evaluate_video(pred, gt)
  np.testing.assert_allclose(result["davis_stats"], stats)
  assert result["jf_mean"] == pytest.approx((stats[:, 0].mean() + stats[:, 3].mean()) / 2)


def test_davis_dataset_numbers_pool_objects_of_all_videos():
  # Video a: one object, perfect. Video b: two 10x10 objects, one id over the whole 40x40 frame:
  # it goes to one object (J = 100 / 1600, F = 0: a full-frame mask has no boundary), the other
  # object gets an empty proposal (J = F = 0).
  a_gt = np.zeros((2, 40, 40), np.int32)
  a_gt[:, 5:15, 5:15] = 1
  b_gt = np.zeros((2, 40, 40), np.int32)
  b_gt[:, 0:10, 0:10], b_gt[:, 0:10, 30:40] = 1, 2
  a, b = metrics.evaluate_video(a_gt, a_gt), metrics.evaluate_video(np.zeros_like(b_gt), b_gt)
  assert (a["jf_mean"], b["jf_mean"]) == pytest.approx((1.0, 1 / 16 / 4))
  summary = metrics.aggregate([a, b])
  assert summary["davis_num_objects"] == 3
  for key, value in [("j_mean", (1 + 1 / 16) / 3), ("f_mean", 1 / 3),
                     ("jf_mean", (1 + 1 / 16 / 2) / 3), ("j_recall", 1 / 3), ("j_decay", 0.0),
                     ("f_decay", 0.0)]:
    assert summary[key] == pytest.approx(value), key   # over objects, not over videos
  without = metrics.evaluate_video(a_gt, a_gt, j_and_f=False)
  assert "jf_mean" not in without and "davis_stats" not in without


@settings(max_examples=40, deadline=None)
@given(videos(), st.permutations(range(5)))
def test_property_davis_bounds_and_renaming(video, pred_perm):
  pred, gt = video
  result = metrics.evaluate_video(pred, gt)
  stats = result["davis_stats"]
  assert stats.shape == (int(gt[0][gt[0] >= 0].max(initial=0)), 6)
  assert ((stats[:, [0, 1, 3, 4]] >= 0) & (stats[:, [0, 1, 3, 4]] <= 1 + 1e-12)).all()
  assert (np.abs(stats[:, [2, 5]]) <= 1 + 1e-12).all()
  # The matching maximises the sum of (J + F) / 2: jf_mean does not depend on how ids are named
  # (J and F alone can, when assignments tie).
  renamed = metrics.evaluate_video((np.array(pred_perm) * 10 + 3)[pred], gt)
  assert renamed["jf_mean"] == pytest.approx(result["jf_mean"], abs=1e-12, nan_ok=True)
  assert result["frame_mbo"] == pytest.approx(_brute_force_frame_mbo(pred, gt), abs=1e-12,
                                              nan_ok=True)


def test_a_new_metric_is_one_row_of_the_table(monkeypatch):
  # A row added to metrics.METRICS reaches evaluate_video, aggregate, the one-line summary and
  # the evaluation table with no other change.
  from solv_jax import evaluate, evaluation
  row = metrics.Metric("fg_pixels", "ground-truth foreground pixels", "nobody",
                       video=lambda v: float(v.fg.sum()),
                       pool=lambda results: sum(r["fg_pixels"] for r in results),
                       show=frozenset({"summary"}))
  monkeypatch.setattr(metrics, "METRICS", metrics.METRICS + (row,))
  monkeypatch.setattr(metrics, "METRIC", {**metrics.METRIC, row.key: row})
  rs = np.random.RandomState(0)
  videos = [(rs.randint(0, 3, (2, 5, 6)), rs.randint(-1, 3, (2, 5, 6))) for _ in range(2)]
  results = [metrics.evaluate_video(p, g, j_and_f=False) for p, g in videos]
  assert [r["fg_pixels"] for r in results] == [float((g > 0).sum()) for _, g in videos]
  total = metrics.aggregate(results)
  assert total["fg_pixels"] == sum(float((g > 0).sum()) for _, g in videos)
  assert "jf_mean" not in total and total["num_videos"] == 2  # no J&F asked for
  assert f"fg_pixels={total['fg_pixels']:.4f}" in evaluation.summary(total)
  table = evaluate.format_table(total)
  assert any(line.split()[0] == "fg_pixels" and "ground-truth foreground pixels" in line
             for line in table.splitlines())
