"""DAVIS 2017 (semi-supervised annotations, 480p), converted by tools/convert_davis.py
(solv_jax/data/convert.py); ground truth restricted to the objects of the first frame."""
from __future__ import annotations

from solv_jax.data.datasets.base import Dataset, register


class DAVIS17(Dataset):
  name = "davis17"
  first_frame_objects = True
  converter = "tools/convert_davis.py"


register(DAVIS17())
