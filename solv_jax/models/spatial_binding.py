"""Spatial binding psi_s-bind (paper §3.2.2, App. C; SPEC §2): slot attention per frame.

`InvariantSlotAttention` is Biza et al.'s invariant slot attention (ISA) with SOLV's shared
learned initialisation: the slots z, their positions S_p and scales S_s and the absolute grid
G_abs are parameters, the same for every frame; nothing is sampled. `SlotAttention` is the
vanilla slot attention of Locatello et al. (no grids) with the same shared learned slots, for
the ablations of paper Table 3 (models A-C).

Both take the kept tokens of one frame, (B, N', D), with their patch indices keep_idx (B, N')
(row-major over the (h, w) patch grid), and return the slots (B, K, D_slot) and the attention
W of the last pass (B, K, N'), normalised over tokens.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

EPSILON = 1e-8
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, as in the authors' release
MIN_SCALE, MAX_SCALE = 0.001, 2.0  # Biza et al.'s ISA clip range (config `clamp_scales`)


# ----------------------------------------------------------------------------------------------
# The grid algebra of eqs. (14)-(15), shared with the decoder.
# ----------------------------------------------------------------------------------------------
def grid_abs_init(grid_hw: Sequence[int]) -> jax.Array:
  """The [-1, 1] coordinate grid, (h*w, 2) as (x, y), row-major over (h, w)."""
  h, w = grid_hw
  ys, xs = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
  return jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)  # (N, 2)


def slot_pos_scale(attn: jax.Array, grid: jax.Array,
                   valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Eq. (15) with a token-normalised attention W: S_p = sum W G, S_s = sqrt(sum W (G-S_p)^2).

  attn: (..., K, N') with rows summing to 1; grid: (..., N', 2), the positions of those tokens.
  valid: optional (..., K) bool; rows where False (no attention) get S_p = 0, S_s = 1, with a
  gradient free of 0 / 0. Returns slot_pos, slot_scale, both (..., K, 2).
  """
  slot_pos = jnp.einsum("...kn,...nc->...kc", attn, grid)  # (..., K, 2)
  diff = grid[..., None, :, :] - slot_pos[..., :, None, :]  # (..., K, N', 2)
  var = jnp.einsum("...kn,...knc->...kc", attn, diff * diff)  # (..., K, 2)
  if valid is not None:
    slot_pos = jnp.where(valid[..., None], slot_pos, 0.0)
    var = jnp.where(valid[..., None], var, 1.0)
  return slot_pos, jnp.sqrt(var)


def relative_grid(grid: jax.Array, slot_pos: jax.Array, slot_scale: jax.Array, delta: float,
                  clamp_scales: bool = False) -> jax.Array:
  """Eq. (14) with SOLV's delta: G_rel = (G - S_p) / (delta * S_s).

  grid: (..., N, 2); slot_pos, slot_scale: (..., K, 2). Returns (..., K, N, 2).
  clamp_scales clips S_s to [0.001, 2] first (Biza et al.); the authors do not clip.
  """
  if clamp_scales:
    slot_scale = jnp.clip(slot_scale, MIN_SCALE, MAX_SCALE)
  return (grid[..., None, :, :] - slot_pos[..., :, None, :]) / (
      delta * slot_scale[..., :, None, :])


def dot(spec: str, a: jax.Array, b: jax.Array, dtype: Any = None) -> jax.Array:
  """jnp.einsum in float32, or with both operands in `dtype` (e.g. bfloat16) and a float32
  result: the mixed-precision products of `config.model.compute_dtype`."""
  if dtype is None or jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(spec, a, b)
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------------------------
# Building blocks.
# ----------------------------------------------------------------------------------------------
def slots_init(key, shape, dtype=jnp.float32):
  """Xavier uniform as torch computes it on the authors' (1, K, D_slot) slot tensor.

  torch treats dim 1 (K) as the input maps and the trailing dim as the receptive field, so
  fan_in = K * D_slot, fan_out = D_slot and the bound is sqrt(6 / ((K + 1) * D_slot)).
  """
  num_slots, dim = shape
  bound = math.sqrt(6.0 / ((num_slots + 1) * dim))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class GRUCell(nn.Module):
  """torch.nn.GRUCell: like flax's GRUCell but with a bias on every input AND hidden gate.

  Flax's cell omits the hidden biases of the r and z gates (they are redundant with the input
  biases); the authors' torch cell has them, which is part of their 5,799,521-parameter count.
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr);  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = (1 - z) * n + z * h
  """
  features: int

  @nn.compact
  def __call__(self, carry, inputs):  # (..., D), (..., D_in) -> (..., D)
    dense_i = lambda name: nn.Dense(self.features, name=name)
    dense_h = lambda name: nn.Dense(self.features, name=name,
                                    kernel_init=nn.initializers.orthogonal())
    h = carry
    r = nn.sigmoid(dense_i("ir")(inputs) + dense_h("hr")(h))
    z = nn.sigmoid(dense_i("iz")(inputs) + dense_h("hz")(h))
    n = jnp.tanh(dense_i("in")(inputs) + r * dense_h("hn")(h))
    return (1.0 - z) * n + z * h


class ResidualMLP(nn.Module):
  """z + MLP(LayerNorm(z)), hidden 4 * D_slot, ReLU, dropout after the hidden layer (eq. 17)."""
  hidden: int
  dropout: float = 0.1

  @nn.compact
  def __call__(self, z, *, train: bool):
    y = nn.LayerNorm(epsilon=LN_EPS, name="norm")(z)
    y = nn.relu(nn.Dense(self.hidden, name="fc1")(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return z + nn.Dense(z.shape[-1], name="fc2")(y)


class InputProjection(nn.Module):
  """LayerNorm(D) -> Dense(D) -> ReLU -> Dense(D_slot) -> LayerNorm(D_slot) (App. B.2).

  dtype: the Dense layers' compute dtype; the norms compute in and return float32.
  """
  slot_dim: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x):  # (B, N', D) -> (B, N', D_slot)
    d = x.shape[-1]
    x = nn.LayerNorm(epsilon=LN_EPS, name="norm_in")(x)
    x = nn.relu(nn.Dense(d, dtype=self.dtype, name="fc1")(x))
    x = nn.Dense(self.slot_dim, dtype=self.dtype, name="fc2")(x)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="norm_out")(x)


# ----------------------------------------------------------------------------------------------
# Slot attention modules.
# ----------------------------------------------------------------------------------------------
class InvariantSlotAttention(nn.Module):
  """ISA with shared learned initialisation (eqs. 13-17); `iters` updates, iters + 1 passes.

  dtype (None = float32): compute dtype of the per-token layers (input projection, k, v, g,
  f) and of the two attention products, which accumulate in float32. The slots, their GRU
  and MLP, the softmax, W and the grid algebra stay float32.
  """
  num_slots: int
  grid_hw: tuple[int, int]  # (h, w) patch grid of a full frame, N = h * w
  slot_dim: int = 128
  iters: int = 3
  delta: float = 5.0
  clamp_scales: bool = False
  dropout: float = 0.1
  epsilon: float = EPSILON
  dtype: Any = None

  def setup(self):
    k, d = self.num_slots, self.slot_dim
    n = self.grid_hw[0] * self.grid_hw[1]
    # Eq. (5): the shared, learned initial state of every frame.
    self.slots = self.param("slots", slots_init, (k, d))  # z: (K, D_slot)
    self.slot_pos = self.param("slot_pos", nn.initializers.normal(0.02), (k, 2))  # S_p
    self.slot_scale = self.param("slot_scale", nn.initializers.normal(0.02), (k, 2))  # S_s
    self.grid_abs = self.param(  # G_abs: (N, 2), learned
        "grid_abs", lambda key, shape: grid_abs_init(self.grid_hw).reshape(shape), (n, 2))
    self.project_inputs = InputProjection(d, self.dtype)
    self.norm_slots = nn.LayerNorm(epsilon=LN_EPS)
    self.to_q = nn.Dense(d, use_bias=False)  # q
    self.to_k = nn.Dense(d, use_bias=False, dtype=self.dtype)  # k
    self.to_v = nn.Dense(d, use_bias=False, dtype=self.dtype)  # v
    self.grid_proj = nn.Dense(d, dtype=self.dtype)  # g: 2 -> D_slot
    # f (p in eq. 13), shared by keys and values
    self.kv_mlp = [nn.Dense(d, dtype=self.dtype), nn.Dense(d, dtype=self.dtype)]
    self.gru = GRUCell(d)
    self.mlp = ResidualMLP(4 * d, self.dropout)
    self.to_out = nn.Dense(d)

  def _f(self, x):
    return self.kv_mlp[1](nn.relu(self.kv_mlp[0](x)))

  def __call__(self, inputs, keep_idx, *, train: bool = False):
    """inputs (B, N', D) kept-token features; keep_idx (B, N') their patch indices.

    Returns slots (B, K, D_slot) and attn (B, K, N'), the token-normalised W of the last pass.
    """
    b = inputs.shape[0]
    k, d = self.num_slots, self.slot_dim
    x = self.project_inputs(inputs)  # (B, N', D_slot)
    grid = self.grid_abs[keep_idx]  # G_abs,tau: (B, N', 2)
    kx, vx = self.to_k(x)[:, None], self.to_v(x)[:, None]  # (B, 1, N', D_slot)

    z = jnp.broadcast_to(self.slots, (b, k, d))  # (B, K, D_slot)
    slot_pos = jnp.broadcast_to(self.slot_pos, (b, k, 2))  # (B, K, 2)
    slot_scale = jnp.broadcast_to(self.slot_scale, (b, k, 2))  # (B, K, 2)
    for t in range(self.iters + 1):
      z_prev = z
      z = self.norm_slots(z)
      g = self.grid_proj(relative_grid(grid, slot_pos, slot_scale, self.delta,
                                       self.clamp_scales))  # eq. (14): (B, K, N', D_slot)
      keys = self._f(kx + g)  # (B, K, N', D_slot)
      values = self._f(vx + g)  # (B, K, N', D_slot)
      q = self.to_q(z)  # (B, K, D_slot)
      logits = dot("bkd,bknd->bkn", q, keys, self.dtype) / math.sqrt(d)  # eq. (13): (B, K, N')
      attn = jax.nn.softmax(logits, axis=1) + self.epsilon  # softmax over slots
      attn = attn / jnp.sum(attn, axis=-1, keepdims=True)  # W, eq. (16)
      updates = dot("bkn,bknd->bkd", attn, values, self.dtype)  # U, eq. (16): (B, K, D_slot)
      slot_pos, slot_scale = slot_pos_scale(attn, grid)  # eq. (15)
      self.sow("intermediates", "slot_pos", slot_pos)  # one entry per pass
      self.sow("intermediates", "slot_scale", slot_scale)
      if t < self.iters:  # eq. (17)
        z = self.gru(z_prev, updates)
        z = self.mlp(z, train=train)
    return self.to_out(z), attn


class SlotAttention(nn.Module):
  """Vanilla slot attention (Locatello et al., no grids) with shared learned initial slots.

  Same input projection, update and output layers and the same loop (iters + 1 passes,
  iters updates, output from the normed slots of the last pass) as the invariant version,
  so the ablation changes only the binding: k = K(x), v = V(x).
  """
  num_slots: int
  slot_dim: int = 128
  iters: int = 3
  dropout: float = 0.1
  epsilon: float = EPSILON
  dtype: Any = None  # as in InvariantSlotAttention: input projection, k, v, the products

  @nn.compact
  def __call__(self, inputs, keep_idx=None, *, train: bool = False):
    """inputs (B, N', D); keep_idx is accepted and ignored (no grids)."""
    del keep_idx
    b = inputs.shape[0]
    k, d = self.num_slots, self.slot_dim
    x = InputProjection(d, self.dtype, name="project_inputs")(inputs)  # (B, N', D_slot)
    keys = nn.Dense(d, use_bias=False, dtype=self.dtype, name="to_k")(x)  # (B, N', D_slot)
    values = nn.Dense(d, use_bias=False, dtype=self.dtype, name="to_v")(x)  # (B, N', D_slot)
    norm_slots = nn.LayerNorm(epsilon=LN_EPS, name="norm_slots")
    to_q = nn.Dense(d, use_bias=False, name="to_q")
    gru, mlp = GRUCell(d, name="gru"), ResidualMLP(4 * d, self.dropout, name="mlp")

    z = jnp.broadcast_to(self.param("slots", slots_init, (k, d)), (b, k, d))  # (B, K, D_slot)
    for t in range(self.iters + 1):
      z_prev = z
      z = norm_slots(z)
      logits = dot("bkd,bnd->bkn", to_q(z), keys, self.dtype) / math.sqrt(d)  # (B, K, N')
      attn = jax.nn.softmax(logits, axis=1) + self.epsilon
      attn = attn / jnp.sum(attn, axis=-1, keepdims=True)
      updates = dot("bkn,bnd->bkd", attn, values, self.dtype)  # (B, K, D_slot)
      if t < self.iters:
        z = mlp(gru(z_prev, updates), train=train)
    return nn.Dense(d, name="to_out")(z), attn


def build_spatial_binding(kind: str, *, num_slots: int, grid_hw: tuple[int, int],
                          slot_dim: int = 128, iters: int = 3, delta: float = 5.0,
                          clamp_scales: bool = False, dropout: float = 0.1,
                          dtype: Any = None, name: str | None = None) -> nn.Module:
  """'invariant' (SOLV, ISA) or 'vanilla' (Locatello et al.) spatial binding."""
  if kind == "invariant":
    return InvariantSlotAttention(num_slots, tuple(grid_hw), slot_dim, iters, delta,
                                  clamp_scales, dropout, dtype=dtype, name=name)
  if kind == "vanilla":
    return SlotAttention(num_slots, slot_dim, iters, dropout, dtype=dtype, name=name)
  raise ValueError(f"config.model.spatial_binding must be 'invariant' or 'vanilla', got {kind!r}.")
