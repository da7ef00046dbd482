"""Throughput and peak host memory of save_trajectory / load_trajectory.

Usage: python -m olss_jax.benchmarks.bench_io [--steps 1000] [--batch 16] [--dir /tmp]
Writes one trajectory file (model outputs of steps x batch x 4 x 32 x 32 float32) to a
temporary directory, reloads it and checks it bit for bit. Peak memory is measured with
tracemalloc (numpy allocations are traced).
"""
import argparse
import os
import tempfile
import time
import tracemalloc

import numpy as np

import olss_jax as oj


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--dir", default=None)
  args = parser.parse_args()
  shape = (4, 32, 32)
  teacher = oj.ddim_teacher(oj.scaled_linear_alphas_cumprod(), args.steps)
  rng = np.random.default_rng(0)
  outputs = rng.standard_normal((args.steps, args.batch) + shape, dtype=np.float32)
  traj = oj.Trajectory(rng.standard_normal((args.batch,) + shape, dtype=np.float32), outputs,
                       teacher)
  mb = outputs.nbytes / 2**20
  with tempfile.TemporaryDirectory(dir=args.dir) as directory:
    path = os.path.join(directory, "teacher.safetensors")
    tracemalloc.start()
    start = time.perf_counter()
    oj.save_trajectory(path, traj)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    print(f"save: {mb:.0f} MB in {seconds:.2f} s ({mb / seconds:.0f} MB/s, fsync included), "
          f"peak extra memory {peak:.0f} MB")
    tracemalloc.reset_peak()
    start = time.perf_counter()
    loaded = oj.load_trajectory(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    print(f"load: {mb:.0f} MB in {seconds:.2f} s ({mb / seconds:.0f} MB/s, SHA-256 and "
          f"validation included), peak memory {peak:.0f} MB (the result is {mb:.0f} MB)")
    assert np.array_equal(loaded.model_outputs, outputs)


if __name__ == "__main__":
  main()
