"""Files written whole or not at all, and JSON read only when it is whole.

Every result file the project writes (results.json, summary.json, config.json, the baselines'
JSON, exports, slots.npz, mask PNGs and GIFs) goes through `replacing`: the data is written to
a temporary file beside the target and renamed over it only once complete, so a full disk, a
kill or Ctrl-C leaves either the old file or the new one, never a torn one, and no temporary
file behind. `read_json` is how an "already done" check reads such a file: torn or foreign
content counts as not done.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading


@contextlib.contextmanager
def replacing(path: str):
  """`with replacing(path) as tmp:` write the file at `tmp` (same folder and extension as
  path); on leaving the block it is renamed over `path`, on an error it is removed."""
  folder, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  tmp = os.path.join(folder, f".{stem}.{os.getpid()}.{threading.get_ident()}.tmp{ext}")
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  with replacing(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)


def write_json(path: str, obj, indent: int | None = 2) -> None:
  write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str) -> dict | None:
  """The JSON object in `path`; None if the file is missing, unreadable, torn or not an
  object."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def write_problem(error: BaseException) -> str | None:
  """What a full, read-only or forbidden disk made of a save, as a few words; None if the
  error is something else. Orbax reports a full disk as a ValueError 'RESOURCE_EXHAUSTED', TF
  as a ResourceExhaustedError."""
  import errno
  seen = error
  while seen is not None:
    if type(seen).__name__ == "ResourceExhaustedError":
      return "the disk is full"
    if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
      return "the disk is full"
    if isinstance(seen, OSError) and seen.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
      return "the folder is read-only or not writable"
    problem = problem_in_text(str(seen))
    if problem is not None:
      return problem
    seen = seen.__cause__ or seen.__context__
  return None


def problem_in_text(text: str) -> str | None:
  """`write_problem` for a message alone (a log record's text, an error's message)."""
  if any(s in text for s in ("No space left", "RESOURCE_EXHAUSTED", "Disk quota",
                             "Not enough disk space")):
    return "the disk is full"
  if "Read-only file system" in text or "Permission denied" in text:
    return "the folder is read-only or not writable"
  return None
