"""DINOv2 ViT (Oquab et al., 2023) in Flax: the frozen visual encoder of SOLV (docs/METHOD.md §1).

Layout and names follow facebookresearch/dinov2 (`patch_embed`, `blocks_i/{norm1, attn, ls1,
norm2, mlp, ls2}`, `norm`), so a reader can hold the official code beside this one.
SOLV adds token drop (paper §3.1): after the position embedding, each image keeps a random,
sorted subset of its patch tokens, and the blocks only see those.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from solv_jax.models import weights_file
from solv_jax.models.token_drop import num_kept_tokens, sample_keep_idx  # noqa: F401

PATCH_SIZE = 14
PRETRAIN_GRID = 37  # the official checkpoints were trained at 518 px = 37 patches
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BASE = {
    "vits14": dict(embed_dim=384, depth=12, num_heads=6, ffn="mlp"),
    "vitb14": dict(embed_dim=768, depth=12, num_heads=12, ffn="mlp"),
    "vitl14": dict(embed_dim=1024, depth=24, num_heads=16, ffn="mlp"),
    "vitg14": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
}
VARIANTS = {
    **{name: dict(cfg, num_registers=0) for name, cfg in _BASE.items()},
    **{f"{name}_reg": dict(cfg, num_registers=4) for name, cfg in _BASE.items()},
}
# Conversion hint used by every "weights missing" error.
CONVERT_HINT = (
    "Download the official `dinov2_{variant}_pretrain.pth` (github.com/facebookresearch/dinov2) "
    "or a HuggingFace `facebook/dinov2-*` model.safetensors, then run\n"
    "  python tools/convert_dinov2.py --src FILE --variant {variant} --out dinov2_{variant}.npz")


def hint(variant: str) -> str:
  """How to obtain and convert a variant's weights."""
  return CONVERT_HINT.format(variant=variant)


def variant_config(variant: str) -> dict:
  """Sizes of a variant name, e.g. 'vitb14' or 'vits14_reg'; a dict passes through."""
  if isinstance(variant, Mapping):
    return dict(variant)
  if variant not in VARIANTS:
    raise ValueError(f"Unknown DINOv2 variant {variant!r}; expected one of {sorted(VARIANTS)}.")
  return dict(VARIANTS[variant])


# ----------------------------------------------------------------------------------------------
# Position-embedding interpolation, exactly as torch's F.interpolate(mode="bicubic",
# align_corners=False) that the official code calls. Built as separable (out, in) matrices.
# ----------------------------------------------------------------------------------------------
def _cubic_keys(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                  np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def bicubic_matrix(in_size: int, out_size: int, scale_factor: float | None = None,
                   antialias: bool = False) -> np.ndarray:
  """(out_size, in_size) weights of torch's 1-D bicubic resize (align_corners=False).

  Without antialias: Keys a = -0.75, source index (dst + 0.5)/scale - 0.5 where `scale` is the
  given scale_factor (torch uses it directly when passed) or out/in, border taps clamped.
  With antialias: torch's separable AA filter (Keys a = -0.5, support widened by the
  downscale factor, weights normalised, taps truncated at the borders).
  """
  w = np.zeros((out_size, in_size), np.float64)
  inv_scale = (1.0 / scale_factor) if scale_factor else in_size / out_size
  if not antialias:
    for i in range(out_size):
      src = (i + 0.5) * inv_scale - 0.5
      x0 = math.floor(src)
      t = src - x0
      for tap, dist in zip(range(x0 - 1, x0 + 3), (t + 1, t, 1 - t, 2 - t)):
        w[i, min(max(tap, 0), in_size - 1)] += _cubic_keys(np.float64(dist), -0.75)
    return w
  support = 2.0 * inv_scale if inv_scale >= 1.0 else 2.0
  filt_scale = 1.0 / inv_scale if inv_scale >= 1.0 else 1.0
  for i in range(out_size):
    center = inv_scale * (i + 0.5)
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size)
    taps = np.arange(xmin, xmax)
    ws = _cubic_keys((taps - center + 0.5) * filt_scale, -0.5)
    total = ws.sum()
    w[i, xmin:xmax] = ws / total if total != 0 else ws
  return w


def interpolate_pos_embed(pos_embed: jax.Array, grid_hw: tuple[int, int], *,
                          offset: float = 0.1, antialias: bool = False) -> jax.Array:
  """Resizes the (1, 1 + M*M, D) position embedding to a (h, w) patch grid, official style.

  offset > 0: torch scale_factor = ((h + offset)/M, (w + offset)/M) (plain variants);
  offset = 0: resize by output size (the `_reg` variants, with antialias=True).
  Returns (1, 1 + h*w, D); no interpolation when the grid already matches.
  """
  h, w = grid_hw
  num = pos_embed.shape[1] - 1
  m = int(round(math.sqrt(num)))
  if m * m != num:
    raise ValueError(f"pos_embed has {num} patch positions, not a square grid.")
  if (h, w) == (m, m):
    return pos_embed
  sf_h = (h + offset) / m if offset else None
  sf_w = (w + offset) / m if offset else None
  if offset:  # torch: output size = floor(in * scale_factor)
    if (math.floor(m * sf_h), math.floor(m * sf_w)) != (h, w):
      raise ValueError(f"scale factor does not give a ({h}, {w}) grid")
  wh = jnp.asarray(bicubic_matrix(m, h, sf_h, antialias), jnp.float32)  # (h, M)
  ww = jnp.asarray(bicubic_matrix(m, w, sf_w, antialias), jnp.float32)  # (w, M)
  grid = pos_embed[0, 1:].astype(jnp.float32).reshape(m, m, -1)  # (M, M, D)
  grid = jnp.einsum("hi,wj,ijd->hwd", wh, ww, grid, precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([pos_embed[:, :1].astype(jnp.float32),
                          grid.reshape(1, h * w, -1)], axis=1).astype(pos_embed.dtype)


def ffn_hidden(embed_dim: int, ffn: str) -> int:
  """Hidden width of a block's feed-forward: 4D (MLP), round_up(int(4D * 2/3), 8) (SwiGLU)."""
  return 4 * embed_dim if ffn == "mlp" else (int(4 * embed_dim * 2 / 3) + 7) // 8 * 8


# ----------------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------------
_trunc_normal = nn.initializers.truncated_normal(stddev=0.02)


class LayerScale(nn.Module):
  init_value: float = 1e-5

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


def dot_product_attention(q, k, v):
  """softmax(q k^T / sqrt(Dh)) v for q, k, v of shape (B, T, H, Dh).

  In float32 the softmax is normalised after the value product: exp(s - max s) @ v is divided
  by the row sums, a (T, Dh) division instead of a (T, T) one. Matches torch's
  scaled_dot_product_attention to float32 rounding (tests/models/test_dinov2.py). It spares
  XLA:CPU a read and a write of the logits, which do not fit in cache at the recipes' token
  counts: the YTVIS19 train step is 0.3-0.6 s faster on CPU (BENCHMARKS.md). Other dtypes keep
  jax.nn.dot_product_attention, which computes the softmax in float32.
  """
  if q.dtype != jnp.float32:
    return jax.nn.dot_product_attention(q, k, v)
  heads_first = lambda a: jnp.transpose(a, (0, 2, 1, 3))  # (B, H, T, Dh)
  q, k, v = heads_first(q) * (q.shape[-1] ** -0.5), heads_first(k), heads_first(v)
  logits = jnp.einsum("bhtd,bhsd->bhts", q, k)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  out = jnp.einsum("bhts,bhsd->bhtd", weights, v) / weights.sum(-1, keepdims=True)
  return heads_first(out)  # (B, T, H, Dh)


class Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  # (q, k, v) -> out, all (B, T, H, Dh); a variant (e.g. jax.nn.dot_product_attention) is
  # passed down from DINOv2(attention_fn=...), as flax's own attention modules take one.
  attention_fn: Callable = dot_product_attention

  @nn.compact
  def __call__(self, x):  # (B, T, D)
    b, t, d = x.shape
    qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=_trunc_normal, name="qkv")(x)
    # Official layout: [q | k | v] along the output axis, each head-contiguous.
    qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)  # (B, T, 3, H, Dh)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    x = self.attention_fn(q, k, v)  # (B, T, H, Dh)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_trunc_normal, name="proj")(
        x.reshape(b, t, d))


class Mlp(nn.Module):
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = nn.Dense(ffn_hidden(d, "mlp"), dtype=self.dtype, kernel_init=_trunc_normal,
                 name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_trunc_normal, name="fc2")(x)


class SwiGLUFFN(nn.Module):
  """ViT-g's feed-forward: hidden = round_up(int(4D * 2/3), 8), x -> w3(silu(x1) * x2)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    hidden = ffn_hidden(d, "swiglu")
    x1, x2 = jnp.split(
        nn.Dense(2 * hidden, dtype=self.dtype, kernel_init=_trunc_normal, name="w12")(x), 2, -1)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_trunc_normal, name="w3")(nn.silu(x1) * x2)


class Block(nn.Module):
  num_heads: int
  ffn: str = "mlp"
  layerscale_init: float = 1e-5
  dtype: Any = jnp.float32
  attention_fn: Callable = dot_product_attention

  @nn.compact
  def __call__(self, x):  # (B, T, D), pre-norm with LayerScale on both branches
    norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype)
    x = x + LayerScale(self.layerscale_init, name="ls1")(
        Attention(self.num_heads, self.dtype, self.attention_fn, name="attn")(
            norm(name="norm1")(x)))
    ffn = Mlp if self.ffn == "mlp" else SwiGLUFFN
    x = x + LayerScale(self.layerscale_init, name="ls2")(
        ffn(self.dtype, name="mlp")(norm(name="norm2")(x)))
    return x


def _conv_default_init(fan_in):
  # torch.nn.Conv2d's default (kaiming_uniform with a = sqrt(5)) = U(-1/sqrt(fan_in), ...).
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class DINOv2(nn.Module):
  """DINOv2 ViT-*/14. Call on ImageNet-normalised images (B, H, W, 3), H, W multiples of 14.

  Returns (tokens (B, N', D) float32, keep_idx (B, N') int32): the last block's patch tokens
  (CLS and registers removed) without the final LayerNorm unless `normed=True`.
  `num_blocks` > 0 runs only the first num_blocks transformer blocks (intermediate-layer
  features); 0 runs all of them. Params of the skipped blocks may be present and are unused.
  """
  variant: Any = "vitb14"
  dtype: Any = jnp.float32
  layerscale_init: float = 1e-5
  num_blocks: int = 0
  attention_fn: Callable = dot_product_attention  # (q, k, v) -> out, (B, T, H, Dh) each

  @nn.compact
  def __call__(self, images, keep_idx=None, *, drop_ratio: float = 0.0, normed: bool = False):
    cfg = variant_config(self.variant)
    d, num_reg = cfg["embed_dim"], cfg["num_registers"]
    b, hh, ww, c = images.shape
    if hh % PATCH_SIZE or ww % PATCH_SIZE:
      raise ValueError(f"DINOv2 input size {hh}x{ww} is not a multiple of the patch size "
                       f"{PATCH_SIZE}; use e.g. {hh // PATCH_SIZE * PATCH_SIZE}x"
                       f"{ww // PATCH_SIZE * PATCH_SIZE}.")
    h, w = hh // PATCH_SIZE, ww // PATCH_SIZE
    grid = cfg.get("pretrain_grid", PRETRAIN_GRID)

    # Patch embedding: a 14x14 stride-14 conv, written as a matmul over patches.
    kernel = self.param("patch_embed_kernel", _conv_default_init(PATCH_SIZE * PATCH_SIZE * c),
                        (PATCH_SIZE, PATCH_SIZE, c, d))
    bias = self.param("patch_embed_bias", _conv_default_init(PATCH_SIZE * PATCH_SIZE * c), (d,))
    patches = images.astype(self.dtype).reshape(b, h, PATCH_SIZE, w, PATCH_SIZE, c)
    x = jnp.einsum("bhpwqc,pqcd->bhwd", patches, kernel.astype(self.dtype))
    x = (x + bias.astype(self.dtype)).reshape(b, h * w, d)  # (B, N, D)

    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
    pos = self.param("pos_embed", _trunc_normal, (1, 1 + grid * grid, d))
    pos = interpolate_pos_embed(pos, (h, w), offset=0.0 if num_reg else 0.1,
                                antialias=bool(num_reg)).astype(self.dtype)
    cls = (cls.astype(self.dtype) + pos[:, :1]).repeat(b, axis=0)  # (B, 1, D)
    x = x + pos[:, 1:]

    # Token drop (SOLV §3.1): keep a sorted subset of patch tokens per image.
    if keep_idx is None and drop_ratio > 0.0:
      keep_idx = sample_keep_idx(self.make_rng("token_drop"), b, h * w, drop_ratio)
    if keep_idx is None:
      keep_idx = jnp.broadcast_to(jnp.arange(h * w, dtype=jnp.int32), (b, h * w))
    else:
      x = jnp.take_along_axis(x, keep_idx[..., None], axis=1)  # (B, N', D)

    prefix = [cls]
    if num_reg:
      reg = self.param("register_tokens", nn.initializers.normal(1e-6), (1, num_reg, d))
      prefix.append(reg.astype(self.dtype).repeat(b, axis=0))
    x = jnp.concatenate(prefix + [x], axis=1)  # (B, 1 + R + N', D)

    depth = cfg["depth"]
    if not 0 <= self.num_blocks <= depth:
      raise ValueError(f"num_blocks must be in [0, {depth}] for {self.variant}, "
                       f"got {self.num_blocks}.")
    for i in range(self.num_blocks or depth):
      x = Block(cfg["num_heads"], cfg["ffn"], self.layerscale_init, self.dtype,
                self.attention_fn, name=f"blocks_{i}")(x)
    if normed:
      x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    else:  # create the params anyway so every checkpoint has the same tree
      _ = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x[:, :1])
    return x[:, 1 + num_reg:].astype(jnp.float32), keep_idx.astype(jnp.int32)


def init_params(variant: str, rng: jax.Array, image_hw: tuple[int, int] = (28, 28),
                layerscale_init: float = 1e-5) -> dict:
  """Randomly initialised params, official initialisation (LayerScale 1e-5 by default)."""
  model = DINOv2(variant, layerscale_init=layerscale_init)
  x = jnp.zeros((1, *image_hw, 3), jnp.float32)
  return model.init(rng, x)["params"]


def param_shapes(variant: str) -> dict:
  """Flat {'a/b/c': shape} of a variant's params, computed without allocating them."""
  shapes = jax.eval_shape(functools.partial(init_params, variant), jax.random.key(0))
  return {"/".join(k): tuple(v.shape)
          for k, v in traverse_util.flatten_dict(shapes).items()}


# ----------------------------------------------------------------------------------------------
# Foreign checkpoints -> params (numpy only: the converter tool loads the file, maybe via torch).
# ----------------------------------------------------------------------------------------------
_HF_PREFIXES = ("dinov2.", "model.", "backbone.", "module.")


def _official_to_flat(sd: Mapping[str, np.ndarray], depth: int, ffn: str) -> dict:
  """Official dinov2 keys -> our flat '/'-joined names (torch Linear weights transposed)."""
  keys = weights_file.OfficialKeys(sd, dropped=("mask_token",))  # mask_token: unused
  keys.take("patch_embed.proj.weight", "patch_embed_kernel", lambda a: a.transpose(2, 3, 1, 0))
  keys.take("patch_embed.proj.bias", "patch_embed_bias")
  keys.take("cls_token", "cls_token")
  keys.take("pos_embed", "pos_embed")
  if "register_tokens" in sd:
    keys.take("register_tokens", "register_tokens")
  keys.take_blocks(depth, ffn)
  keys.take("norm.weight", "norm/scale")
  keys.take("norm.bias", "norm/bias")
  return keys.finish(depth, ffn)


def _hf_to_official(sd: Mapping[str, np.ndarray]) -> dict:
  """HuggingFace Dinov2Model keys (old `attention.attention.query` or new `q_proj`) -> official."""
  out = {}
  # Tensors that HuggingFace keeps apart and the official layout stacks along the output axis.
  stacked: dict[str, dict[str, np.ndarray]] = {}
  split_names = {  # HF sub-key prefix -> (official key prefix, position in the stack)
      "attention.attention.query.": ("attn.qkv.", 0), "attention.q_proj.": ("attn.qkv.", 0),
      "attention.attention.key.": ("attn.qkv.", 1), "attention.k_proj.": ("attn.qkv.", 1),
      "attention.attention.value.": ("attn.qkv.", 2), "attention.v_proj.": ("attn.qkv.", 2),
      "mlp.gate_proj.": ("mlp.w12.", 0), "mlp.up_proj.": ("mlp.w12.", 1),
  }
  renames = {"attention.output.dense.": "attn.proj.", "attention.o_proj.": "attn.proj.",
             "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
             "mlp.weights_in.": "mlp.w12.", "mlp.weights_out.": "mlp.w3.",
             "mlp.down_proj.": "mlp.w3."}
  embeddings = {"cls_token": "cls_token", "mask_token": "mask_token",
                "position_embeddings": "pos_embed", "register_tokens": "register_tokens",
                "patch_embeddings.projection.weight": "patch_embed.proj.weight",
                "patch_embeddings.projection.bias": "patch_embed.proj.bias"}
  for key, val in sd.items():
    for pre in _HF_PREFIXES:
      if key.startswith(pre):
        key = key[len(pre):]
    if key.startswith("embeddings."):
      rest = key[len("embeddings."):]
      out[embeddings.get(rest, key)] = val
    elif key.startswith("encoder.layer."):
      parts = key.split(".")
      p, rest = f"blocks.{parts[2]}.", ".".join(parts[3:])
      for hf, (official, pos) in split_names.items():
        if rest.startswith(hf):
          stacked.setdefault(p + official + rest[len(hf):], {})[pos] = val
          break
      else:
        for hf, official in renames.items():
          rest = rest.replace(hf, official)
        out[p + rest] = val
    elif key.startswith("layernorm."):
      out["norm." + key[len("layernorm."):]] = val
    else:
      out[key] = val  # reported as unexpected later
  for key, parts in stacked.items():
    n = 3 if ".qkv." in key else 2
    if sorted(parts) != list(range(n)):
      raise KeyError(f"HuggingFace checkpoint lacks part of {key!r} (has parts {sorted(parts)} "
                     f"of {n}).")
    out[key] = np.concatenate([parts[i] for i in range(n)], axis=0)
  return out


def convert_state_dict(state_dict: Mapping[str, np.ndarray], variant: str) -> dict:
  """Official or HuggingFace DINOv2 state dict (numpy arrays) -> nested Flax params.

  Raises KeyError naming a missing/unexpected key and ValueError naming a key and both shapes
  when a tensor's shape does not match the variant.
  """
  cfg = variant_config(variant)
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  is_hf = any(k.split(".", 1)[-1].startswith(("embeddings.", "encoder.layer."))
              or k.startswith(("embeddings.", "encoder.layer.")) for k in sd)
  if is_hf:
    sd = _hf_to_official(sd)
  flat = _official_to_flat(sd, cfg["depth"], cfg["ffn"])
  return weights_file.check_and_unflatten(flat, param_shapes(variant), variant)


def save_params(path: str, params: Mapping, variant: str) -> None:
  """Writes params as a flat .npz ('/'-joined keys) with the variant name."""
  weights_file.save(path, params, variant)


def load_params(path: str, expected_variant: str | None = None) -> tuple[str, dict]:
  """Reads a params file written by tools/convert_dinov2.py -> (variant, params)."""
  return weights_file.load(path, family="DINOv2", expected_variant=expected_variant,
                           default_variant="vitb14", shapes=param_shapes,
                           hint=hint,
                           tool="tools/convert_dinov2.py")
