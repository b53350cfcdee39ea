"""Reading a video: a video file or a folder of frames, as (H, W, 3) uint8 RGB frames.

A video file is anything imageio reads (mp4, webm, gif, ...; mp4/webm go through
imageio-ffmpeg). A folder holds .jpg/.jpeg/.png/.bmp/.webp frames, taken in name order with
digit runs compared as numbers (frame2 before frame10). Every frame is converted to RGB:
greyscale is repeated over the channels, an alpha channel is dropped, palette images are
expanded, 16-bit frames are scaled to 8 bits. All frames of a folder must have the same size; a
folder of mixed sizes is an error (it usually mixes videos), naming the first frame that
differs.

  source = open_video("clip.mp4")     # checks what is cheap; frames decoded on each iteration
  for frame in source: ...            # (H, W, 3) uint8; source.info after a full pass
  video = read_video("frames/")       # every frame in memory: video.frames (T, H, W, 3)

Every problem with the input raises VideoError, naming the path and what is wrong.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class VideoError(ValueError):
  """A video the reader cannot use; the message names the path and the problem."""


@dataclasses.dataclass
class Video:
  frames: np.ndarray  # (T, H, W, 3) uint8 at the input's own size
  info: dict          # JSON-able: path, kind, num_frames, height, width, fps, ...


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
    raise VideoError(f"{where}: expected an image (H, W) or (H, W, 1-4 channels), got an "
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
  raise VideoError(f"{where}: unsupported pixel type {x.dtype}.")


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
    if not os.path.exists(path):
      raise VideoError(f"Video {path!r} does not exist (expected a video file or a folder of "
                       "frames).")
    if max_frames is not None and max_frames < 0:
      raise VideoError(f"max_frames must be >= 0, got {max_frames}.")
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
      raise VideoError(f"Video {self.path!r} gave {more} the {self.num_frames} frames of an "
                         "earlier read; was it changed while being segmented?")
    self.num_frames = count

  def _check_size(self, where: str, hw: tuple[int, int], first: tuple[str, tuple[int, int]]):
    if hw == first[1]:
      return
    if self.kind == "frames":
      raise _mixed_sizes(self.path, first, (where, hw))
    (h, w), (h2, w2) = first[1], hw
    raise VideoError(f"Video {self.path!r} changes frame size at {where} ({h}x{w} -> "
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
        raise VideoError(f"Cannot read frame {file!r}: {e}") from e
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
    except VideoError:
      raise
    except Exception as e:  # noqa: BLE001 - imageio/ffmpeg/PIL raise many types for bad files
      hint = ""
      if self.path.lower().endswith((".mp4", ".webm", ".mov", ".mkv", ".avi")):
        try:
          import imageio_ffmpeg  # noqa: F401
        except ImportError:
          hint = " (reading this format needs imageio-ffmpeg: pip install imageio-ffmpeg)"
      raise VideoError(f"Cannot read video {self.path!r}: it is unreadable or corrupt "
                         f"({type(e).__name__}: {first_lines(e)}){hint}.") from e
    if first is None:
      raise VideoError(f"Cannot read video {self.path!r}: it holds no frames.")


def _folder_frames(path: str, max_frames: int | None) -> tuple[list[str], int]:
  """-> (the frame files to read, in natural order; how many the folder holds). Opens each
  file's header (no decoding) so that a non-image or a mixed size is named before model
  set-up."""
  names = sorted((n for n in os.listdir(path) if not n.startswith(".")
                  and os.path.isfile(os.path.join(path, n))), key=_natural_key)
  frames_names = [n for n in names if n.lower().endswith(FRAME_EXTENSIONS)]
  if not frames_names:
    other = f" (it holds {len(names)} other files, e.g. {names[0]!r})" if names else ""
    raise VideoError(f"Video {path!r} is a folder without frames: no "
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
      raise VideoError(f"Cannot read frame {file!r}: {e}") from e
    first = first or (name, (h, w))
    if (h, w) != first[1]:
      raise _mixed_sizes(path, first, (name, (h, w)))
  return frames_names, total


def _mixed_sizes(path: str, first: tuple[str, tuple[int, int]],
                 other: tuple[str, tuple[int, int]]) -> VideoError:
  (name, (h, w)), (name2, (h2, w2)) = first, other
  return VideoError(
      f"Video {path!r} mixes frame sizes: {name!r} is {h}x{w} (HxW) but {name2!r} is "
      f"{h2}x{w2}. A folder is one video; resize its frames to one size first.")


def first_lines(e: Exception) -> str:
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
