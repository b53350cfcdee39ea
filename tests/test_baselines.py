"""k-means baseline: our k-means against sklearn's, and the per-video pipeline on a hand-made
video whose answer is known by construction."""
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from solv_jax import baselines


def _blobs(rng, centres, per, spread):
  x = np.concatenate([c + spread * rng.standard_normal((per, len(c))) for c in centres])
  y = np.repeat(np.arange(len(centres)), per)
  return x, y


def test_kmeans_matches_sklearn_on_separated_blobs():
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 1.0], [0.0, 6.0, -2.0], [4.0, 4.0, 4.0]])
  x, y = _blobs(rng, centres, per=30, spread=0.4)
  labels, found, inertia = baselines.kmeans(x, 4, seed=1)
  ref = KMeans(n_clusters=4, n_init=4, random_state=0).fit(x)
  assert adjusted_rand_score(ref.labels_, labels) == 1.0
  assert adjusted_rand_score(y, labels) == 1.0
  np.testing.assert_allclose(inertia, ref.inertia_, rtol=1e-9)
  order = lambda c: c[np.lexsort(c.T[::-1])]  # noqa: E731
  np.testing.assert_allclose(order(found), order(ref.cluster_centers_), atol=1e-9)


def test_kmeans_inertia_close_to_sklearn_on_overlapping_data():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((200, 5))
  _, _, inertia = baselines.kmeans(x, 6, seed=0, n_init=8)
  ref = KMeans(n_clusters=6, n_init=8, random_state=0).fit(x)
  assert inertia <= ref.inertia_ * 1.03


def test_kmeans_with_more_clusters_than_distinct_points():
  x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
  labels, centres, inertia = baselines.kmeans(x, 5)
  assert len(centres) == 2 and inertia == 0.0
  assert labels[0] == labels[1] != labels[2]


def test_segment_video_tracks_and_scores_a_hand_made_video():
  # 4x4 token grid, 3 frames: background feature 0, object A = e1 on the left column block,
  # object B = e2 moving right by one token per frame. Ground truth at 8x8 pixels (2x2 per
  # token), so token-level clustering is exact and the scores must be perfect.
  t, h, w, d = 3, 4, 4, 3
  feats = np.zeros((t, h, w, d))
  gt = np.zeros((t, 2 * h, 2 * w), np.int32)
  for i in range(t):
    feats[i, 0:2, 0, 0] = 1.0
    gt[i, 0:4, 0:2] = 1
    feats[i, 2:4, i + 1, 1] = 1.0
    gt[i, 4:8, 2 * (i + 1):2 * (i + 2)] = 2
  feats += 0.01 * np.random.default_rng(0).standard_normal(feats.shape)
  k = baselines.oracle_num_segments(gt)
  np.testing.assert_array_equal(k, [3, 3, 3])
  pred = baselines.kmeans_segment_video(feats.reshape(t, h * w, d), k, (h, w), (2 * h, 2 * w))
  # One id per object across all frames (tracked), and pixel-exact masks.
  for obj in (0, 1, 2):
    assert len(np.unique(pred[gt == obj])) == 1
  assert len({int(pred[gt == o][0]) for o in (0, 1, 2)}) == 3
  from solv_jax import metrics
  result = metrics.evaluate_video(pred, gt)
  assert result["fg_ari"] == 1.0 and result["miou"] == 1.0


def test_oracle_num_segments_ignores_void_and_counts_background_once():
  gt = np.array([[[0, 1], [-1, 3]], [[0, 0], [0, 0]]])
  np.testing.assert_array_equal(baselines.oracle_num_segments(gt), [3, 1])


def test_area_matrix_hand_computed():
  np.testing.assert_allclose(baselines.area_matrix(3, 2), [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
  np.testing.assert_allclose(baselines.area_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
  np.testing.assert_allclose(baselines.area_matrix(5, 5), np.eye(5))


def test_token_oracle_is_exact_on_token_aligned_ground_truth():
  # 4x4 token grid, 2x2 pixels per token; objects made of whole tokens survive pixel-exactly.
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 4, size=(3, 4, 4))
  gt = np.repeat(np.repeat(tokens, 2, axis=1), 2, axis=2).astype(np.int32)
  pred = baselines.token_oracle_video(gt, (4, 4))
  np.testing.assert_array_equal(pred, gt)


def test_token_oracle_loses_what_a_token_grid_cannot_hold():
  # One 1-pixel object in a 2x2-pixel token is a quarter of that token: the background wins,
  # and a 2x2 object straddling four tokens keeps only what bilinear upsampling gives it.
  gt = np.zeros((1, 8, 8), np.int32)
  gt[0, 0, 0] = 1  # sub-token object
  gt[0, 3:5, 3:5] = 2  # a quarter of each of four tokens
  gt[0, 6:8, 6:8] = 3  # one whole token
  pred = baselines.token_oracle_video(gt, (4, 4))
  assert 1 not in pred and 2 not in pred
  np.testing.assert_array_equal(pred[0, 6:8, 6:8], 3)
  from solv_jax import metrics
  result = metrics.evaluate_video(pred, gt)
  assert result["miou"] < 1.0 and result["object_ious"][2] == 1.0
