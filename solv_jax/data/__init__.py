"""Input pipelines (docs/METHOD.md §6-§8).

  pipeline.py    check_data, make_train_iterator (uint8 batches), eval_videos
  frames.py      resize_frames (host, uint8) and normalize_frames (device): the one resize
  datasets/      one module per dataset (its rules), looked up by config.data.name
  sources.py     an opened dataset: TFDS builder + video index (one reading path)
  movi.py        MOVi-E from Kubric's TFDS release (gs://kubric-public/tfds)
  convert.py     YTVIS19 / DAVIS17 raw layouts -> TFDS records (tools/convert_*.py)
  synthetic.py   the embedded procedural dataset, built on first use
  records.py     the TFDS record format shared by convert.py and synthetic.py

Modules import tensorflow lazily where they can; importing this package does not.
"""
