"""Segments a video file or a folder of frames with a trained SOLV model.

  python -m solv_jax.segment --checkpoint=runs/ytvis19 --video=clip.mp4 --out=seg/clip
  python -m solv_jax.segment --checkpoint=model.npz --video=frames/ --out=seg/x --max_frames=200
  python -m solv_jax.segment --checkpoint=runs/ytvis19 --video=clip.mp4 --out=seg/clip \
      --save_slots --overwrite

--checkpoint is a training workdir (config.json + its newest checkpoint; DINOv2 from the
config's encoder_weights, or the seeded random init) or an export .npz (tools/export_numpy.py,
DINOv2 included unless exported with --no-encoder). --video is a video file (mp4, webm, gif,
anything imageio reads; mp4/webm go through imageio-ffmpeg) or a folder of .jpg/.jpeg/.png/
.bmp/.webp frames, taken in name order with digit runs compared as numbers (frame2 before
frame10). Every frame is converted to RGB: greyscale is repeated over the channels, an alpha
channel is dropped, palette images are expanded, 16-bit frames are scaled to 8 bits. All frames
of a folder must have the same size; a folder of mixed sizes is an error (it usually mixes
videos), naming the first frame that differs.

The model runs at the resolution it was trained at (config.data.resolution: its decoder position
embedding and G_abs are learned per token of that grid), through `evaluate.VideoSegmenter`
(the evaluation protocol, SPEC §7), and its masks are upsampled to the video's own size with
`metrics.masks_to_ids`. --out must be a new or empty folder; a non-empty one is refused unless
--overwrite is given, which replaces this command's outputs there (stale masks/NNNNNN.png,
overlay.*, summary.json, slots.npz) and leaves any other file alone. Written under --out:
  masks/000000.png ...  one per frame at the video's size; pixel value = track id (0, 1, ...).
                        8-bit palette PNGs (mode P, colours of visualize.PALETTE) when every id
                        is below 256, else 16-bit greyscale; np.asarray(PIL.Image.open(f))
                        gives the ids either way.
  slots.npz             with --save_slots, the segmenter's per-frame outputs (K slots a frame):
                        slots (T, K, D_slot) float32, the merged slots that the decoder reads;
                        valid (T, K) bool, False for slots merging removed; track_ids (T, K)
                        int32, the track id of each slot (the PNGs' pixel values), -1 where not
                        valid; masks (T, K, h, w) float32, the decoder's alpha masks on the
                        token grid (h, w) = token_grid, before upsampling; token_grid (2,).
                        Rows where valid is False hold whatever the decoder left: ignore them.
  overlay.gif           the frames tinted with their track colours, longer side at most
                        480 px (GIF_MAX_SIDE), looping.
  overlay.mp4           the same at the video's size (padded to even sizes), H.264, when
                        imageio-ffmpeg is installed.
  summary.json          input (path, kind, frames, size, fps, frame files), checkpoint, model,
                        outputs (each file written and its format; "slots" is "slots.npz" with
                        --save_slots, else null), objects (per track id: frames it covers, pixel
                        count) and per-frame pixel counts per id.
SOLV has no background class: every pixel goes to some slot, so the background is one (or a
few) of the track ids too. Native frames are held in memory; use --max_frames for long videos.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf only resizes frames here

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
GIF_MAX_SIDE = 480
DEFAULT_FPS = 8.0
_PREPROCESS_CHUNK = 32  # frames resized per call (bounds the float32 copy at native size)


class SegmentError(ValueError):
  """An input the command cannot use; the message names the path and the problem."""


@dataclasses.dataclass
class Video:
  frames: np.ndarray  # (T, H, W, 3) uint8 at the input's own size
  info: dict          # JSON-able: path, kind, num_frames, height, width, fps, ...


@dataclasses.dataclass
class LoadedModel:
  config: object      # ml_collections.ConfigDict of the run
  segmenter: object   # evaluate.VideoSegmenter
  info: dict          # JSON-able: checkpoint path, kind, step, model summary


# ----------------------------------------------------------------------------------------------
# Reading the input.
# ----------------------------------------------------------------------------------------------
def to_rgb(image, where: str) -> np.ndarray:
  """A PIL image or an array (H, W), (H, W, 1|2|3|4) -> (H, W, 3) uint8.

  Greyscale is repeated over the channels, alpha dropped, palettes expanded, 16-bit and float
  ([0, 1]) values scaled to 8 bits. `where` names the frame in errors.
  """
  if isinstance(image, Image.Image):
    if image.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
      image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA"
                            else "RGB")
    image = np.asarray(image)
  x = np.asarray(image)
  if x.ndim == 3 and x.shape[-1] in (1, 2):  # grey (+ alpha)
    x = x[..., 0]
  if x.ndim == 2:
    x = np.repeat(x[..., None], 3, axis=-1)
  elif x.ndim == 3 and x.shape[-1] == 4:
    x = x[..., :3]
  if x.ndim != 3 or x.shape[-1] != 3 or 0 in x.shape:
    raise SegmentError(f"{where}: expected an image (H, W) or (H, W, 1-4 channels), got an "
                       f"array of shape {x.shape}.")
  if x.dtype == np.uint8:
    return x
  if x.dtype == np.bool_:
    return x.astype(np.uint8) * 255
  if np.issubdtype(x.dtype, np.integer):  # 16-bit PNG or ffmpeg rgb48 -> 8 bits
    top = 65535 if x.dtype.itemsize == 2 or x.max(initial=0) > 255 else 255
    return np.round(np.clip(x, 0, top).astype(np.float64) * (255 / top)).astype(np.uint8)
  if np.issubdtype(x.dtype, np.floating):
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
  raise SegmentError(f"{where}: unsupported pixel type {x.dtype}.")


def _require(path: str, flag: str, expected: str) -> None:
  if not os.path.exists(path):
    raise SegmentError(f"{flag} {path!r} does not exist (expected {expected}).")


_CHECKPOINT_KINDS = "a training workdir or an export .npz from tools/export_numpy.py"


def _natural_key(name: str):
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _read_folder(path: str, max_frames: int | None) -> Video:
  names = sorted((n for n in os.listdir(path) if not n.startswith(".")
                  and os.path.isfile(os.path.join(path, n))), key=_natural_key)
  frames_names = [n for n in names if n.lower().endswith(FRAME_EXTENSIONS)]
  if not frames_names:
    other = f" (it holds {len(names)} other files, e.g. {names[0]!r})" if names else ""
    raise SegmentError(f"--video {path!r} is a folder without frames: no "
                       f"{'/'.join(FRAME_EXTENSIONS)} files{other}.")
  total = len(frames_names)
  if max_frames:
    frames_names = frames_names[:max_frames]
  frames, modes, first = [], {}, None
  for name in tqdm(frames_names, desc="read frames", unit="frame"):
    file = os.path.join(path, name)
    try:
      with Image.open(file) as im:
        im = ImageOps.exif_transpose(im)  # as displayed
        modes[im.mode] = modes.get(im.mode, 0) + 1
        frame = to_rgb(im, file)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
      raise SegmentError(f"Cannot read frame {file!r}: {e}") from e
    if first is None:
      first = (name, frame.shape[:2])
    elif frame.shape[:2] != first[1]:
      (h, w), (h2, w2) = first[1], frame.shape[:2]
      raise SegmentError(
          f"--video {path!r} mixes frame sizes: {first[0]!r} is {h}x{w} (HxW) but {name!r} is "
          f"{h2}x{w2}. A folder is one video; resize its frames to one size first.")
    frames.append(frame)
  frames = np.stack(frames)
  return Video(frames, dict(path=os.path.abspath(path), kind="frames",
                            num_frames=len(frames), total_frames=total,
                            height=int(frames.shape[1]), width=int(frames.shape[2]), fps=None,
                            source_modes=modes, frame_files=frames_names))


def _first_lines(e: Exception) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  if not lines:
    return type(e).__name__
  return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def _read_file(path: str, max_frames: int | None) -> Video:
  import imageio.v3 as iio
  fps = None
  frames = []
  try:
    try:
      meta = iio.immeta(path)
      if meta.get("fps"):
        fps = float(meta["fps"])
      elif meta.get("duration"):  # GIF: milliseconds per frame
        fps = 1000.0 / float(meta["duration"])
    except Exception:  # noqa: BLE001 - metadata is optional; reading the frames decides
      pass
    with tqdm(desc="read frames", unit="frame", total=max_frames or None) as bar:
      for i, frame in enumerate(iio.imiter(path)):
        if max_frames and i >= max_frames:
          break
        frames.append(to_rgb(frame, f"{path!r} frame {i}"))
        bar.update()
  except SegmentError:
    raise
  except Exception as e:  # noqa: BLE001 - imageio/ffmpeg/PIL raise many types for bad files
    hint = ""
    if path.lower().endswith((".mp4", ".webm", ".mov", ".mkv", ".avi")):
      try:
        import imageio_ffmpeg  # noqa: F401
      except ImportError:
        hint = " (reading this format needs imageio-ffmpeg: pip install imageio-ffmpeg)"
    raise SegmentError(f"Cannot read video {path!r}: it is unreadable or corrupt "
                       f"({type(e).__name__}: {_first_lines(e)}){hint}.") from e
  if not frames:
    raise SegmentError(f"Cannot read video {path!r}: it holds no frames.")
  sizes = {f.shape[:2] for f in frames}
  if len(sizes) > 1:
    raise SegmentError(f"Video {path!r} changes frame size ({sorted(sizes)}); re-encode it at "
                       "one size.")
  frames = np.stack(frames)
  return Video(frames, dict(path=os.path.abspath(path), kind="video", num_frames=len(frames),
                            height=int(frames.shape[1]), width=int(frames.shape[2]), fps=fps))


def read_video(path: str, max_frames: int | None = None) -> Video:
  """A video file or a folder of frames -> Video with (T, H, W, 3) uint8 frames (see the module
  doc for what is accepted). max_frames keeps the first N frames (None or 0: all)."""
  _require(path, "--video", "a video file or a folder of frames")
  if max_frames is not None and max_frames < 0:
    raise SegmentError(f"--max_frames must be >= 0, got {max_frames}.")
  if os.path.isdir(path):
    return _read_folder(path, max_frames)
  return _read_file(path, max_frames)


# ----------------------------------------------------------------------------------------------
# The model.
# ----------------------------------------------------------------------------------------------
def load_model(checkpoint: str, resolution: tuple[int, int] | None = None, *,
               xla_flags: bool = False) -> LoadedModel:
  """A workdir or an export .npz -> LoadedModel whose VideoSegmenter holds device params.

  resolution: only a check; SOLV runs at the resolution it was trained at (its decoder
  position embedding and G_abs are learned per token), so another one is an error.
  xla_flags: apply the run's config.xla_flags (sharding.apply_xla_flags) before JAX opens a
  backend, as the command line does; if one is open already (e.g. in a notebook), a warning.
  """
  import jax
  from solv_jax import evaluate, export, sharding
  from solv_jax.models import build

  _require(checkpoint, "--checkpoint", _CHECKPOINT_KINDS)
  try:
    if xla_flags:  # before the restore opens a backend
      sharding.apply_xla_flags(export.read_config(checkpoint).get("xla_flags", ""),
                               strict=False)
    loaded = build.load(checkpoint)
  except build.LoadError as e:
    raise SegmentError(str(e)) from e
  config, model, step, kind = loaded.config, loaded.model, loaded.step, loaded.kind
  trained = tuple(int(r) for r in config.data.resolution)
  if resolution is not None and tuple(resolution) != trained:
    h, w = trained
    raise SegmentError(
        f"--resolution={resolution[0]},{resolution[1]} differs from the {h}x{w} the model in "
        f"{checkpoint!r} was trained at: its decoder position embedding and G_abs are learned "
        f"per token of the {h // 14}x{w // 14} grid, so it segments at {h}x{w} only (masks are "
        "upsampled to the video's own size anyway). Omit --resolution.")
  encoder_source = loaded.encoder_source
  if not config.model.encoder_weights:
    print("Note: this model was trained with a RANDOMLY initialised DINOv2 "
          "(config.model.encoder_weights was empty).", flush=True)
  params = jax.device_put(loaded.params)
  segmenter = evaluate.VideoSegmenter(model, params, batch_windows=config.eval.batch_windows)
  info = dict(checkpoint=os.path.abspath(checkpoint), kind=kind, step=step,
              resolution=list(trained), token_grid=list(model.grid_hw),
              num_slots=int(config.model.num_slots), encoder=str(config.model.encoder),
              encoder_weights=str(encoder_source), device=str(jax.devices()[0].platform))
  return LoadedModel(config, segmenter, info)


def segment(loaded: LoadedModel, frames: np.ndarray, progress: bool = True):
  """(T, H, W, 3) uint8 frames -> ((T, H, W) int32 track ids, the segmenter's outputs).

  The one path of evaluation: `pipeline.preprocess_frames` to the model's resolution,
  `evaluate.VideoSegmenter`, `metrics.masks_to_ids` upsampling to (H, W) frame by frame.
  """
  from solv_jax import metrics
  from solv_jax.data import pipeline

  frames = np.asarray(frames)
  resolution = tuple(loaded.config.data.resolution)
  inputs = np.concatenate([pipeline.preprocess_frames(frames[s:s + _PREPROCESS_CHUNK],
                                                      resolution)
                           for s in range(0, len(frames), _PREPROCESS_CHUNK)])
  if progress:
    print(f"Segmenting {len(frames)} frames at {resolution[0]}x{resolution[1]} ...", flush=True)
  out = loaded.segmenter(inputs)
  ids = np.empty(frames.shape[:3], np.int32)
  for t in tqdm(range(len(frames)), desc="masks", unit="frame", disable=not progress):
    ids[t] = metrics.masks_to_ids(out["masks"][t:t + 1], out["track_ids"][t:t + 1],
                                  out_hw=frames.shape[1:3])[0]
  return ids, out


# ----------------------------------------------------------------------------------------------
# Outputs.
# ----------------------------------------------------------------------------------------------
def mask_image(ids: np.ndarray) -> Image.Image:
  """(H, W) ids >= 0 -> PNG-ready image: palette (mode P) below 256, else 16-bit greyscale."""
  from solv_jax import visualize
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
    print(f"Warning: writing {path!r} failed ({_first_lines(e)}); no MP4.", file=sys.stderr)
    writer.close()
    if os.path.exists(path):
      os.remove(path)
    return None


SLOT_KEYS = ("slots", "valid", "track_ids", "masks")  # what slots.npz holds from the segmenter


def check_out_dir(out_dir: str, overwrite: bool) -> None:
  """Refuses an --out that is a file, or a non-empty folder unless overwrite (SegmentError)."""
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise SegmentError(f"--out {out_dir!r} exists and is not a folder.")
  entries = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
  if entries and not overwrite:
    raise SegmentError(
        f"--out {out_dir!r} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); give a "
        "new folder, or --overwrite to replace this command's earlier outputs there.")


def write_outputs(out_dir: str, video: Video, ids: np.ndarray, fps: float,
                  model_info: dict | None = None, progress: bool = True,
                  slots: dict | None = None) -> dict:
  """Writes masks/*.png, overlay.gif, overlay.mp4 (if possible), slots.npz (when `slots`, the
  segmenter's outputs, are given) and summary.json; returns the summary. Earlier outputs of this
  function in out_dir are replaced (the command line refuses a non-empty --out before that
  unless --overwrite)."""
  from solv_jax import visualize

  frames = video.frames
  t_len, h, w = ids.shape
  mask_dir = os.path.join(out_dir, "masks")
  os.makedirs(mask_dir, exist_ok=True)
  for name in os.listdir(mask_dir):  # a longer earlier run's frames would mix in
    if re.fullmatch(r"\d{6}\.png", name):
      os.remove(os.path.join(mask_dir, name))
  for name in ("overlay.mp4", "slots.npz"):  # not always written: an earlier run's would stay
    if os.path.isfile(os.path.join(out_dir, name)):
      os.remove(os.path.join(out_dir, name))
  slots_file = None
  if slots is not None:
    slots_file = "slots.npz"
    _write_slots(os.path.join(out_dir, slots_file), slots, t_len)

  mp4_path = os.path.join(out_dir, "overlay.mp4")
  mp4 = _mp4_writer(mp4_path, h, w, fps)
  gif_frames, per_frame = [], []
  pixels, frames_of = {}, {}
  for t in tqdm(range(t_len), desc="write", unit="frame", disable=not progress):
    file = f"masks/{t:06d}.png"
    mask_image(ids[t]).save(os.path.join(out_dir, file), format="PNG")
    counts = np.bincount(ids[t].reshape(-1))
    present = {int(i): int(c) for i, c in enumerate(counts) if c}
    for i, c in present.items():
      pixels[i] = pixels.get(i, 0) + c
      frames_of.setdefault(i, []).append(t)
    row = {"index": t, "mask": file, "pixels": {str(i): c for i, c in present.items()}}
    if video.info.get("frame_files"):
      row["source"] = video.info["frame_files"][t]
    per_frame.append(row)
    tinted = visualize.overlay(frames[t], ids[t])
    gif_frames.append(Image.fromarray(tinted).resize(_gif_size(h, w), Image.BILINEAR))
    if mp4 is not None:
      mp4 = _mp4_send(mp4, mp4_path, np.pad(tinted, ((0, h % 2), (0, w % 2), (0, 0)),
                                            mode="edge"))
  if mp4 is not None:
    mp4 = _mp4_send(mp4, mp4_path, None)
  gif_path = os.path.join(out_dir, "overlay.gif")
  gif_frames[0].save(gif_path, format="GIF", save_all=True, append_images=gif_frames[1:],
                     duration=int(round(1000 / fps)), loop=0)

  objects = [dict(id=i, num_frames=len(frames_of[i]), first_frame=frames_of[i][0],
                  last_frame=frames_of[i][-1], pixels=pixels[i], frames=frames_of[i])
             for i in sorted(pixels)]
  summary = {
      "input": dict(video.info),
      "model": model_info or {},
      "fps": fps,
      "outputs": {
          "masks": "masks/",
          "mask_format": ("one PNG per frame at the input's size, pixel value = track id; "
                          "8-bit palette (mode P) if every id < 256, else 16-bit greyscale"),
          "overlay_gif": "overlay.gif",
          "overlay_gif_size": list(_gif_size(h, w))[::-1],
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
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
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
  np.savez(path, **arrays, token_grid=np.asarray(arrays["masks"].shape[2:], np.int32))


# ----------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------
def _parse_resolution(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.replace("x", ",").split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected H,W (e.g. 336,504), got {text!r}") from None
  return h, w


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m solv_jax.segment", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="training workdir or export .npz")
  parser.add_argument("--video", required=True, help="video file or folder of frames")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--resolution", type=_parse_resolution, default=None,
                      help="H,W model input; must be the trained resolution (the default)")
  parser.add_argument("--max_frames", type=int, default=0, help="first N frames only (0: all)")
  parser.add_argument("--fps", type=float, default=0.0,
                      help=f"overlay frame rate (default: the video's, else {DEFAULT_FPS:g})")
  parser.add_argument("--save_slots", action="store_true",
                      help="also write slots.npz: per frame the merged slots, their validity, "
                           "track ids and token-grid masks")
  parser.add_argument("--overwrite", action="store_true",
                      help="write into a non-empty --out, replacing this command's outputs there")
  args = parser.parse_args(argv)
  try:
    check_out_dir(args.out, args.overwrite)  # before the long read and model set-up
    _require(args.checkpoint, "--checkpoint", _CHECKPOINT_KINDS)  # before a long read
    video = read_video(args.video, args.max_frames or None)
    loaded = load_model(args.checkpoint, args.resolution, xla_flags=True)
  except (ValueError, FileNotFoundError) as e:  # SegmentError, or a bad config/weights file
    print(f"error: {e}", file=sys.stderr)
    return 1
  ids, out = segment(loaded, video.frames)
  fps = args.fps or video.info.get("fps") or DEFAULT_FPS
  summary = write_outputs(args.out, video, ids, fps, loaded.info,
                          slots=out if args.save_slots else None)
  print(f"{summary['num_objects']} tracks over {len(ids)} frames; wrote {args.out}/masks/*.png, "
        f"overlay.gif{', overlay.mp4' if summary['outputs']['overlay_mp4'] else ''}"
        f"{', slots.npz' if summary['outputs']['slots'] else ''}, summary.json", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
