"""Temporal binding psi_t-bind (paper §3.2.2, App. B.2; SPEC §3).

A post-norm transformer encoder that runs along time only: slot j of each frame attends to
slot j of the other frames of the window, so each affinity matrix is F x F. Frames outside
the video (zero-filled upstream) are masked out as attention keys. The output is the middle
frame's slots, c in eq. (7).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

LN_EPS = 1e-5  # torch.nn.TransformerEncoderLayer's default


class TemporalEncoderLayer(nn.Module):
  """torch.nn.TransformerEncoderLayer(norm_first=False, activation='relu'):
  x = LN(x + SA(x)); x = LN(x + FF(x)), dropout on attention weights and both residuals."""
  num_heads: int = 8
  mlp_ratio: int = 4
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, mask, *, train: bool):  # x: (..., F, D); mask: (..., 1, 1, F)
    d = x.shape[-1]
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=d, out_features=d, dropout_rate=self.dropout,
        broadcast_dropout=False, deterministic=not train, name="attn")(x, x, mask=mask)
    x = nn.LayerNorm(epsilon=LN_EPS, name="norm1")(x + drop(y))
    y = nn.relu(nn.Dense(self.mlp_ratio * d, name="fc1")(x))
    y = nn.Dense(d, name="fc2")(drop(y))
    return nn.LayerNorm(epsilon=LN_EPS, name="norm2")(x + drop(y))


class TemporalBinding(nn.Module):
  """slots (B, F, K, D_slot), frame_mask (B, F) bool -> middle frame's slots (B, K, D_slot)."""
  num_frames: int = 5
  num_layers: int = 3
  num_heads: int = 8
  mlp_ratio: int = 4
  dropout: float = 0.1

  @nn.compact
  def __call__(self, slots, frame_mask, *, train: bool = False):
    b, f, k, d = slots.shape
    if f != self.num_frames:
      raise ValueError(f"TemporalBinding was built for {self.num_frames} frames per window "
                       f"(2n+1 with n = config.data.num_context), got slots for {f}.")
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (f, d))  # (F, D_slot)
    x = slots + pos[None, :, None, :]  # same temporal encoding for all slots of a frame
    x = jnp.swapaxes(x, 1, 2)  # (B, K, F, D_slot): attention along time only
    mask = frame_mask.astype(bool)[:, None, None, None, :]  # (B, 1, 1, 1, F) keys
    for i in range(self.num_layers):
      x = TemporalEncoderLayer(self.num_heads, self.mlp_ratio, self.dropout,
                               name=f"layers_{i}")(x, mask, train=train)
    return x[:, :, f // 2]  # (B, K, D_slot)
