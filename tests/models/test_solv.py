"""SOLV end to end on a tiny DINOv2; parameter count at the paper's size via eval_shape."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from solv_jax.models.build import build_model
from solv_jax.models.solv import SOLV

TINY_VIT = dict(embed_dim=16, depth=1, num_heads=2, ffn="mlp", num_registers=0, pretrain_grid=4)
B, F, H, W = 2, 5, 42, 56  # 3 x 4 = 12 patches
N = 12


def model_config(**overrides):
  """config.model of the schema (solv_jax/schema.py: the paper's YTVIS19 values), overridden."""
  from solv_jax import schema
  c = schema.get_config().model
  assert (c.encoder_variant, c.num_slots, c.slot_dim, c.decoder_hidden) == ("vitb14", 8, 128, 1024)
  c.update(overrides)
  return c


def tiny_model(**overrides):
  # Shallow loops keep XLA's CPU compile short; the components run at full depth in their
  # own tests.
  sizes = dict(num_slots=4, slot_dim=16, decoder_hidden=32, temporal_heads=2, slot_iters=1,
               temporal_layers=1, decoder_layers=3)
  cfg = model_config(**{**sizes, **overrides})
  return SOLV.from_config(cfg, resolution=(H, W), num_frames=F, encoder_variant=TINY_VIT)


def test_from_config_refuses_unknown_and_missing_keys():
  cfg = model_config()
  cfg.merge = False  # the key's name before it became the field's
  with pytest.raises(ValueError, match=r"\['merge'\] are not fields of SOLV"):
    SOLV.from_config(cfg, resolution=(H, W))
  cfg = model_config().to_dict()
  del cfg["use_merge"], cfg["delta"]
  with pytest.raises(ValueError, match=r"\['delta', 'use_merge'\] are missing"):
    SOLV.from_config(cfg, resolution=(H, W))
  model = SOLV.from_config(model_config(use_merge=False), resolution=(H, W), num_frames=3)
  assert (model.use_merge, model.num_frames, model.resolution) == (False, 3, (H, W))


def batch():
  rs = np.random.RandomState(0)
  video = rs.randn(B, F, H, W, 3).astype(np.float32)
  frame_mask = np.ones((B, F), bool)
  frame_mask[1, :2] = False
  video[1, :2] = 0.0  # zero-filled beyond the video's start
  return video, frame_mask


RNGS = {"token_drop": jax.random.key(1), "dropout": jax.random.key(2), "merge": jax.random.key(3)}


@functools.lru_cache(maxsize=None)
def init(**overrides):
  model = tiny_model(**overrides)
  video, frame_mask = batch()
  variables = jax.jit(functools.partial(model.init, train=True, merge_prob=0.5))(
      {"params": jax.random.key(0), **RNGS}, video, frame_mask)
  return model, variables["params"]


@functools.lru_cache(maxsize=None)
def train_step():
  """(loss, outputs), grads w.r.t. ALL params (encoder included) of one training forward."""
  model, params = init()
  video, frame_mask = batch()

  def loss(p):
    out = model.apply({"params": p}, video, frame_mask, train=True, merge_prob=1.0, rngs=RNGS)
    return out["loss"], out

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@functools.lru_cache(maxsize=None)
def eval_forward():
  model, params = init()
  video, frame_mask = batch()
  return jax.jit(functools.partial(model.apply, train=False))({"params": params}, video,
                                                              frame_mask)


@functools.lru_cache(maxsize=None)
def method(name):
  model, _ = init()
  return jax.jit(functools.partial(model.apply, method=getattr(SOLV, name)))


@functools.lru_cache(maxsize=None)
def eval_window():
  """The evaluation path: features of every frame, then slots and attention per frame."""
  _, params = init()
  video, _ = batch()
  feats = method("encode")({"params": params}, video)  # (B, F, N, D), once per frame
  slots, attn = method("bind_spatial")({"params": params}, feats)
  return feats, slots, attn


def count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_trainable_param_count_matches_the_authors_at_336x504_k8():
  config = ml_collections.ConfigDict(dict(
      model=model_config(), data=dict(resolution=(336, 504), num_context=2)))
  model = build_model(config)
  video = jax.ShapeDtypeStruct((1, 5, 336, 504, 3), jnp.float32)
  mask = jax.ShapeDtypeStruct((1, 5), jnp.bool_)
  shapes = jax.eval_shape(functools.partial(model.init, train=True),
                          {"params": jax.random.key(0), **RNGS}, video, mask)["params"]
  trainable = {k: v for k, v in shapes.items() if k != "encoder"}
  assert count(trainable) == 5_799_521  # the authors' release
  dec = dict(shapes["decoder"])
  pos = count(dec.pop("pos_embed"))
  h = count(dec.pop("grid_proj"))  # the authors keep h in their spatial binder
  assert round((count(shapes["spatial_binding"]) + h) / 1e6, 2) == 1.02
  assert round(count(shapes["temporal_binding"]) / 1e6, 2) == 0.60
  assert round(count(dec) / 1e6, 2) == 4.07
  assert round(pos / 1e6, 2) == 0.11


def test_gradients_reach_every_trainable_param_and_none_reach_dinov2():
  _, grads = train_step()
  for leaf in jax.tree.leaves(grads["encoder"]):
    assert np.all(np.asarray(leaf) == 0)
  flat = jax.tree_util.tree_leaves_with_path({k: v for k, v in grads.items() if k != "encoder"})
  dead = [jax.tree_util.keystr(k) for k, g in flat if not np.any(np.asarray(g) != 0)]
  assert not dead, dead
  assert all(np.all(np.isfinite(np.asarray(g))) for _, g in flat)


def test_forward_outputs_and_loss():
  (loss, out), _ = train_step()
  k = 4
  n_kept = int(N * 0.5)
  assert out["recon"].shape == out["target"].shape == (B, N, 16)
  assert out["masks"].shape == (B, k, N) and out["valid"].shape == (B, k)
  assert out["slots"].shape == (B, k, 16) and out["attn"].shape == (B, k, n_kept)
  valid = np.asarray(out["valid"])
  masks = np.asarray(out["masks"])
  np.testing.assert_allclose(masks.sum(1), 1.0, rtol=1e-5)
  assert np.all(masks[~valid] == 0)
  np.testing.assert_allclose(loss, np.mean((out["recon"] - out["target"]) ** 2), rtol=1e-6)


def test_evaluation_methods_compose_to_the_forward_pass():
  model, params = init()
  video, frame_mask = batch()
  v = {"params": params}
  full = eval_forward()
  feats, slots, attn = eval_window()
  out = method("decode_window")(v, slots, attn, frame_mask)
  np.testing.assert_allclose(feats[:, F // 2], full["target"], rtol=1e-6)
  for key in ("recon", "masks", "slots", "attn", "valid"):
    np.testing.assert_allclose(out[key], full[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_masked_frames_and_other_frames_positions_do_not_matter():
  model, params = init()
  video, frame_mask = batch()
  v = {"params": params}
  feats, _, _ = eval_window()
  rs = np.random.RandomState(1)
  keep = np.stack([np.sort(rs.permutation(N)[:6]) for _ in range(B * F)]).reshape(B, F, 6)
  keep = keep.astype(np.int32)
  kept = np.take_along_axis(np.asarray(feats), keep[..., None], axis=2)
  slots, attn = method("bind_spatial")(v, kept, keep)
  decode = method("decode_window")
  base = decode(v, slots, attn, frame_mask, keep)
  # Other frames' kept positions are unused by the decoder (it uses the middle frame's).
  keep2 = keep.copy()
  keep2[:, [0, 1, 3, 4]] = keep[:, [4, 3, 1, 0]]
  out = decode(v, slots, attn, frame_mask, keep2)
  np.testing.assert_array_equal(out["masks"], base["masks"])
  # A masked frame's slots do not change the output; the middle frame's positions do.
  slots2 = np.asarray(slots).copy()
  slots2[1, :2] = 50.0
  out = decode(v, slots2, attn, frame_mask, keep)
  np.testing.assert_allclose(out["recon"], base["recon"], rtol=1e-4, atol=1e-5)
  keep3 = keep.copy()
  keep3[:, 2] = np.sort(rs.permutation(N)[:6])
  assert not np.allclose(decode(v, slots, attn, frame_mask, keep3)["recon"], base["recon"])


def test_merge_schedule_backends_and_rng():
  model, params = init()
  video, frame_mask = batch()
  v = {"params": params}
  _, slots, attn = eval_window()
  # Random slots, pairwise far apart in cosine distance whatever the init (with the authors'
  # torch init, some pairs of the untrained binder's slots are closer than 0.12 and merge).
  slots = np.random.RandomState(2).randn(*slots.shape).astype(np.float32)
  slots[:, :, 1] = slots[:, :, 0]  # slot 1 duplicates slot 0 in every frame -> they merge

  def decoder(m):  # merge probability traced: per-sample draws from the 'merge' stream
    return jax.jit(lambda p, r: m.apply(v, slots, attn, frame_mask, merge_prob=p,
                                        rngs={"merge": r}, method=SOLV.decode_window))

  decode = decoder(model)
  device = decode(1.0, jax.random.key(0))  # probability 1: every sample merges
  valid = np.asarray(device["valid"])
  assert np.all(valid[:, :3]) and not np.any(valid[:, 1:].all(1))  # a row fewer per sample
  host = decoder(tiny_model(merge_backend="host"))(1.0, jax.random.key(0))
  for key in ("recon", "masks", "valid", "slots", "attn"):
    np.testing.assert_allclose(device[key], host[key], rtol=1e-6, err_msg=key)
  assert np.all(decode(0.0, jax.random.key(0))["valid"])  # probability 0: none merge
  # A static 1.0 needs no 'merge' RNG (evaluation).
  static = method("decode_window")(v, slots, attn, frame_mask)
  np.testing.assert_array_equal(static["valid"], valid)


@pytest.mark.parametrize("name,spatial,temporal,merge", [
    ("A", "vanilla", False, False), ("B", "vanilla", False, True),
    ("C", "vanilla", True, True), ("D", "invariant", False, True),
    ("E", "invariant", True, True)])
def test_table3_models_are_config_switches(name, spatial, temporal, merge):
  model = tiny_model(spatial_binding_type=spatial, use_temporal_binding=temporal,
                     use_merge=merge)
  video, frame_mask = batch()
  out, params = jax.eval_shape(
      lambda k: model.init_with_output({"params": k, **RNGS}, video, frame_mask, train=True,
                                       merge_prob=0.5), jax.random.key(0))
  params = params["params"]
  assert ("temporal_binding" in params) == temporal, name
  assert ("grid_abs" in params["spatial_binding"]) == (spatial == "invariant"), name
  assert ("grid_proj" in params["decoder"]) == (spatial == "invariant"), name
  assert out["masks"].shape == (B, 4, N)


def test_bfloat16_compute_keeps_float32_params_and_follows_the_float32_model():
  """config.model.compute_dtype=bfloat16: the trainable per-token layers and the slot
  attention products compute in bfloat16; params, softmaxes, the loss and grads stay float32
  and agree with the float32 model's to bfloat16 precision."""
  model, params = init()
  bf16 = tiny_model(compute_dtype="bfloat16")
  video, frame_mask = batch()
  init16 = jax.jit(functools.partial(bf16.init, train=True, merge_prob=0.5))(
      {"params": jax.random.key(0), **RNGS}, video, frame_mask)["params"]
  jax.tree.map(np.testing.assert_array_equal, init16, params)  # same params, same init
  assert {leaf.dtype for leaf in jax.tree.leaves(init16)} == {jnp.dtype(jnp.float32)}

  def loss_fn(m):
    def loss(p):
      out = m.apply({"params": p}, video, frame_mask, train=True, merge_prob=1.0, rngs=RNGS)
      return out["loss"], out
    return jax.jit(jax.value_and_grad(loss, has_aux=True))

  hlo = {m.compute_dtype: loss_fn(m).lower(params).as_text() for m in (model, bf16)}
  assert "bf16" in hlo["bfloat16"] and "bf16" not in hlo["float32"]

  (loss32, out32), g32 = train_step()
  (loss16, out16), g16 = loss_fn(bf16)(params)
  assert loss16.dtype == out16["recon"].dtype == out16["masks"].dtype == jnp.float32
  np.testing.assert_allclose(loss16, loss32, rtol=5e-3)
  np.testing.assert_allclose(out16["masks"], out32["masks"], atol=1e-2)
  np.testing.assert_array_equal(out16["valid"], out32["valid"])
  for part in ("spatial_binding", "temporal_binding", "decoder"):
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32[part])])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16[part])])
    assert b.dtype == np.float32 and np.all(np.isfinite(b))
    cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert cosine > 0.99, (part, cosine)
