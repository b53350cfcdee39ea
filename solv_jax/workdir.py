"""A training workdir is owned by one run at a time: WORKDIR/run.lock holds its pid and host.

A second run in the same workdir is refused with the owner named; a lock left by a run that
died (same host, no such process) is taken over with a note. Only process 0 of a
multi-process run takes the lock.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time

LOCK = "run.lock"


class WorkdirError(RuntimeError):
  pass


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def acquire(workdir: str) -> str:
  """Takes WORKDIR/run.lock or raises WorkdirError naming the run that holds it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      other = _read(path)
      if other is None:  # being written right now, or a torn file: look again
        time.sleep(0.2)
        other = _read(path)
      if other is not None and other.get("host") == me["host"] and not _alive(
          int(other.get("pid", -1))):
        print(f"Note: {path} was left by run {other.get('pid')} on {other.get('host')}, "
              "which is no longer running; taking it over.", flush=True)
        os.remove(path)
        continue
      who = (f"pid {other.get('pid')} on {other.get('host')}, since "
             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(other.get('since', 0)))}"
             if other else "an unreadable lock file")
      raise WorkdirError(
          f"{workdir} is in use by another run ({who}). Wait for it to finish, use another "
          f"--workdir, or delete {path} if that run is gone.")
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return path
  raise WorkdirError(f"Could not take {path}: another run took it at the same time.")


def release(path: str) -> None:
  lock = _read(path)
  if lock is not None and lock.get("pid") == os.getpid():
    os.remove(path)


@contextlib.contextmanager
def lock(workdir: str, enabled: bool = True):
  """Holds WORKDIR/run.lock for the duration (no-op when not enabled)."""
  if not enabled:
    yield
    return
  path = acquire(workdir)
  try:
    yield
  finally:
    release(path)
