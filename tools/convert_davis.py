#!/usr/bin/env python
"""Converts DAVIS 2017 (480p) into the TFDS dataset `davis17` read by solv_jax.

    python tools/convert_davis.py --root /data/DAVIS --out ~/tensorflow_datasets

Expects root/JPEGImages/480p/<video>/00000.jpg, root/Annotations/480p/<video>/
00000.png and root/ImageSets/2017/{train,val}.txt. Re-running with a complete
output is a no-op.
Every frame and annotation is decoded: a damaged file stops the conversion
with one line naming the video and the file (exit status 1), and no partial
dataset is left in --out.
"""
import sys

from solv_jax.data import convert

if __name__ == "__main__":
  convert.davis_main(sys.argv[1:])
