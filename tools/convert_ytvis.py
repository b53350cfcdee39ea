#!/usr/bin/env python
"""Converts YouTube-VIS 2019 into the TFDS dataset `ytvis19` read by solv_jax.

    python tools/convert_ytvis.py --root /data/ytvis19 --out ~/tensorflow_datasets

Expects root/{train,valid,test}/JPEGImages/<video>/<frame>.jpg and
root/{split}/{split}.json, plus root/train/Annotations/<video>/<frame>.png (or RLE
annotations in train.json). Re-running with a complete output is a no-op.
Every frame and annotation is decoded: a damaged file stops the conversion
with one line naming the video and the file (exit status 1), and no partial
dataset is left in --out.
"""
import sys

from solv_jax.data import convert

if __name__ == "__main__":
  convert.ytvis_main(sys.argv[1:])
