"""Decoder psi_dec (paper §3.2.3, eqs. 10-11, App. B.2; docs/METHOD.md §5).

A spatial broadcast MLP decoder over the (merged) slots of the middle frame. With the
invariant spatial binding, each slot's position S_p and scale S_s are recomputed from its
merged attention over the kept positions of the middle frame (eq. 15), the relative grid over
ALL N positions (eq. 14) is projected by its own Dense h and added to the broadcast slot and a
learned position embedding. The mapper MLP outputs features y_hat (N, D) and alpha (N) per
slot; the masks are a softmax of alpha over the valid slots (exactly 0 on invalid rows).

With dtype bfloat16 (config.model.compute_dtype) h and the mapper's Dense layers compute in
bfloat16; the grid algebra, the mask softmax and the reconstruction stay float32.
param_init 'torch' (default) starts h and the mapper as torch.nn.Linear does, 'flax' with
Flax's defaults; the position embedding is N(0, 0.02) in both (docs/METHOD.md §6).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from solv_jax.models.spatial_binding import dense, relative_grid, slot_pos_scale


class Decoder(nn.Module):
  num_tokens: int  # N = h * w of a full frame
  feature_dim: int = 768  # D, the DINOv2 width
  hidden: int = 1024
  num_layers: int = 5  # Dense layers of the mapper in total
  delta: float = 5.0
  clamp_scales: bool = False
  relative_grid: bool = True  # False for the vanilla slot attention ablation (no grids)
  dtype: Any = None  # compute dtype of h and the mapper (None = float32)
  param_init: str = "torch"  # torch | flax

  @nn.compact
  def __call__(self, slots, attn=None, valid=None, keep_idx=None, grid_abs=None):
    """slots (B, K, D_slot); attn (B, K, N') merged token-normalised W of the middle frame;
    valid (B, K) bool or None (all valid); keep_idx (B, N') the middle frame's kept patch
    indices (None: all N); grid_abs (N, 2), the spatial binder's learned G_abs.

    Returns recon (B, N, D) and masks (B, K, N).
    """
    b, k, d_slot = slots.shape
    n = self.num_tokens
    if valid is None:
      valid = jnp.ones((b, k), bool)
    pos_embed = self.param("pos_embed", nn.initializers.normal(0.02), (n, d_slot))
    x = slots[:, :, None, :] + pos_embed  # broadcast: (B, K, N, D_slot)

    if self.relative_grid:
      if attn is None or grid_abs is None:
        raise ValueError("The decoder's relative grid needs the merged attention and G_abs.")
      if keep_idx is None:
        keep_idx = jnp.broadcast_to(jnp.arange(attn.shape[-1], dtype=jnp.int32),
                                    (b, attn.shape[-1]))
      grid_kept = grid_abs[keep_idx]  # (B, N', 2) positions of the middle frame's tokens
      # eq. (15); invalid rows (no attention) get a harmless position and scale.
      slot_pos, slot_scale = slot_pos_scale(attn, grid_kept, valid)  # (B, K, 2) each
      self.sow("intermediates", "slot_pos", slot_pos)
      self.sow("intermediates", "slot_scale", slot_scale)
      g_rel = relative_grid(grid_abs, slot_pos, slot_scale, self.delta,
                            self.clamp_scales)  # eq. (14) over all N: (B, K, N, 2)
      x = x + dense(d_slot, 2, self.param_init, dtype=self.dtype,
                    name="grid_proj")(g_rel)  # h(G_rel)

    # psi_mapper: D_slot -> hidden x (num_layers - 1) -> D + 1, ReLU between.
    fan_in = d_slot
    for i in range(self.num_layers - 1):
      x = nn.relu(dense(self.hidden, fan_in, self.param_init, dtype=self.dtype,
                        name=f"mlp_{i}")(x))
      fan_in = self.hidden
    x = dense(self.feature_dim + 1, fan_in, self.param_init, dtype=self.dtype,
              name=f"mlp_{self.num_layers - 1}")(x)  # (B, K, N, D+1)
    x = x.astype(jnp.float32)
    features, alpha = x[..., :-1], x[..., -1]  # (B, K, N, D), (B, K, N)

    alpha = jnp.where(valid[..., None], alpha, -jnp.inf)
    masks = jax.nn.softmax(alpha, axis=1)  # eq. (11) over the valid slots
    masks = jnp.where(valid[..., None], masks, 0.0)  # (B, K, N)
    recon = jnp.einsum("bkn,bknd->bnd", masks, features)  # (B, N, D)
    return recon, masks
