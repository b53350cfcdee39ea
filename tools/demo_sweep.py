"""Sweep of demo recipes: many short SOLV runs on synthetic videos, in parallel processes.

  python tools/demo_sweep.py tools/demo_sweep_exps.py OUTDIR [--parallel N] [--only a,b]
      [--data_dir DIR]

For tuning configs/demo.py (issue 6). Each run is the product's own: `python -m
solv_jax.main` on configs/demo.py with the run's overrides (the trainer's loop, clip order
and periodic evaluation, `config.train.eval_every`), then, if asked, `python -m
solv_jax.baselines` (k-means of the same features) on the same videos. Nothing here trains
or scores by itself; it launches, waits and collects.

The experiments file defines EXPS, a list of dicts: name; arg (the configs/demo.py argument,
e.g. "model=A"; optional); config (dotted overrides of configs/demo.py, e.g.
{"train.num_steps": 2500, "train.eval_every": 1000, "data.synthetic.palette_size": 12});
kmeans (also score the k-means baseline). A run's workdir is OUTDIR/<name>/; its summary,
OUTDIR/<name>.json, holds the scores at every evaluated step (step 0 with
eval.untrained=True), the training loss logged at or before that step, the trainer's last
steps/s, wall seconds, and the k-means scores. OUTDIR/<name>.log is the run's console.
--data_dir sets config.data.data_dir (where the synthetic datasets are built, once per data
config; default the recipe's).
"""
import glob
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

from solv_jax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORES = metrics.keys("sweep")  # the metric table's columns for a sweep


def _value(v) -> str:
  """An override's value as config_flags parses it (a Python literal; lists as tuples)."""
  return str(tuple(v) if isinstance(v, list) else v)


def config_args(exp: dict, data_dir: str | None = None) -> list[str]:
  """The --config flags of a run: the recipe with its argument, then its overrides."""
  recipe = "configs/demo.py" + (f":{exp['arg']}" if exp.get("arg") else "")
  args = [f"--config={recipe}"]
  if data_dir:
    args.append(f"--config.data.data_dir={data_dir}")
  args += [f"--config.{k}={_value(v)}" for k, v in exp.get("config", {}).items()]
  return args


def commands(exp: dict, out: str, data_dir: str | None = None) -> list[list[str]]:
  """The run's commands, in order: training with its evaluations, then the baseline."""
  workdir = os.path.join(out, exp["name"])
  config = config_args(exp, data_dir)
  cmds = [[sys.executable, "-m", "solv_jax.main", *config, f"--workdir={workdir}"]]
  if exp.get("kmeans"):
    cmds.append([sys.executable, "-m", "solv_jax.baselines", *config, "--baseline=kmeans",
                 f"--out={os.path.join(workdir, 'kmeans.json')}"])
  return cmds


def _scores(results: dict) -> dict:
  return {k: round(results[k], 4) for k in SCORES}


def _json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def summary(exp: dict, workdir: str, console: str, seconds: float) -> dict:
  """The run's scores per evaluated step, read from the files the product wrote: step 0
  (eval_step0/), the periodic evaluations (eval_steps/<step>/) and the final one (eval/)."""
  evaluations = [_json(p) for p in glob.glob(os.path.join(workdir, "eval*", "**", "results.json"),
                                             recursive=True)]
  found = {int(results["step"]): results for results in evaluations}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  log = {"name": exp["name"], "exp": exp, "evals": {}, "loss": {}, "seconds": seconds}
  for step in sorted(found):
    log["evals"][step] = _scores(found[step])
    logged = [r["loss"] for r in rows if r["step"] <= step]
    log["loss"][step] = logged[-1] if logged else None
  rates = re.findall(r"([0-9.]+) steps/s", console)
  log["steps_per_second"] = float(rates[-1]) if rates else None
  if exp.get("kmeans"):
    log["kmeans"] = _scores(_json(os.path.join(workdir, "kmeans.json")))
  return log


def run_exp(exp: dict, out: str, data_dir: str | None) -> int:
  """One run, its console to OUTDIR/<name>.log, its summary to OUTDIR/<name>.json."""
  t0 = time.time()
  with open(os.path.join(out, exp["name"] + ".log"), "w") as log:
    for cmd in commands(exp, out, data_dir):
      log.write("$ " + " ".join(cmd) + "\n")
      log.flush()
      rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
      if rc:
        return rc
  seconds = time.time() - t0
  with open(os.path.join(out, exp["name"] + ".log")) as f:
    console = f.read()
  result = summary(exp, os.path.join(out, exp["name"]), console, seconds)
  with open(os.path.join(out, exp["name"] + ".json"), "w") as f:
    json.dump(result, f, indent=1)
  for step, scores in result["evals"].items():
    print(exp["name"], step, scores, result["loss"][step], flush=True)
  return 0


def _option(name: str, default=None):
  return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
  exps_file, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
  parallel = int(_option("--parallel", 1))
  data_dir = _option("--data_dir")
  spec = importlib.util.spec_from_file_location("exps", exps_file)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  exps = mod.EXPS
  if "--only" in sys.argv:
    only = _option("--only").split(",")
    exps = [e for e in exps if e["name"] in only]
  if "--child" in sys.argv:
    name = _option("--child")
    sys.exit(run_exp(next(e for e in exps if e["name"] == name), out, data_dir))
  os.makedirs(out, exist_ok=True)
  t0 = time.time()
  queue, running, failed = list(exps), [], []
  while queue or running:
    while queue and len(running) < parallel:
      e = queue.pop(0)
      cmd = [sys.executable, os.path.abspath(__file__), exps_file, out, "--child", e["name"]]
      if data_dir:
        cmd += ["--data_dir", data_dir]
      running.append((subprocess.Popen(cmd, cwd=ROOT), e))
    time.sleep(2)
    for item in list(running):
      if item[0].poll() is not None:
        running.remove(item)
        rc = item[0].returncode
        print(f"[{time.time() - t0:.0f}s] done {item[1]['name']} rc={rc}", flush=True)
        if rc:
          failed.append(item[1]["name"])
  if failed:
    sys.exit(f"failed: {', '.join(failed)} (see {out}/<name>.log)")


if __name__ == "__main__":
  main()
