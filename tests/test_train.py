"""The train step: sharded over 8 simulated devices equals 1 device; non-finite updates.
Config checks. End to end through the entry point: runs killed (SIGKILL mid-step and
mid-checkpoint-write) or preempted (SIGTERM) resume to the uninterrupted run's exact params; a
NaN batch stops the run naming its step (or is skipped and counted); same seed, same bits."""
import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solv_jax import schema
from solv_jax import checkpoints, sharding, train, train_step
from solv_jax.models import build
from solv_jax.models.build import build_model
from tests.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, (h, w) = config.train.batch_size, config.data.resolution
  mask = np.ones((b, 5), bool)
  mask[0, :2] = False  # a clip at the start of its video
  video = rng.normal(size=(b, 5, h, w, 3)).astype(np.float32) * mask[..., None, None, None]
  return {"video": video, "frame_mask": mask}


def _uint8_batch(config, seed=0):
  """A batch as the input pipeline ships it: uint8 frames, zeros beyond the video's ends."""
  rng = np.random.default_rng(seed)
  b, (h, w) = config.train.batch_size, config.data.resolution
  mask = np.ones((b, 5), bool)
  mask[0, :2] = False
  video = rng.integers(0, 256, (b, 5, h, w, 3), np.uint8) * mask[..., None, None, None]
  return {"video": video.astype(np.uint8), "frame_mask": mask}


def _setup(config):
  model = build_model(config)
  tx = train_step.make_optimizer(config.train)
  return model, tx, build.encoder_params(config, model), train_step.create_train_state(
      config, model, tx)


def test_sharded_step_on_8_devices_equals_single_device():
  code = textwrap.dedent("""
      import jax, numpy as np, optax
      from solv_jax import sharding, train, train_step
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
        state = train_step.create_train_state(config, model, tx)
        step = train_step.jit_train_step(train_step.make_train_step(model, tx, config), mesh)
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
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip())
  res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "OK" in res.stdout


def test_step_normalises_uint8_frames_and_does_not_apply_a_nonfinite_update():
  config = tiny_config()
  model, tx, frozen, state = _setup(config)
  mesh = sharding.make_mesh(jax.devices()[:1])
  step = train_step.jit_train_step(train_step.make_train_step(model, tx, config), mesh)
  # A uint8 batch, as the pipeline ships it, steps as that batch ImageNet-normalised on the
  # host (numpy, float64, masked frames zero: the float batch the pipeline used to ship).
  batch = _uint8_batch(config)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  host = ((batch["video"] / 255.0 - mean) / std) * batch["frame_mask"][..., None, None, None]
  copy = jax.tree_util.tree_map(jnp.copy, state)  # the step donates its state
  state, m8 = step(state, frozen, batch, jax.random.key(0))
  floats, mf = step(copy, frozen, dict(batch, video=host.astype(np.float32)),
                    jax.random.key(0))
  np.testing.assert_allclose(float(m8["loss"]), float(mf["loss"]), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state.params)),
                  jax.tree_util.tree_leaves(jax.device_get(floats.params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # A NaN (float frames only can hold one) leaves params and moments as they were.
  before = jax.device_get(floats.params)
  bad = _batch(config, 1)
  bad["video"][3, 2, 0, 0, 0] = np.nan
  state, metrics = step(floats, frozen, bad, jax.random.key(0))
  assert not np.isfinite(float(metrics["loss"]))
  after = jax.device_get(state.params)
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
    np.testing.assert_array_equal(a, b)
  assert int(state.num_nonfinite) == 1 and int(state.step) == 2
  with pytest.raises(train_step.NonFiniteError, match="at step 2"):
    train_step.check_finite(state, config)
  config.train.nonfinite = "skip"
  train_step.check_finite(state, config)  # counted, not fatal


def test_gradients_reach_every_trainable_param_and_not_the_encoder():
  config = tiny_config(use_merge=False)
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


# ----------------------------------------------------------------------------------------------
# Config checks.
# ----------------------------------------------------------------------------------------------
def test_every_recipe_passes_validate_config():
  import importlib
  for name in ("solv_jax.schema", "configs.demo", "configs.movi_e", "configs.ytvis19",
               "configs.davis17", "tests.tiny"):
    schema.validate(importlib.import_module(name).get_config())


def test_bad_configs_fail_before_anything_is_built(tmp_path):
  from solv_jax import main
  from tests.tiny import get_config

  config = get_config()
  config.train.lerning_rate = 1e-3  # a typo in a config file adds a key instead of failing
  config.model.colour = "red"
  with pytest.raises(ValueError) as e:
    main.run(config, str(tmp_path / "w"), "train")
  assert "config.train.lerning_rate is not a config key (did you mean " \
         "config.train.learning_rate?)" in str(e.value)
  assert "config.model.colour is not a config key (known keys of config.model: [" in str(e.value)
  assert not os.path.exists(tmp_path / "w")  # failed before writing anything

  cases = [("data", "resolution", (30, 56),
            r"resolution = \(30, 56\): H and W must be multiples of the DINOv2 patch size 14; "
            r"e.g. --config.data.resolution='\(28, 56\)'"),
           ("model", "token_drop", 1.0, r"token_drop = 1.0: the token drop ratio must be in "
            r"\[0, 1\)"),
           ("model", "token_drop", -0.1, r"token_drop = -0.1: .* must be in \[0, 1\)"),
           ("model", "token_drop", 0.95, r"keeps no token of the 12 at resolution \(42, 56\)"),
           ("model", "num_slots", 0, r"num_slots = 0: needs at least 1 slot"),
           ("model", "encoder_blocks", 13, r"encoder_blocks = 13: must be 0 \(all blocks\) "
            r"or 1..12 for vits14"),
           ("model", "encoder_variant", "vitx14",
            r"encoder_variant = 'vitx14': not an encoder of models/encoders.py"),
           ("model", "compute_dtype", "float16", r"compute_dtype = 'float16': must be "
            r"'float32' or 'bfloat16'"),
           ("model", "temporal_heads", 3, r"temporal_heads = 3: must divide "
            r"config.model.slot_dim = 16"),
           ("train", "checkpoint_every", 0, r"checkpoint_every = 0: must be >= 1"),
           ("train", "nonfinite", "ignore", r"nonfinite = 'ignore': must be 'stop' or 'skip'")]
  for group, key, value, message in cases:
    config = get_config()
    config[group][key] = value
    with pytest.raises(ValueError, match=message):
      main.run(config, str(tmp_path / "w"), "train")
  assert not os.path.exists(tmp_path / "w")


# ----------------------------------------------------------------------------------------------
# End to end through the entry point: preemption, non-finite batches, determinism.
#
# Runs of tests/tiny.py:get_config (6 steps of batch 2, checkpoints at 2, 4, 6) on one tiny
# synthetic dataset. They all share one persistent XLA compilation cache, so only the first
# (the uninterrupted reference run) compiles; later processes start in ~15 s.
# ----------------------------------------------------------------------------------------------
TMP_SUFFIX = ".orbax-checkpoint-tmp"

# Test-only hook: the real entry point, with orbax's commit of a step (the rename of its
# temporary folder) paused, so that a SIGKILL lands while a checkpoint is being written.
PAUSE_FIRST_COMMIT = textwrap.dedent("""
    import asyncio, runpy, sys
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def paused(self):
      if self.get_final().name.isdigit():  # a step folder, not one of its items
        print(f"COMMITTING {self.get()}", flush=True)
        await asyncio.sleep(3600)
      await finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = paused
    sys.argv = ["solv_jax.main"] + sys.argv[1:]
    runpy.run_module("solv_jax.main", run_name="__main__", alter_sys=True)
""")


class _Process:
  """A command in the background, stdout and stderr read line by line as they come."""
  wait_timeout = finish_timeout = 300  # seconds

  def __init__(self, cmd, env):
    import queue
    import threading
    self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.output, self._lines = [], queue.Queue()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.output.append(line)
      self._lines.put(line)
    self._lines.put(None)

  def wait_for(self, pattern, timeout=None):
    import re
    deadline = time.monotonic() + (timeout or self.wait_timeout)
    while True:
      line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
      assert line is not None, f"exited before printing {pattern!r}:\n{self.tail()}"
      if match := re.search(pattern, line):
        return match

  def signal(self, sig):
    self.proc.send_signal(sig)
    return self.finish()

  def finish(self, timeout=None):
    rc = self.proc.wait(timeout or self.finish_timeout)
    self._reader.join(30)
    return rc

  def tail(self):
    return "".join(self.output[-30:])


class _Run(_Process):
  """`python -m solv_jax.main` on the tiny config in a subprocess."""

  def __init__(self, e2e, workdir, hook=None, *overrides):
    super().__init__([sys.executable, *(["-c", hook] if hook else ["-m", "solv_jax.main"]),
                      "--config=tests/tiny.py", f"--config.data.data_dir={e2e.data_dir}",
                      "--mode=train", f"--workdir={workdir}", *overrides], e2e.env)

  def resumed_from(self):
    import re
    steps = [int(m.group(1)) for line in self.output
             if (m := re.match(r"Resumed from .*/checkpoints/(\d+)$", line.strip()))]
    return steps[0] if steps else None


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
  """The shared dataset, compilation cache and the uninterrupted reference run."""
  import types
  root = tmp_path_factory.mktemp("e2e")
  e2e = types.SimpleNamespace(data_dir=str(root / "data"), cache=str(root / "xla_cache"),
                              reference=str(root / "reference"))
  e2e.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                 JAX_COMPILATION_CACHE_DIR=e2e.cache,
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  run = _Run(e2e, e2e.reference)
  assert run.finish(600) == 0, run.tail()
  # It built and loaded the dataset without TFDS's internal deprecation warnings.
  assert not any("FeatureConnector.dtype" in line for line in run.output), run.tail()
  assert _steps(e2e.reference) == ([2, 4, 6], [])
  return e2e


@pytest.fixture
def compile_cache(e2e):
  """This process compiles through the subprocesses' cache too (same programs, same keys)."""
  from jax.experimental.compilation_cache import compilation_cache as cc
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  for name, value in zip(names, (e2e.cache, 0.0, 0)):
    jax.config.update(name, value)
  cc.reset_cache()
  yield
  for name, value in old.items():
    jax.config.update(name, value)
  cc.reset_cache()


def _steps(workdir):
  """(complete checkpoint steps, names of orbax temporary folders) under WORKDIR/checkpoints."""
  directory = os.path.join(workdir, "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if TMP_SUFFIX in n)


def _params(workdir, step=None):
  return checkpoints.restore_params(workdir, step)


def _assert_bitwise_equal(a, b):
  flat_a, flat_b = (jax.tree_util.tree_leaves_with_path(x) for x in (a, b))
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_killed_and_preempted_runs_resume_to_the_uninterrupted_params(e2e, tmp_path):
  import signal
  workdir = str(tmp_path / "run")

  # 1. SIGKILL mid-step: as soon as step 3 is logged (step 4 runs; checkpoint 2 may still be
  #    in flight). The restart must resume from the newest complete checkpoint, if any.
  run = _Run(e2e, workdir)
  run.wait_for(r"^step 3/6 ")
  assert run.signal(signal.SIGKILL) == -signal.SIGKILL
  complete, _ = _steps(workdir)
  resume = complete[-1] if complete else None

  # 2. SIGKILL while the restart's first checkpoint is written: its data is all in the
  #    temporary folder, which is not yet renamed to the step.
  run = _Run(e2e, workdir, PAUSE_FIRST_COMMIT)
  tmp = run.wait_for(r"^COMMITTING (\S+)").group(1)
  assert run.signal(signal.SIGKILL) == -signal.SIGKILL, run.tail()
  assert run.resumed_from() == resume, run.tail()
  assert os.path.isdir(tmp) and os.listdir(os.path.join(tmp, "state"))
  assert _steps(workdir) == (complete, [os.path.basename(tmp)])  # written, not visible

  # 3. SIGTERM while the step after a checkpoint runs (the host waits on the device): the run
  #    saves a checkpoint at the step it is on, due or not, waits for it and exits with the
  #    preemption status 143 (128 + SIGTERM), so that a scheduler can tell it from success.
  run = _Run(e2e, workdir)
  run.wait_for(rf"^step {(resume or 0) + 2}/6 ")
  time.sleep(0.05)
  assert run.signal(signal.SIGTERM) == 143, run.tail()
  assert run.resumed_from() == resume, run.tail()
  saved = int(run.wait_for(r"^SIGTERM: saved checkpoint at step (\d+), exiting", 1).group(1))
  assert saved > (resume or 0) + 2
  complete, tmps = _steps(workdir)
  assert saved in complete and not tmps  # committed before exit; step 2's leftover removed
  assert _params(workdir, saved)[0] == saved

  # 4. The last restart finishes; every step it trains follows the uninterrupted run exactly.
  run = _Run(e2e, workdir)
  assert run.finish() == 0, run.tail()
  assert run.resumed_from() == saved
  complete, tmps = _steps(workdir)
  assert complete[-1] == 6 and not tmps
  step, params = _params(workdir)
  ref_step, ref_params = _params(e2e.reference)
  assert step == ref_step == 6
  _assert_bitwise_equal(params, ref_params)
  # metrics.jsonl holds each logged step once, with the uninterrupted run's values: rows
  # logged past the checkpoint a killed run resumed from are dropped, then logged again.
  assert _metric_rows(workdir) == _metric_rows(e2e.reference)


def _metric_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_two_runs_with_the_same_seed_are_bit_identical(e2e, compile_cache, tmp_path):
  from tests.tiny import get_config
  config = get_config()
  config.data.data_dir = e2e.data_dir
  state = train.train(config, str(tmp_path / "again"))  # in this process, the other in its own
  assert int(state.step) == 6
  _assert_bitwise_equal(jax.device_get(state.params), _params(e2e.reference)[1])
  # ... and training moved them: they differ from those of step 2.
  changed = [not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(jax.device_get(state.params)),
      jax.tree_util.tree_leaves(_params(e2e.reference, 2)[1]))]
  assert all(changed)


def _poison_batch(monkeypatch, step):
  """The training iterator yields a NaN pixel in the batch of update `step` (1-based): that
  batch goes to the step as float frames, normalised on the host (the step takes those as
  they are), since uint8 frames cannot hold a NaN."""
  from solv_jax.data import pipeline
  from solv_jax.models import encoders
  make = pipeline.make_train_iterator

  class Poisoned:
    def __init__(self, it):
      self.it = it

    def __getattr__(self, name):
      return getattr(self.it, name)

    def __next__(self):
      batch = next(self.it)
      if self.it.step == step:
        video = np.array(encoders.get("vits14").normalize(batch["video"], batch["frame_mask"]))
        video[1, 2, 5, 7, 0] = np.nan  # one pixel of one target frame
        batch = dict(batch, video=video)
      return batch

  monkeypatch.setattr(pipeline, "make_train_iterator",
                      lambda *args, **kwargs: Poisoned(make(*args, **kwargs)))


def test_nan_batch_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    e2e, compile_cache, tmp_path, monkeypatch, capsys):
  from solv_jax import main
  from tests.tiny import get_config
  _poison_batch(monkeypatch, 3)
  config = get_config()
  config.data.data_dir = e2e.data_dir
  config.train.log_every = 100  # so the check that fires is the one before checkpoint 4
  workdir = str(tmp_path / "nan")
  with pytest.raises(train_step.NonFiniteError, match=r"Non-finite loss or gradient at step 3: .*"
                     r"--config.train.nonfinite=skip"):
    main.run(config, workdir, "train")
  assert _steps(workdir) == ([2], [])  # checkpoint 4 was not written
  _assert_bitwise_equal(_params(workdir, 2)[1], _params(e2e.reference, 2)[1])


def test_nan_batch_with_nonfinite_skip_is_skipped_and_counted(
    e2e, compile_cache, tmp_path, monkeypatch):
  import json
  _poison_batch(monkeypatch, 3)
  from tests.tiny import get_config
  config = get_config()
  config.data.data_dir = e2e.data_dir
  config.train.nonfinite = "skip"
  config.train.max_nonfinite_frac = 0.5  # 1 of 6 skipped is tolerated here (default: 1 %)
  workdir = str(tmp_path / "skip")
  state = train.train(config, workdir)
  assert int(state.step) == 6
  assert int(state.num_nonfinite) == 1 and int(state.first_nonfinite) == 2  # 0-based step
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(jax.device_get(state.params)))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = {r["step"]: r for r in map(json.loads, f)}
  assert [np.isfinite(rows[s]["loss"]) for s in range(1, 7)] == [True, True, False, True, True,
                                                                 True]
  assert [rows[s]["nonfinite_updates"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
  # Steps 1-2 are those of the clean run; skipping update 3 changes what follows.
  _assert_bitwise_equal(_params(workdir, 2)[1], _params(e2e.reference, 2)[1])
  assert not np.array_equal(
      jax.tree_util.tree_leaves(jax.device_get(state.params))[0],
      jax.tree_util.tree_leaves(_params(e2e.reference)[1])[0])


def test_console_rate_leaves_out_the_first_interval(capsys):
  """The first interval carries compilation; later lines measure from the first line on."""
  clock = iter([0.0, 100.0, 150.0, 250.0]).__next__
  console = train._Console(total=1000, start=0, clock=clock)
  scalars = dict(loss=0.5, grad_norm=1.0, lr=1e-4, merge_prob=0.0, valid_slots=8.0)
  for step in (250, 500, 750):
    console(step, scalars)
  lines = capsys.readouterr().out.splitlines()
  assert "2.50 steps/s  ETA 5m00s" in lines[0]  # 250 steps in 100 s, 750 to go
  assert "5.00 steps/s  ETA 1m40s" in lines[1]  # 250 steps in 50 s, 500 to go
  assert "3.33 steps/s  ETA 1m15s" in lines[2]  # 500 steps in 150 s, 250 to go
