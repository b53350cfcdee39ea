"""Token drop (paper §3.1, docs/METHOD.md §1): each frame keeps a random, sorted subset of its
patch tokens after the position embedding. Any encoder entry with token_drop=True
(solv_jax/models/encoders.py) applies these two rules."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_kept_tokens(num_tokens: int, drop_ratio: float) -> int:
  """N' = int(N * (1 - r)): the patch tokens a frame keeps under token drop (docs/METHOD.md §1). The
  one rule: a ratio that keeps none is an error here and in the config check alike."""
  if not 0.0 <= drop_ratio < 1.0:
    raise ValueError(f"token drop ratio must be in [0, 1), got {drop_ratio}.")
  kept = int(num_tokens * (1.0 - drop_ratio))
  if kept < 1:
    raise ValueError(f"token drop ratio {drop_ratio} keeps no token of the {num_tokens}.")
  return kept


def sample_keep_idx(rng: jax.Array, batch: int, num_tokens: int, drop_ratio: float) -> jax.Array:
  """Token drop: for each of `batch` images, int(N * (1 - r)) distinct patch indices, sorted."""
  num_keep = num_kept_tokens(num_tokens, drop_ratio)
  order = jnp.argsort(jax.random.uniform(rng, (batch, num_tokens)), axis=-1)
  return jnp.sort(order[:, :num_keep], axis=-1).astype(jnp.int32)  # (B, N')
