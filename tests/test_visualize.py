"""Tests of solv_jax/visualize.py: files, sizes, frame counts and per-id colours (read with PIL)."""
import numpy as np
import pytest
from PIL import Image, ImageSequence

from solv_jax import visualize


def _video(t=5, h=12, w=16, seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.integers(0, 256, (t, h, w, 3)).astype(np.uint8)
  gt = rng.integers(-1, 4, (t, h, w)).astype(np.int32)
  pred = rng.integers(0, 6, (t, h, w)).astype(np.int32)
  return frames, gt, pred


def test_palette_is_distinct():
  assert visualize.PALETTE.dtype == np.uint8
  assert len(np.unique(visualize.PALETTE, axis=0)) == len(visualize.PALETTE)


def test_overlay_colours_each_id_consistently_across_frames():
  frames, _, pred = _video()
  colour_of = {}
  for frame, ids in zip(frames, pred):
    painted = visualize.overlay(frame, ids, alpha=1.0)
    for i in np.unique(ids):
      colours = np.unique(painted[ids == i], axis=0)
      assert len(colours) == 1  # one colour per id within a frame ...
      colour_of.setdefault(int(i), tuple(colours[0]))
      assert tuple(colours[0]) == colour_of[int(i)]  # ... and the same one in every frame
  assert len(set(colour_of.values())) == len(colour_of)  # distinct ids, distinct colours


def test_overlay_blends_and_leaves_void_and_background_untouched():
  frame = np.full((2, 3, 3), 100, np.uint8)
  ids = np.array([[-1, 0, 1], [2, 2, 1]])
  out = visualize.overlay(frame, ids, alpha=0.5, background=0)
  np.testing.assert_array_equal(out[0, 0], frame[0, 0])  # void
  np.testing.assert_array_equal(out[0, 1], frame[0, 1])  # background
  expected = np.round(0.5 * 100 + 0.5 * visualize.PALETTE[1].astype(float))
  np.testing.assert_array_equal(out[0, 2], expected)
  np.testing.assert_array_equal(out[1, 0], np.round(50 + 0.5 * visualize.PALETTE[2].astype(float)))
  with_bg = visualize.overlay(frame, ids, alpha=1.0)  # without a background id, 0 is coloured
  np.testing.assert_array_equal(with_bg[0, 1], visualize.PALETTE[0])


def test_save_strip_writes_png_of_the_right_size(tmp_path):
  frames, gt, pred = _video(t=5, h=12, w=16)
  path = tmp_path / "strips" / "video0.png"
  visualize.save_strip(str(path), frames, gt, pred)
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size == (3 * 16, 3 * 12)
    pixels = np.asarray(image.convert("RGB"))
  # Columns are frames 0, 2, 4; rows are frame, ground truth overlay, prediction overlay.
  np.testing.assert_array_equal(pixels[:12, 16:32], frames[2])
  np.testing.assert_array_equal(pixels[12:24, 32:48], visualize.overlay(frames[4], gt[4],
                                                                          background=0))
  np.testing.assert_array_equal(pixels[24:, :16], visualize.overlay(frames[0], pred[0]))
  visualize.save_strip(str(path), frames, gt, pred, idx=[1, 3])
  with Image.open(path) as image:
    assert image.size == (2 * 16, 3 * 12)


def test_save_gif_writes_one_frame_per_video_frame(tmp_path):
  frames, gt, pred = _video(t=6, h=10, w=8)
  path = tmp_path / "video0.gif"
  visualize.save_gif(str(path), frames, gt, pred, fps=5)
  with Image.open(path) as image:
    assert image.format == "GIF" and image.size == (3 * 8, 10)
    assert image.n_frames == 6
    assert image.info["duration"] == 200
    gif = [np.asarray(f.convert("RGB")).astype(int) for f in ImageSequence.Iterator(image)]
  # Frame | GT | prediction side by side (GIF quantises colours, so compare loosely).
  composite = visualize.gif_frames(frames, gt, pred).astype(int)
  assert composite.shape == (6, 10, 24, 3)
  for got, want in zip(gif, composite):
    assert np.abs(got - want).mean() < 20


def test_shape_errors_speak_to_the_user():
  frames, gt, pred = _video()
  with pytest.raises(ValueError, match="same resolution"):
    visualize.strip_image(frames, gt[:, :-1], pred)
  with pytest.raises(ValueError, match="uint8"):
    visualize.strip_image(frames.astype(np.float32), gt, pred)
