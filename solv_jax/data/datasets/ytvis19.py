"""YouTube-VIS 2019, converted by tools/convert_ytvis.py (solv_jax/data/convert.py). Only
train.json has annotations, so the evaluation videos are videos [600:900] of the converted
train split, as the authors evaluate (config.data.ytvis_eval_subset='authors'); 'disjoint'
also holds them out of training (docs/METHOD.md §7)."""
from __future__ import annotations

from solv_jax.data.datasets.base import Dataset, register
from solv_jax.data.sources import VideoSource

EVAL_RANGE = (600, 900)  # videos of train.json the authors evaluate on
SUBSETS = ("authors", "disjoint")


class YTVIS19(Dataset):
  name = "ytvis19"
  first_frame_objects = True
  converter = "tools/convert_ytvis.py"

  def eval_range(self, source: VideoSource) -> tuple[int, int]:
    lo, hi = EVAL_RANGE
    num_videos = source.num_videos("train")
    if num_videos <= lo:
      raise ValueError(
          f"The YTVIS19 evaluation subset is videos [{lo}:{hi}] of train.json, but "
          f"the converted train split has only {num_videos} videos.")
    return lo, min(hi, num_videos)

  def eval_split_spec(self, data_config, source: VideoSource, split: str) -> str:
    if split != "train":
      return split
    if data_config.ytvis_eval_subset not in SUBSETS:
      raise ValueError(f"ytvis_eval_subset must be 'authors' or 'disjoint', "
                       f"got {data_config.ytvis_eval_subset!r}.")
    lo, hi = self.eval_range(source)
    return f"train[{lo}:{hi}]"

  def excluded_videos(self, data_config, source: VideoSource, split: str) -> set[int]:
    if split == "train" and data_config.ytvis_eval_subset == "disjoint":
      return set(range(*self.eval_range(source)))
    return set()


register(YTVIS19())
