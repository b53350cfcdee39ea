"""Sweep of demo recipes: many short SOLV runs on synthetic videos, in parallel processes.

  python tools/demo_sweep.py tools/demo_sweep_exps.py OUTDIR [--parallel N] [--only a,b]

For tuning configs/demo.py (issue 6) on whatever machine is at hand; it needs only jax,
flax, optax, ml_collections, numpy, scipy and scikit-learn (no TensorFlow), so it also runs
on a bare GPU image. Videos are generated in numpy (solv_jax.data.synthetic) straight at
the model resolution and kept in memory (cached as .npz under $SWEEP_DATA, default
/tmp/sweepdata); each clip is a random window t-n..t+n, zero-filled and masked past the
video's ends as in the TFDS pipeline. The train step, the evaluation (VideoSegmenter,
video-level Hungarian matching) and the k-means baseline are the package's own.

The experiments file defines EXPS, a list of dicts: name, data (SyntheticConfig overrides),
res (square resolution), arg (configs/demo.py argument, e.g. "model=A"), config (dotted
overrides of configs/demo.py), steps, eval_at (steps to evaluate at), eval_videos, kmeans
(also score the k-means baseline), seed. Each run writes OUTDIR/<name>.json and .log.
"""
import importlib.util, json, os, subprocess, sys, time, hashlib
import multiprocessing as mp
import numpy as np

from solv_jax.models.dinov2 import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
MEAN, STD = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)


def _gen(args):
  """One synthetic video (top-level for multiprocessing)."""
  from solv_jax.data import synthetic
  cfg, split, i = args
  return synthetic.generate_video(cfg, synthetic.video_rng(cfg, split, i))


def data_path(exp, root):
  key = json.dumps({"d": exp.get("data", {}), "r": exp["res"]}, sort_keys=True)
  return os.path.join(root, "data_" + hashlib.sha1(key.encode()).hexdigest()[:10] + ".npz")


def make_data(exp, root):
  from solv_jax.data import synthetic
  path = data_path(exp, root)
  if os.path.exists(path):
    return path
  cfg = synthetic.config_from({**exp.get("data", {}), "height": exp["res"], "width": exp["res"]})
  with mp.Pool(min(16, os.cpu_count())) as pool:
    tr = pool.map(_gen, [(cfg, "train", i) for i in range(cfg.num_train)])
    va = pool.map(_gen, [(cfg, "validation", i) for i in range(cfg.num_validation)])
  np.savez(path + ".tmp.npz", tv=np.stack([f for f, _ in tr]),  # train labels unused
           vv=np.stack([f for f, _ in va]), vs=np.stack([s for _, s in va]))
  os.rename(path + ".tmp.npz", path)
  return path


def set_key(config, key, value):
  *head, last = key.split(".")
  c = config
  for h in head:
    c = c[h]
  if isinstance(value, list):
    value = tuple(value)
  c[last] = value


def build_config(exp):
  import configs.demo as demo
  config = demo.get_config(exp.get("arg"))
  config.data.resolution = (exp["res"], exp["res"])
  for k, v in exp.get("config", {}).items():
    set_key(config, k, v)
  config.train.num_steps = exp["steps"]
  return config


def norm(x):
  return (x.astype(np.float32) / 255.0 - MEAN) / STD


def run_exp(exp, root, out_path):
  import jax
  from solv_jax import train_step, metrics, evaluate, baselines
  from solv_jax.models import build
  from solv_jax.models.build import build_model
  from solv_jax.models.solv import SOLV
  config = build_config(exp)
  d = np.load(data_path(exp, root))
  tv, vv, vs = d["tv"], d["vv"], d["vs"]
  model = build_model(config)
  tx = train_step.make_optimizer(config.train)
  frozen = build.encoder_params(config, model)
  state = train_step.create_train_state(config, model, tx)
  step = jax.jit(train_step.make_train_step(model, tx, config), donate_argnums=(0,))
  n = config.data.num_context
  T = tv.shape[1]
  B = config.train.batch_size
  rng = np.random.default_rng(exp.get("seed", 0))
  key = jax.random.key(exp.get("seed", 0))
  nv = exp.get("eval_videos", 20)

  def do_eval():
    params = {**jax.device_get(state.params), "encoder": frozen}
    seg = evaluate.VideoSegmenter(model, params, batch_windows=16)
    acc = metrics.MetricAccumulator()
    for i in range(nv):
      out = seg(norm(vv[i]))
      pred = metrics.masks_to_ids(out["masks"], out["track_ids"], out_hw=vs.shape[2:4])
      acc.update(pred, vs[i])
    r = acc.compute()
    return {k: round(r[k], 4) for k in ("fg_ari", "video_fg_ari", "miou", "mbo")}

  log = {"name": exp["name"], "exp": exp, "evals": {}, "loss": {}}
  if exp.get("kmeans"):
    encode = jax.jit(lambda p, f: model.apply({"params": p}, f, method=SOLV.encode))
    acc = metrics.MetricAccumulator()
    for i in range(nv):
      feats = np.asarray(encode({"encoder": frozen}, norm(vv[i])))
      pred = baselines.kmeans_segment_video(feats, baselines.oracle_num_segments(vs[i]),
                                            model.grid_hw, vs.shape[2:4])
      acc.update(pred, vs[i])
    r = acc.compute()
    log["kmeans"] = {k: round(r[k], 4) for k in ("fg_ari", "video_fg_ari", "miou", "mbo")}
  t0 = time.time()
  losses = []
  for s in range(exp["steps"] + 1):
    if s in exp["eval_at"]:
      log["evals"][s] = do_eval()
      log["loss"][s] = float(np.mean(losses[-50:])) if losses else None
      log["seconds"] = time.time() - t0
      print(exp["name"], s, log["evals"][s], log["loss"][s], flush=True)
      with open(out_path, "w") as f:
        json.dump(log, f)
    if s == exp["steps"]:
      break
    vid = rng.integers(0, len(tv), B)
    t = rng.integers(0, T, B)
    idx = t[:, None] + np.arange(-n, n + 1)[None]
    mask = (idx >= 0) & (idx < T)
    video = norm(tv[vid[:, None], np.clip(idx, 0, T - 1)]) * mask[..., None, None, None]
    state, m = step(state, frozen, {"video": video, "frame_mask": mask}, key)
    if s % 10 == 0:
      losses.append(float(m["loss"]))
  log["steps_per_second"] = exp["steps"] / (time.time() - t0)
  with open(out_path, "w") as f:
    json.dump(log, f)


def main():
  exps_file, out = sys.argv[1], sys.argv[2]
  parallel = int(sys.argv[sys.argv.index("--parallel") + 1]) if "--parallel" in sys.argv else 4
  spec = importlib.util.spec_from_file_location("exps", exps_file)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  exps = mod.EXPS
  if "--only" in sys.argv:
    only = sys.argv[sys.argv.index("--only") + 1].split(",")
    exps = [e for e in exps if e["name"] in only]
  if "--child" in sys.argv:
    name = sys.argv[sys.argv.index("--child") + 1]
    exp = next(e for e in exps if e["name"] == name)
    run_exp(exp, os.environ.get("SWEEP_DATA", "/tmp/sweepdata"), os.path.join(out, name + ".json"))
    return
  root = os.environ.get("SWEEP_DATA", "/tmp/sweepdata")
  os.makedirs(root, exist_ok=True)
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  for e in exps:
    make_data(e, root)
  print(f"data ready in {time.time() - t0:.0f}s", flush=True)
  queue, running = list(exps), []
  while queue or running:
    while queue and len(running) < parallel:
      e = queue.pop(0)
      logf = open(os.path.join(out, e["name"] + ".log"), "w")
      p = subprocess.Popen([sys.executable, __file__, exps_file, out, "--child", e["name"]],
                           stdout=logf, stderr=subprocess.STDOUT)
      running.append((p, e, logf))
    time.sleep(2)
    for item in list(running):
      if item[0].poll() is not None:
        running.remove(item)
        item[2].close()
        print(f"[{time.time() - t0:.0f}s] done {item[1]['name']} rc={item[0].returncode}", flush=True)


if __name__ == "__main__":
  main()
