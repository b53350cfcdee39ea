"""Tests of `python -m solv_jax.segment` (solv_jax/segment.py) on a short synthetic clip.

The model is the tiny config (tests/tiny.py) at its seeded initialisation, saved as a workdir
checkpoint (as train.py leaves one) and as an export .npz (export.save_export, DINOv2 inside).
The command's masks are checked against the evaluation protocol run here directly
(resize_frames -> VideoSegmenter -> masks_to_ids at the clip's size), its summary against
counts taken from the PNGs with numpy, its GIF/MP4 by reading them back with PIL/imageio, and
its inputs' RGB conversion against PIL's own `convert("RGB")`.
"""
import json
import os
import shutil
import tracemalloc

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image, ImageSequence

from solv_jax import (checkpoints, export, inference, outputs, segment, sharding, tracking,
                      train_step, video_io)
from solv_jax.data import synthetic
from solv_jax.data.frames import resize_frames
from solv_jax.models import build
from solv_jax.models.build import build_model
from tests.tiny import tiny_config

T, H, W = 6, 40, 62  # native clip size, deliberately not the model's 42x56 (and W even, H even)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """(workdir, export path, reference segmenter, config) of the tiny model."""
  root = tmp_path_factory.mktemp("model")
  config = tiny_config()
  config.eval.batch_windows = 4
  net = build_model(config)
  state = train_step.create_train_state(config, net, train_step.make_optimizer(config.train))
  workdir = str(root / "run")
  export.save_config(workdir, config)
  ckpt = checkpoints.Checkpoints(workdir, async_save=False)
  ckpt.save(3, state, {}, force=True)
  ckpt.close()
  encoder = build.encoder_params(config, net)
  npz = str(root / "model.npz")  # what tools/export_numpy.py writes (tested in test_main.py)
  export.save_export(npz, config, state.params, encoder)
  params = {**state.params, "encoder": encoder}
  reference = inference.VideoSegmenter(net, params, batch_windows=4)
  return workdir, npz, reference, config


@pytest.fixture(scope="module")
def clip():
  cfg = synthetic.SyntheticConfig(num_frames=T, height=H, width=W, min_objects=2, max_objects=3)
  frames, _ = synthetic.generate_video(cfg, np.random.default_rng(7))
  return frames  # (T, H, W, 3) uint8


def _reference_ids(model, frames):
  _, _, reference, config = model
  out = reference(resize_frames(frames, tuple(config.data.resolution)))
  return tracking.masks_to_ids(out["masks"], out["track_ids"], out_hw=frames.shape[1:3])


def _read_masks(out_dir):
  names = sorted(os.listdir(os.path.join(out_dir, "masks")))
  return names, np.stack([np.asarray(Image.open(os.path.join(out_dir, "masks", n)))
                          for n in names])


def _check_outputs(out_dir, num_frames, hw, gif_frames=None):
  """PNG count and size, summary consistent with the PNGs, GIF frames (num_frames unless
  given); -> (ids, summary)."""
  names, ids = _read_masks(out_dir)
  assert names == [f"{t:06d}.png" for t in range(num_frames)]
  assert ids.shape == (num_frames, *hw)
  with open(os.path.join(out_dir, "summary.json")) as f:
    summary = json.load(f)
  assert summary["input"]["num_frames"] == num_frames
  assert (summary["input"]["height"], summary["input"]["width"]) == hw
  seen = np.unique(ids)
  assert [o["id"] for o in summary["objects"]] == seen.tolist()
  assert summary["num_objects"] == len(seen)
  for o in summary["objects"]:
    frames_with = [t for t in range(num_frames) if (ids[t] == o["id"]).any()]
    assert o["frames"] == frames_with and o["num_frames"] == len(frames_with)
    assert o["pixels"] == int((ids == o["id"]).sum())
  for t, row in enumerate(summary["frames"]):
    values, counts = np.unique(ids[t], return_counts=True)
    assert row["pixels"] == {str(v): int(c) for v, c in zip(values, counts)}
  with Image.open(os.path.join(out_dir, "masks", names[0])) as png:
    assert png.mode == "P"  # ids < 256: 8-bit palette PNGs
  with Image.open(os.path.join(out_dir, "overlay.gif")) as gif:
    assert gif.size == (hw[1], hw[0])  # below GIF_MAX_SIDE: native size
    assert sum(1 for _ in ImageSequence.Iterator(gif)) == (gif_frames or num_frames)
  return ids, summary


def test_frame_folder_from_workdir_matches_the_evaluation_protocol(model, clip, tmp_path):
  workdir = model[0]
  folder = tmp_path / "frames"
  folder.mkdir()
  order = [f"img{2 * t}.png" for t in range(T)]  # img10 sorts after img8 (names as numbers)
  for name, frame in zip(order, clip):
    Image.fromarray(frame).save(folder / name)
  (folder / "notes.txt").write_text("not a frame")
  out = str(tmp_path / "out")
  assert segment.main([f"--checkpoint={workdir}", f"--video={folder}", f"--out={out}"]) == 0
  ids, summary = _check_outputs(out, T, (H, W))
  np.testing.assert_array_equal(ids, _reference_ids(model, clip))
  assert summary["input"]["kind"] == "frames" and summary["input"]["frame_files"] == order
  assert summary["model"]["kind"] == "workdir" and summary["model"]["step"] == 3
  mp4 = iio.imread(os.path.join(out, "overlay.mp4"))
  assert mp4.shape == (T, H, W, 3)


def test_gif_and_mp4_files_from_export(model, clip, tmp_path):
  _, npz, _, _ = model
  gif = str(tmp_path / "clip.gif")
  iio.imwrite(gif, clip, duration=100, loop=0)  # 10 fps (GIF stores centiseconds)
  out = str(tmp_path / "gif_out")
  assert segment.main(["--checkpoint", npz, "--video", gif, "--out", out]) == 0
  ids, summary = _check_outputs(out, T, (H, W))
  np.testing.assert_array_equal(ids, _reference_ids(model, iio.imread(gif)[..., :3]))
  assert summary["input"]["kind"] == "video" and summary["fps"] == pytest.approx(10.0)

  mp4 = str(tmp_path / "clip.mp4")
  iio.imwrite(mp4, clip, fps=5, macro_block_size=1)
  out = str(tmp_path / "mp4_out")
  assert segment.main(["--checkpoint", npz, "--video", mp4, "--out", out]) == 0  # 6 frames
  assert segment.main(["--checkpoint", npz, "--video", mp4, "--out", out, "--max_frames=4",
                       "--overwrite"]) == 0
  ids, summary = _check_outputs(out, 4, (H, W))  # the earlier run's masks 4 and 5 are gone
  np.testing.assert_array_equal(ids, _reference_ids(model, iio.imread(mp4)[:4]))
  assert summary["fps"] == pytest.approx(5.0)


def test_frames_are_converted_to_rgb_like_pil(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
  images = {
      "0.png": Image.fromarray(rgb[..., 0]),                        # L
      "1.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),      # RGBA
      "2.png": Image.fromarray(rgb).quantize(16),                   # P
      "3.jpg": Image.fromarray(rgb),                                # RGB (lossy)
      "4.png": Image.fromarray(np.dstack([rgb[..., 1]] * 2)),       # grey + alpha
  }
  for name, image in images.items():
    image.save(tmp_path / name)
  video = video_io.read_video(str(tmp_path))
  assert video.frames.shape == (5, 8, 10, 3) and video.frames.dtype == np.uint8
  for t, name in enumerate(images):
    with Image.open(tmp_path / name) as im:
      expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(video.frames[t], expected, err_msg=name)
  sixteen = (rgb[..., 0].astype(np.uint16) * 257)
  np.testing.assert_array_equal(video_io.to_rgb(sixteen, "x"), np.dstack([rgb[..., 0]] * 3))


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty_folder", "folder without frames"),
    ("no_frames_folder", "folder without frames"),
    ("mixed_sizes", "mixes frame sizes"),
    ("corrupt_mp4", "unreadable or corrupt"),
    ("corrupt_gif", "unreadable or corrupt"),
    ("corrupt_frame", "Cannot read frame"),
])
def test_bad_videos_fail_naming_the_path(case, message, tmp_path, capsys):
  path = tmp_path / case
  if case in ("empty_folder", "no_frames_folder", "mixed_sizes", "corrupt_frame"):
    path.mkdir()
  if case == "no_frames_folder":
    (path / "readme.md").write_text("x")
  if case == "mixed_sizes":
    Image.new("RGB", (10, 8)).save(path / "a.png")
    Image.new("RGB", (12, 8)).save(path / "b.png")
  if case == "corrupt_frame":
    (path / "0.png").write_bytes(b"\x89PNG not really")
  if case.startswith("corrupt_") and case != "corrupt_frame":
    path = tmp_path / f"clip.{case.split('_')[1]}"
    path.write_bytes(b"garbage" * 20)
  rc = segment.main(["--checkpoint", str(tmp_path), "--video", str(path),
                     "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert rc == 1 and message in err and str(path) in err, err
  with pytest.raises(video_io.VideoError, match=message):
    video_io.read_video(str(path))


def test_bad_checkpoints_fail_clearly(model, clip, tmp_path, capsys):
  workdir, _, _, config = model
  folder = tmp_path / "frames"
  folder.mkdir()
  Image.fromarray(clip[0]).save(folder / "0.png")
  cases = [
      (str(tmp_path / "nope"), [], "does not exist"),
      (str(folder), [], "config.json"),  # a folder that is not a workdir
      (workdir, ["--resolution=84,112"], "trained at"),
  ]
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"not an npz")
  cases.append((str(bad), [], "Cannot read export"))
  for checkpoint, extra, message in cases:
    rc = segment.main(["--checkpoint", checkpoint, "--video", str(folder),
                       "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and checkpoint in err, (checkpoint, err)
  # The trained resolution itself is accepted.
  h, w = config.data.resolution
  assert inference.load_model(workdir, (h, w)).info["resolution"] == [h, w]



def test_params_in_memory_segment_as_the_loaded_model_does(model, clip):
  # inference.from_params: a config and params held in Python (no file), the full tree or the
  # trainable params alone (DINOv2's then come from the config, as in training).
  _, npz, _, config = model
  loaded = build.load(npz)
  expected = _reference_ids(model, clip)
  ids, _ = inference.segment(inference.from_params(loaded.config, loaded.params), clip,
                             progress=False)
  np.testing.assert_array_equal(ids, expected)
  trainable = {k: v for k, v in loaded.params.items() if k != "encoder"}
  from_config = inference.from_params(loaded.config, trainable)
  assert from_config.info["encoder_weights"].startswith("random init (seed")
  np.testing.assert_array_equal(inference.segment(from_config, clip, progress=False)[0], expected)
  # Errors in Python terms, before anything is compiled.
  with pytest.raises(inference.InferenceError, match="top-level keys"):
    inference.from_params(loaded.config, {"decoder": trainable["decoder"]})
  bad = loaded.config.copy_and_resolve_references()
  bad.model.num_slot = 3
  with pytest.raises(inference.InferenceError, match=r"config\.model\.num_slot is not a config"):
    inference.from_params(bad, trainable)
  with pytest.raises(inference.InferenceError, match="does not exist"):
    inference.load_model(npz + ".missing")

@pytest.mark.parametrize("damage", ["int32", "float16", "missing", "renamed", "shape",
                                    "encoder_shape"])
def test_exports_whose_params_do_not_fit_the_model_are_refused_naming_one(model, clip, damage,
                                                                          tmp_path, capsys):
  from flax import traverse_util
  _, npz, _, _ = model
  loaded = build.load(npz)
  trainable = traverse_util.flatten_dict(
      {k: v for k, v in loaded.params.items() if k != "encoder"})
  encoder = loaded.params["encoder"]
  name = max(trainable, key=lambda k: trainable[k].size)  # the largest param
  if damage in ("int32", "float16"):
    trainable[name] = trainable[name].astype(damage)
  elif damage == "missing":
    del trainable[name]
  elif damage == "renamed":
    trainable[(*name[:-1], name[-1] + "_x")] = trainable.pop(name)
  elif damage == "shape":
    trainable[name] = trainable[name][..., :-1]
  else:
    encoder = traverse_util.flatten_dict(encoder)
    key = next(k for k in encoder if k[-1] == "kernel")
    encoder[key] = encoder[key][..., :-1]
    encoder = traverse_util.unflatten_dict(encoder)
  bad = str(tmp_path / "bad.npz")
  export.save_export(bad, loaded.config, traverse_util.unflatten_dict(trainable), encoder)
  with pytest.raises(inference.InferenceError, match="does not hold the params"):
    inference.load_model(bad)
  folder = _frames_folder(tmp_path, clip)
  capsys.readouterr()
  assert segment.main([f"--checkpoint={bad}", f"--video={folder}",
                       f"--out={tmp_path / 'seg'}"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and bad in err, err
  assert "/".join(name) in err or damage == "encoder_shape", err
  assert not (tmp_path / "seg").exists()

def test_command_applies_the_runs_xla_flags_before_restoring(model, clip, tmp_path, monkeypatch):
  # As `python -m solv_jax.main` does, the run's config.xla_flags go to XLA before orbax opens
  # a backend. One is open already in this process, so the call is recorded, not made (the
  # other tests here run with the real one: it warns and goes on).
  workdir, _, _, config = model
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  flagged = config.copy_and_resolve_references()
  flagged.xla_flags = "--xla_cpu_experimental_ynn_fusion_type="
  export.save_config(run, flagged)
  calls, restore = [], checkpoints.restore_params
  monkeypatch.setattr(sharding, "apply_xla_flags",
                      lambda flags, strict: calls.append(("flags", flags, strict)))
  monkeypatch.setattr(checkpoints, "restore_params",
                      lambda *a, **k: calls.append(("restore",)) or restore(*a, **k))
  folder = tmp_path / "frames"
  folder.mkdir()
  for t, frame in enumerate(clip):
    Image.fromarray(frame).save(folder / f"{t}.png")
  assert segment.main([f"--checkpoint={run}", f"--video={folder}", f"--out={tmp_path / 'o'}"]) == 0
  assert calls == [("flags", flagged.xla_flags, False), ("restore",)]


def _frames_folder(tmp_path, clip, name="frames"):
  folder = tmp_path / name
  folder.mkdir()
  for t, frame in enumerate(clip):
    Image.fromarray(frame).save(folder / f"{t}.png")
  return str(folder)


def test_non_empty_out_is_refused_unless_overwrite(model, clip, tmp_path, capsys):
  # Issue 18.7: the command used to delete masks/*.png and replace summary.json in silence.
  workdir = model[0]
  folder = _frames_folder(tmp_path, clip[:3])
  out = tmp_path / "out"
  (out / "masks").mkdir(parents=True)
  Image.fromarray(np.zeros((2, 2), np.uint8)).save(out / "masks" / "000050.png")
  (out / "summary.json").write_text('{"mine": 1}')
  (out / "notes.txt").write_text("keep me")
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  # Refused before the checkpoint is even looked at (this one does not exist).
  for checkpoint in (str(tmp_path / "no_such_checkpoint"), workdir):
    rc = segment.main([f"--checkpoint={checkpoint}", f"--video={folder}", f"--out={out}"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.strip().count("\n") == 0, err  # one line
    assert "not empty" in err and str(out) in err and "--overwrite" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched
  # A file as --out, and an empty existing folder (accepted).
  (tmp_path / "file").write_text("x")
  assert segment.main([f"--checkpoint={workdir}", f"--video={folder}",
                       f"--out={tmp_path / 'file'}"]) == 1
  assert "is not a folder" in capsys.readouterr().err
  (tmp_path / "empty").mkdir()
  assert segment.main([f"--checkpoint={workdir}", f"--video={folder}",
                       f"--out={tmp_path / 'empty'}"]) == 0
  # --overwrite replaces only what an earlier run of this command wrote there (its manifest):
  # files of the output names that no run wrote are refused by name, and left as they were.
  capsys.readouterr()
  rc = segment.main([f"--checkpoint={workdir}", f"--video={folder}", f"--out={out}",
                     "--overwrite"])
  err = capsys.readouterr().err
  assert rc == 1 and err.strip().count("\n") == 0, err
  assert "masks/000050.png" in err and outputs.MANIFEST in err, err
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
  (out / "masks" / "000050.png").unlink()
  (out / "summary.json").unlink()
  long_folder = _frames_folder(tmp_path, clip, name="long")  # 6 frames, then 3 over them
  assert segment.main([f"--checkpoint={workdir}", f"--video={long_folder}", f"--out={out}",
                       "--overwrite", "--save_slots"]) == 0
  (out / "mine.png").write_bytes(b"not an output name")
  assert segment.main([f"--checkpoint={workdir}", f"--video={folder}", f"--out={out}",
                       "--overwrite"]) == 0
  assert "Replacing the outputs of an earlier run" in capsys.readouterr().out
  capsys.readouterr()
  ids, summary = _check_outputs(str(out), 3, (H, W))  # masks 3-5 and slots.npz are gone
  assert not (out / "slots.npz").exists()
  assert (out / "notes.txt").read_text() == "keep me"
  assert (out / "mine.png").read_bytes() == b"not an output name"
  # A symbolic link as --out is not followed into an --overwrite.
  link = tmp_path / "link"
  link.symlink_to(out, target_is_directory=True)
  assert segment.main([f"--checkpoint={workdir}", f"--video={folder}", f"--out={link}",
                       "--overwrite"]) == 1
  assert "symbolic link" in capsys.readouterr().err


def test_save_slots_writes_the_segmenters_outputs(model, clip, tmp_path):
  workdir, _, reference, config = model
  folder = _frames_folder(tmp_path, clip)
  out = tmp_path / "out"
  assert segment.main([f"--checkpoint={workdir}", f"--video={folder}", f"--out={out}",
                       "--save_slots"]) == 0
  ids, summary = _check_outputs(str(out), T, (H, W))
  assert summary["outputs"]["slots"] == "slots.npz"
  with np.load(out / "slots.npz") as f:
    saved = {k: f[k] for k in f.files}
  assert set(saved) == {"slots", "valid", "track_ids", "masks", "token_grid"}
  k, gh, gw = config.model.num_slots, *reference.grid_hw
  assert saved["slots"].shape[:2] == saved["valid"].shape == saved["track_ids"].shape == (T, k)
  assert saved["slots"].dtype == np.float32 and saved["track_ids"].dtype == np.int32
  assert saved["masks"].shape == (T, k, gh, gw) and saved["token_grid"].tolist() == [gh, gw]
  # The segmenter run here directly (the evaluation protocol) gives the same arrays.
  expected = reference(resize_frames(clip, tuple(config.data.resolution)))
  for key in ("slots", "masks"):
    np.testing.assert_allclose(saved[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
  np.testing.assert_array_equal(saved["valid"], expected["valid"])
  np.testing.assert_array_equal(saved["track_ids"], expected["track_ids"])
  assert ((saved["track_ids"] >= 0) == saved["valid"]).all()
  # The PNGs are the saved masks upsampled and argmaxed over the saved track ids.
  np.testing.assert_array_equal(
      ids, tracking.masks_to_ids(saved["masks"], saved["track_ids"], out_hw=(H, W)))
  # The saved track ids are those of slots tracked frame to frame from the saved slots.
  np.testing.assert_array_equal(saved["track_ids"],
                                tracking.track_slots(saved["slots"], saved["valid"]))
  # Rerun into it without --save_slots: the stale slots.npz goes with --overwrite.
  assert segment.main([f"--checkpoint={workdir}", f"--video={folder}", f"--out={out}",
                       "--overwrite"]) == 0
  assert not (out / "slots.npz").exists()
  with open(out / "summary.json") as f:
    assert json.load(f)["outputs"]["slots"] is None


def _peak_bytes(fn):
  """-> (fn(), the peak of memory traced by tracemalloc (numpy arrays included) during fn)."""
  tracemalloc.start()
  try:
    result = fn()
    return result, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def _outputs(out_dir):
  files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != "overlay.mp4")
  return {str(p.relative_to(out_dir)): p.read_bytes() for p in files}


def test_long_videos_stream_in_memory_bounded_by_a_chunk(model, tmp_path, monkeypatch):
  # Issue 18.8: the command held every native frame, every full-size id map and every GIF frame,
  # so its peak grew with the video. Streamed, doubling the video adds a few kB (per-frame
  # slots and summary rows); the in-memory path, measured the same way, adds at least the
  # frames themselves, which shows the measure sees what holding the video costs.
  workdir = model[0]
  h, w = 160, 240
  cfg = synthetic.SyntheticConfig(num_frames=40, height=h, width=w, min_objects=2, max_objects=3)
  long_clip, _ = synthetic.generate_video(cfg, np.random.default_rng(3))
  monkeypatch.setattr(outputs, "GIF_MAX_FRAMES", 15)  # 40 frames -> every 3rd frame
  # One model for all four runs, compiled (and the mp4 reader imported) before measuring:
  # those are the same for every length; measured, they would only add noise and time.
  loaded = inference.load_model(workdir)
  inference.segment(loaded, long_clip[:1], progress=False)
  monkeypatch.setattr(inference, "load_model", lambda *args, **kwargs: loaded)
  for t_len in (20, 40):
    iio.imwrite(tmp_path / f"clip{t_len}.mp4", long_clip[:t_len], fps=10, macro_block_size=1)
  video_io.read_video(str(tmp_path / "clip20.mp4"))  # imports imageio's ffmpeg plugin
  peaks = {}
  for t_len in (20, 40):
    mp4 = str(tmp_path / f"clip{t_len}.mp4")
    out = tmp_path / f"stream{t_len}"
    rc, peaks["stream", t_len] = _peak_bytes(lambda: segment.main(
        [f"--checkpoint={workdir}", f"--video={mp4}", f"--out={out}"]))
    assert rc == 0

    def in_memory(mp4=mp4, out=tmp_path / f"memory{t_len}"):
      video = video_io.read_video(mp4)
      ids, _ = inference.segment(loaded, video.frames)
      outputs.write_outputs(str(out), video, ids, video.info["fps"], loaded.info)
      return video.frames, ids
    (frames, ids), peaks["memory", t_len] = _peak_bytes(in_memory)
  raw = 20 * h * w * 3  # bytes of the 20 frames that doubling adds
  grown = {k: peaks[k, 40] - peaks[k, 20] for k in ("stream", "memory")}
  print(f"peak growth from 20 to 40 frames of {h}x{w}: {grown} bytes (raw frames {raw})")
  assert grown["memory"] > raw, (grown, raw)
  assert grown["stream"] < raw / 4, (grown, raw)
  # Same outputs as the in-memory path, byte for byte, and the evaluation protocol's ids
  # (one VideoSegmenter call on the whole preprocessed video: chunking changes nothing).
  streamed = _outputs(tmp_path / "stream40")
  assert streamed == _outputs(tmp_path / "memory40")
  stream_ids, summary = _check_outputs(str(tmp_path / "stream40"), 40, (h, w), gif_frames=14)
  np.testing.assert_array_equal(stream_ids, ids)
  np.testing.assert_array_equal(ids, _reference_ids(model, frames))
  assert summary["outputs"]["overlay_gif_stride"] == 3
  assert summary["outputs"]["overlay_gif_frames"] == 14  # frames 0, 3, ..., 39
  with Image.open(tmp_path / "stream40" / "overlay.gif") as gif:
    assert gif.info["duration"] == 300  # each GIF frame stands for 3 frames at 10 fps
  assert iio.imread(str(tmp_path / "stream40" / "overlay.mp4")).shape == (40, h, w, 3)
