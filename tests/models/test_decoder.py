"""Decoder against a float64 numpy transcription of docs/METHOD.md §5 / eqs. (10)-(11), plus the
mask properties (softmax over valid slots, exactly 0 on invalid ones)."""
import jax
import jax.numpy as jnp
import numpy as np

from solv_jax.models.decoder import Decoder
from solv_jax.models.spatial_binding import grid_abs_init

B, K, DS, D, HID = 2, 4, 8, 6, 16
GRID_HW = (3, 4)
N = 12


def _inputs():
  rs = np.random.RandomState(0)
  slots = rs.randn(B, K, DS).astype(np.float32)
  keep_idx = np.array([[0, 1, 5, 6, 10, 11], [2, 3, 4, 7, 8, 9]], np.int32)  # middle frame
  attn = rs.uniform(0.01, 1, (B, K, 6))
  attn = (attn / attn.sum(-1, keepdims=True)).astype(np.float32)
  valid = np.array([[True, True, True, False], [True, True, True, True]])
  attn[~valid] = 0.0  # as merge_slots leaves invalid rows
  grid = np.asarray(grid_abs_init(GRID_HW)) + rs.randn(N, 2).astype(np.float32) * 0.05
  return slots, attn, valid, keep_idx, grid.astype(np.float32)


def _model_and_params(**kw):
  dec = Decoder(N, feature_dim=D, hidden=HID, **kw)
  params = dec.init(jax.random.key(0), *_inputs())["params"]
  return dec, params


def np_decoder(p, slots, attn, valid, keep_idx, grid, delta=5.0):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  dense = lambda x, q: x @ q["kernel"] + q["bias"]
  recon = np.zeros((B, N, D))
  masks = np.zeros((B, K, N))
  for b in range(B):
    ks = np.flatnonzero(valid[b])
    g = grid[keep_idx[b]].astype(np.float64)  # positions of the middle frame's kept tokens
    feats, alphas = [], []
    for j in ks:
      s_p = attn[b, j] @ g
      s_s = np.sqrt(attn[b, j] @ (g - s_p) ** 2)
      g_rel = (grid - s_p) / (delta * s_s)  # over all N positions
      x = slots[b, j][None] + p["pos_embed"] + dense(g_rel, p["grid_proj"])
      for i in range(4):
        x = np.maximum(dense(x, p[f"mlp_{i}"]), 0)
      x = dense(x, p["mlp_4"])
      feats.append(x[:, :D])
      alphas.append(x[:, D])
    alphas = np.stack(alphas)
    m = np.exp(alphas - alphas.max(0))
    m /= m.sum(0)
    masks[b, ks] = m
    recon[b] = np.einsum("kn,knd->nd", m, np.stack(feats))
  return recon, masks


def test_matches_numpy_reference():
  dec, params = _model_and_params()
  slots, attn, valid, keep_idx, grid = _inputs()
  recon, masks = jax.jit(dec.apply)({"params": params}, slots, attn, valid, keep_idx, grid)
  assert recon.shape == (B, N, D) and masks.shape == (B, K, N)
  ref_recon, ref_masks = np_decoder(params, slots, attn, valid, keep_idx, grid)
  np.testing.assert_allclose(masks, ref_masks, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(recon, ref_recon, rtol=1e-4, atol=1e-5)


def test_masks_sum_to_one_over_valid_slots_and_are_zero_elsewhere():
  dec, params = _model_and_params()
  slots, attn, valid, keep_idx, grid = _inputs()
  _, masks = dec.apply({"params": params}, slots, attn, valid, keep_idx, grid)
  masks = np.asarray(masks)
  np.testing.assert_allclose(masks.sum(1), 1.0, rtol=1e-6)
  assert np.all(masks[~valid] == 0.0)
  assert np.all(masks[valid] > 0.0)
  # An invalid row's content (slot and attention) has no effect at all.
  slots2, attn2 = slots.copy(), attn.copy()
  slots2[0, 3] = 1e3
  attn2[0, 3] = 1.0 / 6
  recon2, masks2 = dec.apply({"params": params}, slots2, attn2, valid, keep_idx, grid)
  recon, _ = dec.apply({"params": params}, slots, attn, valid, keep_idx, grid)
  np.testing.assert_array_equal(recon2, recon)
  np.testing.assert_array_equal(masks2, masks)


def test_position_and_scale_come_from_the_middle_frame_positions():
  # Attention split evenly over two kept tokens -> S_p is their midpoint, S_s half their gap.
  dec, params = _model_and_params()
  slots, _, valid, keep_idx, _ = _inputs()
  grid = np.asarray(grid_abs_init(GRID_HW))  # x in {-1, -1/3, 1/3, 1}, y in {-1, 0, 1}
  attn = np.zeros((B, K, 6), np.float32)
  attn[:, :, 0] = attn[:, :, 3] = 0.5  # tokens keep_idx[:, 0] and keep_idx[:, 3]
  _, st = dec.apply({"params": params}, slots, attn, np.ones((B, K), bool), keep_idx, grid,
                    mutable=["intermediates"])
  pos, scale = st["intermediates"]["slot_pos"][0], st["intermediates"]["slot_scale"][0]
  # sample 0: token 0 -> (-1, -1), token 6 (row 1, col 2) -> (1/3, 0)
  np.testing.assert_allclose(pos[0], [[-1 / 3, -0.5]] * K, atol=1e-6)
  np.testing.assert_allclose(scale[0], [[2 / 3, 0.5]] * K, atol=1e-6)
  # sample 1: token 2 (row 0, col 2) -> (1/3, -1), token 7 (row 1, col 3) -> (1, 0)
  np.testing.assert_allclose(pos[1], [[2 / 3, -0.5]] * K, atol=1e-6)
  np.testing.assert_allclose(scale[1], [[1 / 3, 0.5]] * K, atol=1e-6)


def test_gradients_are_finite_with_invalid_rows():
  dec, params = _model_and_params()
  slots, attn, valid, keep_idx, grid = _inputs()

  def loss(p, s, a):
    recon, _ = dec.apply({"params": p}, s, a, valid, keep_idx, grid)
    return jnp.mean(recon ** 2)

  g_p, g_s, g_a = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, slots, attn)
  for leaf in jax.tree.leaves((g_p, g_s, g_a)):
    assert np.all(np.isfinite(leaf))
  assert np.all(np.asarray(g_s)[~valid] == 0) and np.abs(np.asarray(g_s)[valid]).sum() > 0
  assert all(np.abs(np.asarray(x)).sum() > 0 for x in jax.tree.leaves(g_p))


def test_vanilla_variant_has_no_relative_grid_and_param_counts():
  dec = Decoder(N, feature_dim=D, hidden=HID, relative_grid=False)
  slots, _, valid, _, _ = _inputs()
  params = dec.init(jax.random.key(0), slots, valid=valid)["params"]
  assert "grid_proj" not in params
  _, masks = dec.apply({"params": params}, slots, valid=valid)
  np.testing.assert_allclose(np.asarray(masks).sum(1), 1.0, rtol=1e-6)
  # Full size (336 x 504, D_slot 128): mapper 128 -> 1024 x 4 -> 769 and the (864, 128)
  # position embedding, counted here from the layer sizes.
  big = Decoder(864)
  shapes = jax.eval_shape(big.init, jax.random.key(0), jnp.zeros((1, 8, 128)),
                          jnp.full((1, 8, 432), 1 / 432), jnp.ones((1, 8), bool),
                          jnp.zeros((1, 432), jnp.int32), jnp.zeros((864, 2)))["params"]
  count = lambda t: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(t))
  dense = lambda i, o: i * o + o
  mapper = dense(128, 1024) + 3 * dense(1024, 1024) + dense(1024, 769)
  assert count({k: v for k, v in shapes.items() if k.startswith("mlp_")}) == mapper
  assert count(shapes["pos_embed"]) == 864 * 128
  assert count(shapes["grid_proj"]) == dense(2, 128)


def test_torch_init_matches_torch_linear_and_normal():
  from tests.models.torch_init import assert_like_torch
  import torch
  n = 48  # the mapper's sizes are the authors'; only the position embedding depends on N
  dec = Decoder(n)  # feature_dim 768, hidden 1024, 5 layers, param_init 'torch'
  attn = jnp.full((1, 8, n), 1.0 / n)
  params = jax.jit(dec.init)(jax.random.key(0), jnp.zeros((1, 8, 128)), attn,
                             jnp.ones((1, 8), bool), jnp.arange(n)[None],
                             grid_abs_init((6, 8)))["params"]
  torch.manual_seed(0)
  # The authors' s_bind.h (2 -> D_slot) and dec.layer1..layer5.
  sizes = {"grid_proj": (2, 128), "mlp_0": (128, 1024), "mlp_1": (1024, 1024),
           "mlp_2": (1024, 1024), "mlp_3": (1024, 1024), "mlp_4": (1024, 769)}
  for name, (d_in, d_out) in sizes.items():
    ref = torch.nn.Linear(d_in, d_out)
    assert_like_torch(params[name]["kernel"], ref.weight, f"{name} kernel")
    assert_like_torch(params[name]["bias"], ref.bias, f"{name} bias")
  pos = torch.empty(1, n, 128)  # the authors' pos_dec: init.normal_(std=.02)
  torch.nn.init.normal_(pos, std=0.02)
  assert_like_torch(params["pos_embed"], pos, "pos_embed", uniform=False)
  flax_params = jax.jit(Decoder(n, param_init="flax").init)(
      jax.random.key(0), jnp.zeros((1, 8, 128)), attn, jnp.ones((1, 8), bool),
      jnp.arange(n)[None], grid_abs_init((6, 8)))["params"]
  np.testing.assert_array_equal(flax_params["mlp_0"]["bias"], 0.0)  # Flax's defaults kept
