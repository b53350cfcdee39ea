"""One persistent XLA compilation cache for the whole test session.

Most tests compile the same few programs (the tiny config's train step, evaluation and
encoder), in this process and in the subprocesses of the entry point and tools they start.
With the cache, each program compiles once per session; a cached executable is the compiled
program itself, so results are unchanged. Set before JAX is imported (test modules import it
after this file), inherited by every subprocess; an environment that sets the cache itself
wins, and tests that need their own cache (test_train's e2e runs, test_multiprocess) set theirs.
"""
import os
import shutil
import tempfile

_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="solv_jax_test_xla_cache_")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
