"""The shared SOLV recipe (SPEC.md §6). Dataset configs override what differs.

Every config file takes an optional argument string of comma-separated key=value pairs,
e.g. `--config=configs/ytvis19.py:model=C,slots=12,encoder=vits14,drop=0.3`:
  model    Table 3 component ablation: A (vanilla SA), B (+merge), C (+temporal binding),
           D (ISA + merge), E (full SOLV, default)
  slots    number of slots K (Table 4)
  merge    0/1 to switch slot merging off/on (Table 4)
  encoder  DINOv2 variant: vits14, vitb14, vitl14, vitg14 and *_reg (Table 5)
  drop     token drop ratio (Fig. 7)
"""
import ml_collections

# Paper Table 3: (merge, invariant spatial binding, temporal binding).
TABLE3 = {"A": (False, False, False), "B": (True, False, False), "C": (True, False, True),
          "D": (True, True, False), "E": (True, True, True)}


def parse_arg(arg, **defaults):
  """'a=1,b=x' -> ConfigDict with the defaults' types; unknown keys are an error."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}.")
    kind = type(defaults[key])
    out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  return out


def get_config(arg=None):
  args = parse_arg(arg, model="E", slots=0, merge=-1, encoder="", drop=-1.0)
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Appended to XLA_FLAGS before JAX starts by solv_jax.main and tools/benchmark.py (a flag
  # the environment already sets wins); a script of your own sets XLA_FLAGS itself.
  # XLA:CPU's YNNPACK fusions off, so that its dots run on Eigen: the YTVIS19 step on the
  # 2-core CPU takes 9.8 s instead of 11.0 s (BENCHMARKS.md). CPU-only; GPU/TPU ignore it.
  config.xla_flags = "--xla_cpu_experimental_ynn_fusion_type="

  config.data = ml_collections.ConfigDict(dict(
      name="ytvis19",            # synthetic | movi_e | ytvis19 | davis17
      tfds_name="ytvis19",
      data_dir="",               # where the TFDS dataset lives (local path or gs://)
      resolution=(336, 504),     # model input (H, W), multiples of 14
      num_context=2,             # n: window t-n..t+n, F = 2n+1 frames
      train_split="train",
      eval_split="train",
      shuffle_buffer=1024,
      ytvis_eval_subset="authors",  # authors: videos [600:900] of train.json; disjoint
      eval_max_videos=0,         # 0 = all videos of the evaluation split
      synthetic=ml_collections.ConfigDict(),  # generator settings (synthetic dataset only)
  ))

  config.model = ml_collections.ConfigDict(dict(
      encoder="vitb14",
      encoder_weights="",        # converted params file (tools/convert_dinov2.py); '' = random
      encoder_dtype="float32",   # float32 | bfloat16 (DINOv2 forward only)
      compute_dtype="float32",   # float32 | bfloat16: trainable per-token layers (params f32)
      encoder_blocks=0,          # 0 = all blocks (paper); L = use block L's tokens
      num_slots=8,
      slot_dim=128,
      slot_iters=3,
      token_drop=0.5,
      spatial_binding="invariant",  # invariant | vanilla
      temporal_binding=True,
      merge=True,
      merge_threshold=0.12,
      merge_backend="device",    # device | host
      clamp_scales=False,        # clamp ISA scales to [0.001, 2] (Biza et al.); off = authors
      delta=5.0,
      decoder_hidden=1024,
      decoder_layers=5,
      temporal_layers=3,
      temporal_heads=8,
      dropout=0.1,
  ))

  config.train = ml_collections.ConfigDict(dict(
      batch_size=48,             # global batch, split over all devices
      num_steps=300_000,
      num_epochs=180,            # for the merge-probability schedule ln(e+1)/ln(E)
      learning_rate=4e-4,
      warmup_frac=0.05,
      grad_clip=1.0,
      log_every=100,
      checkpoint_every=5000,
      keep_checkpoints=3,
      eval_every=0,              # 0 = only at the end (train_and_eval)
      init_from="",              # workdir or checkpoint dir to start from (DAVIS fine-tuning)
      nonfinite="stop",          # stop | skip: what a NaN/Inf loss or gradient does
      distributed=False,         # call jax.distributed.initialize() (multi-host)
  ))

  config.eval = ml_collections.ConfigDict(dict(
      num_visualize=4,           # videos with PNG strips and GIFs under WORKDIR/eval/
      untrained=False,           # also evaluate the step-0 model, into WORKDIR/eval_step0/
      batch_windows=16,          # windows decoded per device call
  ))

  merge, invariant, temporal = TABLE3[args.model]
  config.model.spatial_binding = "invariant" if invariant else "vanilla"
  config.model.temporal_binding = temporal
  config.model.merge = merge
  if args.slots:
    config.model.num_slots = args.slots
  if args.merge >= 0:
    config.model.merge = bool(args.merge)
  if args.encoder:
    config.model.encoder = args.encoder
  if args.drop >= 0:
    config.model.token_drop = args.drop
  return config
