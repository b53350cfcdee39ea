"""Training clips and evaluation videos (solv_jax/data/pipeline.py)."""

import os
import re

import jax
import numpy as np
import pytest
import tensorflow as tf

from solv_jax.data import convert
from solv_jax.data import frames as frames_lib
from solv_jax.data import pipeline
from solv_jax.data import datasets
from solv_jax.data.datasets import ytvis19
from solv_jax.data import synthetic
from solv_jax.models import encoders
from tests.data.conftest import TINY_SYNTHETIC
from tests.data.raw_fixtures import make_ytvis, save_palette_png

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# -- clip order -------------------------------------------------------------------


def test_clip_order_is_a_seeded_permutation_per_epoch():
  lengths = [5, 3, 7, 4, 6, 2]
  chunks = [("train", 0, 2), ("train", 2, 4), ("train", 4, 6)]
  chunk_clips = [np.array([(v, t) for v in range(a, b) for t in range(lengths[v])])
                 for _, a, b in chunks]
  universe = {(v, t) for v, n in enumerate(lengths) for t in range(n)}
  order = pipeline.ClipOrder(chunks, chunk_clips, seed=3, block_clips=9)
  n = order.clips_per_epoch
  assert n == len(universe)
  epoch0, epoch1 = order.clips_at(0, n), order.clips_at(n, 2 * n)
  assert {tuple(c) for c in epoch0} == universe and len(epoch0) == n
  assert {tuple(c) for c in epoch1} == universe
  assert not np.array_equal(epoch0, epoch1)
  for block in order.epoch_blocks(0)[:-1]:  # all but the last hold >= 9 clips
    assert len(block.clips) >= 9
  again = pipeline.ClipOrder(chunks, chunk_clips, seed=3, block_clips=9)
  np.testing.assert_array_equal(again.clips_at(7, 40), order.clips_at(0, 2 * n)[7:40])
  other = pipeline.ClipOrder(chunks, chunk_clips, seed=4, block_clips=9)
  assert not np.array_equal(other.clips_at(0, n), epoch0)


# -- training iterator --------------------------------------------------------------


def _expected_batch(cfg, it, step, batch):
  """Window clips of global batch `step`, rebuilt from the generator itself: as the host
  shipped them up to a9867dd (float32, tf.image.resize antialiased bilinear, ImageNet-
  normalised, zeros beyond the video's ends), and as uint8 from frames.resize_frames."""
  videos, uint8, masks = [], [], []
  for gid, t in it.order.clips_at(step * batch, (step + 1) * batch):
    frames, _ = synthetic.generate_video(cfg, synthetic.video_rng(cfg, "train", gid))
    idx = t - 2 + np.arange(5)
    ok = (idx >= 0) & (idx < len(frames))
    clip = np.zeros((5, 28, 42, 3), np.float32)
    resized = tf.image.resize(tf.cast(frames[idx[ok]], tf.float32), (28, 42),
                              method="bilinear", antialias=True).numpy()
    clip[ok] = (resized / 255.0 - MEAN) / STD
    small = np.zeros((5, 28, 42, 3), np.uint8)
    small[ok] = frames_lib.resize_frames(frames[idx[ok]], (28, 42))
    videos.append(clip)
    uint8.append(small)
    masks.append(ok)
  return np.stack(videos), np.stack(uint8), np.stack(masks)


def test_train_batches_content_hosts_and_resume(synthetic_dir, data_config, tmp_path):
  scfg = synthetic.config_from(TINY_SYNTHETIC)
  cfg = data_config(data_dir=synthetic_dir, synthetic=TINY_SYNTHETIC)
  it = pipeline.make_train_iterator(cfg, 4, 0, 1, seed=7)
  assert it.order.clips_per_epoch == 6 * 6
  batches = [next(it) for _ in range(12)]  # > 1 epoch (9 steps)
  normalize = jax.jit(encoders.get("vits14").normalize)
  for step in (0, 5, 10):
    video, uint8, mask = _expected_batch(scfg, it, step, 4)
    assert batches[step]["video"].shape == (4, 5, 28, 42, 3)
    assert batches[step]["video"].dtype == np.uint8
    assert batches[step]["frame_mask"].dtype == np.bool_
    np.testing.assert_array_equal(batches[step]["frame_mask"], mask)
    # The frames are those every other path makes (evaluation, segment: resize_frames) ...
    np.testing.assert_array_equal(batches[step]["video"], uint8)
    # ... and, normalised on the device, the float batch the host used to ship, to within
    # the rounding to uint8: at most 0.5/255 before normalisation.
    on_device = np.asarray(normalize(batches[step]["video"], batches[step]["frame_mask"]))
    assert on_device.dtype == np.float32
    assert np.abs((on_device - video) * STD * 255).max() <= 0.5 + 1e-4
    assert np.abs((on_device - video) * STD * 255).max() > 0.01  # it did round

  # Video ends: t = 0 and t = T-1 mask the frames outside and zero-fill them.
  clips = it.order.clips_at(0, 36)
  masks = np.concatenate([b["frame_mask"] for b in batches[:9]])
  videos = np.concatenate([b["video"] for b in batches[:9]])
  first, last = np.flatnonzero(clips[:, 1] == 0)[0], np.flatnonzero(clips[:, 1] == 5)[0]
  assert masks[first].tolist() == [False, False, True, True, True]
  assert masks[last].tolist() == [True, True, True, False, False]
  assert not videos[first, :2].any() and not videos[last, 3:].any()

  # Two hosts: each gets its contiguous half of every global batch.
  halves = [pipeline.make_train_iterator(cfg, 2, p, 2, seed=7) for p in (0, 1)]
  for step in range(3):
    parts = [next(h) for h in halves]
    np.testing.assert_array_equal(
        np.concatenate([p["video"] for p in parts]), batches[step]["video"])
  for h in halves:
    h.close()

  # Resume: a fresh iterator restored at step 5 continues exactly.
  fresh = pipeline.make_train_iterator(cfg, 4, 0, 1, seed=7)
  it2 = pipeline.make_train_iterator(cfg, 4, 0, 1, seed=7)
  for _ in range(5):
    next(it2)
  it2.save(str(tmp_path / "data.json"))
  assert it2.get_state()["step"] == 5
  fresh.restore(str(tmp_path / "data.json"))
  for step in range(5, 8):
    np.testing.assert_array_equal(next(fresh)["video"], batches[step]["video"])
  other = pipeline.make_train_iterator(cfg, 4, 0, 1, seed=8)
  with pytest.raises(ValueError, match="another data order"):
    other.set_state(it2.get_state())
  for x in (it, it2, fresh, other):
    x.close()


def test_train_errors(synthetic_dir, data_config, tmp_path):
  cfg = data_config(data_dir=synthetic_dir, synthetic=TINY_SYNTHETIC, num_context=3)
  with pytest.raises(ValueError, match=r"F = 2\*3\+1 = 7 frames .* has 6"):
    pipeline.make_train_iterator(cfg, 2, 0, 1)
  cfg = data_config(data_dir=synthetic_dir, synthetic=TINY_SYNTHETIC)
  with pytest.raises(ValueError, match="multiple of the number of hosts"):
    pipeline.TrainIterator(None, splits=[], resolution=(28, 28), num_context=2,
                           batch_size=3, seed=0, process_count=2)
  with pytest.raises(ValueError, match="no split 'nope'"):
    pipeline.make_train_iterator(data_config(data_dir=synthetic_dir,
                                             synthetic=TINY_SYNTHETIC,
                                             train_split="train+nope"), 2, 0, 1)
  with pytest.raises(ValueError, match="config.data.name must be one of"):
    pipeline.make_train_iterator(data_config(name="kinetics"), 2, 0, 1)
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError,
                     match=r"(?s)nowhere/ytvis19/1.0.0 does not exist.*tools/convert_ytvis.py"):
    pipeline.make_train_iterator(data_config(name="ytvis19", data_dir=missing), 2, 0, 1)


# -- evaluation ---------------------------------------------------------------------


def test_eval_synthetic(synthetic_dir, data_config):
  scfg = synthetic.config_from(TINY_SYNTHETIC)
  cfg = data_config(data_dir=synthetic_dir, synthetic=TINY_SYNTHETIC, eval_max_videos=2)
  videos = list(pipeline.eval_videos(cfg))
  assert [v["video_name"] for v in videos] == ["validation_00000", "validation_00001"]
  for i, v in enumerate(videos):
    frames, ids = synthetic.generate_video(scfg, synthetic.video_rng(scfg, "validation", i))
    np.testing.assert_array_equal(v["video"], frames)
    np.testing.assert_array_equal(v["segmentations"], ids.astype(np.int32))
    assert v["video"].dtype == np.uint8 and v["segmentations"].dtype == np.int32
  assert pipeline.num_eval_videos(cfg) == 3


def test_ytvis_eval_subsets(tmp_path, data_config, monkeypatch):
  raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
  spec = {"train": [(f"v{i}", 3 + i % 2, (24, 32), 2) for i in range(5)],
          "valid": [("w", 4, (24, 32), 0)], "test": [("x", 3, (24, 32), 0)]}
  truth = make_ytvis(raw, spec)
  # v2: object 2 is absent from frame 0, so evaluation drops it (docs/METHOD.md §7).
  ids_v2 = truth["train"]["v2"][1]
  frame0 = ids_v2[0].copy()
  frame0[frame0 == 2] = 0
  save_palette_png(os.path.join(raw, "train", "Annotations", "v2", "00000.png"), frame0)
  convert.convert_ytvis(raw, out, workers=1)
  monkeypatch.setattr(ytvis19, "EVAL_RANGE", (1, 3))

  cfg = data_config(name="ytvis19", data_dir=out, train_split="train+valid+test",
                    eval_split="train", num_context=1)
  videos = list(pipeline.eval_videos(cfg))
  assert [v["video_name"] for v in videos] == ["v1", "v2"]
  expected = ids_v2.astype(np.int32)
  expected[0] = frame0
  expected[expected == 2] = 0
  np.testing.assert_array_equal(videos[1]["segmentations"], expected)

  # Training uses all splits; 'disjoint' drops the evaluation videos from it.
  lengths = [3, 4, 3, 4, 3]
  authors = pipeline.make_train_iterator(cfg, 2, 0, 1)
  assert authors.order.clips_per_epoch == sum(lengths) + 4 + 3
  cfg.ytvis_eval_subset = "disjoint"
  disjoint = pipeline.make_train_iterator(cfg, 2, 0, 1)
  n = disjoint.order.clips_per_epoch
  assert n == sum(lengths) - 4 - 3 + 4 + 3
  gids = set(disjoint.order.clips_at(0, n)[:, 0].tolist())
  assert gids == {0, 3, 4, 5, 6}  # train v0, v3, v4, then valid w, test x
  batch = next(disjoint)
  assert batch["video"].shape == (2, 3, 28, 42, 3)
  for x in (authors, disjoint):
    x.close()

  # Clips equal the evaluation path's frames (decoded records, resize_frames), across blocks:
  # with shuffle_buffer=2 each split's shard is a block (17, 4 and 3 clips a epoch), so batches
  # of 2 and of 5 straddle block and epoch boundaries; two hosts get the halves.
  cfg.update(ytvis_eval_subset="authors", shuffle_buffer=2)
  source = datasets.open_source(cfg)
  native = [v["video"] for split in ("train", "valid", "test")
            for v in source.read_eval_videos(split).as_numpy_iterator()]
  for batch_size in (2, 5):
    it = pipeline.make_train_iterator(cfg, batch_size, 0, 1, seed=3)
    assert len(it.order.epoch_blocks(0)) == 3
    clips = it.order.clips_at(0, 12 * batch_size)
    got = np.concatenate([next(it)["video"] for _ in range(12)])
    for (gid, t), clip in zip(clips, got):
      frames = native[gid]
      for i, f in enumerate(range(t - 1, t + 2)):
        expected = (frames_lib.resize_frame(frames[f], (28, 42)) if 0 <= f < len(frames)
                    else np.zeros((28, 42, 3), np.uint8))
        np.testing.assert_array_equal(clip[i], expected, err_msg=f"{gid} {t} {i}")
    it.close()
  hosts = [pipeline.make_train_iterator(cfg, 1, p, 2, seed=3) for p in (0, 1)]
  single = pipeline.make_train_iterator(cfg, 2, 0, 1, seed=3)
  for _ in range(14):
    np.testing.assert_array_equal(np.concatenate([next(h)["video"] for h in hosts]),
                                  next(single)["video"])
  for x in (*hosts, single):
    x.close()
  assert [v["video_name"] for v in pipeline.eval_videos(cfg)] == ["v1", "v2"]


def test_damaged_records_name_the_shard_and_the_fix(synthetic_dir, data_config, tmp_path):
  import glob
  import shutil
  (built,) = glob.glob(os.path.join(synthetic_dir, "synthetic", "*", "1.0.0"))
  for damage in ("cut inside a record", "cut at a record boundary", "missing"):
    data_dir = str(tmp_path / damage.replace(" ", "_"))
    copy = os.path.join(data_dir, os.path.relpath(built, synthetic_dir))
    shutil.copytree(built, copy)
    (shard,) = glob.glob(os.path.join(copy, "*-train.tfrecord-*"))
    data = open(shard, "rb").read()
    # TFRecord framing, read independently: uint64 length, 4-byte CRC, data, 4-byte CRC.
    first = 12 + int.from_bytes(data[:8], "little") + 4
    if damage == "missing":
      os.remove(shard)
      problem = r"is missing"
    else:
      with open(shard, "wb") as f:
        f.write(data[:first + 20] if damage == "cut inside a record" else data[:first])
      problem = (r"record 1 at byte %d needs" % first if damage == "cut inside a record"
                 else r"it holds 1 records but the dataset lists 6")
    cfg = data_config(data_dir=data_dir, synthetic=TINY_SYNTHETIC)
    with pytest.raises(OSError, match=rf"(?s)synthetic dataset at {copy} is damaged.*"
                       rf"{shard}.*{problem}.*Delete {copy}; it is rebuilt"):
      pipeline.make_train_iterator(cfg, 2, 0, 1)
    with pytest.raises(OSError, match="damaged"):
      next(pipeline.eval_videos(cfg))


def test_empty_data_dir_says_how_to_convert(data_config, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=rf"(?s){empty}/davis17/1.0.0 does not exist.*"
                     r"python tools/convert_davis.py --root .* --out " + str(empty)):
    pipeline.make_train_iterator(data_config(name="davis17", data_dir=str(empty)), 2, 0, 1)
  (empty / "davis17" / "1.0.0").mkdir(parents=True)  # a conversion killed before its index
  (empty / "davis17" / "1.0.0" / "dataset_info.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=r"is incomplete \(interrupted conversion\?\)"):
    next(pipeline.eval_videos(data_config(name="davis17", data_dir=str(empty))))


# -- corrupt records and frames are named -------------------------------------------


def _copy_synthetic(synthetic_dir, data_dir):
  import glob
  import shutil
  (built,) = glob.glob(os.path.join(synthetic_dir, "synthetic", "*", "1.0.0"))
  copy = os.path.join(data_dir, os.path.relpath(built, synthetic_dir))
  shutil.copytree(built, copy)
  return copy


def _flip_inside_record(shard, record, nbytes=8):
  """Flips bytes in the data of record `record` (size unchanged, so only the CRC notices)."""
  data = bytearray(open(shard, "rb").read())
  pos = 0
  for _ in range(record):  # TFRecord framing: uint64 length, 4-byte CRC, data, 4-byte CRC
    pos += 12 + int.from_bytes(data[pos:pos + 8], "little") + 4
  length = int.from_bytes(data[pos:pos + 8], "little")
  start = pos + 12 + length // 2
  data[start:start + nbytes] = bytes(b ^ 0xFF for b in data[start:start + nbytes])
  open(shard, "wb").write(bytes(data))


def test_bit_flipped_record_names_the_shard(synthetic_dir, data_config, tmp_path):
  import glob
  data_dir = str(tmp_path / "data")
  copy = _copy_synthetic(synthetic_dir, data_dir)
  (train,) = glob.glob(os.path.join(copy, "*-train.tfrecord-*"))
  (val,) = glob.glob(os.path.join(copy, "*-validation.tfrecord-*"))
  _flip_inside_record(train, 3)
  _flip_inside_record(val, 1)
  cfg = data_config(data_dir=data_dir, synthetic=TINY_SYNTHETIC)

  it = pipeline.make_train_iterator(cfg, 2, 0, 1, seed=0)  # the sizes still add up
  with pytest.raises(OSError) as info:
    for _ in range(40):  # > 1 epoch of 36 clips / 2
      next(it)
  message = str(info.value)
  assert "\n" not in message
  assert re.fullmatch(rf"The synthetic dataset at {re.escape(copy)} is damaged: shard "
                      rf"{re.escape(train)} is corrupt \(corrupted record at \d+\)\. "
                      rf"Delete {re.escape(copy)}; it is rebuilt on the next run\.",
                      message), message
  it.close()

  with pytest.raises(OSError, match=rf"damaged: shard {re.escape(val)} is corrupt "
                     r"\(corrupted record at \d+\)\. Delete"):
    list(pipeline.eval_videos(cfg))


def _jpeg_video(rng, t, h, w):
  from tests.data.raw_fixtures import smooth_frame
  return [convert.records.encode_jpeg(smooth_frame(rng, h, w)) for _ in range(t)]


def test_undecodable_frame_names_the_video_and_frame(data_config, tmp_path):
  """Records converted before frames were checked: TF's decoder fails, the error names where."""
  from solv_jax.data import records
  rng = np.random.default_rng(0)
  h, w = 24, 32
  good, bad = _jpeg_video(rng, 4, h, w), _jpeg_video(rng, 4, h, w)
  bad[2] = bad[2][:len(bad[2]) // 2]  # truncated, as copied byte for byte by the old converter

  def example(name, video):
    blank = records.encode_png(np.zeros((h, w), np.uint8))
    return {"video": video, "segmentations": [blank] * len(video),
            "metadata": {"video_name": name, "num_frames": len(video), "height": h,
                         "width": w, "num_instances": 0, "crop": np.zeros(4, np.int32)},
            "has_annotations": True}

  data_dir = str(tmp_path / "data")
  examples = [example("fine", good), example("broken", bad)]
  records.write_dataset(
      name="davis17", data_dir=data_dir, features=records.video_features(),
      splits={"train": (2, lambda: iter(examples)), "val": (2, lambda: iter(examples))},
      fingerprint={"test": 1})
  cfg = data_config(name="davis17", data_dir=data_dir, num_context=1)
  where = (rf"The davis17 dataset at {re.escape(data_dir)}/davis17/1.0.0 holds a frame that "
           r"does not decode: video 'broken' \((train|val) #1\) frame 2, in \S+davis17-\w+"
           r"\.tfrecord-\d+-of-\d+ \(.*\)\. Convert it again: python tools/convert_davis.py")
  it = pipeline.make_train_iterator(cfg, 2, 0, 1, seed=0)
  seen = 0
  with pytest.raises(OSError, match=where.replace("(train|val)", "train")) as info:
    for _ in range(8):  # one epoch: 8 clips / 2
      next(it)
      seen += 1
  assert "\n" not in str(info.value)
  assert seen < 4 and it.step == seen  # the failing step is not counted
  it.close()

  videos = pipeline.eval_videos(cfg)
  assert next(videos)["video_name"] == "fine"
  with pytest.raises(OSError, match=where.replace("(train|val)", "val")):
    next(videos)


# -- check_data: a missing dataset fails first, in one line -------------------------


def test_check_data_fails_fast_in_one_line(synthetic_dir, data_config, tmp_path, monkeypatch):
  missing = str(tmp_path / "no_such_dir")
  for name, tool in (("ytvis19", "convert_ytvis"), ("davis17", "convert_davis")):
    with pytest.raises(FileNotFoundError) as info:
      pipeline.check_data(data_config(name=name, data_dir=missing))
    message = str(info.value)
    assert "\n" not in message
    assert re.fullmatch(rf"{name} records not found: {missing}/{name}/1.0.0 does not exist\. "
                        rf"Create them with `python tools/{tool}.py --root /path/to/raw/{name} "
                        rf"--out {missing}`, or point config.data.data_dir at the directory "
                        r"given to --out\.", message), message
  with pytest.raises(FileNotFoundError, match=r"^MOVi-E not found at .*no_such_dir/movi_e/"):
    pipeline.check_data(data_config(name="movi_e", data_dir=missing))
  assert not os.path.exists(missing)

  # The embedded dataset is built on first use, not by the check.
  def no_build(*args, **kwargs):
    raise AssertionError("check_data must not build the synthetic dataset")
  monkeypatch.setattr(synthetic, "build", no_build)
  fresh = str(tmp_path / "fresh")
  summary = pipeline.check_data(data_config(data_dir=fresh, synthetic=TINY_SYNTHETIC))
  assert summary.startswith("synthetic data not built yet: it is built at "
                            f"{fresh}/synthetic/") and summary.endswith("on first use.")
  assert not os.path.exists(fresh)
  with pytest.raises(ValueError, match=r"no split 'nope'"):
    pipeline.check_data(data_config(data_dir=fresh, synthetic=TINY_SYNTHETIC,
                                    eval_split="nope"))
  # A copy written with another fingerprint (an older format) would be rebuilt: not built.
  import json
  stale = str(tmp_path / "stale")
  index_path = os.path.join(_copy_synthetic(synthetic_dir, stale), "solv_index.json")
  index = json.load(open(index_path))
  del index["fingerprint"]["shading"]  # as written before the shading option existed
  json.dump(index, open(index_path, "w"))
  assert pipeline.check_data(data_config(data_dir=stale, synthetic=TINY_SYNTHETIC)).startswith(
      "synthetic data not built yet")
  monkeypatch.undo()

  # Built: a summary of what will be read; a bad split is named.
  cfg = data_config(data_dir=synthetic_dir, synthetic=TINY_SYNTHETIC)
  assert re.fullmatch(r"synthetic at \S+/1\.0\.0: train train \(6 videos\), "
                      r"eval validation \(3 videos\)", pipeline.check_data(cfg))
  assert pipeline.check_data(cfg, "eval").endswith(": eval validation (3 videos)")
  cfg.train_split = "train+nope"
  with pytest.raises(ValueError, match=r"has no split 'nope'"):
    pipeline.check_data(cfg, "train")
  assert "eval validation" in pipeline.check_data(cfg, "eval")  # train splits not needed
  with pytest.raises(ValueError, match="mode must be"):
    pipeline.check_data(cfg, "trian")


def test_a_new_dataset_is_one_registered_object(synthetic_dir, data_config, monkeypatch):
  # A dataset's rules (where it lives, its evaluation subset, the training videos it holds
  # out) are its Dataset object: registering one is all the pipeline needs.
  from solv_jax.data.datasets import synthetic as synthetic_dataset

  class HeldOut(synthetic_dataset.Synthetic):
    name = "held_out"

    def eval_split_spec(self, data_config, source, split):
      return f"{split}[1:3]"

    def excluded_videos(self, data_config, source, split):
      return {1, 2} if split == "train" else set()

  monkeypatch.setitem(datasets.DATASETS, "held_out", HeldOut())
  cfg = data_config(data_dir=synthetic_dir, synthetic=TINY_SYNTHETIC, name="held_out",
                    eval_split="train", train_split="train", num_context=1)
  assert "held_out" in datasets.names()
  assert pipeline.check_data(cfg).endswith("train train (6 videos), eval train[1:3] (2 videos)")
  reference = [v["video_name"] for v in pipeline.eval_videos(
      data_config(data_dir=synthetic_dir, synthetic=TINY_SYNTHETIC, eval_split="train"))]
  assert [v["video_name"] for v in pipeline.eval_videos(cfg)] == reference[1:3]
  it = pipeline.make_train_iterator(cfg, 2, 0, 1)
  assert it.order.clips_per_epoch == 4 * TINY_SYNTHETIC["num_frames"]  # 6 videos less 2
  assert set(it.order.clips_at(0, it.order.clips_per_epoch)[:, 0].tolist()) == {0, 3, 4, 5}
  it.close()
  with pytest.raises(ValueError, match="config.data.name must be one of"):
    datasets.get("no_such_dataset")
