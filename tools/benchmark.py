"""Benchmarks: train step, merge backends, token-drop sweep (paper Fig. 7), evaluation speed.

  python tools/benchmark.py --config=configs/ytvis19.py --config.train.batch_size=2
  python tools/benchmark.py --config=configs/ytvis19.py --config.train.batch_size=2 \
      --what=matmul,step,merge,drop,eval --steps=5
  python tools/benchmark.py --config=configs/ytvis19.py --config.train.batch_size=2 \
      --what=profile --steps=3
  python tools/benchmark.py --config=configs/ytvis19.py --config.train.batch_size=2 --what=gemm
  python tools/benchmark.py --config=configs/ytvis19.py --config.train.batch_size=2 \
      --what=attention
  python tools/benchmark.py --config=configs/ytvis19.py --config.train.batch_size=2 --what=parts

Prints one JSON line per measurement and a table at the end. Step time is the median of
--steps timed steps after compilation (block_until_ready); FLOPs are XLA's cost analysis of
the step's HLO before backend optimisation (the compiled executable's own count, which leaves
out GPU library GEMMs, is compiled_flops_per_step); utilisation is achieved FLOP/s over this
device's dense matmul rate measured in the same run (float32 on CPU, bfloat16 on GPU/TPU).
Peak memory is the device's peak_bytes_in_use where the backend reports it, else the
process's peak RSS.
DINOv2 is randomly initialised unless config.model.encoder_weights is set: speed does not
depend on the weights.
"""
from __future__ import annotations

import json
import os
import re
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402


def define_flags() -> None:
  """The command line; defined only when run as a script, so that tests can import the
  helpers below beside other modules that define --config."""
  config_flags.DEFINE_config_file("config", "configs/ytvis19.py", "Config file.",
                                  lock_config=True)
  flags.DEFINE_list("what", ["matmul", "step", "merge", "eval"],
                    "Any of matmul, step, merge, drop, eval, flops (count the step's FLOPs "
                    "without compiling or running it), profile (trace the step: time by model "
                    "part, pass and op kind), gemm (time the step's main matmul shapes alone: "
                    "the utilisation XLA's kernels allow this model), attention (the step's frozen "
                    "DINOv2 forward with each attention variant: what attention costs), parts "
                    "(the step in the authors' four parts: encoder target pass, encoder on the "
                    "dropped frames, trainable forward, backward + optimizer).")
  flags.DEFINE_integer("steps", 5, "Timed steps per measurement (after compilation).")
  flags.DEFINE_integer("eval_frames", 30, "Frames of the evaluation video.")
  flags.DEFINE_integer("eval_repeats", 1, "Timed passes over the evaluation video.")
  flags.DEFINE_list("drop_ratios", ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7",
                                    "0.8", "0.9"], "Token-drop sweep.")
  flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
  flags.DEFINE_string("plot", "", "Write the token-drop sweep as a PNG plot here.")


MODES = ("matmul", "step", "merge", "drop", "eval", "flops", "profile", "gemm", "attention",
         "parts")
# The four parts of the step, as the authors' PyTorch step splits (issue 24).
PARTS_OF_STEP = ("encoder_target", "encoder_dropped", "trainable_forward",
                 "backward_and_optimizer")


def emit(record: dict) -> dict:
  """Prints (and appends to --out) one measurement; returns it with the device fields."""
  import jax
  record = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "num_devices": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            **record}
  line = json.dumps(record)
  print(line, flush=True)
  if flags.FLAGS.out:
    with open(flags.FLAGS.out, "a") as f:
      f.write(line + "\n")
  return record


def peak_memory_bytes() -> tuple[int, str]:
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device_peak"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process_peak_rss"


def timed(fn, n: int) -> list[float]:
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def matmul_rate() -> float:
  """Dense matmul FLOP/s of this device: float32 on CPU, bfloat16 on accelerators."""
  import jax
  import jax.numpy as jnp
  cpu = jax.default_backend() == "cpu"
  n = 2048 if cpu else 8192
  dtype = jnp.float32 if cpu else jnp.bfloat16
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  t = statistics.median(timed(lambda: f(a, b).block_until_ready(), 10))
  rate = 2 * n**3 / t
  emit({"what": "matmul", "n": n, "dtype": str(jnp.dtype(dtype)), "seconds": t,
        "flops_per_second": rate})
  return rate


def _dinov2_dims(config):
  """The step's DINOv2 arithmetic, shared by gemm_shapes and bench_attention: (SOLV model,
  variant config, blocks run, patches per frame N, batch B, frames per window F, tokens
  before the patches: CLS and registers)."""
  from solv_jax.models import dinov2
  from solv_jax.models.build import build_model
  model = build_model(config)
  v = dinov2.variant_config(config.model.encoder_variant)
  return (model, v, config.model.encoder_blocks or v["depth"],
          model.grid_hw[0] * model.grid_hw[1], config.train.batch_size, model.num_frames,
          1 + v["num_registers"])


def gemm_shapes(config) -> list[dict]:
  """The train step's main matmul shapes, from the config: DINOv2 on the kept tokens of the
  2n+1 frames and on all tokens of the middle frame (the loss target), each with qkv,
  attention logits and values, projection and feed-forward, and the decoder's hidden layer
  over B x K x N rows. `count` is how many times the step runs it (forward only for the
  frozen encoder; x3 for the trainable decoder's forward and two backward products)."""
  from solv_jax.models import dinov2
  model, v, blocks, n, b, f, prefix = _dinov2_dims(config)
  d, heads = v["embed_dim"], v["num_heads"]
  hidden = dinov2.ffn_hidden(d, v["ffn"])
  fc1_out = hidden if v["ffn"] == "mlp" else 2 * hidden  # SwiGLU: w12 holds both halves
  shapes = []
  for frames, t, label in ((b * f, dinov2.num_kept_tokens(n, config.model.token_drop) + prefix,
                            ""), (b, n + prefix, ", full middle frames")):
    m = frames * t
    shapes += [
        dict(name=f"dinov2 qkv{label}", batch=1, m=m, k=d, n=3 * d, count=blocks),
        dict(name=f"dinov2 attention logits{label}", batch=frames * heads, m=t, k=d // heads,
             n=t, count=blocks),
        dict(name=f"dinov2 attention x values{label}", batch=frames * heads, m=t, k=t,
             n=d // heads, count=blocks),
        dict(name=f"dinov2 projection{label}", batch=1, m=m, k=d, n=d, count=blocks),
        dict(name=f"dinov2 mlp fc1{label}", batch=1, m=m, k=d, n=fc1_out, count=blocks),
        dict(name=f"dinov2 mlp fc2{label}", batch=1, m=m, k=hidden, n=d, count=blocks)]
  rows = b * config.model.num_slots * n
  return shapes + [
      dict(name="decoder hidden layer", batch=1, m=rows, k=config.model.decoder_hidden,
           n=config.model.decoder_hidden, count=3 * (config.model.decoder_layers - 2)),
  ]


def gemm_rates(config, rate: float) -> list[dict]:
  """Times each of `gemm_shapes` alone (float32 on CPU, bf16 elsewhere) and reports the
  FLOP-weighted rate a step made of nothing but these matmuls could reach, as a fraction of
  the square-matmul rate: the utilisation ceiling that XLA's own kernels set for this model."""
  import jax
  import jax.numpy as jnp
  dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  f = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b))
  flops = seconds = 0.0
  records = []
  for g in gemm_shapes(config):
    a = jax.random.normal(jax.random.key(0), (g["batch"], g["m"], g["k"]), dtype)
    b = jax.random.normal(jax.random.key(1), (g["batch"], g["k"], g["n"]), dtype)
    f(a, b).block_until_ready()
    t = statistics.median(timed(lambda: f(a, b).block_until_ready(), 7))
    fl = 2.0 * g["batch"] * g["m"] * g["k"] * g["n"]
    flops, seconds = flops + fl * g["count"], seconds + t * g["count"]
    records.append(emit({"what": "gemm", **g, "seconds": t, "flops_per_second": fl / t,
                         "fraction_of_matmul_rate": fl / t / rate}))
  return records + [emit({"what": "gemm_bound", "flops": flops, "seconds": seconds,
                          "flops_per_second": flops / seconds,
                          "fraction_of_matmul_rate": flops / seconds / rate})]


def _flops(cost) -> float:
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def stepper(compiled, state, frozen, batch, key):
  """A no-argument function that runs one compiled train step, carrying the state along."""
  import jax
  holder = {"state": state}

  def run():
    holder["state"], m = compiled(holder["state"], frozen, batch, key)
    jax.block_until_ready(m)

  run.state = lambda: holder["state"]  # the newest state (the step donates its input)
  return run


ATTENTION_VARIANTS = ("library", "solv_jax", "products_only", "none")


def _attention_variant(name: str):
  """(q, k, v) -> out, all (B, T, H, Dh): jax.nn.dot_product_attention, the port's
  dinov2.dot_product_attention, the two products with no softmax between them (a lower bound,
  not attention), or none (the values passed through: the encoder without attention)."""
  import jax
  import jax.numpy as jnp
  from solv_jax.models import dinov2
  if name == "products_only":
    return lambda q, k, v: jnp.einsum("bhts,bshd->bthd", jnp.einsum("bthd,bshd->bhts", q, k), v)
  return {"library": jax.nn.dot_product_attention, "solv_jax": dinov2.dot_product_attention,
          "none": lambda q, k, v: v}[name]


def bench_attention(config, repeats: int = 5) -> list[dict]:
  """Times the train step's frozen DINOv2 forward alone (jit'd, median of `repeats` calls
  after compilation) with each of ATTENTION_VARIANTS: the B x F frames with their kept tokens
  and the B full middle frames that give the reconstruction targets. The differences to "none"
  are what attention costs; `attention_flops` counts its two products."""
  import jax
  import jax.numpy as jnp
  from solv_jax.models import build, dinov2
  model, v, blocks, n, b, f, prefix = _dinov2_dims(config)
  heads, d = v["num_heads"], v["embed_dim"]
  params = build.encoder_params(config, model)
  h, w = model.resolution
  keep_idx = dinov2.sample_keep_idx(jax.random.key(1), b * f, n, config.model.token_drop)
  kept = keep_idx.shape[1]
  inputs = {"kept tokens": (b * f, keep_idx), "full frames": (b, None)}
  records = []
  for name in ATTENTION_VARIANTS:
    # The variant is the module's attention_fn attribute (as flax's attention modules take).
    encoder = dinov2.DINOv2(config.model.encoder_variant,
                            dtype=jnp.dtype(config.model.encoder_dtype),
                            num_blocks=config.model.encoder_blocks,
                            attention_fn=_attention_variant(name))
    for label, (frames, idx) in inputs.items():
      images = jax.random.normal(jax.random.key(0), (frames, h, w, 3), jnp.float32)
      fn = jax.jit(lambda p, x, i: encoder.apply({"params": p}, x, i)[0])
      fn(params, images, idx).block_until_ready()
      t = statistics.median(timed(lambda: fn(params, images, idx).block_until_ready(),
                                  repeats))
      tokens = (kept if idx is not None else n) + prefix
      records.append(emit({"what": "attention", "variant": name, "frames": label,
                           "num_frames": frames, "tokens": tokens, "seconds": t,
                           "attention_flops": 4.0 * frames * blocks * heads * tokens ** 2
                           * (d // heads)}))
  return records


def bench_parts(config, repeats: int) -> list[dict]:
  """The train step timed in the four parts the authors' PyTorch step is measured in: DINOv2's
  full-token pass over the B middle frames (the targets), DINOv2 with token drop over the
  B x F frames, the trainable forward to the loss (spatial binding, temporal binding, merge,
  decoder, MSE) on those features, and backward + clip + Adam (the forward, backward and
  update jitted together, less the forward alone). Each part is its own jitted function
  (median of `repeats` calls after compilation), so the four need not add up to the fused
  step exactly; `train_step` with --what=step times the fused one. Merging is on for every
  sample, as at the last step (bench_step's worst case)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from solv_jax import train_step
  from solv_jax.models import build
  from solv_jax.models.solv import SOLV

  model = build.build_model(config)
  tx = train_step.make_optimizer(config.train)
  frozen = build.encoder_params(config, model)
  trainable = build.initial_params(config, model)
  opt_state = tx.init(trainable)
  b, f, (h, w) = config.train.batch_size, model.num_frames, config.data.resolution
  video = jnp.asarray(np.random.default_rng(0).normal(size=(b, f, h, w, 3)), jnp.float32)
  frame_mask = jnp.ones((b, f), bool)
  merge_prob = 1.0 if config.model.use_merge else 0.0
  drop, key = config.model.token_drop, jax.random.key(0)

  target = jax.jit(lambda p, v: model.apply({"params": {"encoder": p}}, v[:, f // 2],
                                            method=SOLV.encode))
  dropped = jax.jit(lambda p, v: model.apply(
      {"params": {"encoder": p}}, v, drop, method=SOLV.encode_dropped,
      rngs={"token_drop": key}))

  def loss(params, feats, keep_idx, tgt):  # the model's own loss on the encoder's outputs
    out = model.apply({"params": build.with_encoder(params, frozen)}, feats, keep_idx, tgt,
                      frame_mask, train=True, merge_prob=merge_prob,
                      method=SOLV.loss_from_features, rngs={"dropout": key, "merge": key})
    return out["loss"]

  def update(params, opt_state, feats, keep_idx, tgt):
    value, grads = jax.value_and_grad(loss)(params, feats, keep_idx, tgt)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  forward, forward_backward = jax.jit(loss), jax.jit(update)
  tgt = target(frozen, video)
  feats, keep_idx = dropped(frozen, video)
  calls = {"encoder_target": lambda: target(frozen, video),
           "encoder_dropped": lambda: dropped(frozen, video),
           "trainable_forward": lambda: forward(trainable, feats, keep_idx, tgt),
           "forward_backward_optimizer": lambda: forward_backward(trainable, opt_state, feats,
                                                                   keep_idx, tgt)}
  seconds = {}
  for name, fn in calls.items():
    jax.block_until_ready(fn())  # compile
    seconds[name] = statistics.median(timed(lambda: jax.block_until_ready(fn()), repeats))
  seconds["backward_and_optimizer"] = (seconds.pop("forward_backward_optimizer")
                                       - seconds["trainable_forward"])
  total = sum(seconds.values())
  # The loss the parts compute, for checking them against the model's own forward.
  value = float(forward(trainable, feats, keep_idx, tgt))
  return [emit({"what": "part", "part": name, "seconds": seconds[name],
                "share": seconds[name] / total, "batch_size": b, "resolution": [h, w],
                "token_drop": drop, "loss": value}) for name in PARTS_OF_STEP]


def bench_step(config, label: str, rate: float | None, flops_only: bool = False,
               profile: bool = False, time_steps: bool = True, **extra) -> list[dict]:
  """Times the jit'd train step; returns its record, then the profile's record if asked.
  FLOPs come from XLA's cost analysis of the step's HLO before backend optimisation: the
  compiled executable's own analysis leaves out library calls (cuBLAS/cuDNN GEMMs on GPU), so
  it undercounts there. flops_only: lower, count, stop.
  profile: also trace the same compiled step (`profile_step`); with time_steps=False, trace
  it instead of timing it (the profile's record only)."""
  import jax
  import numpy as np
  from solv_jax import sharding, train_step
  from solv_jax.models import build

  model = build.build_model(config)
  tx = train_step.make_optimizer(config.train)
  mesh = sharding.make_mesh()
  frozen = jax.device_put(build.encoder_params(config, model), sharding.replicated(mesh))
  state = train_step.create_train_state(config, model, tx)
  # At the last step the merge probability is 1: every sample is merged (worst case).
  state = jax.device_put(state.replace(step=jax.numpy.int32(config.train.num_steps - 1)),
                         sharding.replicated(mesh))
  b, (h, w) = config.train.batch_size, config.data.resolution
  f = 2 * config.data.num_context + 1
  rng = np.random.default_rng(0)
  # uint8 frames, as the input pipeline ships them: the step normalises them on the device.
  batch = sharding.shard_batch({"video": rng.integers(0, 256, (b, f, h, w, 3), np.uint8),
                                "frame_mask": np.ones((b, f), bool)}, mesh)
  # The trainer's own jitted step: its shardings, its donation of the state.
  step = train_step.compiled_train_step(config, model, tx, mesh)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  lowered = step.lower(state, frozen, batch, key)
  flops = _flops(lowered.cost_analysis())
  if flops_only:
    record = {"what": label, "batch_size": b, "resolution": [h, w],
              "token_drop": config.model.token_drop, "flops_per_step": flops,
              "lower_seconds": time.perf_counter() - t0}
    return [emit(record)]
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  if profile and not time_steps:
    return [profile_step(compiled, state, frozen, batch, key, label, flops, rate)]
  compiled_flops = _flops(compiled.cost_analysis())
  mem_stats = compiled.memory_analysis()
  xla_bytes = None if mem_stats is None else int(
      mem_stats.temp_size_in_bytes + mem_stats.argument_size_in_bytes +
      mem_stats.output_size_in_bytes)
  run = stepper(compiled, state, frozen, batch, key)
  run()  # warm-up
  usage = resource.getrusage(resource.RUSAGE_SELF)
  times = timed(run, flags.FLAGS.steps)
  after = resource.getrusage(resource.RUSAGE_SELF)
  t = statistics.median(times)
  mem, mem_kind = peak_memory_bytes()
  record = {"what": label, "batch_size": b, "resolution": [h, w],
            "num_slots": config.model.num_slots, "token_drop": config.model.token_drop,
            "merge": bool(config.model.use_merge), "merge_backend": config.model.merge_backend,
            "encoder_dtype": config.model.encoder_dtype,
            "compute_dtype": config.model.compute_dtype, "step_seconds": t,
            "step_seconds_all": times, "clips_per_second": b / t, "compile_seconds": compile_s,
            "flops_per_step": flops, "compiled_flops_per_step": compiled_flops,
            "achieved_flops_per_second": flops / t,
            "utilisation": (flops / t) / rate if rate else None,
            "floor_seconds": flops / rate if rate else None,
            "peak_memory_bytes": mem, "memory_kind": mem_kind,
            "xla_step_memory_bytes": xla_bytes,
            # The process's kernel time and minor page faults per timed step, all threads:
            # on CPU, fresh pages for XLA's temporaries are faulted in (and zeroed) each step.
            "system_cpu_seconds_per_step": (after.ru_stime - usage.ru_stime) / len(times),
            "minor_page_faults_per_step": (after.ru_minflt - usage.ru_minflt) / len(times),
            **extra}
  records = [emit(record)]
  if profile:  # the same executable: no second compile (a minute on a GPU)
    records.append(profile_step(compiled, run.state(), frozen, batch, key, label, flops, rate))
  return records


# Model parts, as they appear in the HLO op names (Flax module paths); first match wins.
PARTS = ("encoder", "spatial_binding", "temporal_binding", "decoder")
MATMUL_OPS = ("dot", "convolution", "ynn_fusion", "xnn_fusion", "gemm", "cublas", "matmul")


def hlo_op_names(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its metadata op_name (the JAX/Flax source path) in compiled HLO."""
  out = {}
  for m in re.finditer(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = [^\n]*?op_name=\"([^\"]*)\"",
                       hlo_text, re.M):
    out.setdefault(m.group(1), m.group(2))
  return out


def attribute(op: str, op_name: str) -> tuple[str, str, str]:
  """(model part, pass, kind) of one HLO instruction from its name and op_name."""
  part = next((p for p in PARTS if f"/{p}/" in op_name or f"{p}." in op_name), "other")
  if part == "other" and ("adam" in op_name or "clip" in op_name or "optax" in op_name):
    part = "optimizer"
  direction = "backward" if "transpose(" in op_name else "forward"
  kind = "matmul" if any(k in op.lower() for k in MATMUL_OPS) else "other"
  return part, direction, kind


def profile_step(compiled, state, frozen, batch, key, label: str, flops: float,
                 rate: float | None, steps: int | None = None) -> dict:
  """Where a compiled train step spends its time, from a jax.profiler trace.

  Traces `steps` steps, sums the duration of every XLA instruction the runtime reports
  (CPU thunks; GPU kernels appear under their own names), and attributes each through its
  op_name metadata to a model part (encoder, spatial_binding, temporal_binding, decoder,
  optimizer, other), a pass (forward, backward = transposed) and a kind (matmul = dot /
  convolution / library GEMM fusions, other = elementwise, reductions, copies). Shares are of
  the summed instruction time, which can exceed wall time where instructions run concurrently.
  """
  import collections
  import glob
  import gzip
  import tempfile

  import jax
  steps = steps or flags.FLAGS.steps
  names = hlo_op_names(compiled.as_text())
  run = stepper(compiled, state, frozen, batch, key)
  run()  # warm-up
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp, create_perfetto_trace=True):
      t0 = time.perf_counter()
      for _ in range(steps):
        run()
      wall = (time.perf_counter() - t0) / steps
    (trace_file,) = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(trace_file) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_op = collections.Counter()
  for e in events:
    op = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") == "X" and op and op in names:
      per_op[op] += e.get("dur", 0.0) * 1e-6 / steps
  total = sum(per_op.values())
  groups = {g: collections.Counter() for g in ("part", "pass", "kind", "part_kind")}
  for op, sec in per_op.items():
    part, direction, kind = attribute(op, names[op])
    groups["part"][part] += sec
    groups["pass"][direction] += sec
    groups["kind"][kind] += sec
    groups["part_kind"][f"{part}/{kind}"] += sec
  share = lambda c: {k: round(v / total, 4) for k, v in c.most_common()}  # noqa: E731
  top = [{"op": op, "op_name": names[op][-160:], "seconds": sec, "share": sec / total}
         for op, sec in per_op.most_common(15)]
  return emit({"what": f"{label}_profile", "steps": steps, "step_seconds_traced": wall,
               "op_seconds": total, "coverage": total / wall, "flops_per_step": flops,
               "utilisation": (flops / wall) / rate if rate else None,
               "share_by_part": share(groups["part"]), "share_by_pass": share(groups["pass"]),
               "share_by_kind": share(groups["kind"]),
               "share_by_part_kind": share(groups["part_kind"]), "top_ops": top})


def bench_eval(config) -> list[dict]:
  import jax
  import numpy as np
  from solv_jax import inference
  from solv_jax.models import build

  model = build.build_model(config)
  params = build.with_encoder(jax.device_get(build.initial_params(config, model)),
                              build.encoder_params(config, model))
  h, w = config.data.resolution
  frames = np.random.default_rng(0).integers(0, 256, (flags.FLAGS.eval_frames, h, w, 3),
                                             np.uint8)  # as resize_frames gives them
  seg = inference.VideoSegmenter(model, params, batch_windows=config.eval.batch_windows)
  out, records = {}, []
  for naive in (False, True):
    # Every call is padded to fixed chunk shapes, so one chunk-sized clip compiles all of them.
    seg(frames[: seg.batch_windows], naive=naive)
    t = statistics.median(timed(lambda: seg(frames, naive=naive), flags.FLAGS.eval_repeats))
    out[naive] = t
    records.append(emit({"what": "eval_naive" if naive else "eval", "frames": len(frames),
                         "resolution": [h, w], "seconds": t,
                         "frames_per_second": len(frames) / t}))
  return records + [emit({"what": "eval_speedup", "speedup": out[True] / out[False]})]


def plot_sweep(sweep: list[dict], path: str) -> None:
  """Paper Fig. 7 axes: token drop ratio -> step time and peak memory."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ratios = [r["token_drop"] for r in sweep]
  fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
  ax.plot(ratios, [r["step_seconds"] for r in sweep], "o-", color="tab:blue")
  ax.set_xlabel("token drop ratio")
  ax.set_ylabel("train step (s)", color="tab:blue")
  ax2 = ax.twinx()
  # XLA's own accounting of the compiled step (temporaries + arguments + outputs): per
  # executable, unlike a process's peak RSS, which only ever grows during a sweep.
  ax2.plot(ratios, [r["xla_step_memory_bytes"] / 2**30 for r in sweep], "s--", color="tab:red")
  ax2.set_ylabel("step memory (GiB, XLA)", color="tab:red")
  ax.set_title(f"{sweep[0]['device']}, batch {sweep[0]['batch_size']}, "
               f"{sweep[0]['resolution'][0]}x{sweep[0]['resolution'][1]}")
  fig.tight_layout()
  fig.savefig(path)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  from solv_jax import sharding
  sharding.apply_xla_flags(config.get("xla_flags", ""))
  sharding.keep_host_memory(config.keep_host_memory)
  what = set(flags.FLAGS.what)
  if what - set(MODES):
    raise app.UsageError(f"--what: unknown {sorted(what - set(MODES))}; choose from "
                         f"{', '.join(MODES)}.")
  rate = (matmul_rate() if what & {"matmul", "step", "merge", "drop", "profile", "gemm"}
          else None)
  results = []  # what the closing table shows
  if "flops" in what:
    results += bench_step(config, "train_step_flops", None, flops_only=True)
  if "gemm" in what:
    results += gemm_rates(config, rate)
  if what & {"step", "profile"}:  # one compile: the profile traces the timed executable
    records = bench_step(config, "train_step", rate, profile="profile" in what,
                         time_steps="step" in what)
    results += records
  if "profile" in what:
    r = records[-1]
    print("\nTime by part:", r["share_by_part"], "\nby pass:", r["share_by_pass"],
          "\nby kind:", r["share_by_kind"], "\nby part/kind:", r["share_by_part_kind"],
          flush=True)
    if r["coverage"] < 0.8:  # e.g. XLA:CPU's Eigen dots (YNNPACK off) are not in the trace
      import jax
      why = ("XLA's Eigen dots are missing from CPU traces; --config.xla_flags= (YNNPACK "
             "dots) traces them all." if jax.default_backend() == "cpu" else
             "Device kernels may be missing from the trace (is CUPTI available?).")
      print(f"Warning: the traced instructions add up to only {r['coverage']:.0%} of the step's "
            f"wall time, so the shares above are of that part only. {why}", flush=True)
  if "attention" in what:
    results += bench_attention(config)
  if "parts" in what:
    results += bench_parts(config, flags.FLAGS.steps)
  if "merge" in what:
    for backend in ("device", "host"):
      c = config.copy_and_resolve_references()
      c.model.use_merge, c.model.merge_backend = True, backend
      results += bench_step(c, f"train_step_merge_{backend}", rate)
    c = config.copy_and_resolve_references()
    c.model.use_merge = False
    results += bench_step(c, "train_step_merge_off", rate)
  if "drop" in what:
    sweep = []
    for r in flags.FLAGS.drop_ratios:
      c = config.copy_and_resolve_references()
      c.model.token_drop = float(r)
      sweep += bench_step(c, "drop_sweep", rate)
    results += sweep
    if flags.FLAGS.plot:
      plot_sweep(sweep, flags.FLAGS.plot)
  if "eval" in what:
    results += bench_eval(config)
  print("\n| what | step s | clips/s | GFLOP/step | utilisation | peak MiB | XLA step MiB |",
        flush=True)
  print("|---|---|---|---|---|---|---|")
  for r in results:
    if "step_seconds" in r:
      util = f"{r['utilisation']:.1%}" if r["utilisation"] else "-"
      print(f"| {r['what']} (drop {r['token_drop']}) | {r['step_seconds']:.3f} | "
            f"{r['clips_per_second']:.2f} | {r['flops_per_step'] / 1e9:.1f} | {util} | "
            f"{r['peak_memory_bytes'] / 2**20:.0f} | "
            f"{(r['xla_step_memory_bytes'] or 0) / 2**20:.0f} |")
    elif r["what"] == "train_step_flops":
      print(f"| {r['what']} (drop {r['token_drop']}) | - | - | {r['flops_per_step'] / 1e9:.1f} "
            f"| - | - | - |")
    elif r["what"] in ("gemm", "gemm_bound"):
      label = r.get("name", "all of the above, FLOP-weighted")
      print(f"| {r['what']}: {label} | - | - | {r['flops_per_second'] / 1e9:.1f} GFLOP/s | "
            f"{r['fraction_of_matmul_rate']:.1%} | - | - |")
    elif r["what"] == "attention":
      print(f"| attention={r['variant']}: DINOv2 forward, {r['num_frames']} x {r['frames']} "
            f"({r['tokens']} tokens) | {r['seconds']:.3f} | - | "
            f"{r['attention_flops'] / 1e9:.1f} (attention) | - | - | - |")
    elif r["what"] == "part":
      print(f"| part: {r['part']} | {r['seconds']:.3f} | - | - | {r['share']:.1%} of the "
            f"parts' sum | - | - |")
    elif "frames_per_second" in r:
      print(f"| {r['what']} | {r['seconds']:.2f} s / {r['frames']} frames | "
            f"{r['frames_per_second']:.2f} frames/s | | | |")


if __name__ == "__main__":
  define_flags()
  sys.exit(app.run(main))
