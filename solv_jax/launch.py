"""Runs `python -m solv_jax.main` as N cooperating processes on this machine: a real
multi-process JAX cluster over the loopback interface, one CPU device per process, as a TPU
pod slice or a SLURM job runs one process per host (docs/many_machines.md).

  python -m solv_jax.launch --processes=2 -- --config=tests/tiny.py \
      --config.data.data_dir=DATA --workdir=runs/two --mode=train_and_eval

Everything after `--` goes to every process unchanged, plus --config.train.distributed=True.
Each process gets JAX_PLATFORMS=cpu, XLA_FLAGS with
--xla_force_host_platform_device_count=--devices_per_process, and the cluster description that
`jax.distributed.initialize` needs, as --env says:
  jax    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i (the
         first is read by jax itself, the other two by solv_jax.main);
  slurm  what `srun` sets: SLURM_JOB_ID, SLURM_STEP_NODELIST=127.0.0.1, SLURM_NTASKS=N,
         SLURM_PROCID=i, SLURM_LOCALID=i (plus JAX_COORDINATOR_PORT=PORT), so that jax's own
         SLURM auto-detection finds the cluster, as it does under srun.
PORT is a free port of 127.0.0.1 and the coordinator binds to 127.0.0.1 only.

Output: every line of process i (stdout and stderr) is printed as "[i] line"; the run logs
once, on process 0. The pid of each process is printed first ("launch: process i pid P").
If a process fails (or is killed), the others are stopped: SIGTERM, then SIGKILL after
--grace seconds. SIGTERM or Ctrl-C to the launcher is passed on to every process as SIGTERM:
they save a checkpoint at the same step and exit with 143.

Exit status: 0 when every process exits 0; 143 when all were preempted; 124 after --timeout;
else the status of the first process that failed (128 + N for a process killed by signal N).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

EXIT_TIMEOUT = 124
EXIT_PREEMPTED = 128 + signal.SIGTERM
LOOPBACK = "127.0.0.1"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
  """A TCP port of 127.0.0.1 that nothing listens on (free when asked; the coordinator binds
  it a moment later)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((LOOPBACK, 0))
    return s.getsockname()[1]


def process_env(base: dict, index: int, count: int, port: int, devices: int,
                env_style: str = "jax") -> dict:
  """The environment of process `index` of `count`: CPU platform with `devices` devices and the
  cluster description jax.distributed.initialize reads (see the module doc)."""
  env = {k: v for k, v in base.items()
         if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                              "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS"))}
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=" ".join(flags + [f"{DEVICE_COUNT_FLAG}={devices}"]),
             JAX_COORDINATOR_BIND_ADDRESS=f"{LOOPBACK}:{port}")
  if env_style == "jax":
    env.update(JAX_COORDINATOR_ADDRESS=f"{LOOPBACK}:{port}", JAX_NUM_PROCESSES=str(count),
               JAX_PROCESS_ID=str(index))
  elif env_style == "slurm":
    env.update(SLURM_JOB_ID=str(port), SLURM_STEP_NODELIST=LOOPBACK, SLURM_NTASKS=str(count),
               SLURM_PROCID=str(index), SLURM_LOCALID=str(index), SLURM_STEP_NUM_NODES="1",
               JAX_COORDINATOR_PORT=str(port))
  else:
    raise ValueError(f"--env={env_style!r}: must be 'jax' or 'slurm'.")
  return env


def main_args(args: list[str]) -> list[str]:
  """The entry point's arguments, with the multi-process switch on."""
  given = [a for a in args if a.startswith("--config.train.distributed")]
  if not given:
    return args + ["--config.train.distributed=True"]
  if given[-1].split("=", 1)[-1].lower() not in ("true", "1", "--config.train.distributed"):
    raise ValueError(f"{given[-1]}: the processes would not form one cluster but train "
                     "separately; leave it out (the launcher turns it on).")
  return args


def _die_with_parent() -> None:
  """In the child, before exec: SIGKILL when the launcher dies (Linux), so no process of a
  killed launcher is left waiting for its peers."""
  try:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _status(returncode: int) -> int:
  return 128 - returncode if returncode < 0 else returncode


class Cluster:
  """N processes of one command, their output forwarded with a "[i] " prefix."""

  def __init__(self, command: list[str], count: int, devices: int = 1,
               env_style: str = "jax", out=None):
    self.out = out or sys.stdout
    self._lock = threading.Lock()
    port = free_port()
    self.procs = []
    for i in range(count):  # all forked before any reader thread exists
      self.procs.append(subprocess.Popen(
          command, env=process_env(os.environ, i, count, port, devices, env_style),
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
          start_new_session=True, preexec_fn=_die_with_parent))
    for i, p in enumerate(self.procs):
      self._write(f"launch: process {i} pid {p.pid}\n")
    self._readers = [threading.Thread(target=self._forward, args=(i, p), daemon=True)
                     for i, p in enumerate(self.procs)]
    for t in self._readers:
      t.start()

  def _write(self, text: str) -> None:
    with self._lock:
      self.out.write(text)
      self.out.flush()

  def _forward(self, i: int, proc) -> None:
    for raw in iter(proc.stdout.readline, b""):
      self._write(f"[{i}] {raw.decode(errors='replace').rstrip()}\n")

  def signal_all(self, sig: int) -> None:
    for p in self.procs:
      if p.poll() is None:
        try:
          p.send_signal(sig)
        except ProcessLookupError:
          pass

  def stop(self, grace: float) -> None:
    """SIGTERM to the running processes, SIGKILL to those still running after `grace` s."""
    self.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
      time.sleep(0.05)
    self.signal_all(signal.SIGKILL)
    for p in self.procs:
      p.wait()

  def run(self, timeout: float, grace: float) -> int:
    """Waits for the processes; -> the exit status of the module doc."""
    deadline = time.monotonic() + timeout
    interrupted = []
    handler = lambda signum, frame: interrupted.append(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = None
    try:
      while True:
        if interrupted:  # preemption of the whole job: each process checkpoints and exits
          interrupted.clear()
          self._write("launch: passing SIGTERM on to every process\n")
          self.signal_all(signal.SIGTERM)
        codes = [p.poll() for p in self.procs]
        bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0, EXIT_PREEMPTED)]
        if bad and failed is None:
          failed = bad[0]
          self._write(f"launch: process {failed[0]} exited with status "
                      f"{_status(failed[1])}; stopping the others\n")
          self.stop(grace)
          break
        if all(c is not None for c in codes):
          break
        if time.monotonic() > deadline:
          self._write(f"launch: timeout after {timeout:.0f} s; stopping every process\n")
          self.stop(grace)
          return EXIT_TIMEOUT
        time.sleep(0.1)
    finally:
      for s, h in old.items():
        signal.signal(s, h)
      for t in self._readers:
        t.join(10)
    if failed is not None:
      return _status(failed[1])
    codes = [p.returncode for p in self.procs]
    if all(c == 0 for c in codes):
      return 0
    if all(c == EXIT_PREEMPTED for c in codes):
      return EXIT_PREEMPTED
    return next(_status(c) for c in codes if c != 0)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" in argv:
    own, rest = argv[:argv.index("--")], argv[argv.index("--") + 1:]
  else:
    own, rest = argv, []
  parser = argparse.ArgumentParser(prog="python -m solv_jax.launch", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, required=True, help="number of processes")
  parser.add_argument("--devices_per_process", type=int, default=1,
                      help="CPU devices of each process (default 1)")
  parser.add_argument("--env", choices=("jax", "slurm"), default="jax",
                      help="how the cluster is described to each process (module doc)")
  parser.add_argument("--timeout", type=float, default=24 * 3600,
                      help="seconds before every process is stopped (exit 124)")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL when processes are stopped")
  parser.add_argument("--module", default="solv_jax.main", help=argparse.SUPPRESS)
  args = parser.parse_args(own)
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error(f"--processes={args.processes} and --devices_per_process="
                 f"{args.devices_per_process} must be >= 1.")
  if not rest:
    parser.error("no arguments for solv_jax.main: put them after `--`, e.g. "
                 "-- --config=tests/tiny.py --config.data.data_dir=DIR")
  host = socket.gethostname()
  try:
    address = socket.gethostbyname(host)
  except OSError:
    address = "?"
  if not address.startswith("127."):
    print(f"launch: warning: the host name {host!r} resolves to {address}, not to a loopback "
          "address; JAX's CPU collectives (gloo) connect the processes through that address.",
          file=sys.stderr, flush=True)
  try:
    command = [sys.executable, "-m", args.module, *main_args(rest)]
  except ValueError as e:
    parser.error(str(e))
  cluster = Cluster(command, args.processes, args.devices_per_process, args.env)
  return cluster.run(args.timeout, args.grace)


if __name__ == "__main__":
  sys.exit(main())
