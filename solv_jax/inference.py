"""SOLV from Python: load a trained model (a path, or params in memory) and segment videos.

  from solv_jax import inference, video_io
  model = inference.load_model("runs/ytvis19")           # a workdir or an export .npz
  model = inference.from_params(config, params)           # or a config and params in memory
  ids, out = inference.segment(model, frames)             # (T, H, W, 3) uint8 -> (T, H, W) ids
  out = inference.segment_frames(model, video_io.open_video("clip.mp4"))  # streamed

The protocol is the evaluation's (docs/METHOD.md §7): DINOv2 and spatial binding once per frame,
every frame the middle of its window (n masked zero frames padded at both ends), merging on, slots
tracked from frame to frame by Hungarian matching on cosine similarity. `VideoSegmenter` holds the
jitted pieces; `solv_jax.evaluation` and `python -m solv_jax.segment` both run it.

Errors are InferenceError (a ValueError) naming the argument, the value and what to do.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from solv_jax import tracking
from solv_jax.data.frames import resize_frame
from solv_jax.models import build
from solv_jax.models.solv import SOLV

CHECKPOINT_KINDS = "a training workdir or an export .npz from tools/export_numpy.py"


class InferenceError(ValueError):
  """A model or input the segmenter cannot use; the message names it and what to do."""


class VideoSegmenter:
  """Jit-compiled per-frame and per-window functions of a trained SOLV model."""

  def __init__(self, model: SOLV, params: dict, batch_windows: int = 16, frame_chunk: int = 16):
    self.model, self.params = model, jax.device_put(params)  # to the device once
    self.batch_windows, self.frame_chunk = batch_windows, frame_chunk
    self.n = model.num_frames // 2
    self.grid_hw = model.grid_hw

    def per_frame(params, frames):  # (C, H, W, 3) uint8 -> slots (C, K, Ds), attn (C, K, N)
      feats = model.apply({"params": params}, model.normalize(frames), method=SOLV.encode)
      return model.apply({"params": params}, feats, method=SOLV.bind_spatial)

    def per_window(params, slots, attn, frame_mask):
      out = model.apply({"params": params}, slots, attn, frame_mask, merge_prob=1.0,
                        method=SOLV.decode_window)
      return {k: out[k] for k in ("masks", "valid", "slots")}

    def naive_window(params, frames, frame_mask):  # the authors' path: re-binds every frame
      frames = model.normalize(frames, frame_mask)  # padding frames are zeros, as in training
      feats = model.apply({"params": params}, frames, method=SOLV.encode)  # (W, F, N, D)
      slots, attn = model.apply({"params": params}, feats, method=SOLV.bind_spatial)
      return per_window(params, slots, attn, frame_mask)

    self._per_frame = jax.jit(per_frame)
    self._per_window = jax.jit(per_window)
    self._naive_window = jax.jit(naive_window)

  def _batched(self, fn, make_inputs, total: int, size: int):
    """Calls fn(params, *inputs) on rows [s, e) padded to `size` (one compiled shape for all
    videos) and concatenates the unpadded results."""
    results = []
    for s in range(0, total, size):
      e = min(s + size, total)
      inputs = [jnp.asarray(_pad_to(np.asarray(a), size)) for a in make_inputs(s, e)]
      res = fn(self.params, *inputs)
      results.append(jax.tree_util.tree_map(lambda v: np.asarray(v)[: e - s], res))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *results)

  def __call__(self, frames: np.ndarray, naive: bool = False) -> dict:
    """frames (T, H, W, 3) uint8 at the model's resolution (`frames.resize_frames`), normalised
    on the device (float frames are taken as ImageNet-normalised already).

    naive=True re-runs DINOv2 and spatial binding for every window (the authors' path, for
    benchmarks); the default computes them once per frame. Results are identical.
    Returns numpy dict: 'masks' (T, K, h, w) on the token grid, 'valid' (T, K),
    'slots' (T, K, Ds) merged slots, 'track_ids' (T, K).
    """
    if not naive:
      return self.decode(*self.bind_frames(frames))
    t, n = frames.shape[0], self.n
    idx, frame_mask = self._windows(t)
    frames_p = _pad_video(frames, n)
    out = self._batched(self._naive_window, lambda s, e: (frames_p[idx[s:e]], frame_mask[s:e]),
                        t, self.batch_windows)
    return self._finish(out)

  def bind_frames(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The per-frame part: DINOv2 and spatial binding of each frame, in batches of frame_chunk.

    frames (C, H, W, 3) uint8 at the model's resolution -> slots (C, K, Ds), attn (C, K, N).
    Each frame depends only on itself, so a long video can be bound in pieces (whose lengths
    are multiples of frame_chunk to batch exactly as one call would) and concatenated for
    `decode`.
    """
    return self._batched(self._per_frame, lambda s, e: (frames[s:e],), frames.shape[0],
                         self.frame_chunk)

  def decode(self, slots: np.ndarray, attn: np.ndarray) -> dict:
    """The per-window part on a whole video's `bind_frames` outputs, (T, K, Ds) and (T, K, N):
    every frame the middle of its window, then tracking. Returns what __call__ returns."""
    t = slots.shape[0]
    idx, frame_mask = self._windows(t)
    slots_p, attn_p = _pad_video(slots, self.n), _pad_video(attn, self.n)
    out = self._batched(
        self._per_window, lambda s, e: (slots_p[idx[s:e]], attn_p[idx[s:e]], frame_mask[s:e]),
        t, self.batch_windows)
    return self._finish(out)

  def _windows(self, t: int) -> tuple[np.ndarray, np.ndarray]:
    """-> idx (T, F), the rows of the padded video in each frame's window, and frame_mask
    (T, F), False on the n zero frames padded at both ends."""
    f = 2 * self.n + 1
    idx = np.arange(t)[:, None] + np.arange(f)[None, :]  # (T, F)
    return idx, _pad_video(np.ones(t, bool), self.n)[idx]

  def _finish(self, out: dict) -> dict:
    h, w = self.grid_hw
    out["masks"] = out["masks"].reshape(out["masks"].shape[0], -1, h, w)  # (T, K, h, w)
    out["track_ids"] = tracking.track_slots(out["slots"], out["valid"])
    return out


def _pad_video(x: np.ndarray, n: int) -> np.ndarray:
  """n zero rows before and after x (T, ...) -> (T + 2n, ...)."""
  zeros = np.zeros((n, *x.shape[1:]), x.dtype)
  return np.concatenate([zeros, x, zeros])


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
  if x.shape[0] == size:
    return x
  return np.concatenate([x, np.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)])


# ----------------------------------------------------------------------------------------------
# Loading a model.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedModel:
  """A model ready to segment: its run's config, the jitted segmenter (device params) and a
  JSON-able description (checkpoint, step, resolution, token grid, slots, encoder)."""
  config: ml_collections.ConfigDict
  segmenter: VideoSegmenter
  info: dict

  @property
  def resolution(self) -> tuple[int, int]:
    """(H, W) the model runs at: the resolution it was trained at."""
    return tuple(int(r) for r in self.config.data.resolution)


def load_model(checkpoint: str, resolution: tuple[int, int] | None = None, *,
               step: int | None = None, xla_flags: bool = False) -> LoadedModel:
  """A training workdir (its newest good checkpoint, or `step`) or an export .npz ->
  LoadedModel.

  resolution: only a check; SOLV runs at the resolution it was trained at (its decoder
  position embedding and G_abs are learned per token), so another one is an error.
  xla_flags: apply the run's config.xla_flags (sharding.apply_xla_flags) before JAX opens a
  backend, as the command lines do; if one is open already (e.g. in a notebook), a warning.
  """
  from solv_jax import export, sharding

  if not os.path.exists(checkpoint):
    raise InferenceError(f"checkpoint {checkpoint!r} does not exist (expected "
                         f"{CHECKPOINT_KINDS}).")
  try:
    if xla_flags:  # before the restore opens a backend
      sharding.apply_xla_flags(export.read_config(checkpoint).get("xla_flags", ""),
                               strict=False)
    loaded = build.load(checkpoint, step)
  except ValueError as e:  # build.LoadError, a torn config.json
    raise InferenceError(str(e)) from e
  check_resolution(loaded.config, resolution, checkpoint)
  if not loaded.config.model.encoder_weights:
    family = loaded.model.encoder_spec.family
    print(f"Note: this model was trained with a RANDOMLY initialised {family} "
          "(config.model.encoder_weights was empty).", flush=True)
  info = dict(checkpoint=os.path.abspath(checkpoint), kind=loaded.kind, step=loaded.step)
  return _loaded_model(loaded.config, loaded.model, loaded.params, loaded.encoder_source, info)


def from_params(config, params: dict) -> LoadedModel:
  """A run's config (config.model, config.data.resolution and num_context, as training saved
  it) and its params in memory -> LoadedModel. params: the full tree (trainable and
  'encoder'), or the trainable params alone (a TrainState's), in which case DINOv2's come from
  config.model.encoder_weights or its seeded random init, as in training."""
  from solv_jax import schema
  try:
    schema.validate(config)
  except schema.ConfigError as e:
    raise InferenceError(str(e)) from e
  model = build.build_model(config)
  encoder_source = "given"
  if "encoder" not in params:
    params = build.with_encoder(params, build.encoder_params(config, model))
    encoder_source = config.model.encoder_weights or f"random init (seed {config.seed + 1})"
  expected = set(build.trainable_shapes(model)) | {"encoder"}
  if set(params) != expected:
    raise InferenceError(f"params have the top-level keys {sorted(params)}; a model of this "
                         f"config has {sorted(expected)}: pass the params of the same run.")
  return _loaded_model(config, model, params, encoder_source, {})


def _loaded_model(config, model: SOLV, params: dict, encoder_source: str,
                  info: dict) -> LoadedModel:
  segmenter = VideoSegmenter(model, jax.device_put(params),
                             batch_windows=config.eval.batch_windows)
  info = dict(info or {}, resolution=list(model.resolution), token_grid=list(model.grid_hw),
              num_slots=int(config.model.num_slots), encoder=str(config.model.encoder_variant),
              encoder_weights=str(encoder_source),
              device=str(jax.devices()[0].platform))
  return LoadedModel(config, segmenter, info)


def check_resolution(config, resolution: tuple[int, int] | None, checkpoint: str) -> None:
  """Refuses a resolution other than the trained one (InferenceError); None passes."""
  trained = tuple(int(r) for r in config.data.resolution)
  if resolution is not None and tuple(resolution) != trained:
    h, w = trained
    raise InferenceError(
        f"resolution {resolution[0]}x{resolution[1]} differs from the {h}x{w} the model in "
        f"{checkpoint!r} was trained at: its decoder position embedding and G_abs are learned "
        f"per token of its token grid, so it segments at {h}x{w} only (masks are upsampled "
        "to the video's own size anyway). Leave the resolution out.")


# ----------------------------------------------------------------------------------------------
# Segmenting.
# ----------------------------------------------------------------------------------------------
def segment_frames(loaded: LoadedModel, frames: Iterable[np.ndarray],
                   progress: bool = True) -> dict:
  """(H, W, 3) uint8 frames, one at a time (a FrameSource, or the rows of an array) -> the
  segmenter's outputs for the whole video: 'masks' (T, K, h, w) on the token grid, 'valid',
  'slots', 'track_ids' (see VideoSegmenter).

  The one path of evaluation, streamed: each frame goes through `frames.resize_frame` to the
  model's resolution (uint8, as the training pipeline makes it) as it is read, every
  frame_chunk of them through DINOv2 and spatial binding (`VideoSegmenter.bind_frames`, the
  batches one call on the whole video makes), and the windows run on the small per-frame
  slots and attention (`VideoSegmenter.decode`). Memory holds one native frame and one chunk
  at the model's resolution, whatever the video's length.
  """
  segmenter = loaded.segmenter
  resolution = tuple(loaded.config.data.resolution)
  chunk, slots, attn = [], [], []

  def bind():
    s, a = segmenter.bind_frames(np.stack(chunk))  # (C, K, Ds), (C, K, N)
    slots.append(s)
    attn.append(a)
    chunk.clear()

  for frame in frames:
    chunk.append(resize_frame(np.asarray(frame), resolution))
    if len(chunk) == segmenter.frame_chunk:
      bind()
  if chunk:
    bind()
  if not slots:
    raise InferenceError("No frames to segment.")
  if progress:
    print(f"Decoding {sum(len(s) for s in slots)} frames in windows ...", flush=True)
  return segmenter.decode(np.concatenate(slots), np.concatenate(attn))


def frame_ids(out: dict, t: int, hw: tuple[int, int]) -> np.ndarray:
  """Frame t's (H, W) int32 track ids from the segmenter's outputs, upsampled to hw."""
  return tracking.masks_to_ids(out["masks"][t:t + 1], out["track_ids"][t:t + 1], out_hw=hw)[0]


def segment(loaded: LoadedModel, frames: np.ndarray, progress: bool = True):
  """(T, H, W, 3) uint8 frames -> ((T, H, W) int32 track ids, the segmenter's outputs).

  `segment_frames` on the frames in memory, then `tracking.masks_to_ids` upsampling to (H, W)
  frame by frame.
  """
  frames = np.asarray(frames)
  resolution = tuple(loaded.config.data.resolution)
  if progress:
    print(f"Segmenting {len(frames)} frames at {resolution[0]}x{resolution[1]} ...", flush=True)
  out = segment_frames(loaded, frames, progress=False)
  ids = np.empty(frames.shape[:3], np.int32)
  for t in tqdm(range(len(frames)), desc="masks", unit="frame", disable=not progress):
    ids[t] = frame_ids(out, t, frames.shape[1:3])
  return ids, out
