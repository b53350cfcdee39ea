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


# ----------------------------------------------------------------------------------------------
# Initialisation (docs/METHOD.md §6) against torch's nn.TransformerEncoder as the authors build it
# ----------------------------------------------------------------------------------------------
def _full_size_params(param_init):
  mod = TemporalBinding(num_frames=5, param_init=param_init)  # D_slot 128, 8 heads, 3 layers
  return jax.jit(mod.init)(jax.random.key(0), jnp.zeros((1, 5, 2, 128)),
                           jnp.ones((1, 5), bool))["params"]


def test_torch_init_matches_torch_transformer_encoder_and_layers_start_identical():
  from tests.models.torch_init import assert_like_torch
  p = _full_size_params("torch")
  torch.manual_seed(0)
  layer = torch.nn.TransformerEncoderLayer(128, nhead=8, dim_feedforward=512, batch_first=True)
  ref = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
  t0 = ref.layers[0]
  for t in ref.layers[1:]:  # torch deep-copies the layer: the fact the init must reproduce
    assert all(torch.equal(a, b) for a, b in zip(t.parameters(), t0.parameters()))
  for i in (1, 2):
    jax.tree.map(np.testing.assert_array_equal, p[f"layers_{i}"], p["layers_0"])
  l0, a = p["layers_0"], p["layers_0"]["attn"]
  # The packed in-projection: xavier-uniform over the whole (3D, D) tensor.
  qkv = np.concatenate([np.asarray(a[n]["kernel"]).reshape(128, 128) for n in
                        ("query", "key", "value")], axis=1)
  assert_like_torch(qkv, t0.self_attn.in_proj_weight, "in_proj_weight")
  np.testing.assert_allclose(np.asarray(t0.self_attn.in_proj_weight.detach()).std(), 0.0625,
                             rtol=0.02)  # sqrt(6 / (128 + 384)) / sqrt(3)
  for n in ("query", "key", "value"):
    np.testing.assert_array_equal(a[n]["bias"], 0.0)
  assert not t0.self_attn.in_proj_bias.any() and not t0.self_attn.out_proj.bias.any()
  assert_like_torch(a["out"]["kernel"], t0.self_attn.out_proj.weight, "out_proj.weight")
  np.testing.assert_array_equal(a["out"]["bias"], 0.0)
  for ours, theirs in (("fc1", t0.linear1), ("fc2", t0.linear2)):
    assert_like_torch(l0[ours]["kernel"], theirs.weight, f"{ours} kernel")
    assert_like_torch(l0[ours]["bias"], theirs.bias, f"{ours} bias")
  for n in ("norm1", "norm2"):
    np.testing.assert_array_equal(l0[n]["scale"], 1.0)
    np.testing.assert_array_equal(l0[n]["bias"], 0.0)
  pos = torch.empty(1, 5, 1, 128)  # the authors' pos_embed_temporal
  torch.nn.init.normal_(pos, std=0.02)
  assert_like_torch(p["pos_embed"], pos, "pos_embed", uniform=False)


def test_flax_init_option_gives_each_layer_its_own_flax_default_init():
  p = _full_size_params("flax")
  assert not np.allclose(p["layers_0"]["fc1"]["kernel"], p["layers_1"]["fc1"]["kernel"])
  np.testing.assert_array_equal(p["layers_0"]["fc1"]["bias"], 0.0)
  kernel = np.asarray(p["layers_0"]["fc1"]["kernel"])  # lecun normal: std 1/sqrt(fan_in)
  np.testing.assert_allclose(kernel.std(), 1 / np.sqrt(128), rtol=0.05)
