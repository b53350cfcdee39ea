"""DINOv2 port vs independent references: HuggingFace Dinov2Model and torch interpolate."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from solv_jax.models import dinov2
from tests.dinov2_reference import (TINY, hf_forward, hf_model, hf_state_dict, rel_err)

TINY_REG = dict(TINY, num_registers=4)


def _ours(variant, params, images, **kw):
  return dinov2.DINOv2(variant).apply({"params": params}, jnp.asarray(images), **kw)


def _images(b, h, w, seed=0):
  return np.random.default_rng(seed).normal(size=(b, h, w, 3)).astype(np.float32)


@pytest.mark.parametrize("grid", [(24, 36), (16, 16), (40, 45), (4, 7)])
def test_pos_embed_interpolation_matches_torch_bicubic_with_offset(grid):
  h, w = grid
  pos = np.random.default_rng(1).normal(size=(1, 1 + 37 * 37, 8)).astype(np.float32)
  ours = dinov2.interpolate_pos_embed(jnp.asarray(pos), (h, w))
  patch = torch.from_numpy(pos[:, 1:]).reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
  ref = F.interpolate(patch, scale_factor=((h + 0.1) / 37, (w + 0.1) / 37), mode="bicubic",
                      align_corners=False).permute(0, 2, 3, 1).reshape(1, h * w, 8).numpy()
  np.testing.assert_allclose(np.asarray(ours[:, 1:]), ref, atol=2e-5)
  np.testing.assert_array_equal(np.asarray(ours[:, :1]), pos[:, :1])
  if grid == (24, 36):  # the scale-factor mapping matters: resizing by size is far off
    by_size = F.interpolate(patch, size=(h, w), mode="bicubic", align_corners=False)
    by_size = by_size.permute(0, 2, 3, 1).reshape(1, h * w, 8).numpy()
    assert np.abs(by_size - ref).max() > 0.1


@pytest.mark.parametrize("grid", [(24, 36), (40, 45), (3, 5)])
def test_pos_embed_interpolation_reg_variant_matches_torch_antialias(grid):
  h, w = grid
  pos = np.random.default_rng(2).normal(size=(1, 1 + 37 * 37, 8)).astype(np.float32)
  ours = dinov2.interpolate_pos_embed(jnp.asarray(pos), (h, w), offset=0.0, antialias=True)
  patch = torch.from_numpy(pos[:, 1:]).reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
  ref = F.interpolate(patch, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
  ref = ref.permute(0, 2, 3, 1).reshape(1, h * w, 8).numpy()
  np.testing.assert_allclose(np.asarray(ours[:, 1:]), ref, atol=2e-5)


def test_pos_embed_not_interpolated_when_grid_matches():
  pos = jnp.asarray(np.random.default_rng(3).normal(size=(1, 1 + 37 * 37, 4)), jnp.float32)
  assert dinov2.interpolate_pos_embed(pos, (37, 37)) is pos


@pytest.mark.parametrize("variant", [TINY, TINY_REG, dict(TINY, ffn="swiglu", embed_dim=48)],
                         ids=["plain", "registers", "swiglu"])
def test_matches_huggingface_small(variant):
  model = hf_model(variant)
  params = dinov2.convert_state_dict(hf_state_dict(model), variant)
  images = _images(2, 56, 56)
  ref_pre, ref_normed = hf_forward(model, images)
  pre, keep = _ours(variant, params, images)
  normed, _ = _ours(variant, params, images, normed=True)
  assert pre.shape == ref_pre.shape == (2, 16, variant["embed_dim"])
  assert rel_err(pre, ref_pre) <= 1e-5
  assert rel_err(normed, ref_normed) <= 1e-5
  np.testing.assert_array_equal(keep, np.tile(np.arange(16), (2, 1)))


def test_matches_huggingface_vitb14_real_shapes():
  variant = dinov2.variant_config("vitb14")
  model = hf_model(variant, image_size=518)
  params = dinov2.convert_state_dict(hf_state_dict(model), "vitb14")
  images = _images(1, 518, 518)
  ref_pre, ref_normed = hf_forward(model, images)
  pre, _ = _ours("vitb14", params, images)
  normed, _ = _ours("vitb14", params, images, normed=True)
  print(f"vitb14 parity: max abs {np.abs(pre - ref_pre).max():.3g}, rel {rel_err(pre, ref_pre):.3g};"
        f" normed max abs {np.abs(normed - ref_normed).max():.3g}, "
        f"rel {rel_err(normed, ref_normed):.3g}")
  assert pre.shape == (1, 37 * 37, 768)
  assert rel_err(pre, ref_pre) <= 1e-5
  assert rel_err(normed, ref_normed) <= 1e-5


def test_interpolated_full_path_equals_reference_blocks():
  """At a non-native size: official interpolation + HF's blocks, run in torch."""
  model = hf_model(TINY)
  params = dinov2.convert_state_dict(hf_state_dict(model), TINY)
  images = _images(2, 42, 70)
  ref = _reference_with_kept_tokens(model, params, images, np.tile(np.arange(15), (2, 1)))
  ours, _ = _ours(TINY, params, images)
  assert rel_err(ours, ref) <= 1e-5


def _reference_with_kept_tokens(model, params, images, keep_idx):
  """Patch embed + official pos-embed (torch interpolate) + gather kept tokens + HF blocks."""
  b, hh, ww, _ = images.shape
  h, w = hh // 14, ww // 14
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  emb = model.embeddings
  with torch.no_grad():
    tokens = emb.patch_embeddings(x)  # (B, N, D)
    pos = emb.position_embeddings
    m = int(math.sqrt(pos.shape[1] - 1))
    if (h, w) != (m, m):
      grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
      grid = F.interpolate(grid, scale_factor=((h + 0.1) / m, (w + 0.1) / m), mode="bicubic",
                           align_corners=False)
      pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], 1)
    tokens = tokens + pos[:, 1:]
    idx = torch.from_numpy(np.array(keep_idx)).long()
    tokens = torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
    cls = (emb.cls_token + pos[:, :1]).expand(b, -1, -1)
    hidden = torch.cat([cls, tokens], 1)
    for layer in model.encoder.layer:
      hidden = layer(hidden)
      hidden = hidden[0] if isinstance(hidden, tuple) else hidden
  return hidden[:, 1:].numpy()


def test_token_drop_equals_gathering_after_pos_embed():
  model = hf_model(TINY)
  params = dinov2.convert_state_dict(hf_state_dict(model), TINY)
  images = _images(3, 56, 84)  # 4 x 6 = 24 tokens, pos-embed interpolated from 4 x 4
  keep = dinov2.sample_keep_idx(jax.random.key(0), 3, 24, 0.5)
  ours, keep_out = _ours(TINY, params, images, keep_idx=keep)
  np.testing.assert_array_equal(keep_out, keep)
  ref = _reference_with_kept_tokens(model, params, images, keep)
  assert ours.shape == (3, 12, 32)
  assert rel_err(ours, ref) <= 1e-5


def test_token_drop_draws_a_subset_per_image():
  model = hf_model(TINY)
  params = dinov2.convert_state_dict(hf_state_dict(model), TINY)
  images = _images(4, 56, 84)
  out, keep = _ours(TINY, params, images, drop_ratio=0.5,
                    rngs={"token_drop": jax.random.key(7)})
  keep = np.asarray(keep)
  assert out.shape == (4, 12, 32) and keep.shape == (4, 12)
  for row in keep:  # sorted, distinct, in range
    assert np.all(np.diff(row) > 0) and row.min() >= 0 and row.max() < 24
  assert len({tuple(r) for r in keep}) == 4  # each image draws its own subset
  _, keep2 = _ours(TINY, params, images, drop_ratio=0.5, rngs={"token_drop": jax.random.key(8)})
  assert not np.array_equal(keep, np.asarray(keep2))  # and a new one every step


def test_token_drop_ratio_zero_keeps_all_and_counts():
  keep = dinov2.sample_keep_idx(jax.random.key(0), 2, 864, 0.0)
  np.testing.assert_array_equal(keep, np.tile(np.arange(864), (2, 1)))
  assert dinov2.sample_keep_idx(jax.random.key(0), 2, 864, 0.5).shape == (2, 432)
  assert dinov2.sample_keep_idx(jax.random.key(0), 2, 864, 0.9).shape == (2, 86)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    dinov2.sample_keep_idx(jax.random.key(0), 2, 864, 1.0)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  model = hf_model(TINY)
  params = dinov2.convert_state_dict(hf_state_dict(model), TINY)
  images = _images(2, 56, 56)
  ref, _ = hf_forward(model, images)
  out, _ = dinov2.DINOv2(TINY, dtype=jnp.bfloat16).apply({"params": params}, jnp.asarray(images))
  assert out.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  assert 0 < rel_err(out, ref) < 5e-2


def test_resolution_not_multiple_of_patch_is_a_clear_error():
  params = dinov2.init_params(TINY, jax.random.key(0), (28, 28))
  with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
    _ours(TINY, params, np.zeros((1, 30, 28, 3), np.float32))


@pytest.mark.parametrize("name,dim,depth,heads", [("vits14", 384, 12, 6), ("vitl14", 1024, 24, 16),
                                                   ("vitg14_reg", 1536, 40, 24)])
def test_variant_shapes_match_huggingface(name, dim, depth, heads):
  cfg = dinov2.variant_config(name)
  assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (dim, depth, heads)
  model = hf_model(dict(cfg, depth=1), image_size=518)  # one block is enough to compare shapes
  hf = {k: tuple(v.shape) for k, v in dinov2.convert_state_dict(
      hf_state_dict(model), dict(cfg, depth=1)).items() if not isinstance(v, dict)}
  ours = dinov2.param_shapes(name)
  for key, shape in hf.items():
    assert ours[key] == shape
  assert ours["blocks_0/attn/qkv/kernel"] == (dim, 3 * dim)


@pytest.mark.parametrize("blocks", [1, 2])
def test_num_blocks_gives_that_blocks_tokens_like_huggingface_hidden_states(blocks):
  variant = dict(TINY, depth=3)
  model = hf_model(variant)
  params = dinov2.convert_state_dict(hf_state_dict(model), variant)
  images = _images(2, 56, 56)
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    ref = model(pixel_values=x, output_hidden_states=True).hidden_states[blocks][:, 1:].numpy()
  out, _ = dinov2.DINOv2(variant, num_blocks=blocks).apply({"params": params},
                                                          jnp.asarray(images))
  assert rel_err(out, ref) <= 1e-5
  full, _ = _ours(variant, params, images)
  assert rel_err(out, full) > 1e-2  # LayerScale randomised here: the later blocks matter


def test_random_init_blocks_change_tokens_by_layerscale_only():
  """The demo's premise (configs/demo.py): with the official LayerScale 1e-5 init, block 1's
  tokens equal all 12 blocks' to ~1e-5 relative, so running one block loses nothing."""
  params = dinov2.init_params("vits14", jax.random.key(1), (14, 14))
  images = jnp.asarray(_images(2, 56, 56))
  full, _ = dinov2.DINOv2("vits14").apply({"params": params}, images)
  first, _ = dinov2.DINOv2("vits14", num_blocks=1).apply({"params": params}, images)
  assert 1e-7 < rel_err(first, full) < 1e-4


def test_num_blocks_out_of_range_is_a_clear_error():
  params = dinov2.init_params(TINY, jax.random.key(0), (28, 28))
  with pytest.raises(ValueError, match="num_blocks must be in"):
    dinov2.DINOv2(TINY, num_blocks=TINY["depth"] + 1).apply({"params": params},
                                                           jnp.zeros((1, 28, 28, 3)))


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_attention_matches_torch_sdpa_and_survives_large_logits(scale):
  # scale 30 puts logits in the hundreds: exp overflows unless the row max is subtracted.
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(size=(2, 37, 3, 16)).astype(np.float32) * s for s in (scale, scale, 1))
  ours = np.asarray(dinov2.dot_product_attention(*map(jnp.asarray, (q, k, v))))
  to_torch = lambda a: torch.from_numpy(a).transpose(1, 2)  # (B, H, T, Dh)
  ref = F.scaled_dot_product_attention(*map(to_torch, (q, k, v))).transpose(1, 2).numpy()
  assert np.isfinite(ours).all()
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
