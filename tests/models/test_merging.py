"""Slot merging against sklearn's AgglomerativeClustering (the authors' call) on random and
adversarial inputs, for both backends, inside jit and vmap."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering

from solv_jax.models import merging

THRESHOLD = 0.12
D_PAD = 32  # cosine distance is unchanged by zero padding, so every case shares one D
N_TOK = 6


# ----------------------------------------------------------------------------------------------
# Expected results, computed with sklearn + numpy only.
# ----------------------------------------------------------------------------------------------
def sklearn_labels(x, threshold=THRESHOLD, metric="cosine"):
  return AgglomerativeClustering(n_clusters=None, metric=metric, linkage="complete",
                                 distance_threshold=threshold).fit(x).labels_


def canonical(labels):
  """Partition as a tuple of tuples of member indices, in order of first member."""
  groups = {}
  for i, lab in enumerate(labels):
    groups.setdefault(lab, []).append(i)
  return tuple(tuple(g) for g in groups.values())


def expected_merge(slots, attn, threshold=THRESHOLD):
  """numpy: sklearn partition, cancel when <= 2 clusters, mean slots, summed attention."""
  k = slots.shape[0]
  groups = canonical(sklearn_labels(slots.astype(np.float64), threshold))
  if len(groups) <= 2:
    groups = tuple((i,) for i in range(k))
  out_s = np.zeros_like(slots, dtype=np.float64)
  out_a = np.zeros_like(attn, dtype=np.float64)
  valid = np.zeros(k, bool)
  for r, g in enumerate(groups):
    out_s[r] = slots[list(g)].astype(np.float64).mean(0)
    a = attn[list(g)].astype(np.float64).sum(0)
    out_a[r] = a / a.sum()
    valid[r] = True
  return out_s, out_a, valid, groups


# ----------------------------------------------------------------------------------------------
# Random and adversarial inputs
# ----------------------------------------------------------------------------------------------
def random_case(rs, k):
  kind = rs.randint(4)
  d = int(rs.choice([2, 3, 8, 32]))
  if kind == 0:  # noisy copies of a few centres, noise spanning the threshold
    c = rs.randint(1, k + 1)
    centres = rs.randn(c, d)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rs.randint(c, size=k)] + rs.uniform(0.05, 0.6) * rs.randn(k, d) / math.sqrt(d)
  elif kind == 1:  # low-dimensional directions: many distances below the threshold
    x = rs.randn(k, min(d, 3))
  elif kind == 2:  # points along an arc with random spacing (order-sensitive chains)
    angles = np.cumsum(rs.uniform(0.05, 0.6, size=k))
    rs.shuffle(angles)
    x = np.stack([np.cos(angles), np.sin(angles)], 1) * rs.uniform(0.5, 2.0, (k, 1))
  else:  # positive orthant vectors, as after ReLU
    x = np.abs(rs.randn(k, d)) + rs.uniform(0, 3)
  out = np.zeros((k, D_PAD), np.float32)
  out[:, :x.shape[1]] = x
  return out


def adversarial_cases(k=8):
  rs = np.random.RandomState(123)
  cases = {}
  base = rs.randn(3, D_PAD)
  cases["near_duplicates"] = base[rs.randint(3, size=k)] + 1e-4 * rs.randn(k, D_PAD)
  cases["all_identical"] = np.tile(rs.randn(1, D_PAD), (k, 1))
  cases["all_orthogonal"] = np.eye(k, D_PAD)
  cases["exactly_3"] = np.eye(3, D_PAD)[[0, 1, 2, 0, 1, 2, 0, 0]] + 1e-3 * rs.randn(k, D_PAD)
  cases["exactly_2"] = np.eye(2, D_PAD)[[0, 1, 1, 0, 1, 0, 0, 1]] + 1e-3 * rs.randn(k, D_PAD)
  cases["exact_copies"] = rs.randn(k, D_PAD)
  cases["exact_copies"][[3, 6]] = cases["exact_copies"][1]
  cases["exact_copies"][7] = cases["exact_copies"][0]
  scaled = rs.randn(k, D_PAD)
  scaled[4:] = scaled[:4] * np.array([[0.5], [3.0], [7.0], [0.01]])  # cos distance 0
  cases["scaled_copies"] = scaled
  opposite = rs.randn(k, D_PAD)
  opposite[4:] = -opposite[:4]  # distance 2
  cases["opposite"] = opposite
  # Two pairs just below / above the threshold (margins far above float32 error).
  u, v, w = np.eye(3, D_PAD)
  near = lambda d: math.acos(1 - d)
  pair = lambda a, d: np.cos(near(d)) * a + np.sin(near(d)) * w
  cases["threshold_margins"] = np.stack(
      [u, pair(u, THRESHOLD - 1e-4), v, pair(v, THRESHOLD + 1e-4), u + v, -u, -v, -w])
  return {n: c.astype(np.float32) for n, c in cases.items()}


def random_attn(rs, shape):
  a = rs.uniform(0.01, 1.0, shape)
  return (a / a.sum(-1, keepdims=True)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def jitted(backend):
  return jax.jit(functools.partial(merging.merge_slots, threshold=THRESHOLD, backend=backend))


@functools.lru_cache(maxsize=None)
def jitted_vmap(backend):
  return jax.jit(jax.vmap(functools.partial(merging.merge_slots, threshold=THRESHOLD,
                                            backend=backend)))


def check(slots, attn, merged, merged_attn, valid):
  for b in range(slots.shape[0]):
    e_s, e_a, e_v, groups = expected_merge(slots[b], attn[b])
    np.testing.assert_array_equal(np.asarray(valid[b]), e_v, err_msg=f"partition {groups}")
    np.testing.assert_allclose(merged[b], e_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(merged_attn[b], e_a, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["device", "host"])
def test_random_cases_match_sklearn_under_jit_and_vmap(backend):
  rs = np.random.RandomState(0)
  num_checked, num_merged = 0, 0
  for k in (3, 5, 8, 12):
    groups, per_group = 10, 10
    slots = np.stack([[random_case(rs, k) for _ in range(per_group)] for _ in range(groups)])
    attn = random_attn(rs, (groups, per_group, k, N_TOK))
    out = jitted_vmap(backend)(slots, attn)  # vmap over groups of a batch of 10
    for g in range(groups):
      check(slots[g], attn[g], *[np.asarray(o[g]) for o in out])
      num_merged += int((~np.asarray(out[2][g])).any(-1).sum())
    num_checked += groups * per_group
  assert num_checked == 400
  assert num_merged > 80  # many cases really merge (the rest keep all slots)


@pytest.mark.parametrize("backend", ["device", "host"])
def test_adversarial_cases_match_sklearn(backend):
  cases = adversarial_cases()
  slots = np.stack(list(cases.values()))
  attn = random_attn(np.random.RandomState(1), (len(cases), 8, N_TOK))
  merged, merged_attn, valid = jitted(backend)(slots, attn)
  check(slots, attn, np.asarray(merged), np.asarray(merged_attn), np.asarray(valid))
  n_valid = dict(zip(cases, np.asarray(valid).sum(-1)))
  assert n_valid["all_identical"] == 8 and n_valid["exactly_2"] == 8  # <= 2 clusters: cancel
  assert n_valid["all_orthogonal"] == 8 and n_valid["exactly_3"] == 3
  assert n_valid["exact_copies"] == 5 and n_valid["scaled_copies"] == 4
  assert n_valid["threshold_margins"] == 7  # only the pair below the threshold merges
  # valid rows first; invalid rows are exactly zero
  v = np.asarray(valid)
  assert np.all(np.sort(v, axis=-1)[:, ::-1] == v)
  assert np.all(np.asarray(merged)[~v] == 0) and np.all(np.asarray(merged_attn)[~v] == 0)


def test_complete_linkage_on_random_distance_matrices_matches_sklearn():
  # Random symmetric distances with no arithmetic in the linkage (max only): exact agreement.
  rs = np.random.RandomState(2)
  k, n = 10, 300
  d = (rs.uniform(0.0, 1.0, (n, k, k)) * rs.uniform(0.13, 0.6, (n, 1, 1))).astype(np.float32)
  d = np.triu(d, 1)
  d = d + np.transpose(d, (0, 2, 1))
  reps = np.asarray(jax.jit(jax.vmap(merging.complete_linkage, in_axes=(0, None)))(d, THRESHOLD))
  sizes = []
  for i in range(n):
    labels = sklearn_labels(d[i].astype(np.float64), metric="precomputed")
    assert canonical(reps[i]) == canonical(labels), i
    sizes.append(len(set(labels)))
  assert min(sizes) <= 2 and max(sizes) >= 8  # varied partitions


def test_threshold_is_exclusive_like_sklearn():
  # sklearn: distance_threshold is the linkage distance AT or above which clusters do not merge.
  t = 0.125  # exactly representable, so both sides see the same number
  d = np.full((4, 4), 0.9, np.float32)
  d[0, 1] = d[1, 0] = t  # exactly at the threshold: no merge
  d[2, 3] = d[3, 2] = np.nextafter(np.float32(t), np.float32(0))  # just below: merge
  np.fill_diagonal(d, 0)
  reps = np.asarray(merging.complete_linkage(jnp.asarray(d), t))
  labels = sklearn_labels(d.astype(np.float64), threshold=t, metric="precomputed")
  assert canonical(reps) == canonical(labels) == ((0,), (1,), (2, 3))


def test_disabled_samples_and_gradients():
  rs = np.random.RandomState(4)
  slots = np.stack([adversarial_cases()["exactly_3"]] * 2)
  attn = random_attn(rs, (2, 8, N_TOK))
  merged, merged_attn, valid = merging.merge_slots(slots, attn, enabled=jnp.array([True, False]))
  assert valid[0].sum() == 3 and valid[1].all()
  np.testing.assert_array_equal(merged[1], slots[1])
  np.testing.assert_allclose(merged_attn[1], attn[1], rtol=1e-6)

  # Labels are constants: d merged / d slots is the membership average.
  for backend in ("device", "host"):
    r = rs.randn(2, 8, D_PAD).astype(np.float32)
    f = lambda s: jnp.sum(merging.merge_slots(s, attn, backend=backend)[0] * r)
    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(slots)))
    groups = expected_merge(slots[0], attn[0])[3]
    for row, members in enumerate(groups):
      for i in members:
        np.testing.assert_allclose(g[0, i], r[0, row] / len(members), rtol=1e-6)


def test_merge_bernoulli():
  # The schedule p(epoch) itself is train_step.merge_probability (tests/test_schedules.py).
  draws = np.asarray(merging.sample_merge_mask(jax.random.key(0), 20000, 0.3))
  assert draws.dtype == bool and abs(draws.mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 20000)
  assert not merging.sample_merge_mask(jax.random.key(1), 100, 0.0).any()
  assert merging.sample_merge_mask(jax.random.key(1), 100, 1.0).all()


def test_unknown_backend_raises():
  with pytest.raises(ValueError, match="device"):
    merging.merge_slots(jnp.ones((1, 3, 2)), jnp.ones((1, 3, 4)), backend="gpu")


# ----------------------------------------------------------------------------------------------
# Hypothesis properties (device backend, one shape so that each function compiles once).
# ----------------------------------------------------------------------------------------------
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

K_PROP, D_PROP = 7, 3


@st.composite
def slot_sets(draw):
  """(K, D) slots, no zero row; coarse grid values give exact duplicates, scaled copies and
  tied distances, free floats give everything in between."""
  value = st.one_of(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]),
                    st.floats(-1, 1, width=32, allow_subnormal=False))
  x = draw(hnp.arrays(np.float32, (K_PROP, D_PROP), elements=value))
  norms = np.linalg.norm(x.astype(np.float64), axis=1)
  x[norms < 1e-2, 0] = 1.0  # cosine distance needs a direction
  return x


@functools.lru_cache(maxsize=None)
def jitted_threshold(fn):
  return jax.jit(lambda *args: fn(*args[:-1], threshold=args[-1], backend="device"))


def _cos_dist64(x):
  x = x.astype(np.float64)
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  return 1.0 - x @ x.T


@settings(max_examples=80, deadline=None)
@given(slot_sets(), hnp.arrays(np.float32, (K_PROP, N_TOK), elements=st.floats(0.01, 1.0)),
       st.floats(0.01, 1.5))
def test_property_merge_is_a_valid_partition(slots, attn, threshold):
  attn = attn / attn.sum(-1, keepdims=True)
  rep = np.asarray(jitted_threshold(merging.cluster_slots)(slots[None], np.float32(threshold)))[0]
  merged, merged_attn, valid = (np.asarray(a)[0] for a in jitted_threshold(merging.merge_slots)(
      slots[None], attn[None], np.float32(threshold)))
  # The representatives label a partition: each cluster is named by its lowest member.
  clusters = {}
  for i, r in enumerate(rep):
    clusters.setdefault(int(r), []).append(i)
  for r, members in clusters.items():
    assert rep[r] == r and min(members) == r
  # Complete linkage: every pair inside a cluster is closer than the threshold.
  dist = _cos_dist64(slots)
  for members in clusters.values():
    assert dist[np.ix_(members, members)].max() < threshold + 1e-5
  # Output rows: one per cluster (all K kept when <= 2 clusters), valid rows first.
  groups = sorted(clusters.values()) if len(clusters) > 2 else [[i] for i in range(K_PROP)]
  n = len(groups)
  np.testing.assert_array_equal(valid, np.arange(K_PROP) < n)
  for row, members in enumerate(groups):
    np.testing.assert_allclose(merged[row], slots[members].mean(0), rtol=1e-5, atol=1e-6)
    expected = attn[members].astype(np.float64).sum(0)
    np.testing.assert_allclose(merged_attn[row], expected / expected.sum(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(merged_attn[:n].sum(-1), 1.0, rtol=1e-5)
  assert not merged[n:].any() and not merged_attn[n:].any()


@settings(max_examples=80, deadline=None)
@given(slot_sets(), st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_property_higher_threshold_never_gives_more_clusters(slots, t1, t2):
  lo, hi = sorted((t1, t2))
  cluster = jitted_threshold(merging.cluster_slots)
  rep_lo, rep_hi = (np.asarray(cluster(slots[None], np.float32(t)))[0] for t in (lo, hi))
  assert len(set(rep_hi.tolist())) <= len(set(rep_lo.tolist()))
  # Stronger: the coarser partition is a union of the finer one's clusters.
  for i in range(K_PROP):
    for j in range(K_PROP):
      if rep_lo[i] == rep_lo[j]:
        assert rep_hi[i] == rep_hi[j]
