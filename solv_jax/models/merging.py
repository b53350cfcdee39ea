"""Slot merging psi_merge (paper §3.2.3, eq. 9, App. B.2; docs/METHOD.md §4).

Agglomerative clustering of the K slots of each sample: complete linkage on the cosine
distance 1 - cos, merging while the complete-link distance is below the threshold, i.e.
sklearn's `AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="complete",
distance_threshold=t)`, whose threshold is the "linkage distance at or above which clusters
will not be merged". A result with <= 2 clusters is cancelled (all K slots kept). Merged slot =
mean of its members; merged attention = sum of its members' W, renormalised over tokens.

Shapes stay fixed: K rows plus a validity mask, valid rows first in the order of each
cluster's first (lowest-index) member. The cluster labels are constants for the gradient.

Two backends give the same partitions: "device", a pure-JAX complete-linkage loop of K - 1
masked merge steps (jit/vmap friendly, no host round trip), and "host", the sklearn call
through `jax.pure_callback`. Exact ties between competing merges are broken by the lowest
(i, j) pair on device, which may differ from scipy's nearest-neighbour chain; they do not occur
on real-valued slots.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

BACKENDS = ("device", "host")


def sample_merge_mask(rng: jax.Array, batch: int, merge_prob) -> jax.Array:
  """Per-sample Bernoulli(merge_prob) from the 'merge' RNG stream -> (batch,) bool."""
  return jax.random.bernoulli(rng, jnp.asarray(merge_prob, jnp.float32), (batch,))


# ----------------------------------------------------------------------------------------------
# Clustering. Both backends return, per slot, the index of its cluster's first member (B, K).
# ----------------------------------------------------------------------------------------------
def cosine_distance(x: jax.Array) -> jax.Array:
  """(..., K, D) -> (..., K, K) pairwise 1 - cos, as scipy's 'cosine' metric."""
  x = x.astype(jnp.float32)
  dots = jnp.einsum("...id,...jd->...ij", x, x, precision=jax.lax.Precision.HIGHEST)
  norms = jnp.sqrt(jnp.diagonal(dots, axis1=-2, axis2=-1))  # (..., K)
  return 1.0 - dots / (norms[..., :, None] * norms[..., None, :])


def complete_linkage(dist: jax.Array, threshold: float) -> jax.Array:
  """Complete-linkage clustering of one sample from its (K, K) distance matrix.

  Repeats K - 1 times: take the closest pair of active clusters (i < j, lowest pair on ties);
  if their distance is < threshold, merge j into i (the complete-link distance of the union
  to any cluster is the max of the two). Returns (K,) int32: each item's cluster
  representative, which is the cluster's lowest member index.
  """
  k = dist.shape[-1]
  eye = jnp.eye(k, dtype=bool)
  idx = jnp.arange(k, dtype=jnp.int32)

  def step(_, state):
    d, active, rep = state
    pair_ok = active[:, None] & active[None, :] & ~eye
    masked = jnp.where(pair_ok, d, jnp.inf)
    flat = jnp.argmin(masked)  # first minimum in row-major order, so i < j
    i, j = flat // k, flat % k
    merge = masked[i, j] < threshold
    row = jnp.maximum(d[i], d[j])  # complete link of the union i + j
    d_new = d.at[i, :].set(row).at[:, i].set(row)
    d = jnp.where(merge, d_new, d)
    active = jnp.where(merge, active.at[j].set(False), active)
    rep = jnp.where(merge & (rep == j), i, rep)
    return d, active, rep

  state = (dist.astype(jnp.float32), jnp.ones((k,), bool), idx)
  _, _, rep = jax.lax.fori_loop(0, k - 1, step, state)
  return rep


def _cluster_device(slots: jax.Array, threshold: float) -> jax.Array:
  """(B, K, D) -> (B, K) representatives, on the accelerator."""
  return jax.vmap(complete_linkage, in_axes=(0, None))(cosine_distance(slots), threshold)


def _sklearn_representatives(slots: np.ndarray, threshold: float) -> np.ndarray:
  """Host side: (..., K, D) -> (..., K) int32 first-member index of each slot's cluster."""
  from sklearn.cluster import AgglomerativeClustering  # host-only dependency

  slots = np.asarray(slots)
  flat = slots.reshape(-1, *slots.shape[-2:])
  out = np.empty(flat.shape[:2], np.int32)
  for b, x in enumerate(flat):
    labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="complete",
                                     distance_threshold=threshold).fit(x).labels_
    first = {}
    for i, lab in enumerate(labels):
      first.setdefault(lab, i)
    out[b] = [first[lab] for lab in labels]
  return out.reshape(slots.shape[:-1])


def _cluster_host(slots: jax.Array, threshold: float) -> jax.Array:
  """(B, K, D) -> (B, K) representatives, by sklearn through a host callback."""
  out = jax.ShapeDtypeStruct(slots.shape[:-1], jnp.int32)
  # The callback loops over any leading axes itself, so under vmap it takes the whole batch.
  return jax.pure_callback(functools.partial(_sklearn_representatives, threshold=threshold),
                           out, slots, vmap_method="broadcast_all")


def cluster_slots(slots: jax.Array, *, threshold: float = 0.12,
                  backend: str = "device") -> jax.Array:
  """(B, K, D) -> (B, K) int32: index of the first member of each slot's cluster."""
  slots = jax.lax.stop_gradient(slots)  # labels are constants (no JVP through the callback)
  if backend == "device":
    return _cluster_device(slots, threshold)
  if backend == "host":
    return _cluster_host(slots, threshold)
  raise ValueError(f"merge backend must be one of {BACKENDS}, got {backend!r}.")


# ----------------------------------------------------------------------------------------------
# Merging.
# ----------------------------------------------------------------------------------------------
def merge_slots(slots: jax.Array, attn: jax.Array, *, threshold: float = 0.12,
                backend: str = "device", enabled: jax.Array | None = None):
  """Merges similar slots of each sample (eq. 9).

  slots: (B, K, D_slot); attn: (B, K, N') token-normalised attention W; enabled: optional
  (B,) bool, samples where False are left as they are (the training schedule).
  Returns merged slots (B, K, D_slot), merged attn (B, K, N') renormalised over tokens and
  valid (B, K) bool; valid rows come first, in the order of the clusters' first members;
  invalid rows are 0. Samples whose clustering gives <= 2 clusters keep all K slots.
  """
  b, k, _ = slots.shape
  idx = jnp.arange(k, dtype=jnp.int32)
  rep = cluster_slots(slots, threshold=threshold, backend=backend)  # (B, K), no gradient
  is_rep = rep == idx  # (B, K) cluster heads
  keep_all = jnp.sum(is_rep, axis=-1) <= 2  # cancel: too few clusters
  if enabled is not None:
    keep_all = keep_all | ~jnp.asarray(enabled, bool).reshape(b)
  rep = jnp.where(keep_all[:, None], idx, rep)  # (B, K)
  is_rep = rep == idx
  rank = jnp.cumsum(is_rep, axis=-1) - 1  # output row of each cluster head
  row = jnp.take_along_axis(rank, rep, axis=-1)  # (B, K) output row of each slot
  assign = jax.nn.one_hot(row, k, dtype=slots.dtype)  # (B, K_in, K_out), constant
  counts = jnp.sum(assign, axis=1)  # (B, K_out)
  valid = counts > 0
  merged = jnp.einsum("bio,bid->bod", assign, slots) / jnp.maximum(counts, 1.0)[..., None]
  merged_attn = jnp.einsum("bio,bin->bon", assign, attn)  # (B, K, N')
  total = jnp.sum(merged_attn, axis=-1, keepdims=True)
  merged_attn = merged_attn / jnp.where(valid[..., None], total, 1.0)
  return merged, merged_attn, valid
