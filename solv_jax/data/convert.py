"""Converters from the official YouTube-VIS 2019 and DAVIS 2017 layouts (docs/METHOD.md §8).

Each raw video becomes one TFDS record with the MOVi-E feature names (see
records.py), so the same pipeline reads MOVi-E, YTVIS19 and DAVIS17:

  * frames keep their stored order (the JSON's `file_names` for YTVIS, sorted
    file names for DAVIS);
  * black borders are removed per video with the box found on frame 0
    (`border_box`, docs/METHOD.md §6), and the same box crops the annotations;
  * every frame and annotation is decoded in full, so a damaged file (e.g. a
    truncated JPEG) stops the conversion with an error naming the video and the
    file, and no dataset is left behind; frames that are already RGB JPEG and
    need no crop are then stored byte for byte (they decode as checked); others
    (grayscale, RGBA, palette, CMYK, cropped) are converted to RGB and
    re-encoded as JPEG;
  * annotation ids are the palette indices of the PNGs (0 background, DAVIS's
    void 255 kept as 255); YTVIS copies without Annotations PNGs get their masks
    from the RLEs of train.json, ids 1..K in the order of the annotation entries
    (later entries painted over earlier ones);
  * videos without annotations (YTVIS valid/test) get all-zero segmentations and
    has_annotations = False.

Split index i is the i-th video of the source listing (train.json order for
YTVIS, ImageSets order for DAVIS): the YTVIS evaluation subset "videos
[600:900] of train.json" is `train[600:900]`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from solv_jax.data import records

YTVIS_SPLITS = ("train", "valid", "test")
DAVIS_SPLITS = ("train", "val")
FORMAT_VERSION = 1  # bump when the stored content changes: forces a rebuild


# ----------------------------------------------------------------------------
# Border removal (docs/METHOD.md §6)


def border_box(frame: np.ndarray) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) black rows/cols to remove from a uint8 frame.

  A row (column) is black when its mean over the other axis and the channels is
  below 1; only runs touching the image edges are removed. If every row (or
  every column) is black, nothing is removed along that axis, so an all-black
  frame keeps its full size.
  """
  frame = np.asarray(frame)
  if frame.ndim == 2:
    frame = frame[..., None]
  rows = frame.mean(axis=(1, 2))  # (H,)
  cols = frame.mean(axis=(0, 2))  # (W,)

  def edge_runs(profile):
    bright = profile >= 1
    if not bright.any():
      return 0, 0
    return int(np.argmax(bright)), int(np.argmax(bright[::-1]))

  top, bottom = edge_runs(rows)
  left, right = edge_runs(cols)
  return top, bottom, left, right


def crop(array: np.ndarray, box: Sequence[int]) -> np.ndarray:
  """Removes `box` = (top, bottom, left, right) from the two leading axes."""
  top, bottom, left, right = box
  h, w = array.shape[:2]
  return array[top:h - bottom, left:w - right]


# ----------------------------------------------------------------------------
# One video -> one example


@dataclasses.dataclass
class VideoJob:
  """Everything needed to build one video's record."""
  name: str
  frames: list[str]                       # image paths, stored order
  mask_pngs: list[str] | None = None      # one PNG per frame, or
  mask_rles: list[list] | None = None     # per object: one RLE (or None) per frame
  where: str = ""                         # for error messages


class DamagedFileError(ValueError):
  """A raw frame or annotation that cannot be decoded."""


@contextlib.contextmanager
def _decoded(path: str, where: str, what: str):
  """Image.open(path), fully decoded; a file that does not decode is a one-line error.

  `what` names the file in the message ("frame 3", "annotation of frame 3").
  Decoding everything (not just the header) is what catches a truncated or
  corrupt JPEG here instead of in TensorFlow's decoder during training.
  """
  img = None
  try:
    img = Image.open(path)
    img.load()
  except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for bad data
    if img is not None:
      img.close()
    size = os.path.getsize(path) if os.path.exists(path) else 0
    raise DamagedFileError(
        f"{where}: {what} {path} ({size} bytes) cannot be decoded: {e}. The file is "
        "damaged (an interrupted download or copy?); restore it from the original "
        "archive and convert again.") from None
  with img:
    yield img


def _read_ids(path: str, where: str = "", what: str = "annotation") -> np.ndarray:
  """Object ids of an annotation PNG: palette indices (or gray values)."""
  with _decoded(path, where or path, what) as img:
    if img.mode in ("P", "L"):
      ids = np.array(img)
    elif img.mode in ("I", "I;16", "I;16B"):
      ids = np.array(img)
      if ids.max(initial=0) > 255:
        raise ValueError(f"{path}: object ids above 255 are not supported "
                         f"(max {ids.max()}).")
    else:
      raise ValueError(
          f"{path}: annotation PNGs must be palette ('P') or grayscale ('L') "
          f"images whose values are object ids; got mode {img.mode!r}.")
  return ids.astype(np.uint8)


def _decode_rle(rle: dict, height: int, width: int) -> np.ndarray:
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  if isinstance(rle.get("counts"), list):  # uncompressed COCO RLE
    rle = mask_utils.frPyObjects(rle, height, width)
  elif isinstance(rle.get("counts"), str):
    rle = dict(rle, counts=rle["counts"].encode("ascii"))
  with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation
    warnings.simplefilter("ignore", DeprecationWarning)
    mask = mask_utils.decode(rle)
  if mask.shape != (height, width):
    raise ValueError(f"RLE of size {mask.shape} does not match the frame size "
                     f"{(height, width)}.")
  return mask.astype(bool)


def video_example(job: VideoJob, jpeg_quality: int = 95) -> dict:
  """Reads one raw video (and its annotations) into a record dict."""
  where = job.where or job.name
  if not job.frames:
    raise ValueError(f"{where}: the video has no frames.")
  for path in job.frames:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{where}: frame {path} is listed but missing.")
  with _decoded(job.frames[0], where, "frame 0") as img0:
    size0 = img0.size  # (W, H)
    frame0 = np.asarray(img0.convert("RGB"))
  box = border_box(frame0)
  full = box == (0, 0, 0, 0)

  video = []
  for i, path in enumerate(job.frames):
    with _decoded(path, where, f"frame {i}") as img:
      if img.size != size0:
        raise ValueError(
            f"{where}: frame {i} ({path}) is {img.size[0]}x{img.size[1]} but "
            f"frame 0 is {size0[0]}x{size0[1]}; all frames of a video must "
            "have the same size.")
      if full and img.format == "JPEG" and img.mode == "RGB":
        with open(path, "rb") as f:
          video.append(f.read())
      else:
        rgb = crop(np.asarray(img.convert("RGB")), box)
        video.append(records.encode_jpeg(rgb, jpeg_quality))

  width, height = size0
  num_frames = len(job.frames)
  if job.mask_pngs is not None:
    if len(job.mask_pngs) != num_frames:
      raise ValueError(f"{where}: {len(job.mask_pngs)} annotations for "
                       f"{num_frames} frames.")
    ids = []
    for i, path in enumerate(job.mask_pngs):
      if not os.path.exists(path):
        raise FileNotFoundError(
            f"{where}: missing annotation {path} (one PNG per frame, same "
            "file name as the frame).")
      frame_ids = _read_ids(path, where, f"annotation of frame {i}")
      if frame_ids.shape != (height, width):
        raise ValueError(
            f"{where}: annotation {path} is {frame_ids.shape[1]}x"
            f"{frame_ids.shape[0]} but the frames are {width}x{height}.")
      ids.append(crop(frame_ids, box))
  elif job.mask_rles is not None:
    if len(job.mask_rles) > 254:
      raise ValueError(f"{where}: {len(job.mask_rles)} objects; ids must fit "
                       "in 1..254 (255 is void).")
    ids = []
    for t in range(num_frames):
      frame_ids = np.zeros((height, width), np.uint8)
      for k, per_frame in enumerate(job.mask_rles):
        if len(per_frame) != num_frames:
          raise ValueError(f"{where}: object {k + 1} has {len(per_frame)} "
                           f"segmentations for {num_frames} frames.")
        if per_frame[t] is not None:
          try:
            frame_ids[_decode_rle(per_frame[t], height, width)] = k + 1
          except ValueError as e:
            raise ValueError(f"{where}, frame {t}, object {k + 1}: {e}") from e
      ids.append(crop(frame_ids, box))
  else:
    ids = None

  h, w = crop(frame0, box).shape[:2]
  if ids is None:
    blank = records.encode_png(np.zeros((h, w), np.uint8))
    segmentations = [blank] * num_frames
    num_instances = 0
  else:
    segmentations = [records.encode_png(x) for x in ids]
    counts = sum(np.bincount(x.ravel(), minlength=256) for x in ids)
    counts[[0, records.VOID_ID]] = 0
    num_instances = int(np.count_nonzero(counts))
  return {
      "video": video,
      "segmentations": segmentations,
      "metadata": {
          "video_name": job.name,
          "num_frames": num_frames,
          "height": h,
          "width": w,
          "num_instances": num_instances,
          "crop": np.asarray(box, np.int32),
      },
      "has_annotations": ids is not None,
  }


def _frame_key(path: str):
  stem = os.path.splitext(os.path.basename(path))[0]
  return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _write(name, out, make_jobs: Callable[[str], list[VideoJob]], splits,
           fingerprint, jpeg_quality, workers, overwrite, description) -> str:
  path = records.dataset_dir(out, name, "1.0.0")
  if not overwrite and records.is_complete(path, fingerprint):
    return path  # already converted: nothing to read
  jobs_per_split = {s: make_jobs(s) for s in splits}  # validates the whole layout
  workers = workers or os.cpu_count() or 1

  def examples(jobs):
    return lambda: records.ordered_map(
        lambda job: video_example(job, jpeg_quality), jobs, workers)

  return records.write_dataset(
      name=name, data_dir=out, features=records.video_features(),
      splits={s: (len(j), examples(j)) for s, j in jobs_per_split.items()},
      fingerprint=fingerprint, description=description, overwrite=overwrite)


# ----------------------------------------------------------------------------
# YouTube-VIS 2019


def _ytvis_layout_error(root, split, missing):
  present = sorted(os.listdir(root)) if os.path.isdir(root) else "(no such directory)"
  return FileNotFoundError(
      f"{missing} not found. Expected the official YouTube-VIS 2019 layout: "
      f"{root}/{split}/JPEGImages/<video>/<frame>.jpg and "
      f"{root}/{split}/{split}.json (train also "
      f"{root}/train/Annotations/<video>/<frame>.png or RLE annotations in "
      f"train.json). Entries found in {root}: {present}. Pass --splits to "
      "convert only the splits you have.")


def _inside(name: str, listed_in: str, what: str) -> str:
  """A relative path from a dataset's own listing, refused (ValueError naming it and the file
  that lists it) if it is empty, absolute or climbs out with '..': a converter reads only
  below its --root."""
  parts = str(name).replace("\\", "/").split("/")
  if not str(name).strip() or os.path.isabs(name) or str(name).startswith("/") or ".." in parts:
    raise ValueError(f"{listed_in} lists {what} {name!r}, which is not a path inside the "
                     "dataset root (empty, absolute or with '..'); fix or remove that entry.")
  return name


def ytvis_jobs(root: str, split: str) -> list[VideoJob]:
  """Videos of one YTVIS19 split, in the JSON's order."""
  split_dir = os.path.join(root, split)
  images = os.path.join(split_dir, "JPEGImages")
  if not os.path.isdir(images):
    raise _ytvis_layout_error(root, split, images)
  json_path = next((p for p in (os.path.join(split_dir, f"{split}.json"),
                                os.path.join(root, f"{split}.json"))
                    if os.path.exists(p)), None)
  if json_path is None:
    raise _ytvis_layout_error(root, split, os.path.join(split_dir, f"{split}.json"))
  with open(json_path) as f:
    meta = json.load(f)
  if not isinstance(meta.get("videos"), list):
    raise ValueError(f"{json_path}: expected a COCO-video JSON with a 'videos' "
                     "list (entries with id, file_names, length, height, width).")

  # Only train is annotated in YTVIS19; valid/test are used as unlabeled frames.
  png_dir = os.path.join(split_dir, "Annotations")
  annotations = (meta.get("annotations") or []) if split == "train" else []
  use_png = split == "train" and os.path.isdir(png_dir)
  if split == "train" and not use_png and not annotations:
    raise FileNotFoundError(
        f"No annotations for YTVIS train: neither {png_dir}/<video>/<frame>.png "
        f"nor an 'annotations' list in {json_path}.")
  by_video = collections.defaultdict(list)
  for entry in annotations:
    by_video[entry["video_id"]].append(entry.get("segmentations") or [])

  jobs = []
  for v in meta["videos"]:
    file_names = v.get("file_names")
    if not file_names:
      raise ValueError(f"{json_path}: video id {v.get('id')} has no file_names.")
    file_names = [_inside(fn, json_path, f"for video id {v.get('id')} the frame")
                  for fn in file_names]
    name = file_names[0].split("/")[0]
    frames = [os.path.join(images, fn) for fn in file_names]
    job = VideoJob(name=name, frames=frames, where=f"YTVIS {split}/{name}")
    if use_png:
      job.mask_pngs = [
          os.path.join(png_dir, os.path.splitext(fn)[0] + ".png")
          for fn in file_names]
    elif annotations:
      job.mask_rles = [
          [None] * len(frames) if not segs else segs
          for segs in by_video.get(v["id"], [])]
    jobs.append(job)
  return jobs


def _convert(source: str, root: str, out: str, splits: Sequence[str],
             known: Sequence[str], jobs_fn, jpeg_quality: int, workers: int | None,
             overwrite: bool, description: str) -> str:
  """Shared driver of the converters: checks splits and root, then writes out/<source>."""
  label = {"ytvis19": "YTVIS", "davis17": "DAVIS"}[source]
  for s in splits:
    if s not in known:
      raise ValueError(f"Unknown {label} split {s!r}; choose from {known}.")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{label} root {root} does not exist.")
  fingerprint = {"source": source, "splits": list(splits),
                 "jpeg_quality": jpeg_quality, "format": FORMAT_VERSION}
  return _write(source, out, lambda s: jobs_fn(root, s), splits, fingerprint,
                jpeg_quality, workers, overwrite, description)


def convert_ytvis(root: str, out: str, splits: Sequence[str] = YTVIS_SPLITS,
                  jpeg_quality: int = 95, workers: int | None = None,
                  overwrite: bool = False) -> str:
  """Converts YTVIS19 at `root` into the TFDS dataset `out/ytvis19/1.0.0`."""
  return _convert("ytvis19", root, out, splits, YTVIS_SPLITS, ytvis_jobs, jpeg_quality,
                  workers, overwrite, "YouTube-VIS 2019 converted by solv_jax")


# ----------------------------------------------------------------------------
# DAVIS 2017


def davis_jobs(root: str, split: str) -> list[VideoJob]:
  """Videos of one DAVIS17 split (480p), in ImageSets order."""
  images = os.path.join(root, "JPEGImages", "480p")
  masks = os.path.join(root, "Annotations", "480p")
  listing = os.path.join(root, "ImageSets", "2017", f"{split}.txt")
  missing = [p for p in (images, masks, listing) if not os.path.exists(p)]
  if missing:
    present = sorted(os.listdir(root)) if os.path.isdir(root) else "(no such directory)"
    raise FileNotFoundError(
        f"Not a DAVIS 2017 root: missing {missing}. Expected "
        f"{root}/JPEGImages/480p/<video>/00000.jpg, "
        f"{root}/Annotations/480p/<video>/00000.png and "
        f"{root}/ImageSets/2017/{{train,val}}.txt. Entries found in {root}: "
        f"{present}.")
  with open(listing) as f:
    names = [_inside(line.strip(), listing, "the video") for line in f if line.strip()]
  jobs = []
  for name in names:
    video_dir = os.path.join(images, name)
    if not os.path.isdir(video_dir):
      raise FileNotFoundError(f"DAVIS {split}: {listing} lists {name} but "
                              f"{video_dir} does not exist.")
    frames = sorted((os.path.join(video_dir, f) for f in os.listdir(video_dir)
                     if f.lower().endswith((".jpg", ".jpeg", ".png"))),
                    key=_frame_key)
    pngs = [os.path.join(masks, name, os.path.splitext(os.path.basename(p))[0]
                         + ".png") for p in frames]
    jobs.append(VideoJob(name=name, frames=frames, mask_pngs=pngs,
                         where=f"DAVIS {split}/{name}"))
  return jobs


def convert_davis(root: str, out: str, splits: Sequence[str] = DAVIS_SPLITS,
                  jpeg_quality: int = 95, workers: int | None = None,
                  overwrite: bool = False) -> str:
  """Converts DAVIS17 (480p) at `root` into `out/davis17/1.0.0`."""
  return _convert("davis17", root, out, splits, DAVIS_SPLITS, davis_jobs, jpeg_quality,
                  workers, overwrite, "DAVIS 2017 (480p) converted by solv_jax")


# ----------------------------------------------------------------------------
# Command lines (tools/convert_{ytvis,davis}.py)


def _main(argv, convert, default_splits, what):
  parser = argparse.ArgumentParser(
      description=f"Convert {what} into a TFDS dataset read by solv_jax.")
  parser.add_argument("--root", required=True, help=f"raw {what} directory")
  parser.add_argument("--out", required=True, help="TFDS data_dir to write into")
  parser.add_argument("--splits", default=",".join(default_splits),
                      help="comma-separated splits (default: %(default)s)")
  parser.add_argument("--jpeg_quality", type=int, default=95,
                      help="quality of re-encoded (cropped/converted) frames")
  parser.add_argument("--workers", type=int, default=None,
                      help="decoding threads (default: all cores)")
  parser.add_argument("--overwrite", action="store_true",
                      help="rebuild even if a complete conversion exists")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  splits = [s for s in args.splits.split(",") if s]
  try:
    path = convert(args.root, args.out, splits=splits,
                   jpeg_quality=args.jpeg_quality, workers=args.workers,
                   overwrite=args.overwrite)
  except (OSError, ValueError) as e:  # bad layout or a damaged file: say which, in one line
    sys.exit(f"{parser.prog}: error: {e} The conversion stopped; {args.out} holds no "
             "partial dataset.")
  index = records.read_index(path)
  for split, entries in index["splits"].items():
    print(f"{split}: {len(entries['num_frames'])} videos, "
          f"{sum(entries['num_frames'])} frames")
  print(f"Dataset at {path}")
  return path


def ytvis_main(argv=None):
  return _main(argv, convert_ytvis, YTVIS_SPLITS, "YouTube-VIS 2019")


def davis_main(argv=None):
  return _main(argv, convert_davis, DAVIS_SPLITS, "DAVIS 2017")
