#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md (issue 7) in one run, most wanted first:
#   1. the YTVIS19 step at batch 48, DINOv2 in bfloat16, trainable layers in bfloat16
#      (config.model.compute_dtype), with the bf16 matmul rate and a jax.profiler breakdown;
#   2. the same step with the trainable layers in float32 (the 2026-11-25 H100 setting);
#   3. the token-drop ratios of paper Fig. 7 that the H100 lease did not reach;
#   4. the input pipeline on the host's cores (tools/bench_data.py, $DATA_CORES), beside the
#      step's clips/s (issue 29); it needs tensorflow-cpu and tensorflow-datasets.
# Each part appends its JSON lines to the folder $OUT (<part>.jsonl, <part>.log, machine.txt)
# as it measures, so a run cut short keeps what finished; the exit status is 1 if any part
# failed. Usage, from the repository root:
#   OUT=gpu_out bash tools/gpu_benchmarks.sh
#   CONFIG=tests/tiny.py BATCH=2 STEPS=1 RATIOS=0.0,0.5 OUT=/tmp/smoke bash tools/gpu_benchmarks.sh
# (the second line is a CPU smoke test of the script itself). It needs a CUDA jax with this
# package's other dependencies (flax, optax, orbax-checkpoint, ml-collections, absl-py) and
# imports the package from the checkout; `pip install -e .` would pin jax to the CPU
# version of pyproject.toml over a newer CUDA jax, so on a GPU image prefer
# `pip install --no-deps -e .` or nothing. $PYTHON picks the interpreter (default python3).
# config.xla_flags is emptied: the recipes' flag is for XLA:CPU only.
set -u
OUT=${OUT:-gpu_out}
CONFIG=${CONFIG:-configs/ytvis19.py}
BATCH=${BATCH:-48}
STEPS=${STEPS:-10}
RATIOS=${RATIOS:-0.4,0.6,0.8,0.9}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
failed=0

{
  date -u +%FT%TZ
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$PYTHON" -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib',
jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

bench() {  # name, then benchmark.py arguments
  local name=$1; shift
  echo "== $name: $*"
  "$PYTHON" tools/benchmark.py --config="$CONFIG" --config.train.batch_size="$BATCH" \
      --config.model.encoder_dtype=bfloat16 --config.xla_flags= --out="$OUT/$name.jsonl" \
      "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc"
  [ "$rc" -eq 0 ] || failed=1
}

bench step_bf16 --config.model.compute_dtype=bfloat16 --what=matmul,step,profile --steps="$STEPS"
bench step_f32 --config.model.compute_dtype=float32 --what=step --steps="$STEPS"
bench drop_bf16 --config.model.compute_dtype=bfloat16 --what=drop --drop_ratios="$RATIOS" \
    --steps="$(( STEPS > 5 ? 5 : STEPS ))"

echo "== data: clips/s at 336x504 from 720p JPEG records on ${DATA_CORES:=1,2,16} cores"
"$PYTHON" tools/bench_data.py --workdir "${DATA_WORKDIR:-/tmp/bench_data}" --videos 12 \
    --frames 20 --batch "$BATCH" --steps "$(( STEPS > 5 ? 5 : STEPS ))" --repeats 3 \
    --cores "$DATA_CORES" --skip_synthetic > "$OUT/data.log" 2>&1
rc=$?
tail -n 8 "$OUT/data.log"
echo "== data: exit $rc"
[ "$rc" -eq 0 ] || failed=1
exit "$failed"
