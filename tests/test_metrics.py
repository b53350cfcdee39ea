"""Tests of solv_jax/metrics.py against sklearn, torch, scipy-free brute force and hand counts."""
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import adjusted_rand_score

from solv_jax import metrics

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
  # The authors' release relabels by row index and scores this 0 (SPEC §7).
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
  result = metrics.evaluate_video(pred, gt)
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
  ids = metrics.track_slots(slots, valid)
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
  ids = metrics.track_slots(slots, valid)
  np.testing.assert_array_equal(ids, [[0, 1, -1], [1, 0, -1], [1, 1, 0]])


@pytest.mark.parametrize("seed", range(3))
def test_track_slots_matches_brute_force_reference(seed):
  rng = np.random.default_rng(seed)
  t, k = 5, 4
  slots = rng.normal(size=(t, k, 6))
  valid = rng.random((t, k)) < 0.7
  valid[:, 0] = True
  ids = metrics.track_slots(slots, valid)
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
  out = metrics.upsample_masks(x, out_hw)
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
  out = metrics.masks_to_ids(masks, track_ids, out_hw=out_hw)
  np.testing.assert_array_equal(out, expected)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(
      metrics.masks_to_ids(metrics.upsample_masks(masks, out_hw), track_ids), expected)
