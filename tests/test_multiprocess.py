"""Multi-process training with real processes (solv_jax/launch.py, the multi-process paths of
main.py, train.py, evaluate.py and checkpoints.py).

`python -m solv_jax.launch --processes=2` starts two processes of the entry point, one CPU
device each, that form a jax.distributed cluster over 127.0.0.1 (the coordinator on a free
port of 127.0.0.1, gloo collectives). They are compared with one process with two CPU devices
(--xla_force_host_platform_device_count=2) on the tiny config (tests/tiny.py: 6 steps of
global batch 2, checkpoints at 2, 4, 6) made smaller still to keep compilation short:
- the same params, losses and evaluation results, bit for bit: the global program is the
  same, and its one cross-device reduction (one all-reduce of the gradients and metrics) adds
  two operands per element, a float sum that does not depend on which process adds them;
- each log line printed once; the untrained (step-0) and final evaluation written once;
- the clips fed by the processes together are the one-process sequence (at the input
  pipeline, where the clips can be compared directly);
- a process killed with SIGKILL mid-run and its newest checkpoint damaged: the restart (of
  both, described as SLURM describes a job, so that jax's own SLURM detection is used) sets
  the damaged step aside, resumes from the one before and ends with the uninterrupted params;
- both runs' checkpoints export, evaluate, segment and resume in a plain 1-device process.

Each run is bounded in time (the launcher's --timeout, subprocess timeouts). The processes
share a persistent compilation cache; jax writes it from process 0 only and keys an entry by
the process's own view of the topology, so process 1 would compile everything in every run.
`python -m tests.test_multiprocess ARGS` (the module run as a program, below) is
`python -m solv_jax.main ARGS` with the cache written by every process, a test-only speed-up.
"""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.test_train import _Process, _assert_bitwise_equal, _params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
RUN_TIMEOUT = 420  # seconds, for one run of the tiny config (compiling, on a busy machine)


def _main_args(data_dir, workdir):
  # The tiny config with a smaller graph (one DINOv2 block, one slot-attention iteration, one
  # temporal layer, two decoder layers): compiling is most of a run's time.
  return ["--config=tests/tiny.py", f"--config.data.data_dir={data_dir}",
          "--config.model.encoder_blocks=1", "--config.model.slot_iters=1",
          "--config.model.temporal_layers=1", "--config.model.decoder_layers=2",
          "--config.eval.untrained=True",
          "--config.eval.num_visualize=1", "--mode=train_and_eval", f"--workdir={workdir}"]


class _Launch(_Process):
  """`python -m solv_jax.launch` in the background; its output read line by line."""
  wait_timeout, finish_timeout = RUN_TIMEOUT, RUN_TIMEOUT + 30

  def __init__(self, env, args, *launch_flags):
    super().__init__([sys.executable, "-m", "solv_jax.launch", "--processes=2",
                      f"--timeout={RUN_TIMEOUT}", "--grace=3", "--module=tests.test_multiprocess",
                      *launch_flags, "--", *args], env)

  def pid(self, process):
    return int(re.search(rf"^launch: process {process} pid (\d+)$", "".join(self.output),
                         re.M).group(1))

  def lines(self, process):
    return [line[len(f"[{process}] "):].rstrip("\n") for line in self.output
            if line.startswith(f"[{process}] ")]

  def tail(self, n=80):
    """The last n lines, stack traces of the C++ runtime's abort left out."""
    noise = re.compile(r"^\[\d\] (\s|\*\*\*|Thread 0x|Extension modules|Fatal Python|$)")
    return "".join([line for line in self.output if not noise.match(line)][-n:])


def _complete_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _damage(workdir, step):
  """Overwrites a checkpoint's data state (a JSON item) with bytes that are not JSON: the step
  differs from its manifest, if it has one yet, and cannot be restored either way."""
  path = os.path.join(workdir, "checkpoints", str(step), "data", "metadata")
  assert os.path.exists(path), path
  with open(path, "w") as f:
    f.write("{damaged")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The runs the tests compare, each made once:
  one: 1 process x 2 devices; two: 2 processes x 1 device, uninterrupted;
  killed: 2 processes, process 1 SIGKILLed after step 5, newest checkpoint damaged, restarted.
  """
  import types
  root = tmp_path_factory.mktemp("multiprocess")
  r = types.SimpleNamespace(root=root, data_dir=str(root / "data"), one=str(root / "one"),
                            two=str(root / "two"), killed=str(root / "killed"))
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  r.env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", XLA_FLAGS=" ".join(flags),
               JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

  # 1 process x 2 devices (it also builds the synthetic dataset).
  env = dict(r.env, XLA_FLAGS=" ".join(flags + ["--xla_force_host_platform_device_count=2"]))
  res = subprocess.run([sys.executable, "-m", "solv_jax.main", *_main_args(r.data_dir, r.one)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

  # 2 processes, killed mid-run: process 1 is SIGKILLed once checkpoint 4 is committed (step 5
  # or 6 runs). The first 2-process run: it compiles, the later ones load from the cache.
  run = _Launch(r.env, _main_args(r.data_dir, r.killed))
  run.wait_for(r"^\[0\] step 5/6 ")
  deadline = time.monotonic() + 60
  while 4 not in _complete_steps(r.killed) and time.monotonic() < deadline:
    time.sleep(0.05)
  os.kill(run.pid(1), signal.SIGKILL)
  r.killed_rc, r.killed_first = run.finish(), run
  r.complete_at_kill = _complete_steps(r.killed)
  # ... its newest complete checkpoint damaged, then both restarted as SLURM would start them.
  r.damaged = r.complete_at_kill[-1]
  _damage(r.killed, r.damaged)
  r.restart = _Launch(r.env, _main_args(r.data_dir, r.killed), "--env=slurm")
  assert r.restart.finish() == 0, r.restart.tail()

  # 2 processes x 1 device, uninterrupted.
  r.two_run = _Launch(r.env, _main_args(r.data_dir, r.two))
  assert r.two_run.finish() == 0, r.two_run.tail()
  return r


def _metric_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    row.pop("steps_per_sec", None)  # TensorBoard only since 6ca60d6
  return rows


def _results(workdir, subdir):
  with open(os.path.join(workdir, subdir, "results.json")) as f:
    results = json.load(f)
  results.pop("frames_per_second")
  return results


# ----------------------------------------------------------------------------------------------
# The launcher's environment (no processes started).
# ----------------------------------------------------------------------------------------------
def test_launcher_describes_a_loopback_cluster_as_jax_or_slurm_would():
  from solv_jax import launch
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1", "SLURM_NTASKS": "9",
          "JAX_PROCESS_ID": "7", "PATH": "/bin"}
  env = launch.process_env(base, 1, 2, 12345, devices=1)
  assert env["JAX_COORDINATOR_ADDRESS"] == env["JAX_COORDINATOR_BIND_ADDRESS"] == \
      "127.0.0.1:12345"
  assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_PLATFORMS"]) == \
      ("2", "1", "cpu")
  assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=1"
  assert "SLURM_NTASKS" not in env and env["PATH"] == "/bin"
  env = launch.process_env(base, 1, 2, 12345, devices=2, env_style="slurm")
  assert {k: env[k] for k in ("SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                              "SLURM_LOCALID", "JAX_COORDINATOR_PORT")} == {
      "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
      "SLURM_LOCALID": "1", "JAX_COORDINATOR_PORT": "12345"}
  assert "JAX_PROCESS_ID" not in env and "JAX_COORDINATOR_ADDRESS" not in env
  assert env["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count=2")
  assert launch.main_args(["--config=x.py"]) == ["--config=x.py",
                                                 "--config.train.distributed=True"]
  assert launch.main_args(["--config.train.distributed=True"]) == [
      "--config.train.distributed=True"]
  with pytest.raises(ValueError, match="would not form one cluster"):
    launch.main_args(["--config.train.distributed=False"])


# ----------------------------------------------------------------------------------------------
# 2 processes x 1 device = 1 process x 2 devices.
# ----------------------------------------------------------------------------------------------
def test_two_processes_train_the_params_of_one_process_with_two_devices(runs):
  # Read here, in a plain 1-device process: checkpoints of both topologies restore.
  step_one, one = _params(runs.one)
  step_two, two = _params(runs.two)
  assert step_one == step_two == STEPS
  _assert_bitwise_equal(two, one)
  assert _metric_rows(runs.two) == _metric_rows(runs.one)  # every step's loss, bit for bit
  for step in (2, 4):
    _assert_bitwise_equal(_params(runs.two, step)[1], _params(runs.one, step)[1])


def test_two_processes_log_once_on_process_0(runs):
  run = runs.two_run
  first, second = run.lines(0), run.lines(1)
  for step in range(1, STEPS + 1):
    assert sum(line.startswith(f"step {step}/{STEPS} ") for line in first) == 1, step
  assert sum(line.startswith("Evaluation: ") for line in first) == 1
  assert sum(line.startswith("Step 0: ") for line in first) == 1
  printed_by_main = ("step ", "Evaluat", "Step 0", "Data:", "Note:", "Results:", "Resumed")
  assert not [line for line in second if line.startswith(printed_by_main)], second
  assert not [line for line in run.output if "Traceback" in line], run.tail()
  assert len(_metric_rows(runs.two)) == STEPS  # metrics.jsonl written by one process


def test_evaluation_and_untrained_evaluation_match_one_process(runs):
  for subdir, step in (("eval_step0", 0), ("eval", STEPS)):
    two, one = _results(runs.two, subdir), _results(runs.one, subdir)
    assert two == one, subdir
    assert two["step"] == step and two["num_videos"] == 1
  pictures = sorted(n for n in os.listdir(os.path.join(runs.two, "eval"))
                    if n.endswith((".png", ".gif")))
  assert pictures == sorted(n for n in os.listdir(os.path.join(runs.one, "eval"))
                            if n.endswith((".png", ".gif"))) and len(pictures) == 2
  from PIL import Image
  for name in pictures:  # complete files (a second writer would race the first)
    with Image.open(os.path.join(runs.two, "eval", name)) as image:
      image.load()


# ----------------------------------------------------------------------------------------------
# The clips each process feeds.
# ----------------------------------------------------------------------------------------------
def test_processes_feed_disjoint_slices_whose_union_is_the_one_process_sequence(runs):
  """Over an epoch boundary and a resume: process p's batch s is rows [p*b, (p+1)*b) of the
  one-process batch s (so no clip is skipped or fed twice), and a data state saved by one
  topology continues on the other."""
  from solv_jax.data import pipeline
  from tests import tiny
  config = tiny.get_config()
  config.data.data_dir = runs.data_dir
  steps = 16  # > 1 epoch of 12 batches (4 videos x 6 frames / batch 2)
  one = pipeline.make_train_iterator(config, 2, 0, 1)
  parts = [pipeline.make_train_iterator(config, 1, p, 2) for p in range(2)]
  assert one.steps_per_epoch == parts[0].steps_per_epoch == 12
  clips = one.order.clips_at(0, steps * 2)  # (video, frame t) of each fed clip, in order
  assert len({tuple(c) for c in clips[:24]}) == 24  # every clip of the first epoch once
  for s in range(steps):
    whole = next(one)
    local = [next(p) for p in parts]
    for key in ("video", "frame_mask"):
      np.testing.assert_array_equal(np.concatenate([b[key] for b in local]), whole[key],
                                    err_msg=f"batch {s} {key}")
    if s == 8:  # resume the processes from the one-process state (other topology)
      state = one.get_state()
      parts = [pipeline.make_train_iterator(config, 1, p, 2) for p in range(2)]
      for p in parts:
        p.set_state(state)
  for it in [one, *parts]:
    it.close()


# ----------------------------------------------------------------------------------------------
# A process killed mid-run.
# ----------------------------------------------------------------------------------------------
def test_killed_process_stops_the_run_and_the_restart_resumes_to_the_same_params(runs):
  first, restart = runs.killed_first, runs.restart
  assert runs.killed_rc == 128 + signal.SIGKILL, first.tail()
  assert "launch: process 1 exited with status 137; stopping the others\n" in first.output, \
      first.tail()
  assert 4 in runs.complete_at_kill and runs.damaged >= 4
  before = [s for s in runs.complete_at_kill if s < runs.damaged][-1]
  # The restart set the damaged step aside (process 0 says so, once) and resumed before it.
  said = [line for line in restart.output if "is damaged" in line]
  assert len(said) == 1 and said[0].startswith("[0] warning: checkpoint "), restart.tail()
  rejected = [n for n in os.listdir(os.path.join(runs.killed, "checkpoints", "rejected"))
              if not n.endswith(".manifest.json")]
  assert [n.split("-")[0] for n in rejected] == [str(runs.damaged)]
  resumed = [line for line in restart.lines(0) if line.startswith("Resumed from ")]
  assert resumed == [f"Resumed from {os.path.join(runs.killed, 'checkpoints')}/{before}"]
  # ... and ends where the uninterrupted runs end, every step logged once with their values.
  step, params = _params(runs.killed)
  assert step == STEPS
  _assert_bitwise_equal(params, _params(runs.one)[1])
  assert _metric_rows(runs.killed) == _metric_rows(runs.one)
  assert _results(runs.killed, "eval") == _results(runs.one, "eval")


# ----------------------------------------------------------------------------------------------
# The checkpoints of both topologies on one device.
# ----------------------------------------------------------------------------------------------
ONE_DEVICE = textwrap.dedent("""
    # A plain 1-device process: export, evaluate (what --mode=eval runs), segment and resume
    # the checkpoints of WORKDIRS (copies). Prints one JSON line per workdir.
    import json, os, shutil, sys
    import jax, numpy as np
    from PIL import Image
    from solv_jax import export, main, segment, train
    from solv_jax.data import synthetic
    from tools import export_numpy
    assert jax.process_count() == 1 and jax.device_count() == 1, jax.devices()
    root, video = sys.argv[1], os.path.join(sys.argv[1], "frames")
    os.makedirs(video)
    frames, _ = synthetic.generate_video(synthetic.SyntheticConfig(
        num_frames=6, height=40, width=62, min_objects=2, max_objects=3),
        np.random.default_rng(7))
    for i, frame in enumerate(frames):
      Image.fromarray(frame).save(os.path.join(video, f"{i:03d}.png"))
    for name, original in zip(("one", "two"), sys.argv[2:]):
      workdir = os.path.join(root, name)
      shutil.copytree(original, workdir)
      out = {"name": name}
      npz = os.path.join(root, name + ".npz")
      out["export"] = export_numpy.main(["--workdir", workdir, "--out", npz])
      cfg, params, _ = export.load_export(npz)
      out["export_params"] = {"/".join(map(str, k)): np.asarray(v).tolist() for k, v in
                              jax.tree_util.tree_leaves_with_path(params)[:1]}
      config = export.load_config(workdir)
      results = main.run(config, workdir, "eval")
      out["eval"] = {k: v for k, v in results.items() if k != "frames_per_second"}
      seg = os.path.join(root, name + "_seg")
      out["segment"] = segment.main(["--checkpoint", workdir, "--video", video, "--out", seg])
      out["masks"] = [np.asarray(Image.open(os.path.join(seg, "masks", f))).tolist()
                      for f in sorted(os.listdir(os.path.join(seg, "masks")))]
      # Resume on 1 device: drop the last checkpoint, train steps 5 and 6 again.
      shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
      os.remove(os.path.join(workdir, "checkpoints", "manifests", "6.json"))
      state = train.train(config, workdir)
      out["resumed_step"] = int(state.step)
      out["metrics"] = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
      print("RESULT " + json.dumps(out), flush=True)
""")


@pytest.fixture(scope="module")
def on_one_device(runs):
  env = dict(runs.env)
  root = str(runs.root / "one_device")
  os.makedirs(root)
  res = subprocess.run([sys.executable, "-c", ONE_DEVICE, root, runs.one, runs.two], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  out = [json.loads(line[len("RESULT "):]) for line in res.stdout.splitlines()
         if line.startswith("RESULT ")]
  assert [o["name"] for o in out] == ["one", "two"], res.stdout[-3000:]
  return dict(zip(("one", "two"), out)), res.stdout


def test_checkpoints_of_both_topologies_export_evaluate_and_segment_on_one_device(
    runs, on_one_device):
  out, _ = on_one_device
  import jax
  first_leaf = jax.tree_util.tree_leaves(_params(runs.two)[1])[0]
  for name, workdir in (("one", runs.one), ("two", runs.two)):
    o = out[name]
    assert o["export"] == 0 and o["segment"] == 0
    np.testing.assert_array_equal(np.asarray(next(iter(o["export_params"].values()))),
                                  first_leaf)
    expected = _results(workdir, "eval")
    assert o["eval"] == expected  # 1 device: the numbers the cluster wrote
  assert out["one"]["masks"] == out["two"]["masks"] and len(out["one"]["masks"]) == 6


def test_checkpoints_of_both_topologies_resume_on_one_device(runs, on_one_device):
  """Steps 5 and 6 on 1 device from checkpoint 4 of each run: the data order continues (the
  loss of step 5, from the same params on the same batch, matches to float rounding: the
  batch mean is now summed on one device), and training goes on to step 6."""
  out, stdout = on_one_device
  reference = _metric_rows(runs.one)
  for name in ("one", "two"):
    o = out[name]
    assert o["resumed_step"] == STEPS
    rows = o["metrics"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
      r.pop("steps_per_sec", None)
    assert rows[:4] == reference[:4]  # kept from the cluster's run
    for r, ref in zip(rows[4:], reference[4:]):
      assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5), (name, r, ref)
  assert stdout.count("Resumed from ") == 2


if __name__ == "__main__":
  # `python -m tests.test_multiprocess ARGS`: `python -m solv_jax.main ARGS` with the
  # persistent compilation cache written by every process, not only by process 0 (see the
  # module doc). Each process writes entries under its own keys, so they do not contend.
  import runpy
  from jax._src import compilation_cache, compiler

  def _write_on_every_process(cache_key, compile_time_secs, module_name, backend, executable,
                              host_callbacks):
    if not host_callbacks:
      compilation_cache.put_executable_and_time(cache_key, module_name, executable, backend,
                                                int(compile_time_secs))

  compiler._cache_write = _write_on_every_process
  sys.argv = ["solv_jax.main"] + sys.argv[1:]
  runpy.run_module("solv_jax.main", run_name="__main__", alter_sys=True)
