"""What a segmentation writes: per-frame mask PNGs, an overlay GIF and MP4, slots.npz and
summary.json (the formats are in solv_jax/segment.py's documentation).

  write_outputs(out_dir, video, ids, fps, model_info)          # frames and ids in memory
  write_frames(out_dir, info, pairs, (T, H, W), fps, ...)      # (frame, ids) one at a time

`check_out_dir` is the rule both command lines apply to --out before any long work: a new or
empty folder, or --overwrite.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Iterable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from solv_jax import files, video_io, visualize
from solv_jax.video_io import first_lines

GIF_MAX_SIDE = 480
GIF_MAX_FRAMES = 200  # a longer video's GIF shows every k-th frame (k = overlay_gif_stride)
DEFAULT_FPS = 8.0


class OutputError(ValueError):
  """An output folder that cannot be written as asked; the message names it."""


def mask_image(ids: np.ndarray) -> Image.Image:
  """(H, W) ids >= 0 -> PNG-ready image: palette (mode P) below 256, else 16-bit greyscale."""
  if ids.max(initial=0) < 256:
    image = Image.fromarray(ids.astype(np.uint8))
    image.putpalette(np.resize(visualize.PALETTE, (256, 3)).reshape(-1).tolist())
    return image
  return Image.fromarray(ids.astype(np.uint16))


def _gif_size(h: int, w: int) -> tuple[int, int]:
  scale = min(1.0, GIF_MAX_SIDE / max(h, w))
  return max(1, round(w * scale)), max(1, round(h * scale))  # PIL (width, height)


def _mp4_writer(path: str, h: int, w: int, fps: float):
  try:
    import imageio_ffmpeg
  except ImportError:
    print("Note: imageio-ffmpeg is not installed, so no overlay.mp4 "
          "(pip install imageio-ffmpeg).", flush=True)
    return None
  writer = imageio_ffmpeg.write_frames(path, (w + w % 2, h + h % 2), fps=fps, codec="libx264",
                                       pix_fmt_out="yuv420p", macro_block_size=1,
                                       ffmpeg_log_level="error")
  writer.send(None)
  return writer


def _mp4_send(writer, path: str, frame: np.ndarray | None):
  """Sends a frame (None: closes); on an ffmpeg failure warns, removes the file, -> None."""
  try:
    if frame is None:
      writer.close()
    else:
      writer.send(np.ascontiguousarray(frame))
    return writer
  except Exception as e:  # noqa: BLE001 - the PNGs and the GIF are the main outputs
    print(f"Warning: writing {path!r} failed ({first_lines(e)}); no MP4.", file=sys.stderr)
    writer.close()
    if os.path.exists(path):
      os.remove(path)
    return None


SLOT_KEYS = ("slots", "valid", "track_ids", "masks")  # what slots.npz holds from the segmenter


# The outputs a segmentation wrote in its folder (relative paths): what a later run with
# --overwrite may replace. Files of the output names that it does not list are not ours.
MANIFEST = ".solv_jax_segment.json"
_OUTPUT_NAME = re.compile(r"masks/\d{6}\.png|overlay\.(gif|mp4)|slots\.npz|summary\.json")


def _listed(out_dir: str) -> set[str]:
  manifest = files.read_json(os.path.join(out_dir, MANIFEST)) or {}
  return {f for f in manifest.get("files", []) if isinstance(f, str) and _OUTPUT_NAME.fullmatch(f)}


def _present_outputs(out_dir: str) -> list[str]:
  """The files in out_dir that have the name of an output (masks/NNNNNN.png, overlay.*, ...)."""
  names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
  masks = os.path.join(out_dir, "masks")
  names += ["masks/" + n for n in (os.listdir(masks) if os.path.isdir(masks) else [])]
  return sorted(n for n in names if _OUTPUT_NAME.fullmatch(n))


def check_out_dir(out_dir: str, overwrite: bool, *, manifest: bool = False) -> None:
  """Refuses an --out that is a file, or a non-empty folder unless overwrite (OutputError).

  With overwrite, a symbolic link is refused (what is replaced must be where the user looks),
  and with `manifest` (segment's outputs) so is a folder holding files of the output names
  that no earlier run listed in MANIFEST: --overwrite replaces only what this command wrote."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise OutputError(f"--out {out_dir!r} exists and is not a folder.")
  existing = os.path.abspath(out_dir)
  while not os.path.exists(existing):  # the folder, or the nearest one above it to create it in
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK):
    raise OutputError(f"--out {out_dir!r} cannot be written ({existing!r} is read-only for this "
                      "user or mount); choose a writable folder.")
  entries = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
  if entries and not overwrite:
    raise OutputError(
        f"--out {out_dir!r} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); give a "
        "new folder, or --overwrite to replace this command's earlier outputs there.")
  if entries and os.path.islink(out_dir.rstrip(os.sep)):
    raise OutputError(
        f"--out {out_dir!r} is a symbolic link to {os.path.realpath(out_dir)!r}; --overwrite "
        "replaces files only in a folder given as itself: pass the target folder.")
  if entries and manifest:
    listed = _listed(out_dir)
    foreign = [n for n in _present_outputs(out_dir) if n not in listed]
    if foreign:
      raise OutputError(
          f"--out {out_dir!r} holds {len(foreign)} file(s) with this command's output names "
          f"that no earlier run of it wrote there (e.g. {foreign[0]!r}; its runs list their "
          f"outputs in {MANIFEST}): --overwrite replaces only those. Move them, or give a new "
          "folder.")


def write_outputs(out_dir: str, video: video_io.Video, ids: np.ndarray, fps: float,
                  model_info: dict | None = None, progress: bool = True,
                  slots: dict | None = None) -> dict:
  """Writes masks/*.png, overlay.gif, overlay.mp4 (if possible), slots.npz (when `slots`, the
  segmenter's outputs, are given) and summary.json; returns the summary. Earlier outputs of this
  function in out_dir are replaced (the command line refuses a non-empty --out before that
  unless --overwrite)."""
  return write_frames(out_dir, video.info, zip(video.frames, ids), ids.shape, fps, model_info,
                      progress, slots)


def write_frames(out_dir: str, info: dict, frames_and_ids: Iterable, shape: tuple[int, int, int],
                 fps: float, model_info: dict | None = None, progress: bool = True,
                 slots: dict | None = None) -> dict:
  """`write_outputs` from (frame (H, W, 3) uint8, ids (H, W)) pairs given one at a time, the
  video's `shape` (T, H, W) and its `info`: memory holds one frame and the GIF's (at most
  GIF_MAX_FRAMES frames of GIF_MAX_SIDE px), whatever the video's length."""

  t_len, h, w = shape
  gif_stride = -(-t_len // GIF_MAX_FRAMES)  # every frame up to GIF_MAX_FRAMES, then every k-th
  mask_dir = os.path.join(out_dir, "masks")
  os.makedirs(mask_dir, exist_ok=True)
  # What this run writes, listed before it writes (an interrupted run's files are listed too);
  # an earlier run's outputs are removed first (a longer video's masks, an MP4 or slots.npz
  # not written now would otherwise mix in); nothing that no run listed is touched.
  planned = ([f"masks/{t:06d}.png" for t in range(t_len)] + ["overlay.gif", "overlay.mp4",
             "summary.json"] + (["slots.npz"] if slots is not None else []))
  earlier = _listed(out_dir)
  if earlier and progress:
    print(f"Replacing the outputs of an earlier run in {out_dir} ({len(earlier)} files listed "
          f"in {MANIFEST}).", flush=True)
  for name in sorted(earlier):
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(out_dir, name))
  files.write_json(os.path.join(out_dir, MANIFEST), {"tool": "python -m solv_jax.segment",
                                                     "files": sorted(set(planned))})
  slots_file = None
  if slots is not None:
    slots_file = "slots.npz"
    _write_slots(os.path.join(out_dir, slots_file), slots, t_len)

  mp4_path = os.path.join(out_dir, "overlay.mp4")
  mp4 = _mp4_writer(mp4_path, h, w, fps)
  gif_frames, per_frame = [], []
  pixels, frames_of = {}, {}
  t = -1
  for t, (frame, ids_t) in enumerate(tqdm(frames_and_ids, desc="write", unit="frame",
                                          total=t_len, disable=not progress)):
    if t >= t_len:
      raise ValueError(f"More than the {t_len} frames of shape {shape} to write.")
    file = f"masks/{t:06d}.png"
    with files.replacing(os.path.join(out_dir, file)) as tmp:
      mask_image(ids_t).save(tmp, format="PNG")
    counts = np.bincount(ids_t.reshape(-1))
    present = {int(i): int(c) for i, c in enumerate(counts) if c}
    for i, c in present.items():
      pixels[i] = pixels.get(i, 0) + c
      frames_of.setdefault(i, []).append(t)
    row = {"index": t, "mask": file, "pixels": {str(i): c for i, c in present.items()}}
    if info.get("frame_files"):
      row["source"] = info["frame_files"][t]
    per_frame.append(row)
    tinted = visualize.overlay(frame, ids_t)
    if t % gif_stride == 0:
      gif_frames.append(Image.fromarray(tinted).resize(_gif_size(h, w), Image.BILINEAR))
    if mp4 is not None:
      mp4 = _mp4_send(mp4, mp4_path, np.pad(tinted, ((0, h % 2), (0, w % 2), (0, 0)),
                                            mode="edge"))
  if t + 1 != t_len:
    raise ValueError(f"{t + 1} frames to write where shape {shape} says {t_len}.")
  if mp4 is not None:
    mp4 = _mp4_send(mp4, mp4_path, None)
  gif_path = os.path.join(out_dir, "overlay.gif")
  with files.replacing(gif_path) as tmp:
    gif_frames[0].save(tmp, format="GIF", save_all=True, append_images=gif_frames[1:],
                       duration=int(round(1000 * gif_stride / fps)), loop=0)

  objects = [dict(id=i, num_frames=len(frames_of[i]), first_frame=frames_of[i][0],
                  last_frame=frames_of[i][-1], pixels=pixels[i], frames=frames_of[i])
             for i in sorted(pixels)]
  summary = {
      "input": dict(info),
      "model": model_info or {},
      "fps": fps,
      "outputs": {
          "masks": "masks/",
          "mask_format": ("one PNG per frame at the input's size, pixel value = track id; "
                          "8-bit palette (mode P) if every id < 256, else 16-bit greyscale"),
          "overlay_gif": "overlay.gif",
          "overlay_gif_size": list(_gif_size(h, w))[::-1],
          "overlay_gif_frames": len(gif_frames),
          "overlay_gif_stride": gif_stride,
          "overlay_mp4": "overlay.mp4" if mp4 is not None else None,
          "slots": slots_file,
          "slots_format": (None if slots_file is None else
                           "npz: slots (T, K, D_slot) float32 merged slots; valid (T, K) bool; "
                           "track_ids (T, K) int32, -1 where not valid; masks (T, K, h, w) "
                           "float32 decoder alpha masks on the token grid; token_grid (2,)"),
      },
      "num_objects": len(objects),
      "objects": objects,
      "frames": per_frame,
  }
  files.write_json(os.path.join(out_dir, "summary.json"), summary, indent=1)
  return summary


def _write_slots(path: str, out: dict, num_frames: int) -> None:
  """slots.npz from the segmenter's outputs (SLOT_KEYS, each (T, K, ...)); see the module doc."""
  missing = [k for k in SLOT_KEYS if k not in out]
  if missing:
    raise KeyError(f"The segmenter's outputs lack {missing} (have {sorted(out)}); cannot write "
                   f"{path}.")
  arrays = {"slots": np.asarray(out["slots"], np.float32),
            "valid": np.asarray(out["valid"], bool),
            "track_ids": np.asarray(out["track_ids"], np.int32),
            "masks": np.asarray(out["masks"], np.float32)}
  for key, value in arrays.items():
    if value.shape[0] != num_frames or value.shape[:2] != arrays["valid"].shape:
      raise ValueError(f"Segmenter output {key!r} has shape {value.shape}; expected "
                       f"({num_frames}, K, ...) like valid {arrays['valid'].shape}.")
  with files.replacing(path) as tmp:
    np.savez(tmp, **arrays, token_grid=np.asarray(arrays["masks"].shape[2:], np.int32))
