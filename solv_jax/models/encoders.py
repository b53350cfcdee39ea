"""The encoder table: the frozen feature extractors SOLV runs on, by the name that
config.model.encoder_variant gives (docs/METHOD.md §1).

An entry (`Encoder`) holds everything the rest of the package knows of an encoder: its Flax
module, patch size, feature width, depth, input normalisation (mean/std), whether it can drop
patch tokens, and how to get its params (a converted weights file, or a seeded random init).
SOLV, the config check, the param loading and the frame normalisation all read the entry; no
other module names a particular encoder.

  spec = encoders.get("vitb14")        # an entry; KeyError-free: ValueError naming the choices
  spec.grid((336, 504))                # (24, 36) patch tokens
  spec.normalize(uint8_frames, mask)   # (jnp) the floats the module takes

The entries: DINOv2 with and without registers (`vits14` ... `vitg14`, `*_reg`) and DINOv3
(`dinov3_vits16`, `dinov3_vits16plus`, `dinov3_vitb16`, `dinov3_vitl16`, `dinov3_vith16plus`). A new
encoder is one module file plus `register(Encoder(...))` (see docs/ARCHITECTURE.md): a Flax
module called as `module(images, keep_idx=None, *, drop_ratio=0.0)` on normalised images
(B, H, W, 3) that returns (patch tokens (B, N', D) float32, kept patch indices (B, N') int32).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax

from solv_jax.models import dinov2, dinov3


@dataclasses.dataclass(frozen=True)
class Encoder:
  """One entry of the encoder table."""
  name: str
  family: str                # e.g. 'DINOv2', for messages
  patch_size: int
  width: int                 # D, the feature width the decoder reconstructs
  depth: int                 # blocks; config.model.encoder_blocks picks 1..depth (0 = all)
  mean: tuple[float, ...]    # input normalisation of [0, 1] pixels, per channel
  std: tuple[float, ...]
  token_drop: bool           # the module accepts drop_ratio > 0 / keep_idx (paper §3.1)
  module: Callable[..., nn.Module]    # (dtype=, num_blocks=) -> the Flax module
  init_params: Callable[[jax.Array], dict]  # rng -> random params (the demo, the tests)
  load_params: Callable[[str], dict]  # converted weights file -> params (errors name the file)
  weights_hint: str = ""     # how to obtain and convert the weights, for error messages

  def fit(self, resolution) -> tuple[int, ...]:
    """The nearest resolution whose sides are multiples of the patch size (a tie rounds up:
    504 -> 512 for patch 16; at least one patch)."""
    p = self.patch_size
    return tuple(max(1, int(int(r) / p + 0.5)) * p for r in resolution)

  def grid(self, resolution) -> tuple[int, int]:
    """(H, W) pixels -> (h, w) patch tokens; ValueError if H or W is not a multiple of the
    patch size."""
    h, w = (int(r) for r in resolution)
    p = self.patch_size
    if h % p or w % p or h < p or w < p:
      fit = self.fit((h, w))
      raise ValueError(f"config.data.resolution {tuple(resolution)}: H and W must be multiples "
                       f"of the {self.family} patch size {p}; e.g. "
                       f"--config.data.resolution='{fit}'.")
    return h // p, w // p

  def normalize(self, video, frame_mask=None):
    """uint8 frames (..., H, W, 3) -> the float32 input the module takes (jnp; jit it with the
    model). frames where frame_mask (...,) is False become zeros (a clip's padding); float
    frames are taken as normalised already and returned as they are."""
    from solv_jax.data.frames import normalize_frames
    return normalize_frames(video, frame_mask, mean=self.mean, std=self.std)


ENCODERS: dict[str, Encoder] = {}


def register(spec: Encoder) -> Encoder:
  """Adds an entry to the table (a name may be registered once)."""
  if spec.name in ENCODERS:
    raise ValueError(f"An encoder named {spec.name!r} is registered already.")
  ENCODERS[spec.name] = spec
  return spec


def get(variant: Any) -> Encoder:
  """The entry of config.model.encoder_variant. A dict of DINOv2 sizes (tests build tiny
  ViTs this way) gives an unregistered DINOv2 entry of those sizes."""
  if isinstance(variant, Mapping):
    return dinov2_entry(dict(variant), name="dinov2 " + ",".join(f"{k}={v}" for k, v in
                                                            sorted(variant.items())))
  if variant not in ENCODERS:
    raise ValueError(f"Unknown encoder {variant!r} (config.model.encoder_variant); choose one "
                     f"of {sorted(ENCODERS)}.")
  return ENCODERS[variant]


# ----------------------------------------------------------------------------------------------
# The ViTs: DINOv2 (Oquab et al., 2023; solv_jax/models/dinov2.py), with and without registers,
# and DINOv3 (Simeoni et al., 2025; solv_jax/models/dinov3.py: patch 16, RoPE, 4 registers).
# Both modules offer the same calls: variant_config, PATCH_SIZE, the ImageNet mean/std,
# init_params, load_params, hint.
# ----------------------------------------------------------------------------------------------
def _vit_entry(lib, module_cls, family: str, variant, name: str | None) -> Encoder:
  name = name or variant
  sizes = lib.variant_config(variant)
  p = lib.PATCH_SIZE
  return Encoder(
      name=name, family=family, patch_size=p, width=sizes["embed_dim"], depth=sizes["depth"],
      mean=lib.IMAGENET_MEAN, std=lib.IMAGENET_STD, token_drop=True,
      module=lambda dtype, num_blocks: module_cls(variant, dtype=dtype, num_blocks=num_blocks),
      init_params=lambda rng: lib.init_params(variant, rng, image_hw=(p, p)),
      load_params=lambda path: lib.load_params(path, expected_variant=variant)[1],
      weights_hint=lib.hint(variant) if name in lib.VARIANTS else "")


def dinov2_entry(variant, name: str | None = None) -> Encoder:
  """The entry of a DINOv2 variant: a name of dinov2.VARIANTS, or a dict of its sizes."""
  return _vit_entry(dinov2, dinov2.DINOv2, "DINOv2", variant, name)


def dinov3_entry(variant, name: str | None = None) -> Encoder:
  """The entry of a DINOv3 variant: a name of dinov3.VARIANTS, or a dict of its sizes."""
  return _vit_entry(dinov3, dinov3.DINOv3, "DINOv3", variant, name)


for _name in dinov2.VARIANTS:
  register(dinov2_entry(_name, _name))
for _name in dinov3.VARIANTS:
  register(dinov3_entry(_name, _name))
