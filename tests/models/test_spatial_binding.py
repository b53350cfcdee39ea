"""Spatial binding against hand-computed numbers, a float64 numpy transcription of
eqs. (13)-(17) and torch.nn.GRUCell."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from solv_jax.models import spatial_binding as sb


# ----------------------------------------------------------------------------------------------
# numpy reference (float64), written from the paper's equations and torch's layer definitions
# ----------------------------------------------------------------------------------------------
def np_ln(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_dense(x, p):
  y = x @ p["kernel"]
  return y + p["bias"] if "bias" in p else y


def np_gru(h, x, p):  # torch.nn.GRUCell equations
  sig = lambda a: 1 / (1 + np.exp(-a))
  r = sig(np_dense(x, p["ir"]) + np_dense(h, p["hr"]))
  z = sig(np_dense(x, p["iz"]) + np_dense(h, p["hz"]))
  n = np.tanh(np_dense(x, p["in"]) + r * np_dense(h, p["hn"]))
  return (1 - z) * n + z * h


def np_softmax(x, axis):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def np_isa(p, inputs, keep_idx, iters, delta=5.0, invariant=True):
  """One sample: inputs (N', D), keep_idx (N',). Returns slots (K, Ds), W (K, N'), S_p list."""
  relu = lambda a: np.maximum(a, 0)
  pi = p["project_inputs"]
  x = np_ln(np_dense(relu(np_dense(np_ln(inputs, pi["norm_in"]), pi["fc1"])), pi["fc2"]),
            pi["norm_out"])  # (N', Ds)
  ds = x.shape[-1]
  z = p["slots"].copy()
  if invariant:
    grid = p["grid_abs"][keep_idx]  # (N', 2)
    s_p, s_s = p["slot_pos"].copy(), p["slot_scale"].copy()
  positions = []
  for t in range(iters + 1):
    z_prev = z
    z = np_ln(z, p["norm_slots"])
    q = np_dense(z, p["to_q"])  # (K, Ds)
    if invariant:
      g_rel = (grid[None] - s_p[:, None]) / (delta * s_s[:, None])  # eq. (14): (K, N', 2)
      g = np_dense(g_rel, p["grid_proj"])
      f = lambda a: np_dense(relu(np_dense(a, p["kv_mlp_0"])), p["kv_mlp_1"])
      k = f(np_dense(x, p["to_k"])[None] + g)  # (K, N', Ds)
      v = f(np_dense(x, p["to_v"])[None] + g)
      m = np.einsum("kd,knd->kn", q, k) / math.sqrt(ds)  # eq. (13)
    else:
      k, v = np_dense(x, p["to_k"]), np_dense(x, p["to_v"])
      m = q @ k.T / math.sqrt(ds)
    a = np_softmax(m, axis=0) + 1e-8  # softmax over slots
    w = a / a.sum(-1, keepdims=True)  # eq. (16)
    u = np.einsum("kn,knd->kd", w, v) if invariant else w @ v
    if invariant:  # eq. (15)
      s_p = w @ grid
      s_s = np.sqrt(np.einsum("kn,knc->kc", w, (grid[None] - s_p[:, None]) ** 2))
      positions.append((s_p, s_s))
    if t < iters:  # eq. (17): GRU(state=z_prev, input=U), then z + MLP(LN(z))
      z = np_gru(z_prev, u, p["gru"])
      pm = p["mlp"]
      z = z + np_dense(relu(np_dense(np_ln(z, pm["norm"]), pm["fc1"])), pm["fc2"])
  return np_dense(z, p["to_out"]), w, positions


def to_np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ----------------------------------------------------------------------------------------------
# hand-checkable pieces
# ----------------------------------------------------------------------------------------------
def test_grid_abs_init_is_x_then_y_row_major():
  expected = [[-1, -1], [0, -1], [1, -1], [-1, 1], [0, 1], [1, 1]]  # (h, w) = (2, 3)
  np.testing.assert_array_equal(np.asarray(sb.grid_abs_init((2, 3))), expected)


def test_slot_pos_scale_hand_computed():
  grid = jnp.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0]])  # kept positions
  w = jnp.array([[0.5, 0.5, 0.0],  # midpoint of the first two
                 [0.25, 0.25, 0.5]])
  pos, scale = sb.slot_pos_scale(w, grid)
  # slot 0: S_p = (0, -1); S_s = sqrt(0.5*1 + 0.5*1, 0) = (1, 0)
  # slot 1: S_p = (-0.25 + 0.25 + 0.5, -0.25 - 0.25 + 0.5) = (0.5, 0)
  #   S_s_x = sqrt(.25*2.25 + .25*.25 + .5*.25) = sqrt(0.75); S_s_y = sqrt(.25 + .25 + .5) = 1
  np.testing.assert_allclose(pos, [[0.0, -1.0], [0.5, 0.0]], atol=1e-7)
  np.testing.assert_allclose(scale, [[1.0, 0.0], [math.sqrt(0.75), 1.0]], atol=1e-7)


def test_relative_grid_hand_computed_and_clamp():
  grid = jnp.array([[-1.0, -1.0], [1.0, 0.5]])
  pos, scale = jnp.array([[0.0, 0.5]]), jnp.array([[0.2, 0.1]])
  got = sb.relative_grid(grid, pos, scale, delta=5.0)
  # (G - S_p) / (5 * S_s): x / 1.0, (y - 0.5) / 0.5
  np.testing.assert_allclose(got, [[[-1.0, -3.0], [1.0, 0.0]]], rtol=1e-6)
  zero = jnp.array([[0.0, 5.0]])  # clamped to 0.001 and 2
  got = sb.relative_grid(grid, pos, zero, delta=5.0, clamp_scales=True)
  np.testing.assert_allclose(got, [[[-1 / 0.005, -1.5 / 10], [1 / 0.005, 0.0]]], rtol=1e-6)
  assert not np.all(np.isfinite(sb.relative_grid(grid, pos, zero, delta=5.0)))  # authors'


def test_slots_init_matches_torch_xavier_on_authors_tensor():
  k, d = 8, 128
  fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(1, k, d))
  bound = math.sqrt(6.0 / (fan_in + fan_out))
  x = np.asarray(sb.slots_init(jax.random.key(0), (k, d)))
  assert np.abs(x).max() <= bound and np.abs(x).max() > 0.95 * bound
  assert abs(x.std() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)


def test_gru_matches_torch():
  cell = sb.GRUCell(6)
  h, x = np.random.RandomState(0).randn(2, 4, 6).astype(np.float32)
  params = cell.init(jax.random.key(0), h, x)["params"]
  ref = torch.nn.GRUCell(6, 6)
  with torch.no_grad():  # torch stacks the gates as [r | z | n], weights (out, in)
    ref.weight_ih.copy_(torch.tensor(np.concatenate(
        [np.asarray(params[g]["kernel"]).T for g in ("ir", "iz", "in")])))
    ref.weight_hh.copy_(torch.tensor(np.concatenate(
        [np.asarray(params[g]["kernel"]).T for g in ("hr", "hz", "hn")])))
    ref.bias_ih.copy_(torch.tensor(np.concatenate(
        [np.asarray(params[g]["bias"]) for g in ("ir", "iz", "in")]) + 0.1))
    ref.bias_hh.copy_(torch.tensor(np.concatenate(
        [np.asarray(params[g]["bias"]) for g in ("hr", "hz", "hn")]) - 0.2))
    expected = ref(torch.tensor(x), torch.tensor(h)).numpy()
  params = jax.tree.map(lambda a: a, params)
  params = {g: dict(v, bias=v["bias"] + (0.1 if g[0] == "i" else -0.2))
            for g, v in params.items()}
  got = cell.apply({"params": params}, h, x)
  np.testing.assert_allclose(got, expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# whole module
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _setup(iters, clamp=False):
  rs = np.random.RandomState(1)
  grid_hw, k, ds, d = (3, 4), 3, 8, 12
  keep_idx = np.array([[0, 2, 3, 5, 7, 8, 11], [1, 2, 4, 6, 9, 10, 11]], np.int32)  # (B, N')
  inputs = rs.randn(2, keep_idx.shape[1], d).astype(np.float32)
  mod = sb.InvariantSlotAttention(k, grid_hw, slot_dim=ds, iters=iters, clamp_scales=clamp)
  params = mod.init(jax.random.key(2), inputs, keep_idx)["params"]
  # Non-trivial scales/positions and LayerNorm affine params so every term matters.
  params = jax.tree.map(lambda a: a, params)
  params["slot_scale"] = jnp.asarray(rs.uniform(0.1, 0.5, (k, 2)), jnp.float32)
  params["slot_pos"] = jnp.asarray(rs.uniform(-0.5, 0.5, (k, 2)), jnp.float32)
  params["grid_abs"] = params["grid_abs"] + jnp.asarray(rs.randn(12, 2) * 0.05, jnp.float32)
  for ln in ("norm_slots",):
    params[ln] = {"scale": jnp.asarray(rs.uniform(0.5, 1.5, ds), jnp.float32),
                  "bias": jnp.asarray(rs.randn(ds) * 0.1, jnp.float32)}
  return mod, params, inputs, keep_idx


def test_grid_abs_param_is_initialised_and_learned():
  mod, params, inputs, keep_idx = _setup(iters=1)
  p0 = mod.init(jax.random.key(2), inputs, keep_idx)["params"]
  np.testing.assert_array_equal(p0["grid_abs"], sb.grid_abs_init((3, 4)))
  loss = lambda p: jnp.sum(mod.apply({"params": p}, inputs, keep_idx)[0] ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  assert np.abs(np.asarray(grads["grid_abs"])).sum() > 0
  assert set(grads) >= {"slots", "slot_pos", "slot_scale", "grid_abs"}


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_invariant_slot_attention_matches_numpy_equations(iters):
  mod, params, inputs, keep_idx = _setup(iters)
  (slots, attn), state = mod.apply({"params": params}, inputs, keep_idx,
                                   mutable=["intermediates"])
  assert slots.shape == (2, 3, 8) and attn.shape == (2, 3, 7)
  assert len(state["intermediates"]["slot_pos"]) == iters + 1  # iters + 1 attention passes
  p = to_np(params)
  for b in range(2):
    ref_slots, ref_w, ref_pos = np_isa(p, inputs[b].astype(np.float64), keep_idx[b], iters)
    np.testing.assert_allclose(slots[b], ref_slots, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(attn[b], ref_w, rtol=2e-4, atol=1e-7)
    for t, (s_p, s_s) in enumerate(ref_pos):
      np.testing.assert_allclose(state["intermediates"]["slot_pos"][t][b], s_p, atol=2e-5)
      np.testing.assert_allclose(state["intermediates"]["slot_scale"][t][b], s_s, atol=2e-5)
  np.testing.assert_allclose(np.asarray(attn).sum(-1), 1.0, rtol=1e-6)


def test_uniform_attention_gives_hand_computed_position_and_scale():
  # With q = 0 every logit is 0: A = 1/K + eps, W = 1/N' on every kept token, so S_p and S_s
  # are the mean and the (population) std of the kept grid positions.
  grid_hw = (2, 2)  # G_abs = (-1,-1), (1,-1), (-1,1), (1,1)
  keep_idx = np.array([[0, 1, 3]], np.int32)
  inputs = np.random.RandomState(0).randn(1, 3, 5).astype(np.float32)
  mod = sb.InvariantSlotAttention(2, grid_hw, slot_dim=4, iters=1)
  params = mod.init(jax.random.key(0), inputs, keep_idx)["params"]
  params = dict(params, to_q={"kernel": jnp.zeros((4, 4))})
  (_, attn), st = jax.jit(functools.partial(mod.apply, mutable=["intermediates"]))(
      {"params": params}, inputs, keep_idx)
  np.testing.assert_allclose(attn, np.full((1, 2, 3), 1 / 3), rtol=1e-6)
  s = math.sqrt(8 / 9)  # x: (-1, 1, 1) -> mean 1/3, var ((4/3)^2 + 2 (2/3)^2) / 3 = 8/9
  for t in range(2):
    np.testing.assert_allclose(st["intermediates"]["slot_pos"][t][0], [[1 / 3, -1 / 3]] * 2,
                               atol=1e-6)
    np.testing.assert_allclose(st["intermediates"]["slot_scale"][t][0], [[s, s]] * 2, atol=1e-6)


def test_clamp_scales_flag():
  mod, params, inputs, keep_idx = _setup(iters=1)
  params = dict(params, slot_scale=jnp.zeros_like(params["slot_scale"]))
  slots, _ = mod.apply({"params": params}, inputs, keep_idx)
  assert not np.all(np.isfinite(slots))  # the authors' unclamped division by zero
  clamped = sb.InvariantSlotAttention(3, (3, 4), slot_dim=8, iters=1, clamp_scales=True)
  slots, _ = clamped.apply({"params": params}, inputs, keep_idx)
  assert np.all(np.isfinite(slots))


def test_dropout_only_in_training():
  mod, params, inputs, keep_idx = _setup(iters=2)
  run = lambda key, train: mod.apply({"params": params}, inputs, keep_idx, train=train,
                                     rngs={"dropout": jax.random.key(key)})[0]
  np.testing.assert_array_equal(run(0, False), run(1, False))
  assert not np.allclose(run(0, True), run(1, True))


def test_vanilla_slot_attention_matches_numpy():
  rs = np.random.RandomState(3)
  inputs = rs.randn(2, 6, 10).astype(np.float32)
  mod = sb.SlotAttention(4, slot_dim=8, iters=3)
  params = mod.init(jax.random.key(0), inputs)["params"]
  assert "grid_abs" not in params and params["slots"].shape == (4, 8)
  slots, attn = jax.jit(mod.apply)({"params": params}, inputs)
  p = to_np(params)
  for b in range(2):
    ref_slots, ref_w, _ = np_isa(p, inputs[b].astype(np.float64), None, 3, invariant=False)
    np.testing.assert_allclose(slots[b], ref_slots, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(attn[b], ref_w, rtol=2e-4, atol=1e-7)


def test_build_spatial_binding_rejects_unknown_kind():
  with pytest.raises(ValueError, match="invariant"):
    sb.build_spatial_binding("isa", num_slots=2, grid_hw=(2, 2))


# ----------------------------------------------------------------------------------------------
# Initialisation (docs/METHOD.md §6) against torch's own initialisers, at the authors' sizes
# ----------------------------------------------------------------------------------------------
def _isa_params(param_init, seed=0):
  mod = sb.InvariantSlotAttention(8, (24, 36), slot_dim=128, param_init=param_init)
  inputs, keep_idx = jnp.zeros((1, 4, 768)), jnp.zeros((1, 4), jnp.int32)
  return jax.jit(mod.init)(jax.random.key(seed), inputs, keep_idx)["params"]


def test_torch_init_matches_torch_linear_gru_and_layer_norm():
  from tests.models.torch_init import assert_like_torch
  p = _isa_params("torch")
  torch.manual_seed(0)
  # Every nn.Linear of the authors' Spatial_Binder, (in, out, bias), and its solv_jax Dense.
  linears = {("project_inputs", "fc1"): (768, 768, True),
             ("project_inputs", "fc2"): (768, 128, True),
             ("to_q",): (128, 128, False), ("to_k",): (128, 128, False),
             ("to_v",): (128, 128, False), ("grid_proj",): (2, 128, True),
             ("kv_mlp_0",): (128, 128, True), ("kv_mlp_1",): (128, 128, True),
             ("mlp", "fc1"): (128, 512, True), ("mlp", "fc2"): (512, 128, True),
             ("to_out",): (128, 128, True)}
  for path, (d_in, d_out, bias) in linears.items():
    ours = functools.reduce(lambda t, k: t[k], path, p)
    ref = torch.nn.Linear(d_in, d_out, bias=bias)
    assert_like_torch(ours["kernel"], ref.weight, f"{path} kernel")
    assert ("bias" in ours) == bias
    if bias:
      assert_like_torch(ours["bias"], ref.bias, f"{path} bias")
  gru, ref = p["gru"], torch.nn.GRUCell(128, 128)
  for side in "ih":  # torch stacks the gates (r, z, n) in one tensor per side
    assert_like_torch(np.concatenate([gru[f"{side}{g}"]["kernel"] for g in "rzn"], 1),
                      getattr(ref, f"weight_{side}h"), f"gru weight_{side}h")
    assert_like_torch(np.concatenate([gru[f"{side}{g}"]["bias"] for g in "rzn"]),
                      getattr(ref, f"bias_{side}h"), f"gru bias_{side}h")
  for path in (("project_inputs", "norm_in"), ("project_inputs", "norm_out"), ("norm_slots",),
               ("mlp", "norm")):
    ln = functools.reduce(lambda t, k: t[k], path, p)
    np.testing.assert_array_equal(ln["scale"], 1.0)
    np.testing.assert_array_equal(ln["bias"], 0.0)
  slots = torch.empty(1, 8, 128)
  torch.nn.init.xavier_uniform_(slots)
  assert_like_torch(p["slots"], slots, "slots")
  for name in ("slot_pos", "slot_scale"):  # the authors' S_p, S_s: init.normal_(std=.02)
    ref = torch.empty(1, 8, 1, 2)
    torch.nn.init.normal_(ref, std=0.02)
    assert_like_torch(p[name], ref, name, uniform=False)
  np.testing.assert_allclose(p["grid_abs"], sb.grid_abs_init((24, 36)), atol=1e-6)


def test_flax_init_option_keeps_flax_defaults():
  p = _isa_params("flax")
  for name in ("fc1", "fc2"):
    np.testing.assert_array_equal(p["project_inputs"][name]["bias"], 0.0)
  np.testing.assert_array_equal(p["kv_mlp_0"]["bias"], 0.0)
  kernel = np.asarray(p["kv_mlp_0"]["kernel"])  # lecun normal: std 1/sqrt(fan_in)
  np.testing.assert_allclose(kernel.std(), 1 / math.sqrt(128), rtol=0.05)
  for g in "rzn":
    np.testing.assert_array_equal(p["gru"][f"i{g}"]["bias"], 0.0)
    hidden = np.asarray(p["gru"][f"h{g}"]["kernel"])  # orthogonal
    np.testing.assert_allclose(hidden.T @ hidden, np.eye(128), atol=1e-5)
  with pytest.raises(ValueError, match="param_init"):
    _isa_params("xavier")


def test_slot_mlp_dropout_is_on_the_mlp_output_before_the_residual():
  # Authors' models/model.py MLP: x + dropout(layer2(relu(layer1(norm(x))))). Each element of
  # the residual branch is then either dropped (0) or the eval branch scaled by 1/(1 - p).
  mlp = sb.ResidualMLP(32, dropout=0.5)
  z = np.random.RandomState(0).randn(4, 3, 8).astype(np.float32)
  params = mlp.init(jax.random.key(0), z, train=False)["params"]
  branch = np.asarray(mlp.apply({"params": params}, z, train=False)) - z
  got = np.asarray(mlp.apply({"params": params}, z, train=True,
                             rngs={"dropout": jax.random.key(1)})) - z
  kept = np.abs(got) > 1e-6
  np.testing.assert_allclose(got[kept], branch[kept] / 0.5, rtol=1e-4, atol=1e-5)
  assert 0.2 < kept.mean() < 0.8
