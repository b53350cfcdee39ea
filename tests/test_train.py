"""The train step: sharded over 8 simulated devices equals 1 device; non-finite updates."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solv_jax import sharding, train
from solv_jax.models.solv import build_model
from tests.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, (h, w) = config.train.batch_size, config.data.resolution
  mask = np.ones((b, 5), bool)
  mask[0, :2] = False  # a clip at the start of its video
  video = rng.normal(size=(b, 5, h, w, 3)).astype(np.float32) * mask[..., None, None, None]
  return {"video": video, "frame_mask": mask}


def _setup(config):
  model = build_model(config)
  tx = train.make_optimizer(config.train)
  return model, tx, train.encoder_params(config, model), train.create_train_state(
      config, model, tx)


def test_sharded_step_on_8_devices_equals_single_device():
  code = textwrap.dedent("""
      import jax, numpy as np, optax
      from solv_jax import sharding, train
      from tests.test_train import _batch, _setup
      from tests.tiny import tiny_config
      assert jax.device_count() == 8, jax.devices()
      # Clamped ISA scales: unclamped, a near-zero slot scale of the random init makes the
      # relative grid explode and the loss ill-conditioned (grad norms ~1e5), so float
      # reassociation across shards alone moves it by 1e-4.
      config = tiny_config(merge_backend="device", clamp_scales=True)
      out = []
      for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        model, _, frozen, _ = _setup(config)
        # Plain SGD: Adam's first updates are ~lr * sign(g), which turns float-level
        # differences of near-zero gradient components into whole updates.
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.01))
        state = train.create_train_state(config, model, tx)
        step = train.jit_train_step(train.make_train_step(model, tx, config), mesh)
        ms = []
        for i in range(2):
          state, m = step(state, frozen, sharding.shard_batch(_batch(config, i), mesh),
                          jax.random.key(0))
          ms.append([float(m["loss"]), float(m["grad_norm"])])
        out.append((jax.device_get(state.params), np.array(ms)))
      (p1, m1), (p8, m8) = out
      print("metrics 1 device", m1.tolist(), "8 devices", m8.tolist())
      np.testing.assert_allclose(m8, m1, rtol=1e-5)
      for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "OK" in res.stdout


def test_nonfinite_update_is_not_applied_and_stops_with_the_step():
  config = tiny_config()
  model, tx, frozen, state = _setup(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(train.make_train_step(model, tx, config), mesh)
  state, _ = step(state, frozen, _batch(config), jax.random.key(0))
  before = jax.device_get(state.params)
  bad = _batch(config, 1)
  bad["video"][3, 2, 0, 0, 0] = np.nan
  state, metrics = step(state, frozen, bad, jax.random.key(0))
  assert not np.isfinite(float(metrics["loss"]))
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
    np.testing.assert_array_equal(a, b)
  assert int(state.num_nonfinite) == 1 and int(state.step) == 2
  with pytest.raises(train.NonFiniteError, match="at step 2"):
    train.check_finite(state, config)
  config.train.nonfinite = "skip"
  train.check_finite(state, config)  # counted, not fatal


def test_gradients_reach_every_trainable_param_and_not_the_encoder():
  config = tiny_config(merge=False)
  model, tx, frozen, state = _setup(config)
  batch = _batch(config)

  def loss(params, frozen):
    out = model.apply({"params": {**params, "encoder": frozen}}, batch["video"],
                      batch["frame_mask"], train=True,
                      rngs={"token_drop": jax.random.key(1), "dropout": jax.random.key(2)})
    return out["loss"]

  g_train, g_frozen = jax.grad(loss, argnums=(0, 1))(state.params, frozen)
  flat = jax.tree_util.tree_flatten_with_path(g_train)[0]
  for path, g in flat:
    assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)
  assert all(np.abs(np.asarray(g)).max() == 0 for g in jax.tree_util.tree_leaves(g_frozen))
  assert "encoder" not in state.params
