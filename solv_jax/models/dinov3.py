"""DINOv3 ViT (Siméoni et al., 2025) in Flax: a frozen encoder SOLV can run on instead of
DINOv2 (docs/METHOD.md §1, "DINOv3").

Layout and names follow facebookresearch/dinov3 (`patch_embed`, `cls_token`, `storage_tokens`,
`blocks_i/{norm1, attn/qkv, attn/proj, ls1, norm2, mlp, ls2}`, `norm`), so a reader can hold
the official code beside this one. What differs from DINOv2:

- patch 16, and no learned position embedding: every block rotates the queries and keys of
  the patch tokens (not CLS, not the 4 register tokens) by 2-D RoPE. A patch's angles come
  from its centre, normalised to [-1, 1] per axis ("separate"): y over the grid's height, x
  over its width, frequencies 1 / 100^(4k/Dh);
- the qkv bias is masked to zero on the keys (official `mask_k_bias`), LayerNorm eps 1e-5;
- ViT-S+/16 and ViT-H+/16 use a SwiGLU feed-forward.

Token drop (paper §3.1) keeps a sorted subset of patch tokens per image before the blocks, and
each kept token keeps the rotary angles of its own patch: encoding a token-dropped frame is
the reference model run on just those tokens at their positions (tests/models/test_dinov3.py).
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
from solv_jax.models.dinov2 import (IMAGENET_MEAN, IMAGENET_STD, LayerScale,  # noqa: F401
                                    _conv_default_init, _trunc_normal, dot_product_attention)
from solv_jax.models.token_drop import sample_keep_idx

PATCH_SIZE = 16
ROPE_BASE = 100.0
LAYERNORM_EPS = 1e-5

# The official hub models (dinov3/hub/backbones.py); all have 4 register ("storage") tokens.
VARIANTS = {
    "dinov3_vits16": dict(embed_dim=384, depth=12, num_heads=6, ffn="mlp", ffn_hidden=1536),
    "dinov3_vits16plus": dict(embed_dim=384, depth=12, num_heads=6, ffn="swiglu",
                              ffn_hidden=1536),
    "dinov3_vitb16": dict(embed_dim=768, depth=12, num_heads=12, ffn="mlp", ffn_hidden=3072),
    "dinov3_vitl16": dict(embed_dim=1024, depth=24, num_heads=16, ffn="mlp", ffn_hidden=4096),
    "dinov3_vith16plus": dict(embed_dim=1280, depth=32, num_heads=20, ffn="swiglu",
                              ffn_hidden=5120),
}
for _v in VARIANTS.values():
  _v["num_registers"] = 4

# Where the weights come from, for every "weights missing" error.
_HUB = {"dinov3_vits16": "08c60483", "dinov3_vits16plus": "4057cbaa",
        "dinov3_vitb16": "73cec8be", "dinov3_vitl16": "8aa4cbdd", "dinov3_vith16plus": "7c1da9a5"}
CONVERT_HINT = (
    "DINOv3 weights are released under Meta's DINOv3 License, after a request at "
    "ai.meta.com/dinov3 (github.com/facebookresearch/dinov3). Download the official "
    "`{variant}_pretrain_lvd1689m-{hash}.pth` or the HuggingFace "
    "`facebook/{hf}-pretrain-lvd1689m` model.safetensors, then run\n"
    "  python tools/convert_dinov3.py --src FILE --variant {variant} --out {variant}.npz")


def hint(variant: str) -> str:
  """How to obtain and convert a variant's weights."""
  return CONVERT_HINT.format(variant=variant, hf=variant.replace("_", "-"),
                             hash=_HUB.get(variant, "<hash>"))


def variant_config(variant) -> dict:
  """Sizes of a variant name, e.g. 'dinov3_vitb16'; a dict passes through."""
  if isinstance(variant, Mapping):
    return dict(variant)
  if variant not in VARIANTS:
    raise ValueError(f"Unknown DINOv3 variant {variant!r}; expected one of {sorted(VARIANTS)}.")
  return dict(VARIANTS[variant])


# ----------------------------------------------------------------------------------------------
# Rotary position embedding.
# ----------------------------------------------------------------------------------------------
def rope_angles(grid_hw: tuple[int, int], head_dim: int, base: float = ROPE_BASE) -> np.ndarray:
  """(h*w, head_dim) float32 rotary angles of a patch grid, row-major over (h, w).

  A patch's centre ((i + 0.5)/h, (j + 0.5)/w) is mapped to [-1, 1] per axis; the angles are
  2*pi * coordinate / period with periods base^(4k/Dh), k < Dh/4: the Dh/4 y angles, then the
  Dh/4 x angles, the pair repeated once (rotate-half layout)."""
  h, w = grid_hw
  f32 = np.float32
  ys = (np.arange(h, dtype=f32) + f32(0.5)) / f32(h)
  xs = (np.arange(w, dtype=f32) + f32(0.5)) / f32(w)
  coords = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(h * w, 2)
  coords = f32(2.0) * coords - f32(1.0)
  inv_freq = f32(1.0) / f32(base) ** (np.arange(head_dim // 4, dtype=f32) * f32(4.0 / head_dim))
  angles = f32(2.0 * math.pi) * coords[:, :, None] * inv_freq[None, None, :]  # (N, 2, Dh/4)
  angles = angles.reshape(h * w, head_dim // 2)
  return np.tile(angles, (1, 2)).astype(f32)  # (N, Dh)


def kept_angles(angles: np.ndarray, keep_idx) -> jax.Array:
  """The angles (N, Dh) of the kept patches keep_idx (B, N'): each kept token keeps its own
  patch's rotation, (B, N', Dh)."""
  return jnp.asarray(angles)[keep_idx]


def rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin, num_prefix: int):
  """Rotates the patch tokens of x (B, T, H, Dh) by angles with cos, sin (B, T - num_prefix, Dh);
  the num_prefix leading tokens (CLS, registers) pass unrotated. Computed in float32."""
  prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
  p = patches.astype(jnp.float32)
  p = p * cos[:, :, None, :] + rotate_half(p) * sin[:, :, None, :]
  return jnp.concatenate([prefix, p.astype(x.dtype)], axis=1)


# ----------------------------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------------------------
class KMaskedQKV(nn.Module):
  """The fused qkv projection, [q | k | v] along the output axis; its bias is not applied to
  the keys (official LinearKMaskedBias with mask_k_bias=True)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _trunc_normal, (x.shape[-1], 3 * self.features))
    bias = self.param("bias", nn.initializers.zeros, (3 * self.features,))
    mask = np.repeat(np.array([1.0, 0.0, 1.0], np.float32), self.features)
    return x @ kernel.astype(self.dtype) + (bias * mask).astype(self.dtype)


class Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32
  attention_fn: Callable = dot_product_attention

  @nn.compact
  def __call__(self, x, cos, sin, num_prefix: int):  # x (B, T, D)
    b, t, d = x.shape
    qkv = KMaskedQKV(d, self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, t, 3, self.num_heads, d // self.num_heads)  # (B, T, 3, H, Dh)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = apply_rope(q, cos, sin, num_prefix), apply_rope(k, cos, sin, num_prefix)
    x = self.attention_fn(q, k, v)  # (B, T, H, Dh)
    return nn.Dense(d, dtype=self.dtype, kernel_init=_trunc_normal, name="proj")(
        x.reshape(b, t, d))


class FFN(nn.Module):
  """MLP (fc1, exact GELU, fc2) or SwiGLU (w12 = [w1 | w2], w3(silu(x w1) * x w2))."""
  hidden: int
  kind: str = "mlp"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=_trunc_normal)
    if self.kind == "mlp":
      return dense(d, name="fc2")(nn.gelu(dense(self.hidden, name="fc1")(x), approximate=False))
    x1, x2 = jnp.split(dense(2 * self.hidden, name="w12")(x), 2, axis=-1)
    return dense(d, name="w3")(nn.silu(x1) * x2)


class Block(nn.Module):
  num_heads: int
  ffn: str
  ffn_hidden: int
  layerscale_init: float = 1e-5
  dtype: Any = jnp.float32
  attention_fn: Callable = dot_product_attention

  @nn.compact
  def __call__(self, x, cos, sin, num_prefix: int):  # pre-norm, LayerScale on both branches
    norm = functools.partial(nn.LayerNorm, epsilon=LAYERNORM_EPS, dtype=self.dtype)
    x = x + LayerScale(self.layerscale_init, name="ls1")(
        Attention(self.num_heads, self.dtype, self.attention_fn, name="attn")(
            norm(name="norm1")(x), cos, sin, num_prefix))
    return x + LayerScale(self.layerscale_init, name="ls2")(
        FFN(self.ffn_hidden, self.ffn, self.dtype, name="mlp")(norm(name="norm2")(x)))


class DINOv3(nn.Module):
  """DINOv3 ViT-*/16. Call on ImageNet-normalised images (B, H, W, 3), H, W multiples of 16.

  Returns (tokens (B, N', D) float32, keep_idx (B, N') int32): the last block's patch tokens
  (CLS and registers removed) without the final LayerNorm unless `normed=True`, as the DINOv2
  module does. `num_blocks` > 0 runs only the first num_blocks blocks; 0 runs all.
  """
  variant: Any = "dinov3_vitb16"
  dtype: Any = jnp.float32
  layerscale_init: float = 1e-5
  num_blocks: int = 0
  attention_fn: Callable = dot_product_attention

  @nn.compact
  def __call__(self, images, keep_idx=None, *, drop_ratio: float = 0.0, normed: bool = False):
    cfg = variant_config(self.variant)
    d, heads, num_reg = cfg["embed_dim"], cfg["num_heads"], cfg["num_registers"]
    b, hh, ww, c = images.shape
    if hh % PATCH_SIZE or ww % PATCH_SIZE:
      raise ValueError(f"DINOv3 input size {hh}x{ww} is not a multiple of the patch size "
                       f"{PATCH_SIZE}; use e.g. {hh // PATCH_SIZE * PATCH_SIZE}x"
                       f"{ww // PATCH_SIZE * PATCH_SIZE}.")
    h, w = hh // PATCH_SIZE, ww // PATCH_SIZE

    # Patch embedding: a 16x16 stride-16 conv, written as a matmul over patches.
    fan_in = PATCH_SIZE * PATCH_SIZE * c
    kernel = self.param("patch_embed_kernel", _conv_default_init(fan_in),
                        (PATCH_SIZE, PATCH_SIZE, c, d))
    bias = self.param("patch_embed_bias", _conv_default_init(fan_in), (d,))
    patches = images.astype(self.dtype).reshape(b, h, PATCH_SIZE, w, PATCH_SIZE, c)
    x = jnp.einsum("bhpwqc,pqcd->bhwd", patches, kernel.astype(self.dtype))
    x = (x + bias.astype(self.dtype)).reshape(b, h * w, d)  # (B, N, D)

    if keep_idx is None and drop_ratio > 0.0:
      keep_idx = sample_keep_idx(self.make_rng("token_drop"), b, h * w, drop_ratio)
    if keep_idx is None:
      keep_idx = jnp.broadcast_to(jnp.arange(h * w, dtype=jnp.int32), (b, h * w))
    else:
      x = jnp.take_along_axis(x, keep_idx[..., None], axis=1)  # (B, N', D)
    angles = kept_angles(rope_angles((h, w), d // heads), keep_idx)  # (B, N', Dh)
    cos, sin = jnp.cos(angles), jnp.sin(angles)

    cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, d))
    prefix = [cls.astype(self.dtype).repeat(b, axis=0)]
    if num_reg:
      reg = self.param("storage_tokens", nn.initializers.normal(0.02), (1, num_reg, d))
      prefix.append(reg.astype(self.dtype).repeat(b, axis=0))
    x = jnp.concatenate(prefix + [x], axis=1)  # (B, 1 + R + N', D)

    depth = cfg["depth"]
    if not 0 <= self.num_blocks <= depth:
      raise ValueError(f"num_blocks must be in [0, {depth}] for {self.variant}, "
                       f"got {self.num_blocks}.")
    for i in range(self.num_blocks or depth):
      x = Block(heads, cfg["ffn"], cfg["ffn_hidden"], self.layerscale_init, self.dtype,
                self.attention_fn, name=f"blocks_{i}")(x, cos, sin, 1 + num_reg)
    norm = nn.LayerNorm(epsilon=LAYERNORM_EPS, dtype=self.dtype, name="norm")
    if normed:
      x = norm(x)
    else:  # create the params anyway so every params file has the same tree
      _ = norm(x[:, :1])
    return x[:, 1 + num_reg:].astype(jnp.float32), keep_idx.astype(jnp.int32)


def init_params(variant, rng: jax.Array, image_hw: tuple[int, int] = (16, 16),
                layerscale_init: float = 1e-5) -> dict:
  """Randomly initialised params, official initialisation (LayerScale 1e-5)."""
  model = DINOv3(variant, layerscale_init=layerscale_init)
  return model.init(rng, jnp.zeros((1, *image_hw, 3), jnp.float32))["params"]


def param_shapes(variant) -> dict:
  """Flat {'a/b/c': shape} of a variant's params, computed without allocating them."""
  shapes = jax.eval_shape(functools.partial(init_params, variant), jax.random.key(0))
  return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


# ----------------------------------------------------------------------------------------------
# Released checkpoints -> params (numpy only: tools/convert_dinov3.py reads the file).
# ----------------------------------------------------------------------------------------------
# Official keys read and dropped: the masked-patch token of DINOv3's training, and the norms
# of CLS and registers that some checkpoints untie from the patch-token norm (unused here).
_DROPPED = ("mask_token", "local_cls_norm.weight", "local_cls_norm.bias", "cls_norm.weight",
            "cls_norm.bias")


def _hf_to_official(sd: Mapping[str, np.ndarray]) -> dict:
  """transformers DINOv3ViTModel keys (`layer.N.` as on the hub, or `model.layer.N.`) ->
  official keys. The absent key bias becomes zeros in the stacked qkv bias."""
  gated = any(".mlp.gate_proj." in k for k in sd)
  renames = {"attention.o_proj": "attn.proj", "layer_scale1": "ls1", "layer_scale2": "ls2",
             "norm1": "norm1", "norm2": "norm2",
             "mlp.gate_proj": "mlp.w1", "mlp.up_proj": "mlp.w2" if gated else "mlp.fc1",
             "mlp.down_proj": "mlp.w3" if gated else "mlp.fc2"}
  embeddings = {"cls_token": "cls_token", "mask_token": "mask_token",
                "register_tokens": "storage_tokens",
                "patch_embeddings.weight": "patch_embed.proj.weight",
                "patch_embeddings.bias": "patch_embed.proj.bias"}
  out, qkv = {}, {}
  for key, val in sd.items():
    k = key[len("model."):] if key.startswith("model.layer.") else key
    if k.startswith("embeddings.") and k[len("embeddings."):] in embeddings:
      out[embeddings[k[len("embeddings."):]]] = val
    elif k.startswith("layer.") and k.count(".") >= 3:
      _, i, rest = k.split(".", 2)
      sub, _, p = rest.rpartition(".")  # e.g. 'attention.q_proj', 'weight'
      if sub in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
        qkv.setdefault(f"blocks.{i}.attn.qkv.{p}", {})["qkv".index(sub[10])] = val
      elif sub in renames:
        out[f"blocks.{i}.{renames[sub]}." + ("gamma" if p == "lambda1" else p)] = val
      else:
        out[key] = val  # reported as unexpected later
    else:
      out[key] = val  # norm.weight / norm.bias, or reported as unexpected later
  for key, got in qkv.items():
    if key.endswith(".bias") and set(got) == {0, 2}:
      got[1] = np.zeros_like(got[0])  # transformers has no key bias (masked in the official)
    if sorted(got) != [0, 1, 2]:
      raise KeyError(f"HuggingFace checkpoint lacks part of {key!r} (has parts "
                     f"{[('q', 'k', 'v')[j] for j in sorted(got)]} of q, k, v).")
    out[key] = np.concatenate([got[0], got[1], got[2]], axis=0)
  return out


def _fuse_swiglu(sd: dict) -> dict:
  """Official SwiGLU weights w1, w2 -> one w12 = [w1 | w2] along the output axis."""
  for key in [k for k in sd if ".mlp.w1." in k]:
    w2 = key.replace(".mlp.w1.", ".mlp.w2.")
    if w2 in sd:
      sd[key.replace(".mlp.w1.", ".mlp.w12.")] = np.concatenate([sd.pop(key), sd.pop(w2)])
  return sd


def _official_to_flat(sd: Mapping[str, np.ndarray], cfg: dict) -> dict:
  """Official dinov3 keys -> our flat '/'-joined names; every key is used once."""
  d, depth, heads = cfg["embed_dim"], cfg["depth"], cfg["num_heads"]
  keys = weights_file.OfficialKeys(sd, dropped=_DROPPED)
  if "rope_embed.periods" in sd:  # a buffer of the official model: check it is ours
    keys.used.add("rope_embed.periods")
    hd = d // heads
    ours = ROPE_BASE ** (2 * np.arange(hd // 4) / (hd // 2))
    got = np.asarray(sd["rope_embed.periods"], np.float64)
    if got.shape != ours.shape or not np.allclose(got, ours, rtol=1e-4):
      raise ValueError(f"Checkpoint's rope_embed.periods {got.shape} are not RoPE base "
                       f"{ROPE_BASE:g} periods for head width {hd}; only base {ROPE_BASE:g} "
                       "(every released DINOv3 ViT) is supported.")
  keys.take("patch_embed.proj.weight", "patch_embed_kernel", lambda a: a.transpose(2, 3, 1, 0))
  keys.take("patch_embed.proj.bias", "patch_embed_bias")
  keys.take("cls_token", "cls_token", lambda a: a.reshape(1, 1, -1))
  if cfg["num_registers"]:
    keys.take("storage_tokens", "storage_tokens")
  keys.take_blocks(depth, cfg["ffn"])
  for i in range(depth):  # the official forward multiplies the qkv bias by its bias_mask
    mask, name = f"blocks.{i}.attn.qkv.bias_mask", f"blocks_{i}/attn/qkv/bias"
    bias = keys.out[name]
    if mask in sd:
      keys.used.add(mask)
      bias = keys.out[name] = bias * np.asarray(sd[mask], bias.dtype)
    if bias.shape == (3 * d,) and np.any(bias[d:2 * d] != 0):
      raise ValueError(f"Checkpoint's blocks.{i}.attn.qkv.bias has a non-zero key bias and no "
                       "bias_mask; DINOv3 (mask_k_bias) and this port have none.")
  keys.take("norm.weight", "norm/scale")
  keys.take("norm.bias", "norm/bias")
  return keys.finish(depth, cfg["ffn"])


def convert_state_dict(state_dict: Mapping[str, np.ndarray], variant) -> dict:
  """Official (facebookresearch/dinov3) or transformers DINOv3ViTModel state dict (numpy
  arrays) -> nested Flax params. KeyError names a missing or unexpected key; ValueError names
  a key and both shapes when a tensor does not fit the variant."""
  cfg = variant_config(variant)
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  is_hf = any(k.split(".", 1)[-1].startswith(("embeddings.", "layer."))
              or k.startswith(("embeddings.", "layer.", "model.layer.")) for k in sd)
  if is_hf:
    sd = _hf_to_official(sd)
  flat = _official_to_flat(_fuse_swiglu(sd), cfg)
  return weights_file.check_and_unflatten(flat, param_shapes(variant), variant)


def save_params(path: str, params: Mapping, variant: str) -> None:
  """Writes params as a flat .npz ('/'-joined keys) with the variant name."""
  weights_file.save(path, params, variant)


def load_params(path: str, expected_variant: str | None = None) -> tuple[str, dict]:
  """Reads a params file written by tools/convert_dinov3.py -> (variant, params)."""
  return weights_file.load(path, family="DINOv3", expected_variant=expected_variant,
                           default_variant="dinov3_vitb16", shapes=param_shapes, hint=hint,
                           tool="tools/convert_dinov3.py")
