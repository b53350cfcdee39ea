"""tools/demo_sweep.py: a tiny two-run sweep end to end through the product's own entry points,
its summaries checked against the files those wrote and the k-means baseline run here."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPS = '''
TINY = {"model.num_slots": 3, "model.decoder_hidden": 32, "model.slot_dim": 16,
        "model.temporal_heads": 2, "train.batch_size": 2, "train.num_steps": 2,
        "train.eval_every": 1, "train.log_every": 1, "eval.num_visualize": 0,
        "data.resolution": (42, 42), "data.synthetic.height": 42, "data.synthetic.width": 42,
        "data.synthetic.num_train": 3, "data.synthetic.num_validation": 2,
        "data.synthetic.num_frames": 5, "data.synthetic.max_objects": 2}
EXPS = [dict(name="e", kmeans=True, config=TINY),
        dict(name="a", config={**TINY, "model.spatial_binding_type": "vanilla",
                               "model.use_temporal_binding": False, "model.use_merge": False}),
        dict(name="bad", config={**TINY, "model.no_such_key": 1})]
'''


def _sweep(tmp_path, *args):
  exps = tmp_path / "exps.py"
  exps.write_text(EXPS)
  return subprocess.run([sys.executable, "tools/demo_sweep.py", str(exps), str(tmp_path / "out"),
                         "--data_dir", str(tmp_path / "data"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)


def _json(path):
  with open(path) as f:
    return json.load(f)


def _tensorboard(workdir, *tags):
  """{(step, tag): value} of the scalars with these tags in WORKDIR/tensorboard."""
  import tensorflow as tf
  found = {}
  for path in (workdir / "tensorboard").iterdir():
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag in tags:
          found[(event.step, value.tag)] = float(tf.make_ndarray(value.tensor))
  return found


def test_tiny_sweep_runs_the_trainer_and_collects_its_scores(tmp_path):
  res = _sweep(tmp_path, "--only", "e,a", "--parallel", "1")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "done e rc=0" in res.stdout and "done a rc=0" in res.stdout
  out = tmp_path / "out"
  runs = {n: _json(out / f"{n}.json") for n in ("e", "a")}
  for name, log in runs.items():
    workdir = out / name
    # Step 0 (eval.untrained), the periodic evaluation at 1 and the final one at 2, each as
    # the trainer's evaluation wrote it, with the loss metrics.jsonl logged at that step.
    files = {"0": workdir / "eval_step0", "1": workdir / "eval_steps" / "1",
             "2": workdir / "eval"}
    assert sorted(log["evals"], key=int) == ["0", "1", "2"]
    rows = {r["step"]: r["loss"] for r in map(json.loads, open(workdir / "metrics.jsonl"))}
    for step, path in files.items():
      written = _json(path / "results.json")
      assert log["evals"][step] == {k: round(written[k], 4)
                                    for k in ("fg_ari", "video_fg_ari", "miou", "mbo")}
      assert log["loss"][step] == rows.get(int(step))
    assert log["loss"]["0"] is None and log["loss"]["2"] is not None
    # The periodic evaluation's console line and TensorBoard scalars are its results.json.
    periodic = _json(files["1"] / "results.json")
    console = (out / f"{name}.log").read_text()
    assert (f"eval at step 1: fg_ari={periodic['fg_ari']:.4f} " in console
            and f"num_videos={periodic['num_videos']}\n" in console), console[-2000:]
    assert _tensorboard(workdir, "eval/fg_ari", "eval/miou") == {
        (1, "eval/fg_ari"): pytest.approx(periodic["fg_ari"]),
        (1, "eval/miou"): pytest.approx(periodic["miou"])}
    assert log["steps_per_second"] > 0 and log["seconds"] > 0
  # The overrides reached the trainer.
  a = _json(out / "a" / "config.json")
  assert (a["model"]["spatial_binding_type"], a["model"]["use_merge"]) == ("vanilla", False)
  assert a["data"]["synthetic"]["max_objects"] == 2 and a["train"]["num_steps"] == 2
  assert _json(out / "e" / "config.json")["model"]["use_merge"] is True
  assert "kmeans" not in runs["a"]

  # The k-means figure is the baseline's on the same config and videos, run here.
  from configs import demo
  from solv_jax import baselines
  config = demo.get_config()
  config.data.data_dir = str(tmp_path / "data")
  exec_globals = {}
  exec(EXPS, exec_globals)
  for key, value in exec_globals["TINY"].items():
    *head, last = key.split(".")
    node = config
    for h in head:
      node = node[h]
    node[last] = value
  expected = baselines.evaluate_kmeans(config)
  assert runs["e"]["kmeans"] == {k: round(expected[k], 4) for k in runs["e"]["kmeans"]}
  assert set(runs["e"]["kmeans"]) == {"fg_ari", "video_fg_ari", "miou", "mbo"}


def test_a_failed_run_fails_the_sweep_and_names_its_log(tmp_path):
  res = _sweep(tmp_path, "--only", "bad")
  assert res.returncode == 1
  assert "done bad rc=" in res.stdout and "done bad rc=0" not in res.stdout
  assert res.stderr.strip().splitlines()[-1] == f"failed: bad (see {tmp_path / 'out'}/<name>.log)"
  assert "config.model.no_such_key is not a config key." in (tmp_path / "out" / "bad.log").read_text()
  assert not (tmp_path / "out" / "bad.json").exists()
