"""tools/demo_sweep.py: a tiny two-run sweep end to end, checked against the package's own
evaluation of the same videos."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPS = '''
DATA = {"num_train": 3, "num_validation": 2, "num_frames": 5, "max_objects": 2}
EXPS = [dict(name=n, data=DATA, res=42, kmeans=k, steps=2, eval_at=[0, 2], eval_videos=2,
             config={"model.num_slots": 3, "model.decoder_hidden": 32, "model.slot_dim": 16,
                     "model.temporal_heads": 2, "train.batch_size": 2, **c})
        for n, k, c in [("e", True, {}), ("a", False, {"model.spatial_binding_type": "vanilla",
                                                       "model.use_temporal_binding": False,
                                                       "model.use_merge": False})]]
'''


def test_tiny_sweep_writes_scores_and_kmeans(tmp_path):
  exps = tmp_path / "exps.py"
  exps.write_text(EXPS)
  out = tmp_path / "out"
  env = dict(os.environ, SWEEP_DATA=str(tmp_path / "data"))
  res = subprocess.run([sys.executable, "tools/demo_sweep.py", str(exps), str(out),
                        "--parallel", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "done e rc=0" in res.stdout and "done a rc=0" in res.stdout
  runs = {n: json.loads((out / f"{n}.json").read_text()) for n in ("e", "a")}
  for log in runs.values():
    assert sorted(log["evals"], key=int) == ["0", "2"] and log["steps_per_second"] > 0
    for scores in log["evals"].values():
      assert -1.0 <= scores["fg_ari"] <= 1.0 and 0.0 <= scores["miou"] <= 1.0
  assert set(runs["e"]["kmeans"]) == {"fg_ari", "video_fg_ari", "miou", "mbo"}
  assert "kmeans" not in runs["a"]
  # The cached videos are the generator's own for (config, split, index).
  from solv_jax.data import synthetic
  (cached,) = list((tmp_path / "data").glob("data_*.npz"))
  data = np.load(cached)
  cfg = synthetic.config_from({"num_train": 3, "num_validation": 2, "num_frames": 5,
                               "max_objects": 2, "height": 42, "width": 42})
  frames, ids = synthetic.generate_video(cfg, synthetic.video_rng(cfg, "validation", 1))
  np.testing.assert_array_equal(data["vv"][1], frames)
  np.testing.assert_array_equal(data["vs"][1], ids)
