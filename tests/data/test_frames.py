"""The host resize and the device normalisation (solv_jax/data/frames.py)."""

import jax
import numpy as np
import pytest
import tensorflow as tf
import torch
from PIL import Image

from solv_jax.data import frames as frames_lib
from solv_jax.models import encoders

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
IMAGENET_ENCODER = encoders.get("vitb14")  # DINOv2 takes ImageNet-normalised frames


@pytest.mark.parametrize("size", [(21, 30), (70, 96), (45, 61)])  # shrink, enlarge, same
def test_resize_is_the_antialiased_bilinear_resize_rounded(size):
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 45, 61, 3), dtype=np.uint8)
  out = frames_lib.resize_frames(frames, size)
  assert out.shape == (2, *size, 3) and out.dtype == np.uint8

  # torch's antialiased bilinear in float64: within the rounding to uint8.
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(frames).permute(0, 3, 1, 2).double(), size=size,
      mode="bilinear", antialias=True, align_corners=False).permute(0, 2, 3, 1).numpy()
  assert np.abs(out - ref).max() <= 0.5 + 1e-3
  # tf.image.resize (the float resize training used before): rounding it gives the same bytes.
  tf_ref = tf.image.resize(tf.cast(frames, tf.float32), size, method="bilinear",
                           antialias=True).numpy()
  np.testing.assert_array_equal(out, np.rint(tf_ref).astype(np.uint8))
  # PIL, which the authors' torchvision pipeline uses, rounds in its own two passes.
  pil = np.stack([np.asarray(Image.fromarray(f).resize(size[::-1], Image.BILINEAR))
                  for f in frames])
  assert np.abs(out.astype(int) - pil).max() <= 1
  if size == (45, 61):
    np.testing.assert_array_equal(out, frames)

  # Leading dims pass through; one frame alone is the same as in a batch.
  many = frames_lib.resize_frames(frames.reshape(1, 2, 45, 61, 3), size)
  np.testing.assert_array_equal(many[0], out)
  np.testing.assert_array_equal(frames_lib.resize_frame(frames[1], size), out[1])


def test_resize_of_a_720p_frame_to_the_paper_resolution():
  rng = np.random.default_rng(1)
  frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
  out = frames_lib.resize_frame(frame, (336, 504))
  ref = tf.image.resize(tf.cast(frame, tf.float32), (336, 504), antialias=True).numpy()
  assert np.abs(out - ref).max() <= 0.5 + 1e-4


def test_resize_rejects_what_is_not_uint8_frames():
  with pytest.raises(TypeError, match="uint8"):
    frames_lib.resize_frames(np.zeros((2, 8, 8, 3), np.float32), (4, 4))
  with pytest.raises(ValueError, match=r"\(\.\.\., H, W, 3\)"):
    frames_lib.resize_frames(np.zeros((8, 8), np.uint8), (4, 4))


def test_normalize_is_imagenet_on_the_device_with_masked_frames_zero():
  rng = np.random.default_rng(2)
  video = rng.integers(0, 256, (2, 3, 5, 7, 3), dtype=np.uint8)
  mask = np.array([[True, True, False], [False, True, True]])
  out = np.asarray(jax.jit(IMAGENET_ENCODER.normalize)(video, mask))
  expected = (video.astype(np.float64) / 255 - MEAN) / STD
  expected[~mask] = 0
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, expected, atol=1e-6)
  np.testing.assert_allclose(np.asarray(IMAGENET_ENCODER.normalize(video[0])),
                             (video[0] / 255 - MEAN) / STD, atol=1e-6)
  as_float = np.asarray(out)  # frames normalised already pass through
  np.testing.assert_array_equal(np.asarray(IMAGENET_ENCODER.normalize(as_float)), as_float)
  with pytest.raises(TypeError, match="uint8 or float"):
    IMAGENET_ENCODER.normalize(video.astype(np.int32))
