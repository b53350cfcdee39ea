"""Spatial binding psi_s-bind (paper §3.2.2, App. C; docs/METHOD.md §2): slot attention per frame.

`InvariantSlotAttention` is Biza et al.'s invariant slot attention (ISA) with SOLV's shared
learned initialisation: the slots z, their positions S_p and scales S_s and the absolute grid
G_abs are parameters, the same for every frame; nothing is sampled. `SlotAttention` is the
vanilla slot attention of Locatello et al. (no grids) with the same shared learned slots, for
the ablations of paper Table 3 (models A-C).

Both take the kept tokens of one frame, (B, N', D), with their patch indices keep_idx (B, N')
(row-major over the (h, w) patch grid), and return the slots (B, K, D_slot) and the attention
W of the last pass (B, K, N'), normalised over tokens.

`param_init` chooses how the layers start (docs/METHOD.md §6): 'torch' (default) as the authors'
PyTorch modules initialise themselves, 'flax' with Flax's defaults. `dense` and `uniform` here
are shared with the temporal binding and the decoder.
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
PARAM_INITS = ("torch", "flax")  # config.model.param_init


# ----------------------------------------------------------------------------------------------
# Initialisation (docs/METHOD.md §6): torch's defaults, the authors' starting point, or Flax's.
# ----------------------------------------------------------------------------------------------
def check_param_init(param_init: str) -> None:
  if param_init not in PARAM_INITS:
    raise ValueError(f"config.model.param_init must be one of {PARAM_INITS} ('torch': the "
                     f"authors' PyTorch initialisation; 'flax': Flax's defaults), got "
                     f"{param_init!r}.")


def uniform(bound: float):
  """U(-bound, bound), whatever the shape."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def dense(features: int, fan_in: int, param_init: str = "torch", **kwargs) -> nn.Dense:
  """nn.Dense(features) on inputs of width fan_in. 'torch': as torch.nn.Linear(fan_in,
  features) starts, kernel and bias both U(-1/sqrt(fan_in), 1/sqrt(fan_in)); 'flax': Flax's
  lecun-normal kernel and zero bias."""
  check_param_init(param_init)
  if param_init == "torch":
    kwargs = dict(kernel_init=uniform(1.0 / math.sqrt(fan_in)),
                  bias_init=uniform(1.0 / math.sqrt(fan_in)), **kwargs)
  return nn.Dense(features, **kwargs)


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
  param_init 'torch': every weight and bias U(-1/sqrt(D), 1/sqrt(D)), as torch.nn.GRUCell(D_in, D)
  starts; 'flax': lecun-normal input and orthogonal hidden kernels, zero biases.
  """
  features: int
  param_init: str = "torch"

  @nn.compact
  def __call__(self, carry, inputs):  # (..., D), (..., D_in) -> (..., D)
    check_param_init(self.param_init)
    if self.param_init == "torch":
      u = uniform(1.0 / math.sqrt(self.features))  # torch: bound from the hidden size
      dense_i = dense_h = lambda name: nn.Dense(self.features, kernel_init=u, bias_init=u,
                                                name=name)
    else:
      dense_i = lambda name: nn.Dense(self.features, name=name)
      dense_h = lambda name: nn.Dense(self.features, name=name,
                                      kernel_init=nn.initializers.orthogonal())
    h = carry
    r = nn.sigmoid(dense_i("ir")(inputs) + dense_h("hr")(h))
    z = nn.sigmoid(dense_i("iz")(inputs) + dense_h("hz")(h))
    n = jnp.tanh(dense_i("in")(inputs) + r * dense_h("hn")(h))
    return (1.0 - z) * n + z * h


class ResidualMLP(nn.Module):
  """z + Dropout(MLP(LayerNorm(z))), hidden 4 * D_slot, ReLU (eq. 17). The dropout is on the
  MLP's output, before the residual add, as in the authors' models/model.py."""
  hidden: int
  dropout: float = 0.1
  param_init: str = "torch"

  @nn.compact
  def __call__(self, z, *, train: bool):
    d = z.shape[-1]
    y = nn.LayerNorm(epsilon=LN_EPS, name="norm")(z)
    y = nn.relu(dense(self.hidden, d, self.param_init, name="fc1")(y))
    y = dense(d, self.hidden, self.param_init, name="fc2")(y)
    return z + nn.Dropout(self.dropout, deterministic=not train)(y)


class InputProjection(nn.Module):
  """LayerNorm(D) -> Dense(D) -> ReLU -> Dense(D_slot) -> LayerNorm(D_slot) (App. B.2).

  dtype: the Dense layers' compute dtype; the norms compute in and return float32.
  """
  slot_dim: int
  dtype: Any = None
  param_init: str = "torch"

  @nn.compact
  def __call__(self, x):  # (B, N', D) -> (B, N', D_slot)
    d = x.shape[-1]
    x = nn.LayerNorm(epsilon=LN_EPS, name="norm_in")(x)
    x = nn.relu(dense(d, d, self.param_init, dtype=self.dtype, name="fc1")(x))
    x = dense(self.slot_dim, d, self.param_init, dtype=self.dtype, name="fc2")(x)
    return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="norm_out")(x)


# ----------------------------------------------------------------------------------------------
# Slot attention modules.
# ----------------------------------------------------------------------------------------------
class InvariantSlotAttention(nn.Module):
  """ISA with shared learned initialisation (eqs. 13-17); `iters` updates, iters + 1 passes.

  dtype (None = float32): compute dtype of the per-token layers (input projection, k, v, g,
  f) and of the two attention products, which accumulate in float32. The slots, their GRU
  and MLP, the softmax, W and the grid algebra stay float32.
  param_init: 'torch' (the authors') or 'flax' (module docstring). The slots (xavier-uniform on
  the authors' (1, K, D_slot) tensor), S_p, S_s (N(0, 0.02)) and G_abs start the same in both.
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
  param_init: str = "torch"

  def setup(self):
    k, d = self.num_slots, self.slot_dim
    init = self.param_init
    n = self.grid_hw[0] * self.grid_hw[1]
    # Eq. (5): the shared, learned initial state of every frame.
    self.slots = self.param("slots", slots_init, (k, d))  # z: (K, D_slot)
    self.slot_pos = self.param("slot_pos", nn.initializers.normal(0.02), (k, 2))  # S_p
    self.slot_scale = self.param("slot_scale", nn.initializers.normal(0.02), (k, 2))  # S_s
    self.grid_abs = self.param(  # G_abs: (N, 2), learned
        "grid_abs", lambda key, shape: grid_abs_init(self.grid_hw).reshape(shape), (n, 2))
    self.project_inputs = InputProjection(d, self.dtype, init)
    self.norm_slots = nn.LayerNorm(epsilon=LN_EPS)
    self.to_q = dense(d, d, init, use_bias=False)  # q
    self.to_k = dense(d, d, init, use_bias=False, dtype=self.dtype)  # k
    self.to_v = dense(d, d, init, use_bias=False, dtype=self.dtype)  # v
    self.grid_proj = dense(d, 2, init, dtype=self.dtype)  # g: 2 -> D_slot
    # f (p in eq. 13), shared by keys and values
    self.kv_mlp = [dense(d, d, init, dtype=self.dtype), dense(d, d, init, dtype=self.dtype)]
    self.gru = GRUCell(d, init)
    self.mlp = ResidualMLP(4 * d, self.dropout, init)
    self.to_out = dense(d, d, init)

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
  param_init: str = "torch"

  @nn.compact
  def __call__(self, inputs, keep_idx=None, *, train: bool = False):
    """inputs (B, N', D); keep_idx is accepted and ignored (no grids)."""
    del keep_idx
    b = inputs.shape[0]
    k, d = self.num_slots, self.slot_dim
    init = self.param_init
    x = InputProjection(d, self.dtype, init, name="project_inputs")(inputs)  # (B, N', D_slot)
    keys = dense(d, d, init, use_bias=False, dtype=self.dtype, name="to_k")(x)  # (B, N', D_slot)
    values = dense(d, d, init, use_bias=False, dtype=self.dtype,
                   name="to_v")(x)  # (B, N', D_slot)
    norm_slots = nn.LayerNorm(epsilon=LN_EPS, name="norm_slots")
    to_q = dense(d, d, init, use_bias=False, name="to_q")
    gru = GRUCell(d, init, name="gru")
    mlp = ResidualMLP(4 * d, self.dropout, init, name="mlp")

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
    return dense(d, d, init, name="to_out")(z), attn


def build_spatial_binding(kind: str, *, num_slots: int, grid_hw: tuple[int, int],
                          slot_dim: int = 128, iters: int = 3, delta: float = 5.0,
                          clamp_scales: bool = False, dropout: float = 0.1,
                          dtype: Any = None, param_init: str = "torch",
                          name: str | None = None) -> nn.Module:
  """'invariant' (SOLV, ISA) or 'vanilla' (Locatello et al.) spatial binding."""
  check_param_init(param_init)
  if kind == "invariant":
    return InvariantSlotAttention(num_slots, tuple(grid_hw), slot_dim, iters, delta,
                                  clamp_scales, dropout, dtype=dtype, param_init=param_init,
                                  name=name)
  if kind == "vanilla":
    return SlotAttention(num_slots, slot_dim, iters, dropout, dtype=dtype,
                         param_init=param_init, name=name)
  raise ValueError(f"config.model.spatial_binding_type must be 'invariant' or 'vanilla', got "
                   f"{kind!r}.")
