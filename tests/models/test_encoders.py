"""The encoder table (solv_jax/models/encoders.py): the DINOv2 entries carry the published
sizes, and a new encoder is one registered entry that SOLV, the config check and the param
loading take with no other change."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solv_jax import schema
from solv_jax.models import build, encoders
from tests.tiny import tiny_config

# Oquab et al. 2023, Table 17 / the official hub: width, blocks; 4 registers for *_reg.
PUBLISHED = {"vits14": (384, 12), "vitb14": (768, 12), "vitl14": (1024, 24),
             "vitg14": (1536, 40)}


def test_dinov2_entries_have_the_published_sizes():
  assert set(encoders.ENCODERS) >= set(PUBLISHED) | {f"{n}_reg" for n in PUBLISHED}
  for name, (width, depth) in PUBLISHED.items():
    for variant in (name, f"{name}_reg"):
      spec = encoders.get(variant)
      assert (spec.patch_size, spec.width, spec.depth, spec.token_drop) == (14, width, depth,
                                                                            True)
      assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
  assert encoders.get("vitb14").grid((336, 504)) == (24, 36)
  with pytest.raises(ValueError, match="multiples of the DINOv2 patch size 14"):
    encoders.get("vitb14").grid((336, 500))
  with pytest.raises(ValueError, match="choose one of"):
    encoders.get("vitx14")


class PatchMean(nn.Module):
  """A toy encoder: the mean colour of each 8x8 patch, projected to 12 features."""
  dtype: Any = jnp.float32
  num_blocks: int = 0

  @nn.compact
  def __call__(self, images, keep_idx=None, *, drop_ratio: float = 0.0):
    b, h, w, c = images.shape
    x = images.reshape(b, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4)).reshape(b, -1, c)
    x = nn.Dense(12, dtype=self.dtype, name="proj")(x)  # (B, N, 12)
    idx = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
    return x.astype(jnp.float32), idx


def test_a_new_encoder_is_one_registered_entry(monkeypatch):
  monkeypatch.setattr(encoders, "ENCODERS", dict(encoders.ENCODERS))
  init = lambda rng: PatchMean().init(rng, jnp.zeros((1, 8, 8, 3)))["params"]  # noqa: E731
  encoders.register(encoders.Encoder(
      name="patchmean8", family="PatchMean", patch_size=8, width=12, depth=1,
      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), token_drop=False,
      module=lambda dtype, num_blocks: PatchMean(dtype=dtype, num_blocks=num_blocks),
      init_params=init, load_params=lambda path: {}))
  with pytest.raises(ValueError, match="registered already"):
    encoders.register(encoders.get("patchmean8"))

  config = tiny_config(encoder_variant="patchmean8", token_drop=0.0)
  config.data.resolution = (16, 24)
  schema.validate(config)
  bad = config.copy_and_resolve_references()
  bad.model.token_drop = 0.5
  with pytest.raises(schema.ConfigError, match="cannot drop tokens"):
    schema.validate(bad)
  bad = config.copy_and_resolve_references()
  bad.data.resolution = (14, 24)
  with pytest.raises(schema.ConfigError, match="multiples of the PatchMean patch size 8"):
    schema.validate(bad)

  model = build.build_model(config)
  assert model.grid_hw == (2, 3)
  encoder = build.encoder_params(config, model)
  np.testing.assert_array_equal(encoder["proj"]["kernel"],
                                init(jax.random.key(config.seed + 1))["proj"]["kernel"])
  params = build.with_encoder(build.initial_params(config, model), encoder)
  video = np.random.default_rng(0).integers(0, 256, (2, 5, 16, 24, 3), dtype=np.uint8)
  frames = model.normalize(video)  # the entry's own mean and std
  np.testing.assert_allclose(frames, (video / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)
  out = model.apply({"params": params}, frames, np.ones((2, 5), bool), train=True,
                    rngs={"dropout": jax.random.key(1), "merge": jax.random.key(2)})
  assert out["recon"].shape == out["target"].shape == (2, 6, 12)  # N = 2 x 3 tokens, D = 12
  np.testing.assert_allclose(  # the target is the middle frame's features of this encoder
      out["target"], PatchMean().apply({"params": encoder}, frames[:, 2])[0], rtol=1e-6)
  assert np.isfinite(float(out["loss"]))


# Oquab et al. 2025 (DINOv3) / the official hub: width, blocks; patch 16, 4 registers each.
PUBLISHED_V3 = {"dinov3_vits16": (384, 12), "dinov3_vits16plus": (384, 12),
                "dinov3_vitb16": (768, 12), "dinov3_vitl16": (1024, 24),
                "dinov3_vith16plus": (1280, 32)}


def test_dinov3_entries_have_the_published_sizes():
  for name, (width, depth) in PUBLISHED_V3.items():
    spec = encoders.get(name)
    assert (spec.family, spec.patch_size, spec.width, spec.depth, spec.token_drop) == (
        "DINOv3", 16, width, depth, True)
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
  spec = encoders.get("dinov3_vitb16")
  assert spec.grid((336, 512)) == (21, 32)
  assert spec.fit((336, 504)) == (336, 512) and spec.fit((336, 336)) == (336, 336)
  assert spec.fit((40, 8)) == (48, 16)  # ties round up; at least one patch
  with pytest.raises(ValueError, match=r"multiples of the DINOv3 patch size 16; e.g. "
                                       r"--config.data.resolution='\(336, 512\)'"):
    spec.grid((336, 504))


def _tiny_step(name, **model_overrides):
  """The tiny config on encoder `name` (its resolution fitted to the patch), its model, the
  jitted-to-be train step function, an optimizer state and a uint8 batch."""
  from solv_jax import train_step
  spec = encoders.get(name)
  config = tiny_config(encoder_variant=name, **model_overrides)
  config.data.resolution = spec.fit((42, 56))
  config.train.batch_size = 2
  schema.validate(config)
  model = build.build_model(config)
  tx = train_step.make_optimizer(config.train)
  h, w = config.data.resolution
  video = np.random.default_rng(0).integers(0, 256, (2, 5, h, w, 3), dtype=np.uint8)
  batch = {"video": video, "frame_mask": np.ones((2, 5), bool)}
  return config, model, tx, train_step.make_train_step(model, tx, config), batch


@pytest.mark.parametrize("name", sorted(encoders.ENCODERS))
def test_every_entry_traces_a_train_step(name):
  """Each registered encoder, by name, in the tiny config: validated, built, and a train step
  traced through its module (token drop, the encoder's width into the decoder, the loss, the
  optimizer), its first block only (encoder_blocks=1). Traced, not compiled: 15 compiles
  would cost CI minutes; the executed steps are below and in tests/test_train.py, and the
  modules' numbers are tested against transformers (test_dinov2.py, test_dinov3.py)."""
  from solv_jax import train_step
  spec = encoders.get(name)
  config, model, tx, step_fn, batch = _tiny_step(name, encoder_blocks=1)
  p = spec.patch_size
  frozen = jax.eval_shape(spec.module(dtype=jnp.float32, num_blocks=1).init, jax.random.key(1),
                          jnp.zeros((1, p, p, 3)))["params"]
  state = jax.eval_shape(lambda: train_step.create_train_state(config, model, tx))
  new_state, metrics = jax.eval_shape(step_fn, state, frozen, batch, jax.random.key(0))
  assert metrics["loss"].shape == () and metrics["loss"].dtype == jnp.float32
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  grid = spec.grid(config.data.resolution)
  out = jax.eval_shape(lambda params: model.apply(
      {"params": params}, model.normalize(batch["video"]), batch["frame_mask"], train=True,
      rngs={"token_drop": jax.random.key(0), "dropout": jax.random.key(1),
            "merge": jax.random.key(2)}), {**state.params, "encoder": frozen})
  assert out["target"].shape == (2, grid[0] * grid[1], spec.width)


def test_dinov3_trains_a_step_in_the_tiny_config():
  """dinov3_vits16, its full random init (build.encoder_params), one executed train step."""
  from solv_jax import sharding, train_step
  config, model, tx, step_fn, batch = _tiny_step("dinov3_vits16")
  assert config.data.resolution == (48, 64) and model.grid_hw == (3, 4)
  frozen = build.encoder_params(config, model)
  assert frozen["storage_tokens"].shape == (1, 4, 384) and "blocks_11" in frozen
  state = train_step.create_train_state(config, model, tx)
  before = jax.device_get(state.params)
  step = train_step.jit_train_step(step_fn, sharding.make_mesh(jax.devices()[:1]))
  state, metrics = step(state, frozen, batch, jax.random.key(0))
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
  moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(jax.device_get(state.params)))]
  assert sum(moved) > len(moved) // 2
