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
                        480 px (GIF_MAX_SIDE), looping, at most 200 frames (GIF_MAX_FRAMES):
                        a longer video's GIF shows every k-th frame, each shown k times as long
                        (summary.json: overlay_gif_stride = k, overlay_gif_frames).
  overlay.mp4           the same at the video's size (padded to even sizes), every frame, H.264,
                        when imageio-ffmpeg is installed.
  summary.json          input (path, kind, frames, size, fps, frame files), checkpoint, model,
                        outputs (each file written and its format; "slots" is "slots.npz" with
                        --save_slots, else null), objects (per track id: frames it covers, pixel
                        count) and per-frame pixel counts per id.
SOLV has no background class: every pixel goes to some slot, so the background is one (or a
few) of the track ids too.

Long videos are streamed: the input is decoded twice, once for the model (each frame resized to
the model's resolution as it is read; DINOv2 and spatial binding run on chunks of
VideoSegmenter.frame_chunk frames; the windows on the small per-frame slots) and once for the
outputs (each frame's masks upsampled, written and tinted, then dropped). Memory is bounded by a
chunk of frames plus the per-frame slots, attention and token-grid masks (kilobytes a frame),
not by the number of frames of native size. In Python, `open_video` + `segment_frames` +
`write_frames` are that path; `read_video` + `segment` + `write_outputs` do the same on frames
held in memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf only resizes frames here

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
GIF_MAX_SIDE = 480
GIF_MAX_FRAMES = 200  # a longer video's GIF shows every k-th frame (k = overlay_gif_stride)
DEFAULT_FPS = 8.0


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


class FrameSource:
  """A video file or a folder of frames, decoded lazily: iterating yields its first max_frames
  frames one at a time as (H, W, 3) uint8 RGB, decoding the input again on every iteration.

  Opening checks what is cheap to check before the model is set up: the path exists, a folder
  holds frames whose headers open and agree on one size, a file's first frame decodes. `info`
  is JSON-able (path, kind, num_frames, height, width, fps; for folders total_frames,
  source_modes and frame_files); num_frames, height, width and source_modes are known after a
  complete iteration (None before it).
  """

  def __init__(self, path: str, max_frames: int | None = None):
    _require(path, "--video", "a video file or a folder of frames")
    if max_frames is not None and max_frames < 0:
      raise SegmentError(f"--max_frames must be >= 0, got {max_frames}.")
    self.path, self.max_frames = path, max_frames or None
    self.kind = "frames" if os.path.isdir(path) else "video"
    self.num_frames = self.hw = self.modes = None
    self.fps = None
    if self.kind == "frames":
      self.names, self.total = _folder_frames(path, self.max_frames)
    else:
      self.fps = _file_fps(path)
      for _ in self._iter_file(progress=False):  # the first frame decodes
        break

  @property
  def info(self) -> dict:
    h, w = self.hw or (None, None)
    if self.kind == "frames":
      return dict(path=os.path.abspath(self.path), kind="frames", num_frames=self.num_frames,
                  total_frames=self.total, height=h, width=w, fps=None,
                  source_modes=self.modes, frame_files=self.names)
    return dict(path=os.path.abspath(self.path), kind="video", num_frames=self.num_frames,
                height=h, width=w, fps=self.fps)

  def __iter__(self):
    return self.frames()

  def frames(self, progress: bool = True):
    """Yields the frames; at the end records num_frames and size, and refuses an input whose
    frame count differs from an earlier complete iteration (it changed in between)."""
    frames = self._iter_folder(progress) if self.kind == "frames" else self._iter_file(progress)
    count = 0
    for frame in frames:
      count += 1
      if self.num_frames is not None and count > self.num_frames:
        break
      yield frame
    if self.num_frames is not None and count != self.num_frames:
      more = "more than" if count > self.num_frames else f"{count} frames where"
      raise SegmentError(f"--video {self.path!r} gave {more} the {self.num_frames} frames of an "
                         "earlier read; was it changed while being segmented?")
    self.num_frames = count

  def _check_size(self, where: str, hw: tuple[int, int], first: tuple[str, tuple[int, int]]):
    if hw == first[1]:
      return
    if self.kind == "frames":
      raise _mixed_sizes(self.path, first, (where, hw))
    (h, w), (h2, w2) = first[1], hw
    raise SegmentError(f"Video {self.path!r} changes frame size at {where} ({h}x{w} -> "
                       f"{h2}x{w2}, HxW); re-encode it at one size.")

  def _iter_folder(self, progress: bool):
    modes, first = {}, None
    for name in tqdm(self.names, desc="read frames", unit="frame", disable=not progress):
      file = os.path.join(self.path, name)
      try:
        with Image.open(file) as im:
          im = ImageOps.exif_transpose(im)  # as displayed
          modes[im.mode] = modes.get(im.mode, 0) + 1
          frame = to_rgb(im, file)
      except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise SegmentError(f"Cannot read frame {file!r}: {e}") from e
      first = first or (name, frame.shape[:2])
      self._check_size(name, frame.shape[:2], first)
      self.hw = first[1]
      yield frame
    self.modes = modes

  def _iter_file(self, progress: bool):
    import imageio.v3 as iio
    first = None
    total = self.num_frames or self.max_frames
    try:
      with tqdm(desc="read frames", unit="frame", total=total, disable=not progress) as bar:
        for i, frame in enumerate(iio.imiter(self.path)):
          if self.max_frames and i >= self.max_frames:
            break
          frame = to_rgb(frame, f"{self.path!r} frame {i}")
          first = first or ("frame 0", frame.shape[:2])
          self._check_size(f"frame {i}", frame.shape[:2], first)
          self.hw = first[1]
          bar.update()
          yield frame
    except SegmentError:
      raise
    except Exception as e:  # noqa: BLE001 - imageio/ffmpeg/PIL raise many types for bad files
      hint = ""
      if self.path.lower().endswith((".mp4", ".webm", ".mov", ".mkv", ".avi")):
        try:
          import imageio_ffmpeg  # noqa: F401
        except ImportError:
          hint = " (reading this format needs imageio-ffmpeg: pip install imageio-ffmpeg)"
      raise SegmentError(f"Cannot read video {self.path!r}: it is unreadable or corrupt "
                         f"({type(e).__name__}: {_first_lines(e)}){hint}.") from e
    if first is None:
      raise SegmentError(f"Cannot read video {self.path!r}: it holds no frames.")


def _folder_frames(path: str, max_frames: int | None) -> tuple[list[str], int]:
  """-> (the frame files to read, in natural order; how many the folder holds). Opens each
  file's header (no decoding) so that a non-image or a mixed size is named before model
  set-up."""
  names = sorted((n for n in os.listdir(path) if not n.startswith(".")
                  and os.path.isfile(os.path.join(path, n))), key=_natural_key)
  frames_names = [n for n in names if n.lower().endswith(FRAME_EXTENSIONS)]
  if not frames_names:
    other = f" (it holds {len(names)} other files, e.g. {names[0]!r})" if names else ""
    raise SegmentError(f"--video {path!r} is a folder without frames: no "
                       f"{'/'.join(FRAME_EXTENSIONS)} files{other}.")
  total = len(frames_names)
  frames_names = frames_names[:max_frames] if max_frames else frames_names
  first = None
  for name in frames_names:
    file = os.path.join(path, name)
    try:
      with Image.open(file) as im:
        w, h = im.size
        if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation: displayed transposed
          w, h = h, w
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
      raise SegmentError(f"Cannot read frame {file!r}: {e}") from e
    first = first or (name, (h, w))
    if (h, w) != first[1]:
      raise _mixed_sizes(path, first, (name, (h, w)))
  return frames_names, total


def _mixed_sizes(path: str, first: tuple[str, tuple[int, int]],
                 other: tuple[str, tuple[int, int]]) -> SegmentError:
  (name, (h, w)), (name2, (h2, w2)) = first, other
  return SegmentError(
      f"--video {path!r} mixes frame sizes: {name!r} is {h}x{w} (HxW) but {name2!r} is "
      f"{h2}x{w2}. A folder is one video; resize its frames to one size first.")


def _first_lines(e: Exception) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  if not lines:
    return type(e).__name__
  return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def _file_fps(path: str) -> float | None:
  import imageio.v3 as iio
  try:
    meta = iio.immeta(path)
    if meta.get("fps"):
      return float(meta["fps"])
    if meta.get("duration"):  # GIF: milliseconds per frame
      return 1000.0 / float(meta["duration"])
  except Exception:  # noqa: BLE001 - metadata is optional; reading the frames decides
    pass
  return None


def open_video(path: str, max_frames: int | None = None) -> FrameSource:
  """A video file or a folder of frames -> FrameSource, its frames read lazily (see the module
  doc for what is accepted). max_frames keeps the first N frames (None or 0: all)."""
  return FrameSource(path, max_frames)


def read_video(path: str, max_frames: int | None = None) -> Video:
  """A video file or a folder of frames -> Video with all its (T, H, W, 3) uint8 frames in
  memory (see the module doc for what is accepted). max_frames keeps the first N frames (None
  or 0: all). For long videos, `open_video` reads frame by frame instead."""
  source = open_video(path, max_frames)
  frames = np.stack(list(source))
  return Video(frames, source.info)


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
              num_slots=int(config.model.num_slots), encoder=str(config.model.encoder_variant),
              encoder_weights=str(encoder_source), device=str(jax.devices()[0].platform))
  return LoadedModel(config, segmenter, info)


def segment_frames(loaded: LoadedModel, frames: Iterable[np.ndarray],
                   progress: bool = True) -> dict:
  """(H, W, 3) uint8 frames, one at a time (a FrameSource, or the rows of an array) -> the
  segmenter's outputs for the whole video: 'masks' (T, K, h, w) on the token grid, 'valid',
  'slots', 'track_ids' (see evaluate.VideoSegmenter).

  The one path of evaluation, streamed: each frame goes through `frames.resize_frame` to the
  model's resolution (uint8, as the training pipeline makes it) as it is read, every
  frame_chunk of them through DINOv2 and spatial binding (`VideoSegmenter.bind_frames`, the
  batches one call on the whole video makes), and the windows run on the small per-frame
  slots and attention (`VideoSegmenter.decode`). Memory holds one native frame and one chunk
  at the model's resolution, whatever the video's length.
  """
  from solv_jax.data.frames import resize_frame

  segmenter = loaded.segmenter
  resolution = tuple(loaded.config.data.resolution)
  chunk, slots, attn = [], [], []

  def bind():
    s, a = segmenter.bind_frames(np.stack(chunk))  # (C, K, Ds), (C, K, N)
    slots.append(s)
    attn.append(a)
    chunk.clear()

  for frame in frames:
    chunk.append(resize_frame(np.asarray(frame), resolution))
    if len(chunk) == segmenter.frame_chunk:
      bind()
  if chunk:
    bind()
  if not slots:
    raise SegmentError("No frames to segment.")
  if progress:
    print(f"Decoding {sum(len(s) for s in slots)} frames in windows ...", flush=True)
  return segmenter.decode(np.concatenate(slots), np.concatenate(attn))


def frame_ids(out: dict, t: int, hw: tuple[int, int]) -> np.ndarray:
  """Frame t's (H, W) int32 track ids from the segmenter's outputs, upsampled to hw."""
  from solv_jax import metrics
  return metrics.masks_to_ids(out["masks"][t:t + 1], out["track_ids"][t:t + 1], out_hw=hw)[0]


def segment(loaded: LoadedModel, frames: np.ndarray, progress: bool = True):
  """(T, H, W, 3) uint8 frames -> ((T, H, W) int32 track ids, the segmenter's outputs).

  `segment_frames` on the frames in memory, then `metrics.masks_to_ids` upsampling to (H, W)
  frame by frame.
  """
  frames = np.asarray(frames)
  resolution = tuple(loaded.config.data.resolution)
  if progress:
    print(f"Segmenting {len(frames)} frames at {resolution[0]}x{resolution[1]} ...", flush=True)
  out = segment_frames(loaded, frames, progress=False)
  ids = np.empty(frames.shape[:3], np.int32)
  for t in tqdm(range(len(frames)), desc="masks", unit="frame", disable=not progress):
    ids[t] = frame_ids(out, t, frames.shape[1:3])
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
  return write_frames(out_dir, video.info, zip(video.frames, ids), ids.shape, fps, model_info,
                      progress, slots)


def write_frames(out_dir: str, info: dict, frames_and_ids: Iterable, shape: tuple[int, int, int],
                 fps: float, model_info: dict | None = None, progress: bool = True,
                 slots: dict | None = None) -> dict:
  """`write_outputs` from (frame (H, W, 3) uint8, ids (H, W)) pairs given one at a time, the
  video's `shape` (T, H, W) and its `info`: memory holds one frame and the GIF's (at most
  GIF_MAX_FRAMES frames of GIF_MAX_SIDE px), whatever the video's length."""
  from solv_jax import visualize

  t_len, h, w = shape
  gif_stride = -(-t_len // GIF_MAX_FRAMES)  # every frame up to GIF_MAX_FRAMES, then every k-th
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
  t = -1
  for t, (frame, ids_t) in enumerate(tqdm(frames_and_ids, desc="write", unit="frame",
                                          total=t_len, disable=not progress)):
    if t >= t_len:
      raise ValueError(f"More than the {t_len} frames of shape {shape} to write.")
    file = f"masks/{t:06d}.png"
    mask_image(ids_t).save(os.path.join(out_dir, file), format="PNG")
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
  gif_frames[0].save(gif_path, format="GIF", save_all=True, append_images=gif_frames[1:],
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
    source = open_video(args.video, args.max_frames or None)  # headers / first frame only
    loaded = load_model(args.checkpoint, args.resolution, xla_flags=True)
  except (ValueError, FileNotFoundError) as e:  # SegmentError, or a bad config/weights file
    print(f"error: {e}", file=sys.stderr)
    return 1
  # Streamed: the video is decoded twice, once for the model and once for the outputs, so that
  # memory holds a chunk of frames, never the whole video (issue 18.8).
  h, w = loaded.config.data.resolution
  print(f"Segmenting {args.video} at {h}x{w} ...", flush=True)
  try:
    out = segment_frames(loaded, source)
    num_frames, hw = source.num_frames, source.hw
    fps = args.fps or source.fps or DEFAULT_FPS
    pairs = ((frame, frame_ids(out, t, hw)) for t, frame in enumerate(source.frames(False)))
    summary = write_frames(args.out, source.info, pairs, (num_frames, *hw), fps, loaded.info,
                           slots=out if args.save_slots else None)
  except SegmentError as e:  # a frame that fails to decode past the checks of open_video
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{summary['num_objects']} tracks over {num_frames} frames; wrote {args.out}/masks/*.png, "
        f"overlay.gif{', overlay.mp4' if summary['outputs']['overlay_mp4'] else ''}"
        f"{', slots.npz' if summary['outputs']['slots'] else ''}, summary.json", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
