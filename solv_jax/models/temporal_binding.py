"""Temporal binding psi_t-bind (paper §3.2.2, App. B.2; docs/METHOD.md §3).

A post-norm transformer encoder that runs along time only: slot j of each frame attends to
slot j of the other frames of the window, so each affinity matrix is F x F. Frames outside
the video (zero-filled upstream) are masked out as attention keys. The output is the middle
frame's slots, c in eq. (7).

param_init 'torch' (default) starts the layers as the authors' torch.nn.TransformerEncoder does
(docs/METHOD.md §6): one layer initialised by torch, deep-copied num_layers times, so all layers
start identical; 'flax' gives each layer its own Flax-default init.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from solv_jax.models.spatial_binding import check_param_init, dense, uniform

LN_EPS = 1e-5  # torch.nn.TransformerEncoderLayer's default


class TemporalEncoderLayer(nn.Module):
  """torch.nn.TransformerEncoderLayer(norm_first=False, activation='relu'):
  x = LN(x + SA(x)); x = LN(x + FF(x)), dropout on attention weights and both residuals.

  param_init 'torch': the attention's in-projection as torch's packed (3D, D) weight,
  xavier-uniform over the whole tensor (each of q, k, v: U(+-sqrt(6 / (D + 3D)))), its output
  projection U(+-1/sqrt(D)) like nn.Linear, both projections' biases zero; the feed-forward
  layers as nn.Linear; LayerNorms 1 / 0.
  """
  num_heads: int = 8
  mlp_ratio: int = 4
  dropout: float = 0.1
  param_init: str = "torch"

  @nn.compact
  def __call__(self, x, mask, *, train: bool):  # x: (..., F, D); mask: (..., 1, 1, F)
    check_param_init(self.param_init)
    d = x.shape[-1]
    inits = {}
    if self.param_init == "torch":
      inits = dict(kernel_init=uniform(math.sqrt(6.0 / (d + 3 * d))),
                   bias_init=nn.initializers.zeros,
                   out_kernel_init=uniform(1.0 / math.sqrt(d)),
                   out_bias_init=nn.initializers.zeros)
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=d, out_features=d, dropout_rate=self.dropout,
        broadcast_dropout=False, deterministic=not train, name="attn", **inits)(x, x, mask=mask)
    x = nn.LayerNorm(epsilon=LN_EPS, name="norm1")(x + drop(y))
    hidden = self.mlp_ratio * d
    y = nn.relu(dense(hidden, d, self.param_init, name="fc1")(x))
    y = dense(d, hidden, self.param_init, name="fc2")(drop(y))
    return nn.LayerNorm(epsilon=LN_EPS, name="norm2")(x + drop(y))


class TemporalBinding(nn.Module):
  """slots (B, F, K, D_slot), frame_mask (B, F) bool -> middle frame's slots (B, K, D_slot)."""
  num_frames: int = 5
  num_layers: int = 3
  num_heads: int = 8
  mlp_ratio: int = 4
  dropout: float = 0.1
  param_init: str = "torch"

  @nn.compact
  def __call__(self, slots, frame_mask, *, train: bool = False):
    check_param_init(self.param_init)
    b, f, k, d = slots.shape
    if f != self.num_frames:
      raise ValueError(f"TemporalBinding was built for {self.num_frames} frames per window "
                       f"(2n+1 with n = config.data.num_context), got slots for {f}.")
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (f, d))  # (F, D_slot)
    x = slots + pos[None, :, None, :]  # same temporal encoding for all slots of a frame
    x = jnp.swapaxes(x, 1, 2)  # (B, K, F, D_slot): attention along time only
    mask = frame_mask.astype(bool)[:, None, None, None, :]  # (B, 1, 1, 1, F) keys

    # The layers are applied functionally on params 'layers_i', so that with 'torch' all of
    # them can be initialised from one key: nn.TransformerEncoder deep-copies one layer.
    layer = TemporalEncoderLayer(self.num_heads, self.mlp_ratio, self.dropout,
                                 self.param_init, parent=None)
    shared = (self.make_rng("params")
              if self.is_initializing() and self.param_init == "torch" else None)
    for i in range(self.num_layers):
      def init_layer(key, x=x):
        return layer.init(key if shared is None else shared, x, mask, train=False)["params"]
      params = self.param(f"layers_{i}", init_layer)
      rngs = {"dropout": self.make_rng("dropout")} if train and self.dropout > 0 else {}
      x = layer.apply({"params": params}, x, mask, train=train, rngs=rngs)
    return x[:, :, f // 2]  # (B, K, D_slot)
