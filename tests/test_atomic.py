"""Atomic writes: a writer killed at any moment leaves the old file or the new one."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import olss_jax as oj
from olss_jax._src import atomic

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "olss_jax", "_src")

# The child loads atomic.py and container.py by path (numpy only, no JAX: starts in well
# under a second) and writes trajectory containers exactly as `save_trajectory` does
# (`atomic_write` + `write_container`), throttled so that kills land mid-write. Version v
# has every x_T and model output entry equal to v, so the parent can tell versions apart.
CHILD = textwrap.dedent("""
    import importlib.util, sys, time
    import numpy as np

    def load(name):
      spec = importlib.util.spec_from_file_location(name, f"{sys.argv[1]}/{name}.py")
      mod = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(mod)
      return mod

    atomic, container = load("atomic"), load("container")
    container._BLOCK = 2**16
    target, start = sys.argv[2], int(sys.argv[3])
    K, B = 64, 16

    class Slow:
      def __init__(self, f):
        self.f = f
      def write(self, data):
        time.sleep(0.002)
        return self.f.write(data)

    timesteps = np.arange(K, dtype=np.int32)[::-1].copy()
    alphas = np.linspace(0.05, 1.0, K + 1)
    for v in range(start, start + 1000):
      x_T = np.full((B, 32, 32), v, np.float32)
      outputs = np.full((K, B, 32, 32), v, np.float32)
      print("start", v, flush=True)
      with atomic.atomic_write(target) as f:
        container.write_container(Slow(f), "olss_jax.trajectory",
                                  [("timesteps", timesteps), ("x_T", x_T),
                                   ("model_outputs", outputs), ("alphas", alphas)], {"v": v})
      print("wrote", v, flush=True)
""")


def _version(path):
  traj = oj.load_trajectory(path)  # verifies the checksum and the trajectory
  v = traj.x_T.flat[0]
  assert np.all(traj.x_T == v) and np.all(traj.model_outputs == v)
  assert oj.read_metadata(path)["v"] == int(v)
  return int(v)


def test_killed_writer_leaves_old_or_new_file_never_partial(tmp_path):
  rng = random.Random(0)
  target = tmp_path / "chunk.olss"
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  last_complete, mid_write_kills, next_v = None, 0, 0
  for _ in range(6):
    child = subprocess.Popen([sys.executable, str(script), SRC, str(target), str(next_v)],
                             stdout=subprocess.PIPE, text=True)
    try:
      wanted = next_v + rng.randrange(0, 2)
      line = child.stdout.readline()
      while line and line.split() != ["start", str(wanted)]:
        if line.startswith("wrote"):
          last_complete = int(line.split()[1])
        line = child.stdout.readline()
      assert line, "child ended before the chosen write"
      time.sleep(rng.uniform(0.0, 0.1))  # one write takes over 0.13 s (64 blocks)
      child.send_signal(signal.SIGKILL)
      rest = child.communicate(timeout=30)[0].split("\n")
    finally:
      if child.poll() is None:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    finished = [int(r.split()[1]) for r in rest if r.startswith("wrote")]
    started = [int(r.split()[1]) for r in rest if r.startswith("start")]
    in_progress = started[-1] if started else wanted
    mid_write_kills += wanted not in finished
    last_complete = finished[-1] if finished else last_complete
    names = os.listdir(tmp_path)
    strays = [n for n in names if n not in ("chunk.olss", "child.py")]
    assert all(atomic.is_temp_name(n) for n in strays), names
    if not target.exists():
      # Only possible when killed during the very first write.
      assert last_complete is None
    else:
      # The last completed version, or the one being written if its rename beat the kill.
      assert _version(target) in (last_complete, in_progress)
    next_v = in_progress + 1
  assert mid_write_kills >= 3, f"only {mid_write_kills} of 6 kills landed mid-write"
  removed = atomic.remove_temp_files(tmp_path)
  assert all(atomic.is_temp_name(n) for n in removed)
  assert sorted(os.listdir(tmp_path)) == sorted(["chunk.olss", "child.py"])


def test_exception_inside_atomic_write_removes_temp_and_keeps_target(tmp_path):
  target = tmp_path / "f.bin"
  atomic.atomic_write_bytes(target, b"old")
  with pytest.raises(RuntimeError):
    with atomic.atomic_write(target) as f:
      f.write(b"new but unfinished")
      raise RuntimeError("interrupted")
  assert target.read_bytes() == b"old"
  assert os.listdir(tmp_path) == ["f.bin"]
  atomic.atomic_write_bytes(target, b"new")
  assert target.read_bytes() == b"new"


def test_temp_names_are_hidden_unique_and_recognised():
  a, b = atomic.temp_name("x.olss"), atomic.temp_name("x.olss")
  assert a != b and a.startswith(".x.olss") and atomic.is_temp_name(a)
  assert not atomic.is_temp_name("x.olss") and not atomic.is_temp_name("chunk-00001.olss")
