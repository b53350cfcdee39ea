"""Temporal binding against torch.nn.TransformerEncoder (post-norm) with the same weights."""
import jax
import jax.numpy as jnp
import numpy as np
import torch

from solv_jax.models.temporal_binding import TemporalBinding

B, F, K, D, HEADS, LAYERS = 2, 5, 3, 16, 4, 3


def _init():
  mod = TemporalBinding(num_frames=F, num_layers=LAYERS, num_heads=HEADS)
  slots = np.random.RandomState(0).randn(B, F, K, D).astype(np.float32)
  mask = np.array([[True] * 5, [False, True, True, True, False]])
  params = mod.init(jax.random.key(0), slots, mask)["params"]
  # Non-trivial LayerNorm affine params so every term is exercised.
  rs = np.random.RandomState(1)
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: (a + jnp.asarray(rs.randn(*a.shape) * 0.1, jnp.float32))
      if "norm" in jax.tree_util.keystr(path) else a, params)
  return mod, params, slots, mask


def _torch_encoder(params):
  layer = torch.nn.TransformerEncoderLayer(D, nhead=HEADS, dim_feedforward=4 * D,
                                           batch_first=True)  # post-norm, ReLU, eps 1e-5
  enc = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).eval()
  t = lambda a: torch.tensor(np.asarray(a))
  with torch.no_grad():
    for i, tl in enumerate(enc.layers):
      p = params[f"layers_{i}"]
      a = p["attn"]
      # Flax DenseGeneral kernels (D, H, Dh) <- torch rows [q | k | v], head-contiguous.
      tl.self_attn.in_proj_weight.copy_(torch.cat(
          [t(a[n]["kernel"]).reshape(D, D).T for n in ("query", "key", "value")]))
      tl.self_attn.in_proj_bias.copy_(torch.cat(
          [t(a[n]["bias"]).reshape(D) for n in ("query", "key", "value")]))
      tl.self_attn.out_proj.weight.copy_(t(a["out"]["kernel"]).reshape(D, D).T)
      tl.self_attn.out_proj.bias.copy_(t(a["out"]["bias"]))
      tl.linear1.weight.copy_(t(p["fc1"]["kernel"]).T)
      tl.linear1.bias.copy_(t(p["fc1"]["bias"]))
      tl.linear2.weight.copy_(t(p["fc2"]["kernel"]).T)
      tl.linear2.bias.copy_(t(p["fc2"]["bias"]))
      for n in ("norm1", "norm2"):
        getattr(tl, n).weight.copy_(t(p[n]["scale"]))
        getattr(tl, n).bias.copy_(t(p[n]["bias"]))
  return enc


def test_matches_torch_transformer_encoder_with_padding_mask():
  mod, params, slots, mask = _init()
  got = jax.jit(mod.apply)({"params": params}, slots, mask)  # (B, K, D)
  assert got.shape == (B, K, D)
  enc = _torch_encoder(params)
  x = slots + np.asarray(params["pos_embed"])[None, :, None, :]  # (B, F, K, D)
  x = torch.tensor(x.transpose(0, 2, 1, 3).reshape(B * K, F, D))  # slot j over time
  key_padding = torch.tensor(np.repeat(~mask, K, axis=0))  # (B*K, F), True = ignore
  with torch.no_grad():
    ref = enc(x, src_key_padding_mask=key_padding).numpy().reshape(B, K, F, D)[:, :, F // 2]
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_masked_frame_content_does_not_change_the_middle_output():
  mod, params, slots, mask = _init()
  apply = jax.jit(mod.apply)
  base = apply({"params": params}, slots, mask)
  other = slots.copy()
  other[1, 0] = 100.0 * np.random.RandomState(5).randn(K, D)  # masked frames of sample 1
  other[1, 4] = 0.0
  out = apply({"params": params}, other, mask)
  np.testing.assert_allclose(out[1], base[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[0], base[0])
  other[1, 1] += 1.0  # a valid frame does matter
  assert not np.allclose(apply({"params": params}, other, mask)[1], base[1], atol=1e-3)


def test_attention_runs_along_time_only():
  mod, params, slots, mask = _init()
  apply = jax.jit(mod.apply)
  base = apply({"params": params}, slots, mask)
  other = slots.copy()
  other[:, :, 1] += 1.0  # change slot index 1 in every frame
  out = apply({"params": params}, other, mask)
  np.testing.assert_allclose(out[:, [0, 2]], base[:, [0, 2]], rtol=1e-6, atol=1e-6)
  assert not np.allclose(out[:, 1], base[:, 1], atol=1e-3)


def test_param_shapes_and_dropout():
  mod, params, slots, mask = _init()
  assert params["pos_embed"].shape == (F, D)
  assert sorted(params) == ["layers_0", "layers_1", "layers_2", "pos_embed"]
  run = lambda key: mod.apply({"params": params}, slots, mask, train=True,
                              rngs={"dropout": jax.random.key(key)})
  assert not np.allclose(run(0), run(1))
  # The authors' binder at D_slot = 128, 8 heads, F = 5: torch's encoder + (F, D) pos-emb.
  big = TemporalBinding(num_frames=5)
  shapes = jax.eval_shape(big.init, jax.random.key(0), jnp.zeros((1, 5, 2, 128)),
                          jnp.ones((1, 5), bool))
  layer = torch.nn.TransformerEncoderLayer(128, nhead=8, dim_feedforward=512, batch_first=True)
  ref = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
  expected = sum(p.numel() for p in ref.parameters()) + 5 * 128
  assert sum(np.prod(a.shape) for a in jax.tree.leaves(shapes)) == expected == 595_456
