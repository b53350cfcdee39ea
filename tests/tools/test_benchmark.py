"""tools/benchmark.py end to end on the tiny config (CPU)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _invoke(*args, env=None):
  """tools/benchmark.py on the tiny config -> (exit status, JSON records, stderr)."""
  out = subprocess.run([sys.executable, "tools/benchmark.py", "--config=tests/tiny.py", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **(env or {})})
  records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  return out.returncode, records, out.stderr


def _run(*args, env=None):
  returncode, records, stderr = _invoke(*args, env=env)
  assert returncode == 0, stderr[-3000:]
  return records


def test_step_flops_from_hlo_match_the_compiled_count_and_flops_mode():
  records = _run("--what=flops,matmul,step,gemm", "--steps=2")
  rows = {r["what"]: r for r in records}
  # The GEMM bound is the FLOP-weighted rate of the timed shapes.
  gemms = [r for r in records if r["what"] == "gemm"]
  flops = sum(2 * g["batch"] * g["m"] * g["k"] * g["n"] * g["count"] for g in gemms)
  seconds = sum(g["seconds"] * g["count"] for g in gemms)
  assert rows["gemm_bound"]["flops_per_second"] == pytest.approx(flops / seconds)
  assert rows["gemm_bound"]["fraction_of_matmul_rate"] == pytest.approx(
      flops / seconds / rows["matmul"]["flops_per_second"])
  step, count = rows["train_step"], rows["train_step_flops"]
  # The pre-optimisation HLO count (used because the compiled count omits GPU library GEMMs)
  # agrees with the compiled executable's own count where both see every dot: on CPU.
  assert step["flops_per_step"] == pytest.approx(step["compiled_flops_per_step"], rel=0.05)
  assert count["flops_per_step"] == step["flops_per_step"]
  assert step["utilisation"] == pytest.approx(
      step["flops_per_step"] / step["step_seconds"] / rows["matmul"]["flops_per_second"])
  assert len(step["step_seconds_all"]) == 2 and step["batch_size"] == 2
  assert {"system_cpu_seconds_per_step", "minor_page_faults_per_step"} <= step.keys()


def test_unknown_what_is_an_error_before_anything_runs():
  returncode, records, stderr = _invoke("--what=step,stepp")
  assert returncode != 0 and not records
  assert "--what: unknown ['stepp']; choose from matmul, step," in stderr


def test_drop_sweep_measures_each_ratio_and_writes_the_plot(tmp_path):
  plot = tmp_path / "fig7.png"
  rows = [r for r in _run("--what=drop", "--drop_ratios=0.0,0.5", "--steps=1", f"--plot={plot}")
          if r["what"] == "drop_sweep"]
  assert [r["token_drop"] for r in rows] == [0.0, 0.5]
  # Dropping half of the 12 tokens removes encoder and binding work from the step.
  assert rows[1]["flops_per_step"] < rows[0]["flops_per_step"]
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("what", ["profile", "step,profile"])
def test_profile_attributes_the_traced_step_to_model_parts(what):
  returncode, records, log = _invoke(f"--what={what}", "--steps=1",
                                     env={"JAX_LOG_COMPILES": "1"})
  assert returncode == 0, log[-3000:]
  (row,) = [r for r in records if r["what"] == "train_step_profile"]
  # With step timing too, the trace reuses the timed executable: one compile of the step.
  assert len([r for r in records if r["what"] == "train_step"]) == (what != "profile")
  assert log.count("Finished XLA compilation of jit(step_fn)") == 1
  for key in ("share_by_part", "share_by_pass", "share_by_kind", "share_by_part_kind"):
    assert sum(row[key].values()) == pytest.approx(1.0, abs=1e-3)
  assert {"encoder", "spatial_binding", "temporal_binding", "decoder"} <= set(row["share_by_part"])
  assert row["share_by_pass"]["backward"] > 0 and row["share_by_kind"]["matmul"] > 0
  # The instructions account for the traced step: summed, they neither miss most of it nor
  # exceed what two cores could run in that time.
  assert 0.5 * row["step_seconds_traced"] < row["op_seconds"] < 2.5 * row["step_seconds_traced"]
  assert row["top_ops"][0]["seconds"] >= row["top_ops"][-1]["seconds"]


def test_hlo_op_names_and_attribution_on_hand_written_hlo():
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import benchmark
  hlo = """ENTRY %main {
  %ynn_fusion.3 = f32[4,8]{1,0} fusion(%p0, %p1), kind=kCustom, calls=%c, metadata={op_name="jit(step_fn)/transpose(jvp(SOLV))/SOLV.decode_window/decoder/mlp_0/dot_general" source_file="x.py"}
  ROOT %add_fusion = f32[4,8]{1,0} fusion(%a), kind=kLoop, calls=%d, metadata={op_name="jit(step_fn)/jvp(SOLV)/encoder/blocks_0/add"}
  %copy.1 = f32[4]{0} copy(%b)
}"""
  names = benchmark.hlo_op_names(hlo)
  backward_dot = ("jit(step_fn)/transpose(jvp(SOLV))/SOLV.decode_window/decoder/mlp_0/"
                  "dot_general")
  assert names == {"ynn_fusion.3": backward_dot,
                   "add_fusion": "jit(step_fn)/jvp(SOLV)/encoder/blocks_0/add"}
  assert benchmark.attribute("ynn_fusion.3", names["ynn_fusion.3"]) == ("decoder", "backward",
                                                                        "matmul")
  assert benchmark.attribute("add_fusion", names["add_fusion"]) == ("encoder", "forward", "other")


def test_gemm_shapes_of_the_ytvis_recipe_hand_computed():
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import benchmark
  from configs import ytvis19
  config = ytvis19.get_config()
  config.train.batch_size = 2
  shapes = {g["name"]: g for g in benchmark.gemm_shapes(config)}
  # 336x504 -> 24 x 36 = 864 patches, half kept + CLS = 433 tokens, 2 clips x 5 frames.
  assert shapes["dinov2 qkv"] == dict(name="dinov2 qkv", batch=1, m=4330, k=768, n=2304,
                                      count=12)
  assert shapes["dinov2 attention logits"] == dict(name="dinov2 attention logits", batch=120,
                                                   m=433, k=64, n=433, count=12)
  assert shapes["dinov2 mlp fc2"]["k"] == 3072
  # The loss target: all 864 patches + CLS of the 2 clips' middle frames.
  assert shapes["dinov2 qkv, full middle frames"] == dict(
      name="dinov2 qkv, full middle frames", batch=1, m=1730, k=768, n=2304, count=12)
  assert shapes["dinov2 attention x values, full middle frames"] == dict(
      name="dinov2 attention x values, full middle frames", batch=24, m=865, k=865, n=64,
      count=12)
  # Decoder: 2 clips x 8 slots x 864 positions; 3 hidden-to-hidden layers, forward + backward.
  assert shapes["decoder hidden layer"] == dict(name="decoder hidden layer", batch=1,
                                                m=13824, k=1024, n=1024, count=9)


def test_attention_mode_times_each_variant_on_the_steps_frames():
  rows = [r for r in _run("--what=attention") if r["what"] == "attention"]
  assert [(r["variant"], r["frames"]) for r in rows] == [
      (v, f) for v in ("library", "solv_jax", "products_only", "none")
      for f in ("kept tokens", "full frames")]
  # tests/tiny.py: 42x56 -> 3 x 4 = 12 patches, 6 kept (drop 0.5) + CLS; ViT-S/14: 12 blocks,
  # 6 heads of 64; batch 2 x 5 frames with kept tokens, 2 full middle frames (12 + CLS).
  kept, full = rows[0], rows[1]
  assert (kept["num_frames"], kept["tokens"], full["num_frames"], full["tokens"]) == (10, 7, 2, 13)
  assert kept["attention_flops"] == 2 * 2 * 10 * 12 * 6 * 7 * 7 * 64
  assert full["attention_flops"] == 2 * 2 * 2 * 12 * 6 * 13 * 13 * 64
  assert all(r["seconds"] > 0 for r in rows)


def test_parts_split_the_models_own_step_in_the_authors_four_parts():
  """--what=parts: the four parts in the authors' order, and the loss they compute together
  is the model's own training forward on the same inputs, params and RNG."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from solv_jax.models import build
  from tests import tiny
  rows = [r for r in _run("--what=parts", "--steps=1") if r["what"] == "part"]
  assert [r["part"] for r in rows] == ["encoder_target", "encoder_dropped", "trainable_forward",
                                       "backward_and_optimizer"]
  assert all(r["seconds"] > 0 for r in rows[:3])
  assert sum(r["share"] for r in rows) == pytest.approx(1.0)
  config = tiny.get_config()
  model = build.build_model(config)
  params = build.with_encoder(build.initial_params(config, model),
                              build.encoder_params(config, model))
  b, f, (h, w) = config.train.batch_size, model.num_frames, config.data.resolution
  video = jnp.asarray(np.random.default_rng(0).normal(size=(b, f, h, w, 3)), jnp.float32)
  key = jax.random.key(0)
  out = model.apply({"params": params}, video, jnp.ones((b, f), bool), train=True,
                    merge_prob=1.0, rngs={"token_drop": key, "dropout": key, "merge": key})
  assert {r["loss"] for r in rows} == {rows[0]["loss"]}
  assert rows[0]["loss"] == pytest.approx(float(out["loss"]), rel=1e-5)


def test_authors_step_recreation_has_the_authors_size_and_trains(tmp_path):
  """tools/bench_authors.py (the authors' PyTorch step for timing beside --what=parts): at
  the YTVIS19 recipe's 336 x 504 its trainable model has the authors' 5,799,521 params
  (their release's count, which solv_jax's model matches); at a small size it reports the
  same four parts and the step, and its steps lower the loss on a fixed batch."""
  import torch
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import bench_authors
  import benchmark
  model = bench_authors.AuthorsSOLV((336 // 14, 504 // 14))
  assert sum(p.numel() for p in model.parameters()) == 5_799_521
  records = bench_authors.main(["--batch_size=1", "--resolution", "28", "42", "--steps=2",
                                "--what=parts,step"])
  parts = [r for r in records if r["what"] == "part"]
  assert tuple(r["part"] for r in parts) == benchmark.PARTS_OF_STEP
  (step,) = [r for r in records if r["what"] == "train_step"]
  assert len(step["step_seconds_all"]) == 2 and step["step_seconds"] > 0
  torch.manual_seed(0)
  model = bench_authors.AuthorsSOLV((2, 3))
  model.eval()  # no dropout: the same batch gives the same loss until the params move
  feats, idx = torch.randn(5, 3, 768), torch.tensor([[0, 2, 5]] * 5)
  target, mask = torch.randn(1, 6, 768), torch.ones(1, 5)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  losses = []
  for _ in range(5):
    loss = torch.nn.functional.mse_loss(model(feats, mask, idx), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
  assert losses[-1] < losses[0]
