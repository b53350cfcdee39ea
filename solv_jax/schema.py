"""The config schema: every key of a SOLV run with its one default, the Table 3/4/5 arguments,
renamed keys and validation (docs/METHOD.md §6). The recipes in the repository's configs/ (one a
dataset: configs/ytvis19.py, ...) call `get_config(arg, recipe)` and override only what differs.

Every config file takes an optional argument string of comma-separated key=value pairs,
e.g. `--config=configs/ytvis19.py:model=C,slots=12,encoder=vits14,drop=0.3`:
  model    Table 3 component ablation: A (vanilla SA), B (+merge), C (+temporal binding),
           D (ISA + merge), E (full SOLV, default); sets model.spatial_binding_type,
           model.use_temporal_binding and model.use_merge
  slots    number of slots K (Table 4): model.num_slots
  merge    0/1 to switch slot merging off/on (Table 4): model.use_merge
  encoder  an encoder of solv_jax/models/encoders.py: DINOv2 vits14, vitb14, vitl14, vitg14
           and *_reg (Table 5), or DINOv3 dinov3_vits16, dinov3_vitb16, dinov3_vitl16, ...:
           model.encoder_variant; the recipe's resolution becomes the nearest multiples of
           that encoder's patch size (fit_resolution: 336x504 -> 336x512 for patch 16)
  drop     token drop ratio (Fig. 7): model.token_drop
"""
import importlib.util
import os
import re

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
    try:
      out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    except ValueError:
      raise ValueError(f"Config argument {key}={value!r} in {arg!r} must be a "
                       f"{kind.__name__}.") from None
  return out


def get_config(arg=None, recipe=None):
  """The schema with every default, then `recipe(config)` (a dataset config's overrides),
  then the argument string, so that an argument wins over the recipe it is given to."""
  args = parse_arg(arg, model="", slots=0, merge=-1, encoder="", drop=-1.0)
  if args.model and args.model not in TABLE3:
    raise ValueError(f"Config argument model={args.model!r} is not a Table 3 model; choose one "
                     f"of {', '.join(TABLE3)} (E = full SOLV).")
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Appended to XLA_FLAGS before JAX starts by solv_jax.main and tools/benchmark.py (a flag
  # the environment already sets wins); a script of your own sets XLA_FLAGS itself.
  # XLA:CPU's YNNPACK fusions off, so that its dots run on Eigen: the YTVIS19 step on the
  # 2-core CPU takes 9.8 s instead of 11.0 s (BENCHMARKS.md). CPU-only; GPU/TPU ignore it.
  config.xla_flags = "--xla_cpu_experimental_ynn_fusion_type="
  # Applied by the same entry points: freed host memory stays in the process for reuse
  # (glibc malloc settings, solv_jax/sharding.keep_host_memory), so XLA:CPU's per-step
  # temporaries are not faulted in afresh each step (YTVIS19 CPU step 13.6 s instead of
  # 14.7 s, BENCHMARKS.md). No effect where an accelerator plugin is installed.
  config.keep_host_memory = True

  config.data = ml_collections.ConfigDict(dict(
      name="ytvis19",            # synthetic | movi_e | ytvis19 | davis17
      tfds_name="ytvis19",
      data_dir="",               # where the TFDS dataset lives (local path or gs://)
      resolution=(336, 504),     # model input (H, W), multiples of the patch size (14; 16 for
      #                            DINOv3: the encoder= argument fits it, 336x512)
      num_context=2,             # n: window t-n..t+n, F = 2n+1 frames
      train_split="train",
      eval_split="train",
      shuffle_buffer=1024,
      ytvis_eval_subset="authors",  # authors: videos [600:900] of train.json; disjoint
      eval_max_videos=0,         # 0 = all videos of the evaluation split
      synthetic=ml_collections.ConfigDict(),  # generator settings (synthetic dataset only)
  ))

  # SOLV's fields (solv_jax/models/solv.py) under their own names, and encoder_weights
  # (read by solv_jax/models/build.py).
  config.model = ml_collections.ConfigDict(dict(
      encoder_variant="vitb14",  # models/encoders.py: vits14 | vitb14 | vitl14 | vitg14 (+ _reg)
      #                            | dinov3_vits16 | dinov3_vitb16 | dinov3_vitl16 | ...
      encoder_weights="",        # converted params file (tools/convert_dinov2.py or
      #                            tools/convert_dinov3.py); '' = random
      encoder_dtype="float32",   # float32 | bfloat16 (the encoder's forward only)
      compute_dtype="float32",   # float32 | bfloat16: trainable per-token layers (params f32)
      encoder_blocks=0,          # 0 = all blocks (paper); L = use block L's tokens
      num_slots=8,
      slot_dim=128,
      slot_iters=3,
      token_drop=0.5,
      spatial_binding_type="invariant",  # invariant (ISA) | vanilla (slot attention)
      use_temporal_binding=True,
      use_merge=True,
      merge_threshold=0.12,
      merge_backend="device",    # device | host
      clamp_scales=False,        # clamp ISA scales to [0.001, 2] (Biza et al.); off = authors
      delta=5.0,
      decoder_hidden=1024,
      decoder_layers=5,
      temporal_layers=3,
      temporal_heads=8,
      dropout=0.1,
      param_init="torch",        # torch (the authors' PyTorch initialisation) | flax
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
      eval_every=0,              # N > 0: also evaluate every N steps (eval_steps/<step>/, TB)
      init_from="",              # workdir or checkpoint dir to start from (DAVIS fine-tuning)
      nonfinite="stop",          # stop | skip: what a NaN/Inf loss or gradient does
      max_nonfinite_frac=0.01,   # with skip: more skipped updates than this fails the run
      distributed=False,         # call jax.distributed.initialize() (multi-host)
  ))

  config.eval = ml_collections.ConfigDict(dict(
      num_visualize=4,           # videos with PNG strips and GIFs under WORKDIR/eval/
      untrained=False,           # also evaluate the step-0 model, into WORKDIR/eval_step0/
      batch_windows=16,          # windows decoded per device call
  ))

  if recipe is not None:
    recipe(config)
  if args.model:
    merge, invariant, temporal = TABLE3[args.model]
    config.model.spatial_binding_type = "invariant" if invariant else "vanilla"
    config.model.use_temporal_binding = temporal
    config.model.use_merge = merge
  if args.slots:
    config.model.num_slots = args.slots
  if args.merge >= 0:
    config.model.use_merge = bool(args.merge)
  if args.encoder:
    config.model.encoder_variant = args.encoder
    fit_resolution(config)
  if args.drop >= 0:
    config.model.token_drop = args.drop
  return config


def fit_resolution(config):
  """Sets config.data.resolution to the nearest multiples of the patch size of
  config.model.encoder_variant (a tie rounds up: 504 -> 512 for patch 16) when it is not a
  multiple already. Returns the resolution it replaced, or None if it fit (or the encoder is
  unknown: validate() reports that)."""
  from solv_jax.models import encoders
  variant = config.model.encoder_variant
  spec = encoders.ENCODERS.get(variant) if isinstance(variant, str) else None
  try:
    old = tuple(int(r) for r in config.data.resolution)
  except (TypeError, ValueError):  # not (H, W) ints: validate() reports it
    return None
  if spec is None or len(old) != 2:
    return None
  new = spec.fit(old)
  if new == old:
    return None
  config.data.resolution = new
  return old


def load_recipe(path: str):
  """The config of a recipe file, `path[:arg]` (e.g. 'configs/ytvis19.py:model=C'), as
  `--config=` loads it: the file's get_config(arg). For tools that run a recipe by path."""
  path, _, arg = path.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} does not exist (a recipe such as "
                            "configs/ytvis19.py of the solv_jax repository).")
  spec = importlib.util.spec_from_file_location(
      "solv_jax_recipe_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


# Keys renamed since configs were first saved: old name -> new name. upgrade() reads saved
# configs with the old names; an override or key with an old name is an error naming the new.
RENAMED = {
    "model.encoder": "model.encoder_variant",
    "model.spatial_binding": "model.spatial_binding_type",
    "model.temporal_binding": "model.use_temporal_binding",
    "model.merge": "model.use_merge",
}


def renamed_override(argv) -> str | None:
  """The one-line error for the first --config.* override in argv that uses an old key name
  (RENAMED), naming the new one; None if there is none."""
  for arg in argv:
    match = re.match(r"(-{1,2}(?:no)?config\.)([^=]+)(=.*)?$", arg)
    if match and match[2] in RENAMED:
      prefix, key, value = match[1], match[2], match[3] or ""
      return (f"{prefix}{key}: config.{key} was renamed to config.{RENAMED[key]}; pass "
              f"{prefix}{RENAMED[key]}{value} instead.")
  return None


def renamed(saved: dict) -> dict:
  """A copy of a saved config dict with the keys of RENAMED under their new names."""
  saved = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
  for old, new in RENAMED.items():
    (section, old_key), new_key = old.split("."), new.split(".")[1]
    if old_key in saved.get(section, {}):
      saved[section].setdefault(new_key, saved[section].pop(old_key))
  return saved


def upgrade(saved: dict) -> ml_collections.ConfigDict:
  """A config saved by an earlier version (a workdir's config.json, an export's __config__)
  on this schema: renamed keys take their new names, keys added since then take their
  defaults here, the saved values win."""
  def merge(defaults: dict, values: dict) -> dict:
    out = dict(defaults)
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(defaults.get(key), dict):
        out[key] = merge(defaults[key], value)
      else:
        out[key] = value
    return out
  return ml_collections.ConfigDict(merge(get_config().to_dict(), renamed(saved)))


# ----------------------------------------------------------------------------------------------
# Validation of a config against this schema.
# ----------------------------------------------------------------------------------------------
FREE_FORM = ("config.data.synthetic",)  # checked by the synthetic generator itself


class ConfigError(ValueError):
  pass


def validate(config) -> None:
  """Raises ConfigError listing every unknown key (against get_config()) and every value the
  method cannot run with, each with the value seen and what to set instead. Cheap: run it
  before anything is built, so a typo costs seconds, not a compile."""
  import difflib
  import numpy as np
  from solv_jax.models import encoders, token_drop
  from solv_jax.models.merging import BACKENDS

  problems = []

  def keys(cfg, ref, prefix):
    for key in cfg.keys():
      name = f"{prefix}.{key}"
      if key not in ref:
        close = difflib.get_close_matches(key, list(ref.keys()), n=1)
        renamed = RENAMED.get(name[len("config."):])
        hint = (f"renamed to config.{renamed}" if renamed else
                f"did you mean {prefix}.{close[0]}?" if close else
                f"known keys of {prefix}: {sorted(ref.keys())}")
        problems.append(f"{name} is not a config key ({hint}).")
      elif (name not in FREE_FORM and hasattr(ref[key], "keys")
            and hasattr(cfg[key], "keys")):
        keys(cfg[key], ref[key], name)

  keys(config, get_config(), "config")
  if problems:  # values of misspelled keys would only add noise
    raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))

  def check(ok, key, value, rule):
    if not ok:
      problems.append(f"config.{key} = {value!r}: {rule}")

  d, m, t = config.data, config.model, config.train
  spec = encoders.ENCODERS.get(m.encoder_variant) if isinstance(m.encoder_variant, str) else None
  check(spec is not None, "model.encoder_variant", m.encoder_variant,
        f"not an encoder of models/encoders.py; choose one of {sorted(encoders.ENCODERS)}.")
  patch = spec.patch_size if spec else None
  res = tuple(d.resolution)
  res_ok = len(res) == 2 and all(isinstance(r, (int, np.integer)) for r in res)
  if not res_ok:
    check(False, "data.resolution", res, "must be (H, W), two ints.")
  elif spec is not None:
    try:
      spec.grid(res)
    except ValueError:
      fit = spec.fit(res)
      res_ok = False
      check(False, "data.resolution", res,
            f"H and W must be multiples of the {spec.family} patch size {patch}; e.g. "
            f"--config.data.resolution='{fit}'.")
  check(d.num_context >= 0, "data.num_context", d.num_context,
        "the window t-n..t+n needs n >= 0 (2 in the paper).")
  check(m.encoder_dtype in ("float32", "bfloat16"), "model.encoder_dtype", m.encoder_dtype,
        "must be 'float32' or 'bfloat16'.")
  check(m.compute_dtype in ("float32", "bfloat16"), "model.compute_dtype", m.compute_dtype,
        "must be 'float32' or 'bfloat16'.")
  if spec is not None:
    blocks = m.encoder_blocks
    check(0 <= blocks <= spec.depth, "model.encoder_blocks", blocks,
          f"must be 0 (all blocks) or 1..{spec.depth} for {m.encoder_variant}.")
  check(m.num_slots >= 1, "model.num_slots", m.num_slots,
        "needs at least 1 slot (8 for YTVIS, 18 for MOVi-E in the paper).")
  check(m.slot_iters >= 1, "model.slot_iters", m.slot_iters, "needs >= 1 iteration (3).")
  check(0.0 <= m.token_drop < 1.0, "model.token_drop", m.token_drop,
        "the token drop ratio must be in [0, 1) (0.5 in the paper; 0 keeps every token).")
  if spec is not None and m.token_drop > 0:
    check(spec.token_drop, "model.token_drop", m.token_drop,
          f"the encoder {spec.name} ({spec.family}) cannot drop tokens; set it to 0.")
  if 0.0 <= m.token_drop < 1.0 and res_ok and spec is not None:
    tokens = (res[0] // patch) * (res[1] // patch)
    try:
      token_drop.num_kept_tokens(tokens, m.token_drop)
    except ValueError:
      check(False, "model.token_drop", m.token_drop,
            f"keeps no token of the {tokens} at resolution {res}; lower it.")
  check(m.spatial_binding_type in ("invariant", "vanilla"), "model.spatial_binding_type",
        m.spatial_binding_type, "must be 'invariant' or 'vanilla'.")
  check(m.merge_backend in BACKENDS, "model.merge_backend", m.merge_backend,
        f"must be one of {BACKENDS}.")
  check(m.param_init in ("torch", "flax"), "model.param_init", m.param_init,
        "must be 'torch' (the authors' PyTorch initialisation) or 'flax' (Flax's defaults).")
  if m.use_temporal_binding:
    check(m.temporal_heads >= 1 and m.slot_dim % m.temporal_heads == 0,
          "model.temporal_heads", m.temporal_heads,
          f"must divide config.model.slot_dim = {m.slot_dim}.")
  for key in ("batch_size", "num_steps", "num_epochs", "log_every", "checkpoint_every",
              "keep_checkpoints"):
    check(t[key] >= 1, f"train.{key}", t[key], "must be >= 1.")
  check(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "must be > 0.")
  check(0.0 <= t.warmup_frac < 1.0, "train.warmup_frac", t.warmup_frac, "must be in [0, 1).")
  check(t.nonfinite in ("stop", "skip"), "train.nonfinite", t.nonfinite,
        "must be 'stop' or 'skip'.")
  check(config.eval.batch_windows >= 1, "eval.batch_windows", config.eval.batch_windows,
        "must be >= 1.")
  if problems:
    raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
