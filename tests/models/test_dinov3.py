"""DINOv3 port vs transformers' DINOv3ViTModel (every parameter perturbed), at non-square
resolutions, with and without token drop; and the same test failing when a RoPE or register
detail is broken on purpose."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from solv_jax.models import dinov3
from tests.dinov3_reference import (TINY, TINY_SWIGLU, hf_forward, hf_forward_kept, hf_model,
                                    hf_state_dict, rel_err)


def _images(b, h, w, seed=0):
  return np.random.default_rng(seed).normal(size=(b, h, w, 3)).astype(np.float32)


def _ours(variant, params, images, **kw):
  return dinov3.DINOv3(variant).apply({"params": params}, jnp.asarray(images), **kw)


@pytest.fixture(scope="module", params=[TINY, TINY_SWIGLU], ids=["mlp", "swiglu"])
def tiny(request):
  model = hf_model(request.param, seed=1)
  return request.param, model, dinov3.convert_state_dict(hf_state_dict(model), request.param)


def test_matches_transformers_at_a_non_square_resolution(tiny):
  variant, model, params = tiny
  images = _images(2, 48, 80)  # 3 x 5 patches
  ref_pre, ref_normed = hf_forward(model, images)
  pre, keep = _ours(variant, params, images)
  normed, _ = _ours(variant, params, images, normed=True)
  assert pre.shape == ref_pre.shape == (2, 15, variant["embed_dim"])
  assert rel_err(pre, ref_pre) <= 1e-5
  assert rel_err(normed, ref_normed) <= 1e-5
  np.testing.assert_array_equal(keep, np.tile(np.arange(15), (2, 1)))


def test_token_drop_is_the_reference_on_the_kept_tokens_at_their_positions(tiny):
  variant, model, params = tiny
  images = _images(3, 64, 96, seed=1)  # 4 x 6 = 24 patches
  keep = dinov3.sample_keep_idx(jax.random.key(0), 3, 24, 0.5)
  ours, keep_out = _ours(variant, params, images, keep_idx=keep)
  np.testing.assert_array_equal(keep_out, keep)
  assert ours.shape == (3, 12, variant["embed_dim"])
  assert rel_err(ours, hf_forward_kept(model, images, keep)) <= 1e-5
  # drawn inside the module from the 'token_drop' stream: the same as passing those indices
  drawn, idx = _ours(variant, params, images, drop_ratio=0.5,
                     rngs={"token_drop": jax.random.key(3)})
  assert rel_err(drawn, hf_forward_kept(model, images, idx)) <= 1e-5


@pytest.mark.parametrize("blocks", [1, 2])
def test_num_blocks_gives_that_blocks_tokens(tiny, blocks):
  variant, model, params = tiny
  images = _images(2, 32, 48, seed=2)
  keep = dinov3.sample_keep_idx(jax.random.key(1), 2, 6, 0.5)
  ours, _ = dinov3.DINOv3(variant, num_blocks=blocks).apply({"params": params},
                                                            jnp.asarray(images), keep_idx=keep)
  assert rel_err(ours, hf_forward_kept(model, images, keep, num_blocks=blocks)) <= 1e-5


def test_vitb16_real_sizes_with_token_drop():
  """ViT-B/16's real widths (head width 64: 16 RoPE frequencies per axis), 6 x 10 patches."""
  variant = dinov3.variant_config("dinov3_vitb16")
  small = dict(variant, depth=2)  # the real block, twice: the RoPE and widths are what matter
  model = hf_model(small, seed=2)
  params = dinov3.convert_state_dict(hf_state_dict(model), small)
  images = _images(2, 96, 160, seed=3)
  keep = dinov3.sample_keep_idx(jax.random.key(2), 2, 60, 0.5)
  ours, _ = _ours(small, params, images, keep_idx=keep)
  err = rel_err(ours, hf_forward_kept(model, images, keep))
  print(f"dinov3 vitb16-width parity with token drop: rel {err:.3g}")
  assert err <= 1e-5


# Each a detail of RoPE or of the registers, broken on purpose; the parity test must see it.
def _swap_axes(orig):
  def angles(grid_hw, head_dim, base=dinov3.ROPE_BASE):
    a = orig(grid_hw, head_dim, base)
    n = a.shape[0]
    return a.reshape(n, 2, 2, head_dim // 4)[:, :, ::-1].reshape(n, head_dim)  # x before y
  return angles


BROKEN = {
    "rope y and x swapped": ("rope_angles", _swap_axes),
    "rope base 10000": ("rope_angles",
                        lambda orig: lambda g, hd, base=100.0: orig(g, hd, 10000.0)),
    "rope not normalised per axis": (
        "rope_angles", lambda orig: lambda g, hd, base=100.0: orig((max(g),) * 2, hd, base)[
            np.arange(g[0] * g[1]) // g[1] * max(g) + np.arange(g[0] * g[1]) % g[1]]),
    "kept tokens renumbered 0..N'-1": (
        "kept_angles", lambda orig: lambda a, keep: orig(a, jnp.broadcast_to(
            jnp.arange(keep.shape[1]), keep.shape))),
    "registers rotated like patches": (
        "apply_rope", lambda orig: lambda x, cos, sin, n: orig(
            x, jnp.concatenate([cos[:, :n - 1], cos], 1),
            jnp.concatenate([sin[:, :n - 1], sin], 1), 1)),
}


@pytest.mark.parametrize("detail", sorted(BROKEN))
def test_parity_fails_when_a_rope_detail_is_broken(tiny, detail, monkeypatch):
  variant, model, params = tiny
  images = _images(2, 48, 80, seed=4)
  keep = dinov3.sample_keep_idx(jax.random.key(4), 2, 15, 0.5)
  ref = hf_forward_kept(model, images, keep)
  assert rel_err(_ours(variant, params, images, keep_idx=keep)[0], ref) <= 1e-5
  name, breaker = BROKEN[detail]
  monkeypatch.setattr(dinov3, name, breaker(getattr(dinov3, name)))
  assert rel_err(_ours(variant, params, images, keep_idx=keep)[0], ref) > 1e-3


def test_parity_fails_without_the_registers(tiny):
  variant, model, params = tiny
  images = _images(2, 48, 80, seed=5)
  ref, _ = hf_forward(model, images)
  no_reg = {k: v for k, v in params.items() if k != "storage_tokens"}
  ours, _ = _ours(dict(variant, num_registers=0), no_reg, images)
  assert rel_err(ours, ref) > 1e-3


def test_bfloat16_compute_keeps_float32_params_and_stays_close(tiny):
  variant, _, params = tiny
  images = _images(2, 32, 48)
  ref, _ = _ours(variant, params, images)
  out, _ = dinov3.DINOv3(variant, dtype=jnp.bfloat16).apply({"params": params},
                                                            jnp.asarray(images))
  assert out.dtype == jnp.float32
  assert rel_err(out, ref) < 0.05


def test_resolution_not_multiple_of_patch_is_a_clear_error():
  params = dinov3.init_params(TINY, jax.random.key(0))
  with pytest.raises(ValueError, match="not a multiple of the patch size 16; use e.g. 32x48"):
    _ours(TINY, params, _images(1, 42, 56))


# transformers' convert_dinov3_vit_to_hf.py / the hub configs: width, blocks, heads,
# feed-forward width, gated (SwiGLU).
PUBLISHED = {"dinov3_vits16": (384, 12, 6, 1536, False),
             "dinov3_vits16plus": (384, 12, 6, 1536, True),
             "dinov3_vitb16": (768, 12, 12, 3072, False),
             "dinov3_vitl16": (1024, 24, 16, 4096, False),
             "dinov3_vith16plus": (1280, 32, 20, 5120, True)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_variant_sizes_match_transformers(name):
  from transformers import DINOv3ViTConfig, DINOv3ViTModel
  d, depth, heads, hidden, gated = PUBLISHED[name]
  with torch.device("meta"):
    ref = DINOv3ViTModel(DINOv3ViTConfig(hidden_size=d, num_hidden_layers=depth,
                                         num_attention_heads=heads, intermediate_size=hidden,
                                         use_gated_mlp=gated, num_register_tokens=4))
  ref_count = sum(p.numel() for p in ref.parameters())
  ours = sum(int(np.prod(s)) for s in dinov3.param_shapes(name).values())
  # ours has no mask_token (D) and keeps the masked key bias (D a block) in the fused qkv bias
  assert ours == ref_count - d + depth * d
  cfg = dinov3.variant_config(name)
  assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["ffn_hidden"],
          cfg["ffn"] == "swiglu", cfg["num_registers"]) == (d, depth, heads, hidden, gated, 4)
