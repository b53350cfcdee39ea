"""Converts the authors' trained SOLV (github.com/gorkaydemir/SOLV, PyTorch) to a solv_jax model.

  python tools/convert_solv_checkpoint.py --src checkpoint.pt \\
      --encoder_weights dinov2_vitb14.npz --out solv_ytvis19.npz

--src              the authors' training checkpoint: `torch.save` of {"model": the state dict
                   of their DDP-wrapped SOLV (keys "module.s_bind...", "module.t_bind...",
                   "module.dec...", "module.pos_dec"), "optimizer", "scheduler", "epoch",
                   "args": argparse.Namespace}, e.g. checkpoint.pt of their release tagged
                   `checkpoint` (YTVIS19, 336x504, 8 slots, ViT-B/14) or a best_checkpoint.pt;
                   or a bare state dict of their SOLV (keys without "module.").
--encoder_weights  the frozen DINOv2 as tools/convert_dinov2.py writes it (the authors'
                   checkpoint does not hold its encoder: they load it from torch.hub).
--out              the same .npz tools/export_numpy.py writes: trainable params, the DINOv2
                   params and the config, for `python -m solv_jax.segment --checkpoint=OUT`,
                   evaluation, and `--config.train.init_from=OUT` (the DAVIS17 fine-tune).
--resize_to H W    only for a bare state dict (no args to read it from): the input size it
                   was trained at, default the authors' 336 504. Its slots, slot size and
                   window are read off its tensors, the rest (3 slot-attention iterations,
                   merging at 0.12, token drop 0.5) are the authors' defaults, and the DINOv2
                   variant is the one --encoder_weights holds.

The file is read with torch.load(weights_only=True): tensors, numbers, strings, containers
and argparse.Namespace (the "args") only, never arbitrary pickled objects. The config is
configs/<args.dataset>.py with the args' resize_to, N, num_slots, slot_dim, slot_att_iter,
merge_slots, slot_merge_coeff, token_drop_ratio and encoder; the architecture the authors fix
in code (invariant slot attention, delta 5, 3 temporal layers of 8 heads, 5 decoder layers)
is the config's default; the decoder width is read off the state dict (1024 in their code).
Every tensor is mapped with a shape check, each key exactly once; an error lists every key
missing, left over or of the wrong shape.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import sys
from typing import Callable, Mapping

import numpy as np

# read_args.py of the authors' release: the values of a run that did not override them.
AUTHORS_DEFAULTS = dict(dataset="ytvis19", resize_to=[336, 504], encoder="dinov2-vitb-14",
                        num_slots=8, slot_att_iter=3, slot_dim=128, merge_slots=True,
                        slot_merge_coeff=0.12, N=2, token_drop_ratio=0.5)
# The authors' `--encoder` names of DINOv2 -> solv_jax variants. Their DINO v1 and supervised
# ViT options (dino-vitb-16, dino-vitb-8, sup-vitb-16) have no solv_jax encoder.
ENCODERS = {"dinov2-vits-14": "vits14", "dinov2-vitb-14": "vitb14",
            "dinov2-vitl-14": "vitl14", "dinov2-vitg-14": "vitg14"}
# The recipes of the repository's configs/ (this tool runs from the repository).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")
DATASET_CONFIGS = {"ytvis19": "ytvis19.py", "davis17": "davis17.py"}


class ConversionError(ValueError):
  pass


# ----------------------------------------------------------------------------------------------
# Reading the checkpoint.
# ----------------------------------------------------------------------------------------------
def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
  """-> (state dict as float32 numpy without the "module." prefix, the args as a dict or None
  for a bare state dict)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--src {path!r} does not exist (expected the authors' "
                            "checkpoint.pt, e.g. the asset of their release tagged `checkpoint`).")
  try:
    import torch
  except ImportError as e:
    raise ImportError("Reading the authors' checkpoint needs torch: pip install torch.") from e
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConversionError(
        f"--src {path!r} holds pickled objects other than tensors, numbers, strings, "
        f"containers and argparse.Namespace, which are not unpickled here ({first}). Load it "
        "in a trusted session and save {'model': state_dict, 'args': vars(args)} instead.") from e
  except (RuntimeError, OSError, EOFError) as e:
    raise ConversionError(f"--src {path!r} is not a readable torch checkpoint ({e}).") from e

  args = None
  if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
    state, args = obj["model"], obj.get("args")
    if args is not None:
      args = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
  elif isinstance(obj, Mapping) and obj and all(torch.is_tensor(v) for v in obj.values()):
    state = obj  # a bare state dict
  else:
    keys = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise ConversionError(f"--src {path!r} is neither the authors' checkpoint (a dict with "
                          f"'model' and 'args') nor a state dict of tensors; it holds {keys}.")
  state = {k: v for k, v in state.items()}
  if state and all(k.startswith("module.") for k in state):  # DistributedDataParallel
    state = {k[len("module."):]: v for k, v in state.items()}
  bad = sorted(k for k, v in state.items() if not torch.is_tensor(v))
  if bad:
    raise ConversionError(f"--src {path!r}: the state dict entries {bad} are not tensors.")
  return {k: v.detach().to(torch.float32).cpu().numpy() for k, v in state.items()}, args


# ----------------------------------------------------------------------------------------------
# The config.
# ----------------------------------------------------------------------------------------------
def build_config(args: dict | None, state: Mapping[str, np.ndarray], encoder_weights: str,
                 resize_to=None):
  """The solv_jax config of the authors' run: configs/<dataset>.py with the args' values."""
  from solv_jax.models import dinov2

  given = args is not None
  a = dict(AUTHORS_DEFAULTS, **(args or {}))
  if not given:  # a bare state dict: the sizes its tensors show, the rest the authors' defaults
    if resize_to is not None:
      a["resize_to"] = list(resize_to)
    if getattr(state.get("s_bind.slots"), "ndim", 0) == 3:
      _, a["num_slots"], a["slot_dim"] = state["s_bind.slots"].shape
    if getattr(state.get("t_bind.pos_embed_temporal"), "ndim", 0) == 4:
      a["N"] = state["t_bind.pos_embed_temporal"].shape[1] // 2
  if a["dataset"] not in DATASET_CONFIGS:
    raise ConversionError(f"args.dataset = {a['dataset']!r}: expected one of "
                          f"{sorted(DATASET_CONFIGS)}.")
  from solv_jax import schema
  config = schema.load_recipe(os.path.join(CONFIGS_DIR, DATASET_CONFIGS[a["dataset"]]))
  if given:
    if a["encoder"] not in ENCODERS:
      raise ConversionError(f"args.encoder = {a['encoder']!r}: solv_jax encodes with DINOv2 "
                            f"only, one of {sorted(ENCODERS)}.")
    variant = ENCODERS[a["encoder"]]
  else:  # a bare state dict: the encoder is whatever the weights file holds
    variant = dinov2.load_params(encoder_weights)[0]
  c, m = config.data, config.model
  c.resolution = tuple(int(r) for r in a["resize_to"])
  c.num_context = int(a["N"])
  m.encoder_variant = variant
  m.encoder_weights = os.path.abspath(encoder_weights)
  m.num_slots = int(a["num_slots"])
  m.slot_dim = int(a["slot_dim"])
  m.slot_iters = int(a["slot_att_iter"])
  m.use_merge = bool(a["merge_slots"])
  m.merge_threshold = float(a["slot_merge_coeff"])
  m.token_drop = float(a["token_drop_ratio"])
  # Fixed in the authors' code: ISA with temporal binding, 3 layers of 8 heads, delta 5, a
  # 5-layer decoder of width 1024 (read off the state dict, so a smaller re-creation converts).
  m.spatial_binding_type, m.use_temporal_binding = "invariant", True
  m.temporal_layers, m.temporal_heads, m.decoder_layers, m.delta = 3, 8, 5, 5.0
  if "dec.layer1.weight" in state:
    m.decoder_hidden = int(state["dec.layer1.weight"].shape[0])
  grid = state.get("s_bind.abs_grid")
  (h, w), p = c.resolution, dinov2.PATCH_SIZE
  if grid is not None and grid.ndim == 4 and grid.shape[2] != (h // p) * (w // p):
    where = "args.resize_to" if given else "--resize_to"
    raise ConversionError(f"s_bind.abs_grid has {grid.shape[2]} positions but {where} "
                          f"{h} {w} gives {(h // p) * (w // p)} tokens of {p} px; pass the "
                          "input size the model was trained at.")
  from solv_jax import schema
  schema.validate(config)
  return config


# ----------------------------------------------------------------------------------------------
# The mapping: (torch key, its expected shape, {solv_jax param: how to make it from the tensor}).
# ----------------------------------------------------------------------------------------------
Rule = tuple[str, tuple, dict[str, Callable[[np.ndarray], np.ndarray]]]


def _linear(key: str, path: str, shapes: dict, bias: bool = True) -> list[Rule]:
  """torch.nn.Linear: weight (out, in) -> kernel (in, out); bias as is."""
  d_in, d_out = shapes[f"{path}/kernel"]
  rules = [(f"{key}.weight", (d_out, d_in), {f"{path}/kernel": lambda a: a.T})]
  if bias:
    rules.append((f"{key}.bias", (d_out,), {f"{path}/bias": lambda a: a}))
  return rules


def _layer_norm(key: str, path: str, shapes: dict) -> list[Rule]:
  (d,) = shapes[f"{path}/scale"]
  return [(f"{key}.weight", (d,), {f"{path}/scale": lambda a: a}),
          (f"{key}.bias", (d,), {f"{path}/bias": lambda a: a})]


def _gru_cell(key: str, path: str, shapes: dict) -> list[Rule]:
  """torch.nn.GRUCell: weight_ih (3H, D_in), rows [r | z | n]; biases (3H,), same order."""
  d_in, hid = shapes[f"{path}/ir/kernel"]
  def gate(i):
    return lambda a: a[i * hid:(i + 1) * hid]
  def kernel(i):
    return lambda a: a[i * hid:(i + 1) * hid].T
  rules = []
  for side, width in (("i", d_in), ("h", hid)):
    rules.append((f"{key}.weight_{side}h", (3 * hid, width),
                  {f"{path}/{side}{g}/kernel": kernel(i) for i, g in enumerate("rzn")}))
    rules.append((f"{key}.bias_{side}h", (3 * hid,),
                  {f"{path}/{side}{g}/bias": gate(i) for i, g in enumerate("rzn")}))
  return rules


def _attention(key: str, path: str, shapes: dict) -> list[Rule]:
  """torch.nn.MultiheadAttention: packed in_proj (3D, D), rows [q | k | v], each
  head-contiguous -> flax DenseGeneral kernels (D, H, D/H); out_proj (D, D) -> (H, D/H, D)."""
  d, heads, head_dim = shapes[f"{path}/query/kernel"]
  def kernel(i):
    return lambda a: a[i * d:(i + 1) * d].T.reshape(d, heads, head_dim)
  def bias(i):
    return lambda a: a[i * d:(i + 1) * d].reshape(heads, head_dim)
  names = ("query", "key", "value")
  return [
      (f"{key}.in_proj_weight", (3 * d, d),
       {f"{path}/{n}/kernel": kernel(i) for i, n in enumerate(names)}),
      (f"{key}.in_proj_bias", (3 * d,),
       {f"{path}/{n}/bias": bias(i) for i, n in enumerate(names)}),
      (f"{key}.out_proj.weight", (d, d),
       {f"{path}/out/kernel": lambda a: a.T.reshape(heads, head_dim, d)}),
      (f"{key}.out_proj.bias", (d,), {f"{path}/out/bias": lambda a: a}),
  ]


def authors_rules(shapes: dict[str, tuple]) -> list[Rule]:
  """The rules for the authors' SOLV (models/model.py: s_bind, t_bind, dec, pos_dec) into the
  solv_jax param tree whose flat '/'-joined shapes are `shapes`."""
  sb, tb, dec = "spatial_binding", "temporal_binding", "decoder"
  k, d_slot = shapes[f"{sb}/slots"]
  n = shapes[f"{sb}/grid_abs"][0]
  f = shapes[f"{tb}/pos_embed"][0]
  rules: list[Rule] = [
      ("s_bind.slots", (1, k, d_slot), {f"{sb}/slots": lambda a: a[0]}),
      ("s_bind.S_p", (1, k, 1, 2), {f"{sb}/slot_pos": lambda a: a[0, :, 0]}),
      ("s_bind.S_s", (1, k, 1, 2), {f"{sb}/slot_scale": lambda a: a[0, :, 0]}),
      ("s_bind.abs_grid", (1, 1, n, 2), {f"{sb}/grid_abs": lambda a: a[0, 0]}),
      ("t_bind.pos_embed_temporal", (1, f, 1, d_slot), {f"{tb}/pos_embed": lambda a: a[0, :, 0]}),
      ("pos_dec", (1, n, d_slot), {f"{dec}/pos_embed": lambda a: a[0]}),
  ]
  # Spatial binder: initial_mlp = LN, Linear, ReLU, Linear, LN; f = Linear, ReLU, Linear.
  rules += _layer_norm("s_bind.initial_mlp.0", f"{sb}/project_inputs/norm_in", shapes)
  rules += _linear("s_bind.initial_mlp.1", f"{sb}/project_inputs/fc1", shapes)
  rules += _linear("s_bind.initial_mlp.3", f"{sb}/project_inputs/fc2", shapes)
  rules += _layer_norm("s_bind.initial_mlp.4", f"{sb}/project_inputs/norm_out", shapes)
  rules += _layer_norm("s_bind.norm", f"{sb}/norm_slots", shapes)
  for torch_name, ours in (("Q", "to_q"), ("K", "to_k"), ("V", "to_v")):
    rules += _linear(f"s_bind.{torch_name}", f"{sb}/{ours}", shapes, bias=False)
  rules += _linear("s_bind.g", f"{sb}/grid_proj", shapes)
  rules += _linear("s_bind.f.0", f"{sb}/kv_mlp_0", shapes)
  rules += _linear("s_bind.f.2", f"{sb}/kv_mlp_1", shapes)
  rules += _gru_cell("s_bind.gru", f"{sb}/gru", shapes)
  rules += _layer_norm("s_bind.mlp.norm", f"{sb}/mlp/norm", shapes)
  rules += _linear("s_bind.mlp.layer1", f"{sb}/mlp/fc1", shapes)
  rules += _linear("s_bind.mlp.layer2", f"{sb}/mlp/fc2", shapes)
  rules += _linear("s_bind.final_layer", f"{sb}/to_out", shapes)
  rules += _linear("s_bind.h", f"{dec}/grid_proj", shapes)  # the decoder's h lives in s_bind
  # Temporal binder: nn.TransformerEncoder(nn.TransformerEncoderLayer(...), 3).
  num_layers = len({p.split("/")[1] for p in shapes if p.startswith(f"{tb}/layers_")})
  for i in range(num_layers):
    key, path = f"t_bind.slot_transformer.layers.{i}", f"{tb}/layers_{i}"
    rules += _attention(f"{key}.self_attn", f"{path}/attn", shapes)
    rules += _linear(f"{key}.linear1", f"{path}/fc1", shapes)
    rules += _linear(f"{key}.linear2", f"{path}/fc2", shapes)
    rules += _layer_norm(f"{key}.norm1", f"{path}/norm1", shapes)
    rules += _layer_norm(f"{key}.norm2", f"{path}/norm2", shapes)
  # Decoder: layer1..layer5.
  num_dec = len({p.split("/")[1] for p in shapes if p.startswith(f"{dec}/mlp_")})
  for i in range(num_dec):
    rules += _linear(f"dec.layer{i + 1}", f"{dec}/mlp_{i}", shapes)
  return rules


def convert_state_dict(state: Mapping[str, np.ndarray], shapes: dict[str, tuple]) -> dict:
  """The authors' state dict (no "module.") -> the flat {'a/b/c': array} solv_jax params of
  `shapes`. Raises ConversionError naming every key missing, left over or misshapen."""
  rules = authors_rules(shapes)
  params, used, missing, misshapen = {}, set(), [], []
  for key, torch_shape, outputs in rules:
    if key in used:
      raise AssertionError(f"the mapping uses {key!r} twice")
    if key not in state:
      missing.append(f"{key} {torch_shape}")
      continue
    used.add(key)
    a = np.asarray(state[key], np.float32)
    if a.shape != torch_shape:
      misshapen.append(f"{key} is {a.shape}, expected {torch_shape} (for {', '.join(outputs)})")
      continue
    for path, fn in outputs.items():
      if path in params:
        raise AssertionError(f"the mapping writes {path!r} twice")
      params[path] = np.ascontiguousarray(fn(a))
      assert params[path].shape == tuple(shapes[path]), (path, params[path].shape)
  left_over = sorted(set(state) - used)
  unmapped = sorted(set(shapes) - {path for _, _, outputs in rules for path in outputs})
  problems = ([f"missing from the checkpoint: {key}" for key in missing]
              + [f"wrong shape: {line}" for line in misshapen]
              + [f"left over (not in the authors' SOLV): {key}" for key in left_over]
              + [f"solv_jax param without a source: {path}" for path in unmapped])
  if problems:
    raise ConversionError(
        f"The checkpoint does not fit the authors' SOLV at this config ({len(missing)} keys "
        f"missing, {len(misshapen)} of the wrong shape, {len(left_over)} left over):\n  "
        + "\n  ".join(problems))
  return params


def convert(src: str, encoder_weights: str, out: str, resize_to=None) -> tuple:
  """Reads, converts and writes; -> (config, number of trainable params)."""
  from flax import traverse_util

  from solv_jax import export
  from solv_jax.models import build, dinov2

  state, args = read_checkpoint(src)
  config = build_config(args, state, encoder_weights, resize_to)
  model = build.build_model(config)
  shapes = {"/".join(k): tuple(v.shape) for k, v in
            traverse_util.flatten_dict(build.trainable_shapes(model)).items()}
  flat = convert_state_dict(state, shapes)
  params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  _, encoder = dinov2.load_params(encoder_weights,
                                  expected_variant=config.model.encoder_variant)
  export.save_export(out, config, params, encoder)
  return config, sum(int(math.prod(v.shape)) for v in flat.values())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--src", required=True, help="the authors' checkpoint.pt or a state dict")
  parser.add_argument("--encoder_weights", required=True,
                      help="DINOv2 params from tools/convert_dinov2.py")
  parser.add_argument("--out", required=True, help="output .npz")
  parser.add_argument("--resize_to", type=int, nargs=2, default=None, metavar=("H", "W"),
                      help="input size of a bare state dict (default 336 504)")
  args = parser.parse_args(argv)
  try:
    config, count = convert(args.src, args.encoder_weights, args.out, args.resize_to)
  except (ConversionError, ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: cannot convert {args.src!r}: {e}", file=sys.stderr)
    return 1
  m = config.model
  print(f"wrote {args.out}: the authors' SOLV, {count:,} trainable parameters, "
        f"{config.data.resolution[0]}x{config.data.resolution[1]}, {m.num_slots} slots, "
        f"DINOv2 {m.encoder_variant}, merge {'on' if m.use_merge else 'off'} "
        f"({m.merge_threshold}).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
