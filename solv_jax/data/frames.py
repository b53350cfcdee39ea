"""The two halves of preparing frames for the model: resize on the host, normalise on the device.

Host: `resize_frames` turns uint8 frames of any size into uint8 frames at the model's
resolution, antialiased bilinear (PIL's bilinear resize, which the authors' torchvision
pipeline uses, and `tf.image.resize(..., antialias=True)` compute the same triangle filter),
rounded to uint8 as PIL returns it. Training, evaluation, segment and the baselines all call
it, so every path sees the same values. Batches leave the host as uint8: a quarter of the
bytes of float32 frames.

Device: `normalize_frames` is the input normalisation of the model's encoder (its mean and std
are in the encoder's entry, models/encoders.py: `Encoder.normalize`), called inside the jitted
train step and evaluation functions.

The resize is separable: the output is Wh @ X @ Ww^T per channel, with Wh (H, H0) and Ww
(W, W0) the filter's weights. They are read off `tf.image.resize` itself (resizing an
identity matrix along one axis gives the matrix of that axis), so the result is that of
tf.image.resize to float32 rounding (tested), and applied as two sparse products with scipy,
height first (rows are contiguous): 3.6-4.6 ms for a 720p frame to 336x504 on one core
against 6.3-8.2 ms for tf.image.resize (BENCHMARKS.md, "Data").
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np


@functools.lru_cache(maxsize=64)
def _resize_matrix(size_in: int, size_out: int):
  """(size_out, size_in) CSR float32 weights of the antialiased bilinear resize of one axis."""
  import scipy.sparse  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  eye = tf.eye(size_in, dtype=tf.float32)[None, :, :, None]  # (1, size_in, size_in, 1)
  w = tf.image.resize(eye, (size_out, size_in), method="bilinear", antialias=True)
  return scipy.sparse.csr_matrix(w[0, :, :, 0].numpy())


def resize_frame(frame: np.ndarray, resolution: Sequence[int]) -> np.ndarray:
  """One uint8 frame (H0, W0, 3) -> uint8 (H, W, 3) at `resolution`, rounded; a copy.

  The frame may also come as float32 holding its uint8 values (the training pipeline casts
  in TF, which is faster than numpy's cast)."""
  frame = np.asarray(frame)
  h0, w0, c = frame.shape
  h, w = (int(r) for r in resolution)
  if (h0, w0) == (h, w):
    return frame.astype(np.uint8)
  x = frame.reshape(h0, w0 * c).astype(np.float32, copy=False)
  x = _resize_matrix(h0, h) @ x                                          # (H, W0 * 3)
  # Transposed as (H, W0) pixels of 12 bytes: twice as fast as numpy's (1, 0, 2) transpose.
  pixels = np.dtype((np.void, 4 * c))
  x = np.ascontiguousarray(x.view(pixels).T).view(np.float32)            # (W0, H * 3)
  x = _resize_matrix(w0, w) @ x                                          # (W, H * 3)
  x = x.reshape(w, h, c).transpose(1, 0, 2)                              # (H, W, 3)
  return np.rint(x).astype(np.uint8)  # weights >= 0 summing to 1: x stays in [0, 255]


def resize_frames(frames, resolution: Sequence[int]) -> np.ndarray:
  """uint8 (..., H0, W0, 3) -> uint8 (..., H, W, 3): `resize_frame` on every frame."""
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    raise TypeError(f"resize_frames expects uint8 frames, got {frames.dtype}.")
  if frames.ndim < 3 or frames.shape[-1] != 3:
    raise ValueError(f"Expected frames of shape (..., H, W, 3), got {frames.shape}.")
  h, w = (int(r) for r in resolution)
  lead = frames.shape[:-3]
  flat = frames.reshape(-1, *frames.shape[-3:])
  out = np.empty((len(flat), h, w, 3), np.uint8)
  for i, frame in enumerate(flat):
    out[i] = resize_frame(frame, (h, w))
  return out.reshape(*lead, h, w, 3)


def normalize_frames(video, frame_mask=None, *, mean: Sequence[float], std: Sequence[float]):
  """uint8 frames (..., H, W, 3) -> float32 (x / 255 - mean) / std per channel (jnp; jit it
  with the model). The encoder's entry gives mean and std (`Encoder.normalize` calls this).

  frame_mask (...,) bool, optional: frames where it is False become zeros (the clip's
  padding beyond a video's ends, as the model expects). Floating-point frames are taken as
  normalised already and returned as they are (tests and benchmarks feed such)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  video = jnp.asarray(video)
  if jnp.issubdtype(video.dtype, jnp.floating):
    return video
  if video.dtype != jnp.uint8:
    raise TypeError(f"normalize_frames expects uint8 or float frames, got {video.dtype}.")
  x = (video.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / (
      jnp.asarray(std, jnp.float32))
  if frame_mask is not None:
    x = jnp.where(jnp.asarray(frame_mask)[..., None, None, None], x, 0.0)
  return x
