"""One persistent XLA compilation cache for the whole test session.

Most tests compile the same few programs (the tiny config's train step, evaluation and
encoder), in this process and in the subprocesses of the entry point and tools they start.
With the cache, each program compiles once per session; a cached executable is the compiled
program itself, so results are unchanged. Set before JAX is imported (test modules import it
after this file), inherited by every subprocess; an environment that sets the cache itself
wins, and tests that need their own cache (test_train's e2e runs, test_multiprocess) set theirs.

XLA:CPU compiles the tests' programs with LLVM's optimisation off (TEST_XLA_FLAGS, appended
to XLA_FLAGS before JAX starts and inherited by the subprocesses): the tests' tiny models
spend their time compiling, not running, and the HLO the tests check is the same (these flags
act on XLA:CPU's code generation, after the HLO passes). tests/test_configs.py and
tests/models/test_solv.py took 97 s instead of 133 s on a 2-core EPYC (2026-12-07). Set
SOLV_JAX_TEST_OPTIMIZED=1 to test with XLA's default code generation.
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


TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if os.environ.get("SOLV_JAX_TEST_OPTIMIZED", "") not in ("1", "true"):
  _flags = os.environ.get("XLA_FLAGS", "")
  if "--xla_backend_optimization_level" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} {TEST_XLA_FLAGS}".strip()


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)
