"""config.xla_flags: merged into XLA_FLAGS before JAX starts, the user's own flags first."""
import os
import resource
import subprocess
import sys

import jax
import pytest

from configs import demo
from solv_jax import schema
from solv_jax import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="


def test_merge_keeps_the_users_flags_and_appends_the_rest():
  user = "--xla_force_host_platform_device_count=2  --xla_cpu_experimental_ynn_fusion_type=dot"
  assert sharding.merge_xla_flags(user, YNN_OFF) == " ".join(user.split())
  assert sharding.merge_xla_flags("--xla_force_host_platform_device_count=2", YNN_OFF) == (
      "--xla_force_host_platform_device_count=2 " + YNN_OFF)
  assert sharding.merge_xla_flags("", "--a=1 --b") == "--a=1 --b"
  assert sharding.merge_xla_flags("--b=0", "--a=1 --b") == "--b=0 --a=1"
  assert sharding.merge_xla_flags("--a=1", "") == "--a=1"


def _compiled_dot_uses_ynn(env_flags, config_flags):
  """Compiles a matmul in a fresh process after apply_xla_flags; True if XLA:CPU put it in a
  YNNPACK fusion."""
  code = ("import jax, jax.numpy as jnp\n"
          "from solv_jax import sharding\n"
          f"print(sharding.apply_xla_flags({config_flags!r}))\n"
          "a, b = jnp.ones((256, 128)), jnp.ones((128, 512))\n"
          "print('__ynn_fusion' in jax.jit(lambda a, b: a @ b).lower(a, b).compile().as_text())\n")
  env = {**os.environ, "XLA_FLAGS": env_flags, "JAX_PLATFORMS": "cpu"}
  res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  flags_in_effect, uses_ynn = res.stdout.split("\n")[:2]
  return flags_in_effect, uses_ynn == "True"


def test_flags_reach_xla():
  # jaxlib's default puts CPU dots into YNNPACK fusions; the recipes' flag turns that off,
  # and a user's own setting of the same flag wins over the config's.
  assert _compiled_dot_uses_ynn("", "") == ("", True)
  assert _compiled_dot_uses_ynn("", YNN_OFF) == (YNN_OFF, False)
  assert _compiled_dot_uses_ynn("--xla_cpu_experimental_ynn_fusion_type=individual_dot",
                                YNN_OFF)[1]


def test_too_late_is_an_error(monkeypatch):
  jax.devices()  # the backend is open
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(RuntimeError, match="before JAX opens a backend"):
    sharding.apply_xla_flags("--xla_cpu_enable_fast_math=false")
  assert os.environ["XLA_FLAGS"] == ""
  # nothing to change: no error
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
  assert sharding.apply_xla_flags("--xla_cpu_enable_fast_math=false") == (
      "--xla_cpu_enable_fast_math=true")
  # not strict (segmenting in a notebook): a warning, and the flags stay as they are
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.warns(RuntimeWarning, match="Running without them"):
    assert sharding.apply_xla_flags("--xla_cpu_enable_fast_math=false", strict=False) == ""
  assert os.environ["XLA_FLAGS"] == ""


def test_recipes_set_the_flag_and_the_demo_does_not():
  assert schema.get_config().xla_flags == YNN_OFF
  assert demo.get_config().xla_flags == ""
  schema.validate(demo.get_config())


KEEP_HOST_MEMORY = """
import ctypes, resource, sys
from solv_jax import sharding
kept = sharding.keep_host_memory(sys.argv[1] == "on")
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 64 * 2**20, []
for _ in range(3):  # a 64 MiB block written, freed, allocated again, as XLA:CPU's temporaries
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, faults[-1])
"""


def test_keep_host_memory_reuses_freed_blocks_instead_of_faulting_them_in_again():
  pages = 64 * 2**20 // resource.getpagesize()

  def run(mode):
    out = subprocess.run([sys.executable, "-c", KEEP_HOST_MEMORY, mode], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)

  kept, faults = run("off")
  assert kept == "False" and faults >= pages  # glibc maps the block anew: every page faults
  kept, faults = run("on")
  assert kept == "True" and faults < pages // 20  # the freed block is reused in place
