"""Tiny raw datasets in the official layouts, written independently of solv_jax."""

import json
import os

import numpy as np
from PIL import Image

PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [77] * (3 * 251)


def smooth_frame(rng, h, w):
  """A JPEG-friendly frame: smooth colour ramps plus a bright square."""
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  c = rng.uniform(40, 200, size=(3, 3))
  img = c[:, 0] + c[:, 1] * x[..., None] / 2 + c[:, 2] * y[..., None] / 2
  return np.clip(img, 20, 250).astype(np.uint8)


def save_palette_png(path, ids):
  img = Image.fromarray(ids.astype(np.uint8), mode="P")
  img.putpalette(PALETTE)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.save(path)


def save_jpeg(path, frame, quality=95):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(frame).save(path, format="JPEG", quality=quality)


def object_masks(t, h, w, k):
  """Deterministic id map for frame t: k rectangles that move right."""
  ids = np.zeros((h, w), np.uint8)
  for j in range(1, k + 1):
    y0 = (4 * j) % max(h - 6, 1)
    x0 = (3 * t + 5 * j) % max(w - 6, 1)
    ids[y0:y0 + 6, x0:x0 + 6] = j
  return ids


def make_ytvis(root, spec, *, with_pngs=True, rle=None, seed=0):
  """Writes root/{split}/JPEGImages, {split}.json[, Annotations].

  spec: split -> list of (name, num_frames, (h, w), num_objects).
  Frame files are numbered 00000, 00005, ... like YTVIS. Returns
  {split: {name: (frames (T,H,W,3) uint8 as written, ids (T,H,W) or None)}}.
  rle: None or 'mixed' (train.json annotations with compressed and raw RLEs).
  """
  from pycocotools import mask as mask_utils
  rng = np.random.default_rng(seed)
  truth = {}
  for split, videos in spec.items():
    meta = {"videos": [], "annotations": [] if split == "train" else None,
            "categories": [{"id": 1, "name": "thing"}]}
    truth[split] = {}
    for vid, (name, T, (h, w), k) in enumerate(videos, start=1):
      names = [f"{name}/{5 * t:05d}.jpg" for t in range(T)]
      frames = np.stack([smooth_frame(rng, h, w) for _ in range(T)])
      for fn, f in zip(names, frames):
        save_jpeg(os.path.join(root, split, "JPEGImages", fn), f)
      meta["videos"].append({"id": vid, "file_names": names, "length": T,
                             "height": h, "width": w})
      ids = None
      if split == "train":
        ids = np.stack([object_masks(t, h, w, k) for t in range(T)])
        if with_pngs:
          for fn, m in zip(names, ids):
            save_palette_png(os.path.join(
                root, split, "Annotations", fn.replace(".jpg", ".png")), m)
        if rle:
          for j in range(1, k + 1):
            segs = []
            for t in range(T):
              m = ids[t] == j
              if t == 1 and j == 1:
                segs.append(None)  # object 1 unannotated in frame 1
                ids[t][m] = 0
              elif j % 2:  # compressed RLE, counts as str
                enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                segs.append({"counts": enc["counts"].decode(), "size": [h, w]})
              else:  # uncompressed RLE: run lengths over column-major pixels
                flat = m.T.reshape(-1).astype(np.int64)
                change = np.flatnonzero(np.diff(flat)) + 1
                bounds = np.concatenate([[0], change, [flat.size]])
                counts = np.diff(bounds).tolist()
                if flat[0] == 1:
                  counts = [0] + counts
                segs.append({"counts": counts, "size": [h, w]})
            meta["annotations"].append(
                {"video_id": vid, "category_id": 1, "segmentations": segs,
                 "id": len(meta["annotations"]) + 1})
      truth[split][name] = (frames, ids)
    with open(os.path.join(root, split, f"{split}.json"), "w") as f:
      json.dump(meta, f)
  return truth


def make_davis(root, spec, seed=1):
  """root/{JPEGImages,Annotations}/480p/<v>/%05d.*, ImageSets/2017/<split>.txt.

  spec: split -> list of (name, num_frames, (h, w), num_objects); the txt files
  list videos in the given order. Annotations include void (255) pixels.
  """
  rng = np.random.default_rng(seed)
  truth = {}
  os.makedirs(os.path.join(root, "ImageSets", "2017"), exist_ok=True)
  for split, videos in spec.items():
    with open(os.path.join(root, "ImageSets", "2017", f"{split}.txt"), "w") as f:
      f.write("\n".join(v[0] for v in videos) + "\n")
    for name, T, (h, w), k in videos:
      frames = np.stack([smooth_frame(rng, h, w) for _ in range(T)])
      ids = np.stack([object_masks(t, h, w, k) for t in range(T)])
      ids[:, :, -2:] = 255  # a void stripe on the right
      for t in range(T):
        save_jpeg(os.path.join(root, "JPEGImages", "480p", name, f"{t:05d}.jpg"),
                  frames[t])
        save_palette_png(os.path.join(root, "Annotations", "480p", name,
                                      f"{t:05d}.png"), ids[t])
      truth[name] = (frames, ids)
  return truth
