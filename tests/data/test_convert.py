"""Converters (solv_jax/data/convert.py) on raw trees in the official layouts."""

import json
import os
import re
import runpy
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from solv_jax.data import convert
from solv_jax.data import pipeline
from solv_jax.data import records
from tests.data.raw_fixtures import make_davis, make_ytvis, save_jpeg, smooth_frame

YTVIS_SPEC = {
    "train": [("b_vid", 5, (32, 48), 2), ("a_vid", 4, (40, 32), 3)],
    "valid": [("v1", 3, (32, 32), 0)],
    "test": [("t1", 6, (24, 40), 0), ("t2", 2, (24, 40), 0)],
}


def _read(path, split, skip_video=False):
  builder = tfds.builder_from_directory(path)
  decoders = {"video": tfds.decode.SkipDecoding()} if skip_video else None
  ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
  return list(tfds.as_numpy(ds))


# -- border removal -----------------------------------------------------------


def test_border_box_hand_computed():
  frame = np.full((10, 12, 3), 50, np.uint8)
  frame[:2] = 0                  # 2 black rows on top
  frame[-3:] = 0                 # 3 at the bottom
  frame[:, :1] = 0               # 1 black column on the left
  frame[:, -1, :] = 0
  frame[4:6, -1, :] = 3          # column mean 6*3/(10*3) = 0.6 < 1
  frame[:, 6] = 1                # interior dark column is kept
  assert convert.border_box(frame) == (2, 3, 1, 1)
  # Rows whose mean is exactly 1 are content.
  f2 = np.ones((4, 4, 3), np.uint8)
  assert convert.border_box(f2) == (0, 0, 0, 0)
  # An all-black frame must not crop to nothing.
  assert convert.border_box(np.zeros((6, 7, 3), np.uint8)) == (0, 0, 0, 0)
  assert convert.crop(np.zeros((6, 7)), (1, 2, 3, 0)).shape == (3, 4)


# -- YTVIS --------------------------------------------------------------------


def test_ytvis_png_annotations(tmp_path):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  truth = make_ytvis(raw, YTVIS_SPEC)
  path = convert.convert_ytvis(raw, out, workers=2)
  assert path == os.path.join(out, "ytvis19", "1.0.0")

  index = records.read_index(path)
  for split, videos in YTVIS_SPEC.items():
    assert index["splits"][split]["video_name"] == [v[0] for v in videos]
    assert index["splits"][split]["num_frames"] == [v[1] for v in videos]

  # Frames that need no crop are stored byte for byte, in json order.
  meta = json.load(open(os.path.join(raw, "train", "train.json")))
  for ex, v in zip(_read(path, "train", skip_video=True), meta["videos"]):
    for stored, fn in zip(ex["video"], v["file_names"]):
      with open(os.path.join(raw, "train", "JPEGImages", fn), "rb") as f:
        assert stored == f.read()

  for split in YTVIS_SPEC:
    examples = _read(path, split)
    assert [e["metadata"]["video_name"].decode() for e in examples] == [
        v[0] for v in YTVIS_SPEC[split]]
    for ex in examples:
      name = ex["metadata"]["video_name"].decode()
      frames, ids = truth[split][name]
      assert ex["video"].shape == frames.shape
      assert np.abs(ex["video"].astype(int) - frames).mean() < 2.0  # JPEG
      assert ex["has_annotations"] == (split == "train")
      if ids is None:
        assert not ex["segmentations"].any()
      else:
        np.testing.assert_array_equal(ex["segmentations"][..., 0], ids)
        assert ex["metadata"]["num_instances"] == len(np.unique(ids)) - 1


def test_ytvis_rle_annotations(tmp_path):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  spec = {"train": [("r1", 4, (24, 32), 3), ("r2", 3, (24, 32), 2)]}
  truth = make_ytvis(raw, spec, with_pngs=False, rle="mixed")
  path = convert.convert_ytvis(raw, out, splits=["train"], workers=1)
  for ex in _read(path, "train"):
    _, ids = truth["train"][ex["metadata"]["video_name"].decode()]
    np.testing.assert_array_equal(ex["segmentations"][..., 0], ids)
    assert ex["has_annotations"]


def test_ytvis_border_crop_and_modes(tmp_path):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  make_ytvis(raw, {"train": [("crop", 3, (64, 80), 1)]})
  rng = np.random.default_rng(3)
  # Letterboxed frames: 16 black rows on top and 16 black cols on each side
  # (grey content, MCU-aligned bars, so JPEG keeps the bars exactly black);
  # frame 2 is stored as a grayscale JPEG.
  frames = []
  for t in range(3):
    f = np.repeat(smooth_frame(rng, 64, 80)[..., :1], 3, axis=-1)
    f[:16] = 0
    f[:, :16] = 0
    f[:, -16:] = 0
    path = os.path.join(raw, "train", "JPEGImages", "crop", f"{5 * t:05d}.jpg")
    if t == 2:
      Image.fromarray(f.mean(-1).astype(np.uint8), "L").save(path, quality=95)
    else:
      save_jpeg(path, f)
    frames.append(f)
  ids = np.zeros((64, 80), np.uint8)
  ids[20:30, 30:40] = 1
  ids[0:4, 0:4] = 2  # inside the border: cropped away
  for t in range(3):
    img = Image.fromarray(ids, "P")
    img.save(os.path.join(raw, "train", "Annotations", "crop", f"{5 * t:05d}.png"))

  path = convert.convert_ytvis(raw, out, splits=["train"])
  (ex,) = _read(path, "train")
  assert tuple(ex["metadata"]["crop"]) == (16, 0, 16, 16)
  assert ex["video"].shape == (3, 48, 48, 3)
  np.testing.assert_array_equal(ex["segmentations"][0, ..., 0], ids[16:, 16:-16])
  assert np.abs(ex["video"][0].astype(int) - frames[0][16:, 16:-16]).mean() < 2
  gray = ex["video"][2].astype(int)
  assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 2  # converted to RGB

  assert ex["metadata"]["num_instances"] == 1  # id 2 was in the border


def test_ytvis_errors(tmp_path):
  raw = str(tmp_path / "raw")
  with pytest.raises(FileNotFoundError, match=r"train/JPEGImages"):
    convert.convert_ytvis(str(tmp_path), str(tmp_path / "o1"), splits=["train"])

  make_ytvis(raw, {"train": [("v", 3, (32, 32), 1)], "valid": [("w", 2, (32, 32), 0)]})
  with pytest.raises(FileNotFoundError, match=r"test/JPEGImages.*--splits"):
    convert.convert_ytvis(raw, str(tmp_path / "o2"))

  # Mixed frame sizes inside one video.
  save_jpeg(os.path.join(raw, "train", "JPEGImages", "v", "00005.jpg"),
            np.full((16, 32, 3), 90, np.uint8))
  with pytest.raises(ValueError, match=r"frame 1 .* 32x16 .* frame 0 is 32x32"):
    convert.convert_ytvis(raw, str(tmp_path / "o3"), splits=["train"])
  save_jpeg(os.path.join(raw, "train", "JPEGImages", "v", "00005.jpg"),
            np.full((32, 32, 3), 90, np.uint8))

  # A missing annotation PNG.
  os.remove(os.path.join(raw, "train", "Annotations", "v", "00010.png"))
  with pytest.raises(FileNotFoundError, match=r"missing annotation .*00010.png"):
    convert.convert_ytvis(raw, str(tmp_path / "o4"), splits=["train"])

  # No annotations at all.
  import shutil
  shutil.rmtree(os.path.join(raw, "train", "Annotations"))
  with pytest.raises(FileNotFoundError, match=r"No annotations for YTVIS train"):
    convert.convert_ytvis(raw, str(tmp_path / "o5"), splits=["train"])

  # Missing JSON.
  os.remove(os.path.join(raw, "valid", "valid.json"))
  with pytest.raises(FileNotFoundError, match=r"valid/valid.json"):
    convert.convert_ytvis(raw, str(tmp_path / "o6"), splits=["valid"])


def test_idempotent_and_partial_rebuild(tmp_path, capsys):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  make_ytvis(raw, {"train": [("v", 2, (16, 16), 1)], "valid": [("w", 2, (16, 16), 0)],
                   "test": [("x", 2, (16, 16), 0)]})
  argv = ["convert_ytvis.py", "--root", raw, "--out", out, "--workers", "1"]
  old_argv = sys.argv
  try:  # the command-line tool, run in this process
    sys.argv = argv
    runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "..", "tools",
                                "convert_ytvis.py"), run_name="__main__")
  finally:
    sys.argv = old_argv
  assert "train: 1 videos, 2 frames" in capsys.readouterr().out
  path = os.path.join(out, "ytvis19", "1.0.0")
  info = os.path.join(path, "dataset_info.json")
  stamp = os.stat(info).st_mtime_ns

  convert.ytvis_main(argv[1:])  # complete: a no-op
  assert os.stat(info).st_mtime_ns == stamp

  os.remove(os.path.join(path, records.INDEX_FILE))  # interrupted conversion
  os.makedirs(os.path.join(out, "ytvis19", "incomplete.XYZ_1.0.0"))
  convert.ytvis_main(argv[1:])
  assert records.read_index(path) is not None
  assert not os.path.exists(os.path.join(out, "ytvis19", "incomplete.XYZ_1.0.0"))
  assert len(_read(path, "test")) == 1


# -- DAVIS --------------------------------------------------------------------


def test_davis(tmp_path, data_config):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  spec = {"train": [("zebra", 3, (24, 32), 2), ("apple", 2, (24, 32), 1)],
          "val": [("cat", 4, (24, 32), 3), ("bear", 2, (24, 32), 2)]}
  truth = make_davis(raw, spec)
  path = convert.convert_davis(raw, out)
  index = records.read_index(path)
  assert index["splits"]["train"]["video_name"] == ["zebra", "apple"]  # txt order
  assert index["splits"]["val"]["num_frames"] == [4, 2]
  for ex in _read(path, "val"):
    frames, ids = truth[ex["metadata"]["video_name"].decode()]
    np.testing.assert_array_equal(ex["segmentations"][..., 0], ids)  # 255 kept
    assert np.abs(ex["video"].astype(int) - frames).mean() < 2.0

  # The evaluation loader turns 255 into -1 (void).
  cfg = data_config(name="davis17", data_dir=out)
  videos = list(pipeline.eval_videos(cfg))
  assert [v["video_name"] for v in videos] == ["cat", "bear"]
  for v in videos:
    _, ids = truth[v["video_name"]]
    expected = ids.astype(np.int32)
    expected[expected == 255] = -1
    np.testing.assert_array_equal(v["segmentations"], expected)
    assert v["segmentations"].dtype == np.int32 and v["has_annotations"]

  with pytest.raises(FileNotFoundError, match=r"ImageSets/2017"):
    convert.convert_davis(str(tmp_path), str(tmp_path / "o2"))


def test_davis_rgba_palette_and_black_frames_and_layout_errors(tmp_path):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  make_davis(raw, {"train": [("v", 3, (24, 32), 1)], "val": [("w", 2, (24, 32), 1)]})
  rng = np.random.default_rng(5)
  video_dir = os.path.join(raw, "JPEGImages", "480p", "v")
  # Frame 0 all black (as RGBA PNG): border removal must keep the whole frame, not crop it
  # to nothing. Frame 1 RGBA with varying alpha, frame 2 a palette PNG: both stored as RGB.
  rgba = np.concatenate([smooth_frame(rng, 24, 32),
                         rng.integers(0, 256, (24, 32, 1), dtype=np.uint8)], -1)
  black = np.zeros((24, 32, 4), np.uint8)
  black[..., 3] = 255
  pal_ids = np.kron(rng.permutation(12).reshape(3, 4) % 4, np.ones((8, 8))).astype(np.uint8)
  palette = np.array([[10, 200, 30], [250, 250, 250], [90, 0, 160], [128, 128, 0]], np.uint8)
  for t in range(3):
    os.remove(os.path.join(video_dir, f"{t:05d}.jpg"))
  Image.fromarray(black, "RGBA").save(os.path.join(video_dir, "00000.png"))
  Image.fromarray(rgba, "RGBA").save(os.path.join(video_dir, "00001.png"))
  img = Image.fromarray(pal_ids, "P")
  img.putpalette(palette.ravel().tolist())
  img.save(os.path.join(video_dir, "00002.png"))

  path = convert.convert_davis(raw, out, splits=["train"], workers=1)
  (ex,) = _read(path, "train")
  assert tuple(ex["metadata"]["crop"]) == (0, 0, 0, 0)
  assert ex["video"].shape == (3, 24, 32, 3)  # the whole frame, 3 channels
  assert np.abs(ex["video"][0].astype(int)).mean() < 1  # JPEG of black
  # Alpha dropped, colours kept (up to JPEG re-encoding).
  assert np.abs(ex["video"][1].astype(int) - rgba[..., :3]).mean() < 2
  assert np.abs(ex["video"][2].astype(int) - palette[pal_ids]).mean() < 8

  # An annotation of another size than its frame.
  ann = os.path.join(raw, "Annotations", "480p", "w", "00001.png")
  Image.fromarray(np.zeros((12, 16), np.uint8), "P").save(ann)
  with pytest.raises(ValueError, match=r"DAVIS val/w: annotation .*00001.png is 16x12 but the "
                     r"frames are 32x24"):
    convert.convert_davis(raw, str(tmp_path / "o1"), splits=["val"], workers=1)
  # An RGB annotation (ids must be palette indices or gray values).
  Image.fromarray(np.zeros((24, 32, 3), np.uint8), "RGB").save(ann)
  with pytest.raises(ValueError, match=r"00001.png: annotation PNGs must be palette .* got mode "
                     r"'RGB'"):
    convert.convert_davis(raw, str(tmp_path / "o2"), splits=["val"], workers=1)
  # A listed video without frames.
  with open(os.path.join(raw, "ImageSets", "2017", "val.txt"), "a") as f:
    f.write("ghost\n")
  with pytest.raises(FileNotFoundError, match=r"val.txt lists ghost but .*480p/ghost does not "
                     r"exist"):
    convert.convert_davis(raw, str(tmp_path / "o3"), splits=["val"], workers=1)


# -- damaged raw files ------------------------------------------------------------


def _truncate(path, keep=0.5):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:int(len(data) * keep)])


def _run_tool(tool, argv):
  """tools/<tool> run in this process; returns its exit code or message."""
  old_argv = sys.argv
  try:
    sys.argv = [tool] + argv
    runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "..", "tools", tool),
                   run_name="__main__")
  except SystemExit as e:
    return e.code
  finally:
    sys.argv = old_argv
  return 0


def _leftovers(out, name):
  """What a conversion left under out/name (final or TFDS 'incomplete.*' folders)."""
  top = os.path.join(out, name)
  return sorted(os.listdir(top)) if os.path.isdir(top) else []


def test_ytvis_damaged_frames_are_named_and_nothing_is_left(tmp_path, data_config):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  make_ytvis(raw, {"train": [("good", 3, (32, 48), 1), ("bad", 4, (32, 48), 2)]})
  frame = os.path.join(raw, "train", "JPEGImages", "bad", "00010.jpg")
  with Image.open(frame) as img:  # the header is intact: only a full decode notices
    assert img.size == (48, 32)
  _truncate(frame)
  with pytest.raises(convert.DamagedFileError,
                     match=r"^YTVIS train/bad: frame 2 .*bad/00010\.jpg \(\d+ bytes\) cannot be "
                     r"decoded: .*(?i:truncated).*restore it"):
    convert.convert_ytvis(raw, out, splits=["train"], workers=2)
  assert _leftovers(out, "ytvis19") == []
  with pytest.raises(FileNotFoundError, match="ytvis19 records not found"):
    pipeline.check_data(data_config(name="ytvis19", data_dir=out))

  # The command line: exit status 1 and one line naming the video and the file.
  message = _run_tool("convert_ytvis.py", ["--root", raw, "--out", out, "--splits", "train",
                                           "--workers", "1"])
  assert isinstance(message, str) and "\n" not in message, message
  assert re.match(r"convert_ytvis.py: error: YTVIS train/bad: frame 2 \S*bad/00010\.jpg .*"
                  r"(?i:truncated).* holds no partial dataset\.$", message), message
  assert _leftovers(out, "ytvis19") == []

  # An empty file in place of frame 0 (the frame the border box is read from).
  with open(os.path.join(raw, "train", "JPEGImages", "good", "00000.jpg"), "wb"):
    pass
  with pytest.raises(convert.DamagedFileError,
                     match=r"YTVIS train/good: frame 0 \S*good/00000\.jpg \(0 bytes\) cannot"):
    convert.convert_ytvis(raw, out, splits=["train"], workers=1)


def test_failed_rebuild_keeps_the_complete_dataset(tmp_path):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  make_ytvis(raw, {"train": [("v", 3, (32, 32), 1), ("w", 2, (32, 32), 1)]})
  path = convert.convert_ytvis(raw, out, splits=["train"], workers=1)
  before = _read(path, "train")
  _truncate(os.path.join(raw, "train", "JPEGImages", "w", "00005.jpg"), keep=0.8)
  with pytest.raises(convert.DamagedFileError, match=r"train/w: frame 1 "):
    convert.convert_ytvis(raw, out, splits=["train"], workers=1, overwrite=True)
  assert _leftovers(out, "ytvis19") == ["1.0.0"]  # no partial or set-aside copy
  after = _read(path, "train")
  assert records.read_index(path) is not None and len(after) == len(before) == 2
  np.testing.assert_array_equal(after[1]["video"], before[1]["video"])


def test_davis_damaged_annotation_and_frame(tmp_path):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  make_davis(raw, {"train": [("v", 3, (24, 32), 1)], "val": [("w", 3, (24, 32), 2)]})
  ann = os.path.join(raw, "Annotations", "480p", "w", "00001.png")
  _truncate(ann)
  with pytest.raises(convert.DamagedFileError,
                     match=r"^DAVIS val/w: annotation of frame 1 \S*480p/w/00001\.png "
                     r"\(\d+ bytes\) cannot be decoded"):
    convert.convert_davis(raw, out, workers=1)
  assert _leftovers(out, "davis17") == []

  make_davis(raw, {"train": [("v", 3, (24, 32), 1)], "val": [("w", 3, (24, 32), 2)]})
  _truncate(os.path.join(raw, "JPEGImages", "480p", "v", "00002.jpg"), keep=0.7)
  message = _run_tool("convert_davis.py", ["--root", raw, "--out", out, "--workers", "1"])
  assert isinstance(message, str) and "\n" not in message, message
  assert re.match(r"convert_davis.py: error: DAVIS train/v: frame 2 \S*480p/v/00002\.jpg .*"
                  r"cannot be decoded", message), message
  assert _leftovers(out, "davis17") == []


@pytest.mark.parametrize("entry", ["../../../outside", "/abs/outside", "v/../../../../outside"])
def test_converters_read_nothing_outside_their_root(tmp_path, entry):
  # Listings that name paths outside --root are refused, naming the entry and the file, and
  # nothing is written; the files out there exist, so reading them would have "worked".
  outside = tmp_path / "outside"
  outside.mkdir()
  save_jpeg(str(outside / "00000.jpg"), smooth_frame(np.random.default_rng(0), 24, 32))
  Image.fromarray(np.zeros((24, 32), np.uint8)).save(outside / "00000.png")
  entry = entry.replace("/abs/outside", str(outside))

  davis = str(tmp_path / "davis")
  make_davis(davis, {"train": [("v", 2, (24, 32), 1)], "val": [("w", 2, (24, 32), 1)]})
  with open(os.path.join(davis, "ImageSets", "2017", "val.txt"), "a") as f:
    f.write(entry + "\n")
  out = str(tmp_path / "out")
  message = _run_tool("convert_davis.py", ["--root", davis, "--out", out, "--workers=1"])
  assert "not a path inside the dataset root" in str(message) and entry in str(message)
  assert "val.txt" in str(message) and _leftovers(out, "davis17") == []

  ytvis = str(tmp_path / "ytvis")
  make_ytvis(ytvis, {"train": [("a", 2, (24, 32), 1)], "valid": [("b", 2, (24, 32), 0)]})
  json_path = os.path.join(ytvis, "valid", "valid.json")
  meta = json.load(open(json_path))
  meta["videos"][0]["file_names"][1] = entry + "/00000.jpg"
  json.dump(meta, open(json_path, "w"))
  with pytest.raises(ValueError, match="not a path inside the dataset root") as e:
    convert.convert_ytvis(ytvis, out, splits=("train", "valid"), workers=1)
  assert "valid.json" in str(e.value) and _leftovers(out, "ytvis19") == []
