"""Input pipelines: training clips and evaluation videos (docs/METHOD.md §6, §7).

Training. A sample is one frame t of a video with its window t-n ... t+n of
consecutive stored frames (F = 2n+1, target in the middle); frames beyond the
video's ends are zeros with frame_mask False. An epoch visits every (video, t)
of the training splits once. Batches are numpy dicts
    'video':      (B, F, H, W, 3) uint8 at config.data.resolution (frames.resize_frames)
    'frame_mask': (B, F) bool
with B the per-host batch (global batch / process_count). The ImageNet normalisation is the
step's (frames.normalize_frames, on the device), so a batch is a quarter of float32's bytes.

Order and resume. The order of clips is a pure function of (dataset, seed,
shuffle_buffer): for epoch e the read units (TFRecord shards) are permuted with
the seed (seed, e) and grouped into blocks of at least `shuffle_buffer` clips,
and the clips of block b are permuted with the seed (seed, e, b). Global batch s
is clips [s*B, (s+1)*B) of that stream, and host p takes its contiguous slice of
each global batch, so the global batches do not depend on the number of hosts.
The iterator's whole state is the number of batches consumed: `get_state()`
returns it with a fingerprint of what defines the order (a JSON-able dict the
trainer stores in its checkpoint), `set_state(state)` restarts the stream at
that batch, reproducing exactly the batches an uninterrupted run would have
produced; `save(path)`/`restore(path)` do the same through a JSON file.

Decoding. Each host streams, in block order, the TFRecord shards holding its clips (read
ahead, only `video` parsed, frames left encoded). Per block, a Python generator lists the
frames this host's clips of the block use, each once, and where each clip's window finds
them; tf.data decodes and resizes those frames in parallel and cuts each batch out of the
decoded block with one gather. A batch that straddles two blocks takes its first clips from a
small carry: the frames of the clips the last block left over (fewer than a batch), kept
across blocks by a tf.data scan. A block holds every clip of its videos, so a frame is
decoded once an epoch (decoding per clip did it up to F times); with several hosts, a frame
whose windows went to several hosts is decoded on each. Two blocks are in flight: the next
one decodes while the current one is cut into batches, so memory holds about two blocks of
frames at the training resolution (shuffle_buffer clips a block, 0.5 MB a frame at 336x504).

Evaluation. `eval_videos` yields whole videos at native resolution (after the
converters' border crop) with int32 ground truth, -1 = void (stored id 255), in
dataset order. YTVIS19: videos [600:900] of train.json ('authors', docs/METHOD.md §7;
they overlap the training videos) or the same videos with training restricted
to the other videos ('disjoint'). DAVIS17: the 30 `val` videos.

Faults are named. `check_data(config)` is the cheap first call of an entry
point: a missing or unconverted dataset fails there in seconds, in one line,
before any model set-up. While reading, TF's errors are translated: a corrupt
record (TF's DataLossError names only a byte offset) becomes an OSError naming
the damaged shard file, and a frame TF cannot decode (records converted before
the converters decoded every frame) one naming the video and frame; both end
with what to do (convert again, copy again, or delete to rebuild).
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import os
import weakref
from collections.abc import Iterator, Sequence

import numpy as np

from solv_jax.data import frames as frames_lib
from solv_jax.data import sources
from solv_jax.data import datasets



# ----------------------------------------------------------------------------
# Clip order


@dataclasses.dataclass
class _Block:
  start: int              # global stream position of its first clip
  clips: np.ndarray       # (M, 2) int64 rows (video gid, t), in stream order
  chunks: list[int]       # read units (indices into ClipOrder.chunks)


class ClipOrder:
  """The deterministic infinite stream of training clips (see module doc)."""

  def __init__(self, chunks: Sequence[tuple[str, int, int]],
               chunk_clips: Sequence[np.ndarray], seed: int, block_clips: int):
    self.chunks = list(chunks)
    self.chunk_clips = [np.asarray(c, np.int64).reshape(-1, 2) for c in chunk_clips]
    self.seed = int(seed)
    self.block_clips = max(1, int(block_clips))
    self.clips_per_epoch = int(sum(len(c) for c in self.chunk_clips))
    if self.clips_per_epoch == 0:
      raise ValueError("The training splits contain no frames.")
    self._cache = (None, None)

  def epoch_blocks(self, epoch: int) -> list[_Block]:
    if self._cache[0] == epoch:
      return self._cache[1]
    rng = np.random.default_rng([self.seed, epoch])
    groups, current, count = [], [], 0
    for c in rng.permutation(len(self.chunks)):
      if not len(self.chunk_clips[c]):
        continue
      current.append(int(c))
      count += len(self.chunk_clips[c])
      if count >= self.block_clips:
        groups.append(current)
        current, count = [], 0
    if current:
      groups.append(current)
    blocks, start = [], epoch * self.clips_per_epoch
    for b, group in enumerate(groups):
      clips = np.concatenate([self.chunk_clips[c] for c in group])
      clips = clips[np.random.default_rng([self.seed, epoch, b]).permutation(len(clips))]
      blocks.append(_Block(start, clips, group))
      start += len(clips)
    self._cache = (epoch, blocks)
    return blocks

  def blocks_from(self, position: int) -> Iterator[_Block]:
    """Blocks from the one holding stream `position` onwards, forever."""
    epoch = position // self.clips_per_epoch
    while True:
      for block in self.epoch_blocks(epoch):
        if block.start + len(block.clips) > position:
          yield block
      epoch += 1

  def clips_at(self, start: int, stop: int) -> np.ndarray:
    """Clips at stream positions [start, stop) (for tests and inspection)."""
    out = []
    for block in self.blocks_from(start):
      lo, hi = max(start - block.start, 0), min(stop - block.start, len(block.clips))
      out.append(block.clips[lo:hi])
      if block.start + len(block.clips) >= stop:
        break
    return np.concatenate(out)


# ----------------------------------------------------------------------------
# Training iterator


def _split_list(spec: str) -> list[str]:
  return [s for s in str(spec).split("+") if s]


_LIVE_ITERATORS = weakref.WeakSet()


@atexit.register
def _close_live_iterators():
  # Finalise tf.data generators while Python is still up (avoids TF warnings).
  for it in list(_LIVE_ITERATORS):
    it.close()


class TrainIterator:
  """Infinite iterator of training batches; resumable with save/restore."""

  def __init__(self, source: sources.VideoSource, *, splits: Sequence[str],
               resolution: Sequence[int], num_context: int, batch_size: int,
               seed: int, shuffle_buffer: int = 2048,
               exclude: dict[str, set[int]] | None = None,
               process_index: int = 0, process_count: int = 1,
               prefetch: int = 2):
    self._it = None
    self._read_error = None  # a DataLossError met while reading records (see _clips)
    if num_context < 0:
      raise ValueError(f"num_context must be >= 0, got {num_context}.")
    if batch_size < 1 or batch_size % process_count:
      raise ValueError(f"The global batch size {batch_size} must be a positive "
                       f"multiple of the number of hosts ({process_count}).")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    self.source = source
    self.resolution = tuple(int(r) for r in resolution)
    self.num_frames = 2 * num_context + 1
    self.num_context = num_context
    self.batch_size = batch_size
    self.local_batch = batch_size // process_count
    self.process_index = process_index
    self.process_count = process_count
    self.prefetch = prefetch
    exclude = exclude or {}

    chunks, chunk_clips, self._offsets, longest = [], [], {}, 0
    self._chunk_gids, self._chunk_files = [], []  # per chunk: gid range, files
    for split in splits:
      lengths = source.lengths(split)
      self._offsets[split] = sum(len(source.lengths(s)) for s in self._offsets)
      longest = max(longest, int(lengths.max(initial=0)))
      for a, b in source.chunks(split):
        rows = [np.stack([np.full(lengths[v], self._offsets[split] + v),
                          np.arange(lengths[v])], 1)
                for v in range(a, b) if v not in exclude.get(split, ())]
        chunks.append((split, a, b))
        chunk_clips.append(np.concatenate(rows) if rows else np.zeros((0, 2)))
        self._chunk_gids.append((self._offsets[split] + a, self._offsets[split] + b))
        self._chunk_files.append(source.chunk_files(split, a, b))
    if self.num_frames > longest:
      raise ValueError(
          f"The clip window has F = 2*{num_context}+1 = {self.num_frames} frames "
          f"but the longest training video of {source.name} {list(splits)} has "
          f"{longest}; lower config.data.num_context.")
    self.order = ClipOrder(chunks, chunk_clips, seed, shuffle_buffer)
    self._gid_lengths = np.concatenate([source.lengths(s) for s in splits])  # by gid
    self._key_stride = longest + 1  # frame key = gid * stride + frame index
    self._decode_threads = _usable_cores()
    mean_length = self.order.clips_per_epoch / max(
        1, sum(len(source.lengths(s)) for s in splits))
    self._videos_ahead = int(np.clip(shuffle_buffer / mean_length, 8, 256))
    self._fingerprint = dict(
        dataset=source.name, splits=list(splits),
        seed=int(seed), batch_size=batch_size, shuffle_buffer=int(shuffle_buffer),
        clips_per_epoch=self.order.clips_per_epoch,
        excluded={k: sorted(v) for k, v in exclude.items()})
    self._step = 0
    _LIVE_ITERATORS.add(self)

  # -- state ------------------------------------------------------------------

  @property
  def step(self) -> int:
    """Number of batches consumed (= index of the next global batch)."""
    return self._step

  @property
  def steps_per_epoch(self) -> float:
    return self.order.clips_per_epoch / self.batch_size

  def get_state(self) -> dict:
    """JSON-able state: the step plus a fingerprint of the data order."""
    return dict(step=self._step, fingerprint=self._fingerprint)

  def set_state(self, state: dict):
    """Continues from a state returned by get_state (same data order)."""
    if state.get("fingerprint") != json.loads(json.dumps(self._fingerprint)):
      raise ValueError(
          "The saved data state was made for another data order:\n"
          f"  saved:   {state.get('fingerprint')}\n  current: {self._fingerprint}")
    self.close()
    self._step = int(state["step"])

  def save(self, path: str):
    """Writes the iterator state (JSON) to `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.get_state(), f)
    os.replace(tmp, path)

  def restore(self, path: str):
    """Continues from the state saved at `path`."""
    with open(path) as f:
      self.set_state(json.load(f))

  # -- iteration --------------------------------------------------------------

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self._it is None:  # (re)start the streams at the current step
      self._it = self._build(self._step)
    try:
      batch = next(self._it)
    except tf.errors.OpError as e:  # TF names a byte offset or nothing: name the file
      self.close()
      named = self._named_error(e)
      if named is None:
        raise
    else:
      self._step += 1
      return batch
    # Raised outside the except block, so no chained TF error keeps the dead streams alive.
    raise named

  def _named_error(self, error) -> OSError | None:
    """The user-facing error for a TF error of batch `self.step`, or None."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    lost = error if isinstance(error, tf.errors.DataLossError) else self._read_error
    self._read_error = None
    if lost is not None:  # from_generator hands it on as an UnknownError
      return self.source.damaged_record_error(self._files_from(self._step), lost)
    if isinstance(error, tf.errors.InvalidArgumentError) and sources.is_decode_error(error):
      return self.source.bad_frame_error(self._decoding_videos(self._step), error)
    return None

  def _files_from(self, step: int) -> list[str]:
    """Every file this iterator reads, those it reads from batch `step` on first."""
    every = list(dict.fromkeys(f for files in self._chunk_files for f, _, _ in files))
    ahead = itertools.islice(self._record_files(step), 2 * len(every))
    return list(dict.fromkeys([f for f, _, _ in ahead] + every))

  def _decoding_videos(self, step: int) -> list[tuple[str, int]]:
    """(split, index) of the videos whose frames this host decodes for the blocks that global
    batch `step` touches and the block after them (a block's frames are all decoded before
    its first clip is cut), the batch's own videos first."""
    B, b, p = self.batch_size, self.local_batch, self.process_index
    batch = self.order.clips_at(step * B, (step + 1) * B)[p * b:(p + 1) * b]
    gids, end = batch[:, 0].tolist(), (step + 1) * B
    for block in self.order.blocks_from(step * B):
      gids += self._plan(block, step * B)[0][:, 0].tolist()
      if block.start >= end:  # the first block after the batch's
        break
    starts = sorted(self._offsets.items(), key=lambda kv: kv[1])
    videos = []
    for gid in dict.fromkeys(int(g) for g in gids):
      split, offset = [kv for kv in starts if kv[1] <= gid][-1]
      videos.append((split, gid - offset))
    return videos

  def close(self):
    self._it = None  # finalises both tf.data streams and their generators

  def __del__(self):
    self.close()

  def _build(self, step: int):
    """The numpy iterator of batches from global batch `step` on."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from solv_jax import sharding  # pylint: disable=g-import-not-at-top
    sharding.undo_tf_malloc_patch()  # before the decoding threads take their arenas
    self._read_error = None
    # Stream 1: the records this host needs, in block order, read in sequence.
    parse = self.source.encoded_video_parser()
    records = tf.data.Dataset.from_generator(
        lambda: self._record_files(step),
        output_signature=(tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.int64),
                          tf.TensorSpec((), tf.int64)))
    records = records.interleave(
        lambda f, skip, take: tf.data.TFRecordDataset(f).skip(skip).take(take),
        cycle_length=1)  # sequential: records arrive in block order
    records = records.map(parse).prefetch(self._videos_ahead)
    # Stream 2: per block, its frames (encoded, each once) and where its batches find them.
    F, b = self.num_frames, self.local_batch
    rows = lambda *shape: tf.TensorSpec((None, *shape), tf.int32)  # noqa: E731
    masks = lambda *shape: tf.TensorSpec((None, *shape), tf.bool)  # noqa: E731
    plans = tf.data.Dataset.from_generator(
        lambda: self._blocks(step, records.as_numpy_iterator()),
        output_signature=dict(
            encoded=tf.TensorSpec((None,), tf.string), first_carry=rows(F),
            first_new=rows(F), first_mask=masks(F), rows=rows(b, F), mask=masks(b, F),
            keep_carry=rows(), keep_new=rows()))
    # Decoded blocks, one ahead: the next one decodes while the current one is cut.
    blocks = plans.flat_map(self._decode_block).prefetch(1)
    H, W = self.resolution

    # Blocks are dicts (tf.data unpacks a tuple into arguments, a dict never).
    def carry_over(carry, block):  # carry: the frames of the clips left for the next batch
      kept = tf.concat([tf.gather(carry, block["keep_carry"]),
                        tf.gather(block["frames"], block["keep_new"])], 0)
      return kept, dict(block, carry=carry)

    def cut(block):  # one gather a batch, two for the one that straddles
      frames = block["frames"]
      first = tf.concat([tf.gather(block["carry"], block["first_carry"]),
                         tf.gather(frames, block["first_new"])], 0)
      first = tf.data.Dataset.from_tensors((first, block["first_mask"])).filter(
          lambda v, m: tf.shape(m)[0] > 0)
      return first.concatenate(tf.data.Dataset.from_tensor_slices(
          (block["rows"], block["mask"])).map(lambda r, m: (tf.gather(frames, r), m)))

    batches = blocks.scan(tf.zeros((1, H, W, 3), tf.uint8), carry_over).flat_map(cut)
    batches = batches.map(lambda v, m: {"video": v, "frame_mask": m})
    return batches.prefetch(self.prefetch).as_numpy_iterator()

  def _decode_block(self, plan):
    """One block's (N,) encoded frames -> one element: the frames decoded and resized in
    parallel, as 'frames' (N + 1, H, W, 3) uint8 whose row 0 is the zero frame that masked
    window slots point at, beside the block's plan."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    H, W = self.resolution
    zero = tf.data.Dataset.from_tensors(tf.zeros((H, W, 3), tf.uint8))
    decoded = tf.data.Dataset.from_tensor_slices(plan["encoded"]).map(
        self._decode_frame, num_parallel_calls=self._decode_threads, deterministic=True)
    frames = zero.concatenate(decoded).batch(1 << 30)  # one element: the whole block
    return frames.map(lambda f: dict(plan, frames=f))

  def _decode_frame(self, encoded):
    """Encoded frame -> (H, W, 3) uint8 at the training resolution (frames.resize_frame)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    H, W = self.resolution
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    frame = tf.numpy_function(lambda x: frames_lib.resize_frame(x, (H, W)),
                              [tf.cast(image, tf.float32)], tf.uint8, stateful=False)
    return tf.ensure_shape(frame, (H, W, 3))

  def _plans(self, step: int) -> Iterator[tuple[np.ndarray, list[int]]]:
    """Per block from global batch `step` on: (this host's clips, chunks to read)."""
    for block in self.order.blocks_from(step * self.batch_size):
      yield self._plan(block, step * self.batch_size)

  def _plan(self, block: _Block, position: int) -> tuple[np.ndarray, list[int]]:
    """This host's clips of `block` from stream `position` on, and the chunks holding them."""
    B, b, p = self.batch_size, self.local_batch, self.process_index
    pos = block.start + np.arange(len(block.clips))
    clips = block.clips[(pos >= position) & ((pos % B) // b == p)]
    wanted = set(clips[:, 0].tolist())
    chunks = [c for c in block.chunks
              if any(g in wanted for g in range(*self._chunk_gids[c]))]
    return clips, chunks

  def _record_files(self, step: int) -> Iterator[tuple[str, int, int]]:
    for _, chunks in self._plans(step):
      for c in chunks:
        yield from self._chunk_files[c]

  def _windows(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clips (M, 2) rows (gid, t) -> frame keys (M, F) gid * stride + frame, and the mask of
    the frames inside their video (M, F)."""
    idx = clips[:, 1:2] - self.num_context + np.arange(self.num_frames)  # (M, F)
    valid = (idx >= 0) & (idx < self._gid_lengths[clips[:, :1]])
    return clips[:, :1] * self._key_stride + idx, valid

  def _blocks(self, step: int, records) -> Iterator[dict[str, np.ndarray]]:
    """Per block from global batch `step` on, this host's part, as the plan `_build` runs:
      encoded      (N,) bytes: the frames its clips use that the carry lacks, each once, in
                   record order; decoded, they are rows 1..N of the block's frames, row 0
                   the zero frame that masked window slots point at;
      first_*      the batch that finishes the clips carried over from earlier blocks (none if
                   no clip was carried or the block cannot complete it): their rows (c, F)
                   into the carry, then (b - c, F) into the block's frames, and its mask;
      rows, mask   (n, b, F): the block's further batches, rows into its frames;
      keep_*       the rows of the carry and of the block's frames that the clips left over
                   (fewer than b) need: the next carry, row 0 again the zero frame.
    A batch is one gather of its rows, so its frames are copied once."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    b, F, stride = self.local_batch, self.num_frames, self._key_stride
    carried = np.zeros((0, 2), np.int64)  # clips not yet in a batch, in stream order
    carry, carry_size = {}, 1  # frame key -> its row in the carry; its rows, zero frame too
    no_rows = np.zeros((0, F), np.int32)
    for clips, chunks in self._plans(step):
      videos = {}
      for c in chunks:
        for gid in range(*self._chunk_gids[c]):
          try:
            videos[gid] = next(records)
          except tf.errors.DataLossError as e:  # leaves this generator as UnknownError
            self._read_error = e
            raise
      if not len(clips):
        continue
      keys, valid = self._windows(clips)
      needed = np.unique(keys[valid])  # sorted: videos in gid order, frames in time order
      rows = np.zeros(keys.shape, np.int32)
      rows[valid] = 1 + np.searchsorted(needed, keys[valid])
      encoded = np.array([videos[k // stride][k % stride] for k in needed.tolist()],
                         dtype=object)
      c, m = len(carried), len(clips)
      plan = dict(encoded=encoded, first_carry=no_rows, first_new=no_rows,
                  first_mask=no_rows.astype(bool))
      if c + m < b:  # no batch completes: every clip waits, with all the frames
        plan.update(rows=np.zeros((0, b, F), np.int32), mask=np.zeros((0, b, F), bool),
                    keep_carry=np.arange(carry_size, dtype=np.int32),
                    keep_new=np.arange(1, len(needed) + 1, dtype=np.int32))
        carry.update({k: carry_size + i for i, k in enumerate(needed.tolist())})
        carry_size += len(needed)
        carried = np.concatenate([carried, clips])
        yield plan
        continue
      start = 0
      if c:  # the carried clips and the block's first b - c clips make one batch
        start = b - c
        carry_keys, carry_valid = self._windows(carried)
        first_carry = np.zeros(carry_keys.shape, np.int32)
        first_carry[carry_valid] = [carry[k] for k in carry_keys[carry_valid].tolist()]
        plan.update(first_carry=first_carry, first_new=rows[:start],
                    first_mask=np.concatenate([carry_valid, valid[:start]]))
      n = (m - start) // b
      stop = start + n * b
      tail = np.unique(keys[stop:][valid[stop:]])
      plan.update(rows=rows[start:stop].reshape(n, b, F),
                  mask=valid[start:stop].reshape(n, b, F),
                  keep_carry=np.zeros(0, np.int32),
                  keep_new=np.concatenate([[0], 1 + np.searchsorted(needed, tail)]).astype(
                      np.int32))
      carry, carry_size = {k: 1 + i for i, k in enumerate(tail.tolist())}, 1 + len(tail)
      carried = clips[stop:]
      yield plan


def _usable_cores() -> int:
  """The cores this process may run on (its affinity where the OS has one, as on Linux)."""
  if hasattr(os, "sched_getaffinity"):
    return max(1, len(os.sched_getaffinity(0)))
  return max(1, os.cpu_count() or 1)


def data_config_of(config):
  """config.data of a full config, or the argument itself if it is config.data."""
  if "name" not in config and "data" in config:
    return config.data
  return config


def make_train_iterator(config, local_batch_size: int,
                        process_index: int | None = None,
                        process_count: int | None = None, *,
                        seed: int | None = None) -> TrainIterator:
  """Training batches of `local_batch_size` clips for this host.

  Args:
    config: the full config (config.data and config.seed are used) or config.data.
    local_batch_size: clips per host and step; the global batch is
      local_batch_size * process_count.
    process_index, process_count: default jax.process_index()/process_count().
    seed: data-order seed; defaults to config.seed (0 if config is config.data).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  data_config = data_config_of(config)
  if seed is None:
    seed = config.get("seed", 0) if data_config is not config else 0
  source = datasets.open_source(data_config)
  splits = _split_list(data_config.train_split)
  for split in splits:
    source.check_split(split)
  dataset = datasets.get(source.name)
  exclude = {s: dataset.excluded_videos(data_config, source, s) for s in splits}
  return TrainIterator(
      source, splits=splits,
      resolution=data_config.resolution,
      num_context=int(data_config.num_context),
      batch_size=local_batch_size * process_count, seed=int(seed),
      shuffle_buffer=int(data_config.shuffle_buffer),
      exclude={s: v for s, v in exclude.items() if v},
      process_index=process_index, process_count=process_count)


# ----------------------------------------------------------------------------
# Evaluation videos


def eval_split_spec(data_config, source: sources.VideoSource,
                    split: str | None = None) -> str:
  """TFDS split string of the evaluation videos, e.g. 'train[600:900]'."""
  split = split or data_config.eval_split
  source.check_split(split)
  return datasets.get(source.name).eval_split_spec(data_config, source, split)


def ground_truth(segmentations: np.ndarray, first_frame_objects: bool) -> np.ndarray:
  """Stored uint8 ids (T, H, W[, 1]) -> int32 (T, H, W), 255 -> -1 (void).

  With first_frame_objects, ids absent from frame 0 become background (docs/METHOD.md §7).
  """
  ids = np.asarray(segmentations)
  if ids.ndim == 4:
    ids = ids[..., 0]
  ids = ids.astype(np.int32)
  ids[ids == 255] = -1
  if first_frame_objects and len(ids):
    keep = np.setdiff1d(np.unique(ids[0]), [0, -1])
    ids[(ids > 0) & ~np.isin(ids, keep)] = 0
  return ids


def eval_videos(config, *, split: str | None = None,
                max_videos: int | None = None) -> Iterator[dict]:
  """Whole evaluation videos, one dict at a time (contract's eval format).

  config: the full config or config.data. split defaults to eval_split,
  max_videos to eval_max_videos (0 = all).
  """
  data_config = data_config_of(config)
  source = datasets.open_source(data_config)
  spec = eval_split_spec(data_config, source, split)
  if max_videos is None:
    max_videos = data_config.eval_max_videos
  ds = source.read_eval_videos(spec)
  if max_videos and max_videos > 0:
    ds = ds.take(int(max_videos))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  split, first = _spec_start(spec)
  examples = ds.as_numpy_iterator()
  for count in itertools.count():
    named = None
    try:
      ex = next(examples)
    except StopIteration:
      return
    except tf.errors.DataLossError as e:  # TF names a byte offset, not the file
      named = source.damaged_record_error(source.split_files(spec), e)
    except tf.errors.InvalidArgumentError as e:
      if not sources.is_decode_error(e):
        raise
      named = source.bad_frame_error([(split, first + count)], e)
    if named is not None:
      del examples  # outside the except block, so that nothing keeps the TF iterator alive
      raise named
    meta = ex["metadata"]
    out = {
        "video": ex["video"],
        "segmentations": ground_truth(ex["segmentations"],
                                      source.first_frame_objects),
        "has_annotations": bool(ex.get("has_annotations", True)),
        "video_name": meta["video_name"].decode(),
    }
    if "num_instances" in meta:
      out["num_instances"] = int(meta["num_instances"])
    yield out


def _spec_start(spec: str) -> tuple[str, int]:
  """'train[600:900]' -> ('train', 600); 'val' -> ('val', 0)."""
  split, _, rest = spec.partition("[")
  start = rest.split(":")[0] if rest else ""
  return split, int(start) if start else 0


def num_eval_videos(config, *, split: str | None = None) -> int:
  """How many videos eval_videos yields (before eval_max_videos)."""
  data_config = data_config_of(config)
  source = datasets.open_source(data_config)
  return _num_videos(source, eval_split_spec(data_config, source, split))


def _num_videos(source: sources.VideoSource, spec: str) -> int:
  if "[" in spec:
    lo, hi = spec[spec.index("[") + 1:-1].split(":")
    return int(hi) - int(lo)
  return source.num_videos(spec)


# ----------------------------------------------------------------------------
# Checking a dataset before anything else is set up


def _check_window(data_config, longest: int, what: str) -> None:
  frames = 2 * int(data_config.num_context) + 1
  if frames > longest:
    raise ValueError(f"The clip window has F = 2*{data_config.num_context}+1 = {frames} frames "
                     f"but {what} has {longest}; lower config.data.num_context or use longer "
                     "videos.")


def check_data(config, mode: str = "train_and_eval", build: bool = False) -> str:
  """Fails fast when the dataset of config.data cannot serve `mode`; else a summary line.

  Meant to run first, before any model set-up, so that a wrong data_dir or
  unconverted records end the run in seconds with one line. Reads only
  metadata (dataset_info.json, the index) and stats the shards. A dataset built
  on first use (the embedded synthetic one) is reported as such, or, with
  `build`, built here and then checked like the others (the entry point builds it
  before it writes the workdir). Raises FileNotFoundError, OSError or ValueError
  with a one-line message.

  Args:
    config: the full config or config.data.
    mode: 'train', 'eval' or 'train_and_eval': which splits must exist.
    build: build a dataset that is built on first use, if it is not yet.
  """
  if mode not in ("train", "eval", "train_and_eval"):
    raise ValueError(f"mode must be 'train', 'eval' or 'train_and_eval', got {mode!r}.")
  data_config = data_config_of(config)
  name, data_dir, path = datasets.locate(data_config)
  train_splits = _split_list(data_config.train_split)
  eval_split = data_config.eval_split
  wanted = (train_splits if mode != "eval" else []) + ([eval_split] if mode != "train" else [])
  not_built = datasets.get(name).not_built(data_config, data_dir, path, wanted)
  if not_built is not None:  # built on first use (the synthetic videos)
    if mode != "eval":
      _check_window(data_config, datasets.get(name).planned_frames(data_config),
                    f"every video {name} would build")
    if not build:
      return not_built
  source = datasets.open_source(data_config)  # opens metadata only (or builds, with `build`)
  parts = []
  if mode != "eval":
    for split in train_splits:
      source.check_split(split)
    videos = sum(source.num_videos(s) for s in train_splits)
    _check_window(data_config, max(int(source.lengths(s).max(initial=0)) for s in train_splits),
                  f"the longest training video of {name} {train_splits}")
    parts.append(f"train {'+'.join(train_splits)} ({videos} videos)")
  if mode != "train":
    spec = eval_split_spec(data_config, source)
    parts.append(f"eval {spec} ({_num_videos(source, spec)} videos)")
  return f"{name} at {source.path}: " + ", ".join(parts)
