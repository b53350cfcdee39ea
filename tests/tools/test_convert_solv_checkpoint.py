"""tools/convert_solv_checkpoint.py on checkpoints in the authors' format (gorkaydemir/SOLV).

The authors' SOLV is re-created here in torch at tiny sizes with their module names and
shapes (models/model.py: s_bind, t_bind, dec, pos_dec; read off their release), saved as
their train.py saves it, converted, and each converted component is checked against the
torch module it comes from (nn.Linear, nn.LayerNorm, nn.GRUCell, nn.TransformerEncoder as the
authors configure it) on the same inputs; then the file runs end to end through segment.
The module correspondence below is written from the authors' code, independently of the
converter's own table.
"""
import argparse
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from PIL import Image

from solv_jax import evaluation, export, segment
from solv_jax.models import build, dinov2, encoders
from solv_jax.models import spatial_binding as sb
from solv_jax.models.temporal_binding import TemporalBinding
from tests.dinov2_reference import TINY
from tools import convert_solv_checkpoint as convert

# Tiny sizes: 42 x 56 input (3 x 4 tokens), 4 slots of 16, decoder width 32, the tiny DINOv2.
H, W, K, D_SLOT, HIDDEN, N_CTX = 42, 56, 4, 16, 32, 2
D = TINY["embed_dim"]
GRID = (H // 14, W // 14)
N_TOK = GRID[0] * GRID[1]
F = 2 * N_CTX + 1


# ----------------------------------------------------------------------------------------------
# The authors' modules (structure, names and shapes only; their forward is not re-created).
# ----------------------------------------------------------------------------------------------
class AuthorsMLP(torch.nn.Module):  # MLP(residual=True, layer_order="pre")
  def __init__(self, d, hidden):
    super().__init__()
    self.layer1, self.layer2 = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, d)
    self.norm = torch.nn.LayerNorm(d)


class AuthorsSpatialBinder(torch.nn.Module):
  def __init__(self, d_in, k, d_slot, grid_hw):
    super().__init__()
    xs, ys = torch.meshgrid(torch.linspace(-1, 1, grid_hw[1]), torch.linspace(-1, 1, grid_hw[0]),
                            indexing="xy")
    self.abs_grid = torch.nn.Parameter(
        torch.cat([xs.reshape(1, 1, -1, 1), ys.reshape(1, 1, -1, 1)], dim=-1))  # (1, 1, N, 2)
    self.h = torch.nn.Linear(2, d_slot)
    self.slots = torch.nn.Parameter(torch.empty(1, k, d_slot))
    self.S_s = torch.nn.Parameter(torch.empty(1, k, 1, 2))
    self.S_p = torch.nn.Parameter(torch.empty(1, k, 1, 2))
    torch.nn.init.xavier_uniform_(self.slots)
    torch.nn.init.normal_(self.S_s, std=0.02)
    torch.nn.init.normal_(self.S_p, std=0.02)
    self.Q = torch.nn.Linear(d_slot, d_slot, bias=False)
    self.norm = torch.nn.LayerNorm(d_slot)
    self.gru = torch.nn.GRUCell(d_slot, d_slot)
    self.mlp = AuthorsMLP(d_slot, 4 * d_slot)
    self.K = torch.nn.Linear(d_slot, d_slot, bias=False)
    self.V = torch.nn.Linear(d_slot, d_slot, bias=False)
    self.g = torch.nn.Linear(2, d_slot)
    self.f = torch.nn.Sequential(torch.nn.Linear(d_slot, d_slot), torch.nn.ReLU(),
                                 torch.nn.Linear(d_slot, d_slot))
    self.initial_mlp = torch.nn.Sequential(
        torch.nn.LayerNorm(d_in), torch.nn.Linear(d_in, d_in), torch.nn.ReLU(),
        torch.nn.Linear(d_in, d_slot), torch.nn.LayerNorm(d_slot))
    self.final_layer = torch.nn.Linear(d_slot, d_slot)


class AuthorsTemporalBinder(torch.nn.Module):
  def __init__(self, d_slot, num_frames):
    super().__init__()
    layer = torch.nn.TransformerEncoderLayer(d_slot, nhead=8, dim_feedforward=4 * d_slot,
                                             batch_first=True)
    self.slot_transformer = torch.nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    self.pos_embed_temporal = torch.nn.Parameter(torch.empty(1, num_frames, 1, d_slot))
    torch.nn.init.normal_(self.pos_embed_temporal, std=0.02)


class AuthorsDecoder(torch.nn.Module):
  def __init__(self, d_slot, hidden, d_out):
    super().__init__()
    self.layer1 = torch.nn.Linear(d_slot, hidden)
    self.layer2 = torch.nn.Linear(hidden, hidden)
    self.layer3 = torch.nn.Linear(hidden, hidden)
    self.layer4 = torch.nn.Linear(hidden, hidden)
    self.layer5 = torch.nn.Linear(hidden, d_out + 1)


class AuthorsSOLV(torch.nn.Module):
  def __init__(self, d_in=D, k=K, d_slot=D_SLOT, grid_hw=GRID, num_frames=F, hidden=HIDDEN):
    super().__init__()
    self.s_bind = AuthorsSpatialBinder(d_in, k, d_slot, grid_hw)
    self.t_bind = AuthorsTemporalBinder(d_slot, num_frames)
    self.dec = AuthorsDecoder(d_slot, hidden, d_in)  # (Slot_Merger has no parameters)
    self.pos_dec = torch.nn.Parameter(torch.empty(1, grid_hw[0] * grid_hw[1], d_slot))
    torch.nn.init.normal_(self.pos_dec, std=0.02)


def authors_model(seed=0):
  """The re-creation with every parameter randomised (LayerNorms and zero biases included), so
  that a swapped or transposed tensor cannot go unnoticed."""
  torch.manual_seed(seed)
  model = AuthorsSOLV()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name != "s_bind.abs_grid":
        p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5) + (1.0 if "norm" in name
                                                                     and "weight" in name else 0))
    model.s_bind.abs_grid.add_(torch.randn_like(model.s_bind.abs_grid) * 0.05)  # trained
  return model


def authors_args(**overrides):
  """argparse.Namespace as the authors' read_args.py leaves it (set_remaining_args included)."""
  args = dict(root="/data/ytvis", dataset="ytvis19", train_splits=["train", "valid", "test"],
              resize_to=[H, W], encoder="dinov2-tiny-14", num_slots=K, slot_att_iter=3,
              slot_dim=D_SLOT, merge_slots=True, slot_merge_coeff=0.12, N=N_CTX,
              finetuning=False, token_drop_ratio=0.5, learning_rate=4e-4, batch_size=48,
              num_epochs=180, validate=False, use_checkpoint=False, checkpoint_path=None,
              validation_epoch=1, seed=32, model_save_path="/ckpt/solv", gpus=1,
              patch_size=14, token_num=N_TOK, rank=0, world_size=1, gpu=0,
              dist_url="env://")
  args.update(overrides)
  return argparse.Namespace(**args)


def save_authors_checkpoint(model, path, args=None):
  """As their train.py: {"model": DDP state dict, "optimizer", "scheduler", "epoch", "args"}."""
  opt = torch.optim.Adam(model.parameters(), lr=4e-4)
  linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-5, total_iters=5)
  expo = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
  sched = torch.optim.lr_scheduler.SequentialLR(opt, [linear, expo], milestones=[5])
  for p in model.parameters():
    p.grad = torch.zeros_like(p)
  opt.step()
  sched.step()
  state = {f"module.{k}": v for k, v in model.state_dict().items()}
  torch.save({"model": state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
              "epoch": 7, "args": args or authors_args()}, path)


@pytest.fixture(autouse=True)
def tiny_encoder(monkeypatch):
  """The tiny DINOv2 variant by name, and the authors'-style --encoder name for it."""
  monkeypatch.setitem(dinov2.VARIANTS, "tiny14", TINY)
  monkeypatch.setitem(encoders.ENCODERS, "tiny14", encoders.dinov2_entry("tiny14"))
  monkeypatch.setitem(convert.ENCODERS, "dinov2-tiny-14", "tiny14")


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
  """A tiny14 params file as tools/convert_dinov2.py writes it (random values, no compile)."""
  path = str(tmp_path_factory.mktemp("dinov2") / "dinov2_tiny14.npz")
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(dinov2.VARIANTS, "tiny14", TINY)
    shapes = dinov2.param_shapes("tiny14")
  rng = np.random.default_rng(5)
  flat = {k: (rng.normal(size=s) * 0.1).astype(np.float32) for k, s in shapes.items()}
  dinov2.save_params(path, traverse_util.unflatten_dict(
      {tuple(k.split("/")): v for k, v in flat.items()}), "tiny14")
  return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, encoder_file):
  """(torch model, path of the converted .npz) from a checkpoint.pt in the authors' format."""
  root = tmp_path_factory.mktemp("convert")
  model = authors_model()
  src, out = str(root / "checkpoint.pt"), str(root / "solv.npz")
  save_authors_checkpoint(model, src)
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(dinov2.VARIANTS, "tiny14", TINY)
    mp.setitem(encoders.ENCODERS, "tiny14", encoders.dinov2_entry("tiny14"))
    mp.setitem(convert.ENCODERS, "dinov2-tiny-14", "tiny14")
    assert convert.main(["--src", src, "--encoder_weights", encoder_file, "--out", out]) == 0
  return model, out


def _t(a):
  return torch.tensor(np.asarray(a))


def _np(x):
  return x.detach().numpy()


# ----------------------------------------------------------------------------------------------
# Each converted component against the torch module it comes from.
# ----------------------------------------------------------------------------------------------
# Every nn.Linear of the authors' SOLV -> its solv_jax Dense (from models/model.py).
LINEARS = {
    "s_bind.initial_mlp.1": "spatial_binding/project_inputs/fc1",
    "s_bind.initial_mlp.3": "spatial_binding/project_inputs/fc2",
    "s_bind.Q": "spatial_binding/to_q", "s_bind.K": "spatial_binding/to_k",
    "s_bind.V": "spatial_binding/to_v", "s_bind.g": "spatial_binding/grid_proj",
    "s_bind.f.0": "spatial_binding/kv_mlp_0", "s_bind.f.2": "spatial_binding/kv_mlp_1",
    "s_bind.mlp.layer1": "spatial_binding/mlp/fc1", "s_bind.mlp.layer2": "spatial_binding/mlp/fc2",
    "s_bind.final_layer": "spatial_binding/to_out", "s_bind.h": "decoder/grid_proj",
    **{f"dec.layer{i + 1}": f"decoder/mlp_{i}" for i in range(5)},
}
LAYER_NORMS = {
    "s_bind.initial_mlp.0": "spatial_binding/project_inputs/norm_in",
    "s_bind.initial_mlp.4": "spatial_binding/project_inputs/norm_out",
    "s_bind.norm": "spatial_binding/norm_slots", "s_bind.mlp.norm": "spatial_binding/mlp/norm",
}


def _sub(params, path):
  for part in path.split("/"):
    params = params[part]
  return params


def test_every_linear_matches_torch_linear(converted):
  model, out = converted
  _, params, _ = export.load_export(out)
  modules = dict(model.named_modules())
  assert {n for n, m in modules.items() if isinstance(m, torch.nn.Linear)
          and not n.startswith("t_bind")} == set(LINEARS)
  rng = np.random.default_rng(0)
  for name, path in LINEARS.items():
    lin = modules[name]
    x = rng.normal(size=(3, lin.in_features)).astype(np.float32)
    dense = nn.Dense(lin.out_features, use_bias=lin.bias is not None)
    got = dense.apply({"params": _sub(params, path)}, x)
    np.testing.assert_allclose(got, _np(lin(_t(x))), rtol=1e-5, atol=1e-5, err_msg=name)


def test_every_layer_norm_matches_torch_layer_norm_with_its_eps(converted):
  model, out = converted
  _, params, _ = export.load_export(out)
  modules = dict(model.named_modules())
  assert {n for n, m in modules.items() if isinstance(m, torch.nn.LayerNorm)
          and not n.startswith("t_bind")} == set(LAYER_NORMS)
  rng = np.random.default_rng(1)
  for name, path in LAYER_NORMS.items():
    ln = modules[name]
    assert ln.eps == sb.LN_EPS
    # Variance ~1e-6, below the eps of 1e-5: a wrong eps changes the output by ~3x.
    x = (rng.normal(size=(3, ln.normalized_shape[0])) * 1e-3).astype(np.float32)
    got = nn.LayerNorm(epsilon=sb.LN_EPS).apply({"params": _sub(params, path)}, x)
    np.testing.assert_allclose(got, _np(ln(_t(x))), rtol=1e-4, atol=1e-5, err_msg=name)


def test_gru_cell_matches_torch_gru_cell(converted):
  model, out = converted
  _, params, _ = export.load_export(out)
  rng = np.random.default_rng(2)
  h, u = rng.normal(size=(2, 6, D_SLOT)).astype(np.float32)
  expected = _np(model.s_bind.gru(_t(u), _t(h)))  # torch: gru(input=updates, hx=slots_prev)
  got = sb.GRUCell(D_SLOT).apply({"params": params["spatial_binding"]["gru"]}, h, u)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_temporal_binder_matches_torch_transformer_encoder(converted):
  model, out = converted
  _, params, _ = export.load_export(out)
  rng = np.random.default_rng(3)
  b = 2
  slots = rng.normal(size=(b, F, K, D_SLOT)).astype(np.float32)
  mask = np.array([[True] * F, [False, True, True, True, False]])  # the video's ends padded
  got = TemporalBinding(num_frames=F).apply({"params": params["temporal_binding"]},
                                            slots, mask)
  # The authors' Temporal_Binder.forward: + pos_embed_temporal, slot j over time, padding mask.
  x = _t(slots) + model.t_bind.pos_embed_temporal
  x = x.permute(0, 2, 1, 3).reshape(b * K, F, D_SLOT)
  pad = _t(~mask).repeat_interleave(K, dim=0)
  enc = model.t_bind.slot_transformer.eval()
  with torch.no_grad():
    ref = enc(x, src_key_padding_mask=pad).reshape(b, K, F, D_SLOT)[:, :, N_CTX]
  np.testing.assert_allclose(got, _np(ref), rtol=1e-4, atol=1e-5)


def test_parameters_and_encoder_are_copied_and_the_tree_is_complete(converted, encoder_file):
  model, out = converted
  config, params, encoder = export.load_export(out)
  s = model.s_bind
  np.testing.assert_array_equal(params["spatial_binding"]["slots"], _np(s.slots)[0])
  np.testing.assert_array_equal(params["spatial_binding"]["slot_pos"], _np(s.S_p)[0, :, 0])
  np.testing.assert_array_equal(params["spatial_binding"]["slot_scale"], _np(s.S_s)[0, :, 0])
  np.testing.assert_array_equal(params["spatial_binding"]["grid_abs"], _np(s.abs_grid)[0, 0])
  np.testing.assert_array_equal(params["temporal_binding"]["pos_embed"],
                                _np(model.t_bind.pos_embed_temporal)[0, :, 0])
  np.testing.assert_array_equal(params["decoder"]["pos_embed"], _np(model.pos_dec)[0])
  # Exactly the tree SOLV.init gives, and every torch value used.
  expected = build.trainable_shapes(build.build_model(config))
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  jax.tree.map(lambda a, e: np.testing.assert_equal(a.shape, e.shape), params, expected)
  assert (sum(a.size for a in jax.tree.leaves(params))
          == sum(p.numel() for p in model.parameters()))
  _, reference = dinov2.load_params(encoder_file, expected_variant="tiny14")
  jax.tree.map(np.testing.assert_array_equal, encoder, reference)


def test_config_comes_from_the_args(converted, encoder_file):
  _, out = converted
  config, _, _ = export.load_export(out)
  assert tuple(config.data.resolution) == (H, W) and config.data.num_context == N_CTX
  m = config.model
  assert (m.encoder_variant, m.num_slots, m.slot_dim, m.slot_iters) == ("tiny14", K, D_SLOT, 3)
  assert (m.use_merge, m.merge_threshold, m.token_drop) == (True, 0.12, 0.5)
  assert (m.decoder_hidden, m.temporal_heads, m.temporal_layers) == (HIDDEN, 8, 3)
  assert m.encoder_weights == os.path.abspath(encoder_file)
  assert config.data.name == "ytvis19"


# ----------------------------------------------------------------------------------------------
# End to end: segment, and init_from.
# ----------------------------------------------------------------------------------------------
def test_converted_file_segments_evaluates_and_serves_as_init_from(converted, tmp_path):
  _, out = converted
  frames = tmp_path / "frames"
  frames.mkdir()
  rng = np.random.default_rng(4)
  for t in range(4):
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(frames / f"{t}.png")
  seg = tmp_path / "seg"
  assert segment.main([f"--checkpoint={out}", f"--video={frames}", f"--out={seg}"]) == 0
  names = sorted(os.listdir(seg / "masks"))
  assert names == [f"{t:06d}.png" for t in range(4)]
  assert np.asarray(Image.open(seg / "masks" / names[0])).shape == (30, 40)
  # Evaluation (the protocol of docs/METHOD.md §7) of the loaded file on a clip with two objects.
  loaded = build.load(out)
  loaded.config.eval.num_visualize = 0
  video = np.stack([np.asarray(Image.open(frames / f"{t}.png")) for t in range(4)])
  gt = np.zeros((4, 30, 40), np.int32)
  gt[:, 5:15, 5:20], gt[:, 18:28, 22:38] = 1, 2
  results = evaluation.evaluate(loaded.config, loaded.model, loaded.params, str(tmp_path / "ev"),
                              0, videos=[{"video": video, "segmentations": gt}])
  assert results["num_videos"] == 1
  assert all(np.isfinite(results[k]) for k in ("miou", "fg_ari_matched", "fg_ari", "mbo"))
  # init_from (the DAVIS17 fine-tune) reads the file through build.load.
  loaded = build.load(out, with_encoder_params=False)
  from configs import davis17
  davis = davis17.get_config()
  davis.data.resolution, davis.model = loaded.config.data.resolution, loaded.config.model
  davis.model.use_merge = False
  like = build.trainable_shapes(build.build_model(davis))
  trainable = {k: v for k, v in loaded.params.items() if k != "encoder"}
  jax.tree.map(lambda a, e: np.testing.assert_equal(a.shape, e.shape), trainable, like)


# ----------------------------------------------------------------------------------------------
# Checkpoint formats and errors.
# ----------------------------------------------------------------------------------------------
def _flat_params(path):
  _, params, _ = export.load_export(path)
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}


def test_best_checkpoint_and_bare_state_dicts_convert_the_same(converted, encoder_file,
                                                               tmp_path):
  model, out = converted
  ref = _flat_params(out)
  best = str(tmp_path / "best_checkpoint.pt")
  save_authors_checkpoint(model, best)
  bare = str(tmp_path / "state_dict.pt")
  torch.save(model.state_dict(), bare)  # no "module." prefix, no args
  ddp_bare = str(tmp_path / "ddp_state_dict.pt")
  torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ddp_bare)
  size = ["--resize_to", str(H), str(W)]  # a bare state dict has no args to read it from
  for src, extra in ((best, []), (bare, size), (ddp_bare, size)):
    dst = str(tmp_path / (os.path.basename(src) + ".npz"))
    assert convert.main(["--src", src, "--encoder_weights", encoder_file, "--out", dst]
                        + extra) == 0
    got = _flat_params(dst)
    assert got.keys() == ref.keys()
    for k in ref:
      np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_missing_left_over_and_misshapen_keys_are_all_named(encoder_file, tmp_path, capsys):
  sd = {f"module.{k}": v for k, v in authors_model().state_dict().items()}
  del sd["module.s_bind.gru.bias_hh"]
  del sd["module.dec.layer3.weight"]
  sd["module.s_bind.extra.weight"] = torch.zeros(3)
  sd["module.s_bind.final_layer.weight"] = torch.zeros(D_SLOT, D_SLOT + 1)
  src = str(tmp_path / "checkpoint.pt")
  torch.save({"model": sd, "args": authors_args(), "epoch": 1}, src)
  dst = str(tmp_path / "x.npz")
  assert convert.main(["--src", src, "--encoder_weights", encoder_file, "--out", dst]) == 1
  err = capsys.readouterr().err
  for key in ("s_bind.gru.bias_hh", "dec.layer3.weight", "s_bind.extra.weight",
              f"s_bind.final_layer.weight is ({D_SLOT}, {D_SLOT + 1}), expected "
              f"({D_SLOT}, {D_SLOT})"):
    assert key in err, err
  assert not os.path.exists(dst)


def test_args_that_do_not_fit_fail_clearly(encoder_file, tmp_path, capsys):
  model = authors_model()
  cases = [(authors_args(encoder="dino-vitb-16"), "DINOv2 only"),
           (authors_args(resize_to=[56, 56]), "s_bind.abs_grid has 12 positions"),
           (authors_args(num_slots=5), "s_bind.slots is (1, 4, 16), expected (1, 5, 16)")]
  for i, (args, message) in enumerate(cases):
    src = str(tmp_path / f"c{i}.pt")
    save_authors_checkpoint(model, src, args)
    rc = convert.main(["--src", src, "--encoder_weights", encoder_file,
                       "--out", str(tmp_path / f"c{i}.npz")])
    err = capsys.readouterr().err
    assert rc == 1 and message in err, err


class _Payload:
  """A pickled object whose unpickling would run code (writes a marker file)."""
  marker = ""

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_arbitrary_pickles_are_refused_and_not_run(encoder_file, tmp_path, capsys):
  marker = str(tmp_path / "ran")
  payload = _Payload()
  payload.marker = marker
  src = str(tmp_path / "checkpoint.pt")
  torch.save({"model": authors_model().state_dict(), "args": authors_args(),
              "optimizer": payload}, src)
  rc = convert.main(["--src", src, "--encoder_weights", encoder_file,
                     "--out", str(tmp_path / "x.npz")])
  err = capsys.readouterr().err
  assert rc == 1 and "not unpickled here" in err, err
  assert not os.path.exists(marker)


def test_the_released_size_maps_completely_onto_the_ytvis19_config():
  """The authors' SOLV at their defaults (336 x 504, 8 slots, ViT-B/14; 5,799,521 trainable
  parameters, docs/METHOD.md §9) against the params of configs/ytvis19.py, shapes only."""
  model = AuthorsSOLV(d_in=768, k=8, d_slot=128, grid_hw=(24, 36), num_frames=5, hidden=1024)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  assert sum(v.size for v in state.values()) == 5_799_521
  args = vars(authors_args(resize_to=[336, 504], encoder="dinov2-vitb-14", num_slots=8,
                           slot_dim=128))
  config = convert.build_config(args, state, "dinov2_vitb14.npz")
  shapes = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(
      build.trainable_shapes(build.build_model(config))).items()}
  params = convert.convert_state_dict(state, shapes)
  assert params.keys() == shapes.keys()
  assert (config.model.encoder_variant, config.model.decoder_hidden) == ("vitb14", 1024)
