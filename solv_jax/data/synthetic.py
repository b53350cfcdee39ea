"""The embedded default dataset: procedurally generated multi-object videos.

Each video shows 2-6 textured objects (ellipses, polygons, stars, blobs) that
move, spin and occlude each other over a textured background seen by a panning
camera; objects enter and leave the frame. Ground truth is the instance id of
the top-most object per pixel (0 background, 1..K in drawing order, later ones
in front). Records use the MOVi-E feature names (see records.py), splits `train`
and `validation`.

Grouping must not be trivial at patch level: objects carry 2-3 colours in
stripes/checkers/rings/spots at about patch scale, and colours are drawn from a
per-video palette that the background shares (`background_mix`, at reduced
contrast `background_contrast`), so colour alone neither separates objects from
each other nor cleanly from the background. With `shading` > 0, a distant light shades each
object as if it were a sphere's silhouette (Lambert), so an object's colour also varies in
brightness across it, as real objects' colours do. Every knob is
a field of `SyntheticConfig`; a video is a pure function of (config, split,
index), and the dataset directory is keyed by a hash of the config, so changing
any knob builds a new dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

SPLITS = ("train", "validation")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Knobs of the generator (sizes in native pixels unless noted)."""
  num_train: int = 300
  num_validation: int = 30
  num_frames: int = 24
  height: int = 128
  width: int = 128
  min_objects: int = 2
  max_objects: int = 6
  radius: tuple[float, float] = (0.13, 0.24)   # mean object radius / min(H, W)
  speed: tuple[float, float] = (0.5, 2.5)      # own motion, px per frame
  spin: float = 0.06                           # max |rotation|, rad per frame
  camera_speed: tuple[float, float] = (0.3, 1.5)  # background pan, px per frame
  cross_prob: float = 0.4                      # objects entering or leaving
  shapes: tuple[str, ...] = ("ellipse", "polygon", "star", "blob")
  textures: tuple[str, ...] = ("stripes", "checker", "rings", "spots")
  texture_period: tuple[float, float] = (8.0, 20.0)  # object textures, px
  colours_per_object: tuple[int, int] = (2, 3)
  palette_size: int = 8                        # per-video colour pool
  background_cells: int = 6                    # textured Voronoi cells
  background_mix: float = 0.5                  # share of bg colours from the pool
  background_contrast: float = 0.5             # bg colours scaled towards grey
  background_period: tuple[float, float] = (16.0, 40.0)
  noise: float = 3.0                           # Gaussian pixel noise (uint8 units)
  shading: float = 0.0                         # object brightness from 1 - shading to 1
  seed: int = 0

  def num_videos(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation}[split]

  def tag(self) -> str:
    """Directory name: resolution plus a hash of every knob (shading only when on)."""
    knobs = dataclasses.asdict(self)
    if not self.shading:  # knobs added later leave the older datasets' tags as they were
      del knobs["shading"]
    blob = json.dumps(knobs | {"format": FORMAT_VERSION},
                      sort_keys=True)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:10]
    return f"{self.height}x{self.width}_{digest}"


def config_from(overrides: Mapping[str, Any] | None) -> SyntheticConfig:
  """SyntheticConfig from a (Config)dict of overrides; unknown keys are errors."""
  if hasattr(overrides, "to_dict"):  # ml_collections.ConfigDict
    overrides = overrides.to_dict()
  overrides = dict(overrides or {})
  fields = {f.name: f for f in dataclasses.fields(SyntheticConfig)}
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"Unknown synthetic data option(s) {unknown}; known: "
                     f"{sorted(fields)}.")
  for k, v in overrides.items():
    if isinstance(v, list):
      overrides[k] = tuple(v)
  cfg = SyntheticConfig(**overrides)
  if not 1 <= cfg.min_objects <= cfg.max_objects:
    raise ValueError(f"Need 1 <= min_objects <= max_objects, got "
                     f"{cfg.min_objects}, {cfg.max_objects}.")
  if cfg.max_objects > 254:
    raise ValueError("At most 254 objects per video (ids are uint8, 255 void).")
  return cfg


# ----------------------------------------------------------------------------
# Shapes and textures


_LUT = 256  # angular resolution of the radial shape profiles


def _radial_profile(rng, shape: str, radius: float) -> np.ndarray:
  """R(phi) of a star-convex shape on _LUT angles in [-pi, pi), mean ~ radius."""
  phi = np.linspace(-np.pi, np.pi, _LUT, endpoint=False)
  if shape == "ellipse":
    a, b = 1.0, rng.uniform(0.55, 1.0)
    r = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
  elif shape == "polygon":
    k = int(rng.integers(3, 8))
    sector = np.mod(phi, 2 * np.pi / k) - np.pi / k
    r = np.cos(np.pi / k) / np.cos(sector)
  elif shape == "star":
    k = int(rng.integers(4, 8))
    inner = rng.uniform(0.5, 0.7)
    frac = np.abs(np.mod(phi * k / (2 * np.pi), 1.0) - 0.5) * 2  # 1 at tips
    r = inner + (1 - inner) * frac
  elif shape == "blob":
    r = np.ones_like(phi)
    for j in range(2, 5):
      r += rng.uniform(-0.15, 0.15) * np.cos(j * phi + rng.uniform(0, 2 * np.pi))
  else:
    raise ValueError(f"Unknown shape {shape!r}")
  return (radius * r / r.mean()).astype(np.float32)


def _texture(kind: str, params: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Colour index (int) of texture `kind` at object-frame coordinates (u, v)."""
  n, p, a = params["n"], params["period"], params["angle"]
  ru = u * np.cos(a) + v * np.sin(a)
  rv = -u * np.sin(a) + v * np.cos(a)
  if kind == "stripes":
    idx = np.floor(ru / p)
  elif kind == "checker":
    idx = np.floor(ru / p) + np.floor(rv / p)
  elif kind == "rings":
    idx = np.floor(np.hypot(u, v) / p)
  elif kind == "spots":
    cu, cv = np.floor(ru / p), np.floor(rv / p)
    du, dv = ru / p - cu - 0.5, rv / p - cv - 0.5
    spot = (du * du + dv * dv) < 0.09
    idx = np.where(spot, 1 + np.mod(cu + cv, max(n - 1, 1)), 0)
  else:
    raise ValueError(f"Unknown texture {kind!r}")
  return np.mod(idx, n).astype(np.int64)


def _texture_params(rng, cfg, colours, period_range):
  n = len(colours)
  return dict(kind=str(rng.choice(cfg.textures)), n=n,
              period=float(rng.uniform(*period_range)),
              angle=float(rng.uniform(0, np.pi)),
              colours=np.asarray(colours, np.float32))


def _random_colours(rng, n):
  return rng.uniform(20, 235, size=(n, 3))


# ----------------------------------------------------------------------------
# One video


def _background(rng, cfg, palette, margin):
  """Static textured canvas of (H + 2 margin, W + 2 margin, 3) float32."""
  hc, wc = cfg.height + 2 * margin, cfg.width + 2 * margin
  ys, xs = np.mgrid[0:hc, 0:wc].astype(np.float32)
  seeds = rng.uniform(0, 1, size=(cfg.background_cells, 2)) * (hc, wc)
  d = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2
  cell = np.argmin(d, axis=-1)  # (hc, wc)
  canvas = np.zeros((hc, wc, 3), np.float32)
  for c in range(cfg.background_cells):
    n = int(rng.integers(2, 4))
    from_pool = rng.uniform(size=n) < cfg.background_mix
    colours = np.where(from_pool[:, None],
                       palette[rng.integers(0, len(palette), n)],
                       _random_colours(rng, n))
    colours = 127.5 + cfg.background_contrast * (colours - 127.5)
    tex = _texture_params(rng, cfg, colours, cfg.background_period)
    sel = cell == c
    idx = _texture(tex["kind"], tex, xs[sel], ys[sel])
    canvas[sel] = tex["colours"][idx]
  return canvas


def _trajectory(rng, cfg, reach):
  """Centre (T, 2) in world px (x, y) of one object; may enter or leave."""
  t = np.arange(cfg.num_frames, dtype=np.float32)[:, None]
  size = np.array([cfg.width, cfg.height], np.float32)
  if rng.uniform() < cfg.cross_prob:
    # Start just outside a random edge, reach a point inside at time t_in.
    edge = int(rng.integers(4))
    start = rng.uniform(0, 1, 2) * size
    axis, side = edge % 2, edge // 2
    start[axis] = -reach if side == 0 else size[axis] + reach
    target = rng.uniform(0.25, 0.75, 2) * size
    t_in = rng.uniform(0.3, 0.6) * cfg.num_frames
    pos = start + (target - start) / t_in * t
    if rng.uniform() < 0.5:  # time-reversed: the object leaves instead
      pos = pos[::-1]
    return pos
  mid = rng.uniform(0.2, 0.8, 2) * size
  angle = rng.uniform(0, 2 * np.pi)
  vel = rng.uniform(*cfg.speed) * np.array([np.cos(angle), np.sin(angle)])
  return mid + vel * (t - cfg.num_frames / 2)


def generate_video(cfg: SyntheticConfig, rng: np.random.Generator):
  """One video: (frames (T, H, W, 3) uint8, ids (T, H, W) uint8)."""
  T, H, W = cfg.num_frames, cfg.height, cfg.width
  palette = _random_colours(rng, cfg.palette_size)

  # Camera: constant pan; objects live in world coordinates.
  cam_angle = rng.uniform(0, 2 * np.pi)
  cam_vel = rng.uniform(*cfg.camera_speed) * np.array(
      [np.cos(cam_angle), np.sin(cam_angle)])
  cam = cam_vel * (np.arange(T)[:, None] - (T - 1) / 2)  # (T, 2) x, y
  margin = int(np.ceil(np.abs(cam).max())) + 1
  canvas = _background(rng, cfg, palette, margin)

  objects = []
  for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
    radius = rng.uniform(*cfg.radius) * min(H, W)
    profile = _radial_profile(rng, str(rng.choice(cfg.shapes)), radius)
    n_col = int(rng.integers(cfg.colours_per_object[0],
                             cfg.colours_per_object[1] + 1))
    colours = palette[rng.choice(len(palette), n_col, replace=False)]
    objects.append(dict(
        profile=profile, reach=float(profile.max()),
        tex=_texture_params(rng, cfg, colours, cfg.texture_period),
        pos=_trajectory(rng, cfg, float(profile.max())),
        theta=rng.uniform(0, 2 * np.pi) + rng.uniform(-cfg.spin, cfg.spin)
        * np.arange(T)))

  light = None
  if cfg.shading:  # one distant light per video, 25-60 degrees off the view axis; drawn
    # after the objects, so that shading changes no layout
    tilt, azimuth = rng.uniform(0.45, 1.05), rng.uniform(0, 2 * np.pi)
    light = np.array([np.sin(tilt) * np.cos(azimuth), np.sin(tilt) * np.sin(azimuth),
                      np.cos(tilt)], np.float32)

  frames = np.empty((T, H, W, 3), np.uint8)
  ids = np.zeros((T, H, W), np.uint8)
  for t in range(T):
    ox, oy = np.rint(margin + cam[t]).astype(int)
    frame = canvas[oy:oy + H, ox:ox + W].copy()
    seg = ids[t]
    for k, obj in enumerate(objects):
      cx, cy = obj["pos"][t] - cam[t]
      r = obj["reach"]
      x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, W)
      y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, H)
      if x0 >= x1 or y0 >= y1:
        continue
      dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
      dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
      c, s = np.cos(obj["theta"][t]), np.sin(obj["theta"][t])
      u, v = c * dx + s * dy, -s * dx + c * dy  # object frame, (h, w) each
      phi_bin = ((np.arctan2(v, u) + np.pi) * (_LUT / (2 * np.pi))).astype(int)
      rim = obj["profile"][phi_bin % _LUT]
      inside = np.hypot(u, v) <= rim
      tex = obj["tex"]
      colour = tex["colours"][_texture(tex["kind"], tex, u, v)]  # (h, w, 3)
      if light is not None:  # Lambertian, as if the shape were a sphere's silhouette
        a, b = dx / rim, dy / rim
        normal_z = np.sqrt(np.clip(1.0 - a * a - b * b, 0.0, 1.0))
        lambert = np.clip(a * light[0] + b * light[1] + normal_z * light[2], 0.0, 1.0)
        colour = colour * (1.0 - cfg.shading + cfg.shading * lambert)[..., None]
      frame[y0:y1, x0:x1][inside] = colour[inside]
      seg[y0:y1, x0:x1][inside] = k + 1
    if cfg.noise > 0:
      frame += rng.normal(0, cfg.noise, frame.shape).astype(np.float32)
    frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
  return frames, ids


def video_rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([cfg.seed, SPLITS.index(split), index])


def _example(cfg, split, index):
  from solv_jax.data import records  # TFDS; generating videos needs only numpy
  frames, ids = generate_video(cfg, video_rng(cfg, split, index))
  present = np.unique(ids)
  return {
      "video": [records.encode_png(f) for f in frames],
      "segmentations": [records.encode_png(x) for x in ids],
      "metadata": {
          "video_name": f"{split}_{index:05d}",
          "num_frames": cfg.num_frames,
          "height": cfg.height,
          "width": cfg.width,
          "num_instances": int(np.sum(present > 0)),
          "crop": np.zeros(4, np.int32),
      },
      "has_annotations": True,
  }


def dataset_path(cfg: SyntheticConfig, data_dir: str) -> str:
  """data_dir/synthetic/<tag>/1.0.0: where `build` writes the dataset of `cfg`."""
  from solv_jax.data import records  # pylint: disable=g-import-not-at-top
  return records.dataset_dir(data_dir, "synthetic", "1.0.0", cfg.tag())


def _fingerprint(cfg: SyntheticConfig) -> dict:
  return dataclasses.asdict(cfg) | {"format": FORMAT_VERSION}


def is_built(cfg: SyntheticConfig, data_dir: str) -> bool:
  """Whether `build(cfg, data_dir)` would find a complete dataset (and write nothing)."""
  from solv_jax.data import records  # pylint: disable=g-import-not-at-top
  return records.is_complete(dataset_path(cfg, data_dir), _fingerprint(cfg))


def build(cfg: SyntheticConfig, data_dir: str, overwrite: bool = False) -> str:
  """Builds (once) the dataset for `cfg` under data_dir/synthetic/<tag>/1.0.0. A complete one
  is used as it is, with no write at all (a dataset shared on a read-only mount)."""
  from solv_jax.data import records
  if not overwrite and is_built(cfg, data_dir):
    return dataset_path(cfg, data_dir)
  os.makedirs(os.path.join(data_dir, "synthetic"), exist_ok=True)
  lock_path = os.path.join(data_dir, "synthetic", f".{cfg.tag()}.lock")
  with open(lock_path, "w") as lock:
    try:
      import fcntl  # pylint: disable=g-import-not-at-top
      fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it
    except ImportError:
      pass
    features = records.video_features(
        cfg.num_frames, cfg.height, cfg.width, encoding="png")
    workers = os.cpu_count() or 1
    splits = {
        s: (cfg.num_videos(s), lambda s=s: records.ordered_map(
            lambda i: _example(cfg, s, i), range(cfg.num_videos(s)), workers))
        for s in SPLITS}
    return records.write_dataset(
        name="synthetic", config=cfg.tag(), data_dir=data_dir,
        features=features, splits=splits, overwrite=overwrite,
        fingerprint=_fingerprint(cfg),
        description="solv_jax procedural multi-object videos: "
        + json.dumps(dataclasses.asdict(cfg)))
