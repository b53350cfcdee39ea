"""SOLV (Aydemir et al., NeurIPS 2023), composed in the order of eq. (1):

  m_t = Phi_vis-dec o Phi_st-bind o Phi_vis-enc (V_t)

  Phi_vis-enc  frozen encoder (DINOv2) with token drop (eqs. 2-3)  -> `encoder` (encoders.py)
  Phi_st-bind  spatial binding per frame, then temporal binding (eq. 4) -> `spatial_binding`,
                                                                         `temporal_binding`
  Phi_vis-dec  slot merging, then the broadcast decoder (eqs. 8-11)   -> `merge_slots`, `decoder`
  loss         MSE to the full-token DINOv2 features of the middle frame (eq. 12)

The paper's Table 3 ablations are config switches: spatial_binding_type 'vanilla'/'invariant',
use_temporal_binding on/off (off: the middle frame's slots go straight to merging), use_merge
on/off.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from solv_jax.models.decoder import Decoder
from solv_jax.models import encoders
from solv_jax.models.merging import BACKENDS, merge_slots, sample_merge_mask
from solv_jax.models.spatial_binding import build_spatial_binding
from solv_jax.models.temporal_binding import TemporalBinding


# Keys of config.model that are not fields of SOLV: read by solv_jax/models/build.py.
CONFIG_ONLY = ("encoder_weights",)


class SOLV(nn.Module):
  """video (B, F, H, W, 3), frame_mask (B, F) -> dict (see __call__).

  Params: 'encoder' (the frozen encoder of encoder_variant's entry), 'spatial_binding',
  'temporal_binding' (if used), 'decoder'. RNG streams: 'token_drop' and 'dropout' in
  training, 'merge' when 0 < merge_prob < 1 (or traced).
  """
  resolution: tuple[int, int]  # (H, W) input size, multiples of the encoder's patch size
  num_frames: int = 5  # F = 2n + 1
  encoder_variant: Any = "vitb14"  # an encoders.ENCODERS name (or DINOv2 sizes, for tests)
  encoder_dtype: Any = "float32"
  compute_dtype: Any = "float32"  # float32 | bfloat16: the trainable per-token layers
  encoder_blocks: int = 0  # 0 = all DINOv2 blocks; L > 0 = features of block L
  num_slots: int = 8
  slot_dim: int = 128
  slot_iters: int = 3
  token_drop: float = 0.5
  spatial_binding_type: str = "invariant"  # or 'vanilla'
  use_temporal_binding: bool = True
  use_merge: bool = True
  merge_threshold: float = 0.12
  merge_backend: str = "device"
  clamp_scales: bool = False
  delta: float = 5.0
  decoder_hidden: int = 1024
  decoder_layers: int = 5
  temporal_layers: int = 3
  temporal_heads: int = 8
  dropout: float = 0.1
  param_init: str = "torch"  # torch (the authors' PyTorch initialisation) | flax

  @classmethod
  def from_config(cls, model_config, resolution, num_frames: int = 5, **overrides) -> "SOLV":
    """Builds SOLV from config.model (solv_jax/schema.py), whose keys are this module's fields
    (but CONFIG_ONLY), plus the data's resolution and F; a missing or unknown key is an
    error."""
    values = {k: v for k, v in model_config.items() if k not in CONFIG_ONLY}
    fields = {f.name for f in dataclasses.fields(cls) if f.init} - {
        "parent", "name", "resolution", "num_frames"}  # the last two from config.data
    unknown, missing = sorted(set(values) - fields), sorted(fields - set(values))
    if unknown or missing:
      wrong = [f"{unknown} are not fields of SOLV"] if unknown else []
      wrong += [f"{missing} are missing"] if missing else []
      raise ValueError(f"config.model does not fit SOLV (solv_jax/models/solv.py): "
                       f"{'; '.join(wrong)}. "
                       f"Start from solv_jax/schema.py's get_config(), or schema.upgrade(saved) "
                       f"for a config saved by an earlier version.")
    return cls(resolution=tuple(int(r) for r in resolution), num_frames=int(num_frames),
               **{**values, **overrides})

  @property
  def encoder_spec(self) -> encoders.Encoder:
    """The encoder's entry in the table: patch size, width, normalisation, params."""
    return encoders.get(self.encoder_variant)

  @property
  def grid_hw(self) -> tuple[int, int]:
    """(h, w) patch tokens of a frame at `resolution`."""
    return self.encoder_spec.grid(self.resolution)

  def normalize(self, video, frame_mask=None):
    """uint8 frames (..., H, W, 3) -> the encoder's input (float frames pass as they are);
    frames where frame_mask is False become zeros. Needs no params: call it on the model."""
    return self.encoder_spec.normalize(video, frame_mask)

  def setup(self):
    if self.num_frames % 2 != 1:
      raise ValueError(f"A window has 2n+1 frames, got num_frames={self.num_frames}.")
    if self.merge_backend not in BACKENDS:
      raise ValueError(f"config.model.merge_backend must be one of {BACKENDS}, "
                       f"got {self.merge_backend!r}.")
    if self.decoder_layers < 2:
      raise ValueError(f"config.model.decoder_layers counts all Dense layers of the decoder "
                       f"(5 in the paper) and must be >= 2, got {self.decoder_layers}.")
    gh, gw = self.grid_hw
    spec = self.encoder_spec
    if self.token_drop > 0 and not spec.token_drop:
      raise ValueError(f"The encoder {spec.name} cannot drop tokens; set "
                       "config.model.token_drop=0.")
    self.encoder = spec.module(dtype=jnp.dtype(self.encoder_dtype),
                               num_blocks=self.encoder_blocks)
    self.spatial_binding = build_spatial_binding(
        self.spatial_binding_type, num_slots=self.num_slots, grid_hw=(gh, gw),
        slot_dim=self.slot_dim, iters=self.slot_iters, delta=self.delta,
        clamp_scales=self.clamp_scales, dropout=self.dropout,
        dtype=jnp.dtype(self.compute_dtype), param_init=self.param_init)
    if self.use_temporal_binding:
      self.temporal_binding = TemporalBinding(self.num_frames, self.temporal_layers,
                                              self.temporal_heads, 4, self.dropout,
                                              self.param_init)
    self.decoder = Decoder(gh * gw, hidden=self.decoder_hidden,
                           num_layers=self.decoder_layers, delta=self.delta,
                           clamp_scales=self.clamp_scales,
                           relative_grid=self.spatial_binding_type == "invariant",
                           feature_dim=spec.width,
                           dtype=jnp.dtype(self.compute_dtype), param_init=self.param_init)

  # --------------------------------------------------------------------------------------------
  # Phi_vis-enc
  # --------------------------------------------------------------------------------------------
  def encode(self, frames):
    """frames (..., H, W, 3) normalised -> full-token encoder features (..., N, D), no
    gradient."""
    lead = frames.shape[:-3]
    feats, _ = self.encoder(frames.reshape(-1, *frames.shape[-3:]))  # (B', N, D)
    return jax.lax.stop_gradient(feats).reshape(*lead, *feats.shape[1:])

  # --------------------------------------------------------------------------------------------
  # psi_s-bind, once per frame
  # --------------------------------------------------------------------------------------------
  def bind_spatial(self, features, keep_idx=None, *, train: bool = False):
    """features (..., N', D), keep_idx (..., N') patch indices (None: all N tokens kept).

    Returns slots (..., K, D_slot) and attn (..., K, N'), token-normalised.
    """
    lead, (n_kept, d) = features.shape[:-2], features.shape[-2:]
    x = features.reshape(-1, n_kept, d)  # (B', N', D)
    if keep_idx is None:
      if n_kept != self.grid_hw[0] * self.grid_hw[1]:
        raise ValueError(f"bind_spatial got {n_kept} tokens per frame without keep_idx; pass "
                         f"the kept patch indices or all {self.grid_hw[0] * self.grid_hw[1]}.")
      idx = jnp.broadcast_to(jnp.arange(n_kept, dtype=jnp.int32), x.shape[:2])
    else:
      idx = keep_idx.reshape(-1, n_kept)
    slots, attn = self.spatial_binding(x, idx, train=train)  # (B', K, D_slot), (B', K, N')
    return slots.reshape(*lead, *slots.shape[1:]), attn.reshape(*lead, *attn.shape[1:])

  # --------------------------------------------------------------------------------------------
  # psi_t-bind, psi_merge, psi_dec for one window
  # --------------------------------------------------------------------------------------------
  def _merge_enabled(self, batch: int, merge_prob):
    """(B,) bool per-sample merge decision, or None (all merge), or False (none)."""
    if isinstance(merge_prob, numbers.Real):  # a static number (not traced)
      if merge_prob >= 1.0:
        return None
      if merge_prob <= 0.0:
        return False
    return sample_merge_mask(self.make_rng("merge"), batch, merge_prob)

  def decode_window(self, slots, attn, frame_mask, keep_idx=None, *, train: bool = False,
                    merge_prob=1.0):
    """slots (B, F, K, D_slot) and attn (B, F, K, N') of a window's frames from
    `bind_spatial`, frame_mask (B, F) bool, keep_idx (B, F, N') (None: all tokens).

    Returns dict: 'recon' (B, N, D), 'masks' (B, K, N), 'valid' (B, K) bool, 'slots'
    (B, K, D_slot) merged slots of the middle frame, 'attn' (B, K, N') their attention.
    """
    b, f = slots.shape[:2]
    mid = f // 2
    if self.use_temporal_binding:
      c = self.temporal_binding(slots, frame_mask, train=train)  # eq. (7): (B, K, D_slot)
    else:
      c = slots[:, mid]
    w = attn[:, mid]  # (B, K, N') the middle frame's attention
    valid = jnp.ones(c.shape[:2], bool)
    if self.use_merge:
      enabled = self._merge_enabled(b, merge_prob)
      if enabled is not False:
        c, w, valid = merge_slots(c, w, threshold=self.merge_threshold,
                                  backend=self.merge_backend, enabled=enabled)  # eq. (9)
    mid_idx = None if keep_idx is None else keep_idx[:, mid]  # (B, N')
    grid_abs = (self.spatial_binding.grid_abs if self.spatial_binding_type == "invariant"
                else None)
    recon, masks = self.decoder(c, w, valid, mid_idx, grid_abs)  # eqs. (10)-(11)
    return {"recon": recon, "masks": masks, "valid": valid, "slots": c, "attn": w}

  # --------------------------------------------------------------------------------------------
  # Training forward, eq. (1) and the loss, eq. (12)
  # --------------------------------------------------------------------------------------------
  def __call__(self, video, frame_mask, *, train: bool, merge_prob=1.0):
    """video (B, F, H, W, 3) normalised (`normalize`), frame_mask (B, F) bool.

    Token drop (config token_drop, per frame, 'token_drop' RNG) applies when train=True.
    Returns dict: 'loss' scalar MSE over B x N x D, 'recon' (B, N, D), 'target' (B, N, D),
    'masks' (B, K, N), 'valid' (B, K), 'slots' (B, K, D_slot), 'attn' (B, K, N').
    """
    b, f = video.shape[:2]
    if f != self.num_frames:
      raise ValueError(f"SOLV was built for windows of {self.num_frames} frames, "
                       f"got video of shape {video.shape}.")
    feats, keep_idx = self.encode_dropped(video, self.token_drop if train else 0.0)
    target = self.encode(video[:, f // 2])  # full tokens of the middle frame: (B, N, D)
    return self.loss_from_features(feats, keep_idx, target, frame_mask, train=train,
                                   merge_prob=merge_prob)

  def encode_dropped(self, frames, drop_ratio: float):
    """frames (..., H, W, 3) -> (features (..., N', D), keep_idx (..., N')) with token drop at
    drop_ratio ('token_drop' RNG), no gradient."""
    lead = frames.shape[:-3]
    feats, keep_idx = self.encoder(frames.reshape(-1, *frames.shape[-3:]),
                                   drop_ratio=drop_ratio)  # (B', N', D), (B', N')
    feats = jax.lax.stop_gradient(feats)
    return (feats.reshape(*lead, *feats.shape[1:]),
            keep_idx.reshape(*lead, keep_idx.shape[-1]))

  def loss_from_features(self, feats, keep_idx, target, frame_mask, *, train: bool,
                         merge_prob=1.0):
    """The trainable part of eq. (1) and the loss, eq. (12), on the encoder's outputs:
    feats (B, F, N', D), keep_idx (B, F, N'), target (B, N, D) the middle frame's full-token
    features, frame_mask (B, F). Returns what __call__ returns."""
    slots, attn = self.bind_spatial(feats, keep_idx, train=train)
    out = self.decode_window(slots, attn, frame_mask, keep_idx, train=train,
                             merge_prob=merge_prob)
    out["target"] = target
    out["loss"] = jnp.mean(jnp.square(out["recon"] - target))
    return out

