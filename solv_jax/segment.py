"""Segments a video file or a folder of frames with a trained SOLV model.

  python -m solv_jax.segment --checkpoint=runs/ytvis19 --video=clip.mp4 --out=seg/clip
  python -m solv_jax.segment --checkpoint=model.npz --video=frames/ --out=seg/x --max_frames=200
  python -m solv_jax.segment --checkpoint=runs/ytvis19 --video=clip.mp4 --out=seg/clip \
      --save_slots --overwrite

A thin command line over `solv_jax.inference` (the model and the segmenter), `solv_jax.video_io`
(reading) and `solv_jax.outputs` (writing); from Python, use those.

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
embedding and G_abs are learned per token of that grid), through `inference.VideoSegmenter`
(the evaluation protocol, docs/METHOD.md §7), and its masks are upsampled to the video's own
size with `tracking.masks_to_ids`. --out must be a new or empty folder; a non-empty one is
refused unless --overwrite is given, which replaces the outputs an earlier run of this command
wrote there (listed in its .solv_jax_segment.json) and touches no other file: files with the
output names that no run listed, or a symbolic link as --out, are refused by name. Written
under --out:
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
                        480 px (outputs.GIF_MAX_SIDE), looping, at most 200 frames
                        (outputs.GIF_MAX_FRAMES): a longer video's GIF shows every k-th
                        frame, each shown k times as long
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
not by the number of frames of native size. In Python, `video_io.open_video` +
`inference.segment_frames` + `outputs.write_frames` are that path; `video_io.read_video` +
`inference.segment` + `outputs.write_outputs` do the same on frames held in memory.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf only resizes frames here

from solv_jax import inference, outputs, video_io  # noqa: E402


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
                      help="overlay frame rate (default: the video's, else "
                           f"{outputs.DEFAULT_FPS:g})")
  parser.add_argument("--save_slots", action="store_true",
                      help="also write slots.npz: per frame the merged slots, their validity, "
                           "track ids and token-grid masks")
  parser.add_argument("--overwrite", action="store_true",
                      help="write into a non-empty --out, replacing this command's outputs there")
  args = parser.parse_args(argv)
  try:
    outputs.check_out_dir(args.out, args.overwrite, manifest=True)  # before the long read
    if not os.path.exists(args.checkpoint):  # before a long read
      raise inference.InferenceError(f"--checkpoint {args.checkpoint!r} does not exist "
                                     f"(expected {inference.CHECKPOINT_KINDS}).")
    if args.max_frames < 0:
      raise video_io.VideoError(f"--max_frames must be >= 0, got {args.max_frames}.")
    source = video_io.open_video(args.video, args.max_frames or None)  # headers, first frame
    loaded = inference.load_model(args.checkpoint, args.resolution, xla_flags=True)
  except (ValueError, FileNotFoundError) as e:  # Output/Video/InferenceError, a bad file
    print(f"error: {e}", file=sys.stderr)
    return 1
  # Streamed: the video is decoded twice, once for the model and once for the outputs, so that
  # memory holds a chunk of frames, never the whole video (issue 18.8).
  h, w = loaded.config.data.resolution
  print(f"Segmenting {args.video} at {h}x{w} ...", flush=True)
  try:
    out = inference.segment_frames(loaded, source)
    num_frames, hw = source.num_frames, source.hw
    fps = args.fps or source.fps or outputs.DEFAULT_FPS
    pairs = ((frame, inference.frame_ids(out, t, hw))
             for t, frame in enumerate(source.frames(False)))
    summary = outputs.write_frames(args.out, source.info, pairs, (num_frames, *hw), fps,
                                   loaded.info, slots=out if args.save_slots else None)
  except video_io.VideoError as e:  # a frame that fails to decode past open_video's checks
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # a full or read-only --out
    where = f" ({e.filename})" if e.filename else ""
    print(f"error: cannot write --out {args.out!r}: {e.strerror or e}{where}. Free space or "
          "choose a writable folder, then run again (with --overwrite if it kept some "
          "outputs).", file=sys.stderr, flush=True)
    return 1
  except KeyboardInterrupt:
    print(f"error: interrupted (Ctrl-C); {args.out} holds no summary.json of this run.",
          file=sys.stderr, flush=True)
    return 130
  print(f"{summary['num_objects']} tracks over {num_frames} frames; wrote {args.out}/masks/*.png, "
        f"overlay.gif{', overlay.mp4' if summary['outputs']['overlay_mp4'] else ''}"
        f"{', slots.npz' if summary['outputs']['slots'] else ''}, summary.json", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
