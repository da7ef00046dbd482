"""Bounded memory: fitting on many Stable-Diffusion-sized trajectories, streamed in chunks.

A developer script, run from a clone (not shipped in the wheel): ``--mode fit`` streams the
chunks through private TSQR pieces of ``olss_jax._src`` that no public function offers.

Each chunk of images is generated (the synthetic teacher
`olss_jax.testing.synthetic_trajectory`, 4x64x64 latents, 1000 teacher steps; the per-step
noise drawn from a pool of 16 fields per image so that generating 1,024 images is cheap),
folded into the statistics and dropped, so memory is one chunk plus the statistics whatever
the number of images. Three modes:

  --mode fit    (default) the fit on a fixed path (OLSS-P, n = 10): the streamed float64
                QR (TSQR, `jnp.linalg.qr`) of the 2n + 1 columns [x_T, e_path, targets],
                then the nested solves: the weights of Eq. 12 on all images.
  --mode stats  the full (K + 1)^2 Gram statistics (`olss_jax.stats.stats_from_chunks`), which
                also serve the path search; reports the per-image cost.
  --mode closed-loop
                the closed-loop fit on a fixed path (the uniform one, n = --steps) of the
                Gaussian mixture at the same size (`olss_jax.analytic`, eight components of
                std 0.1): `olss_jax.stats.closed_loop_fit_chunks`, each chunk's teacher
                regenerated at every pass (n passes, one per row), public names only.

  python tests/benchmarks/memory_benchmark.py --images 1024 --chunk 4            # fit, 1,024 images
  python tests/benchmarks/memory_benchmark.py --mode stats --images 64 --chunk 4
  python tests/benchmarks/memory_benchmark.py --mode closed-loop --images 1024 --chunk 4 --steps 5

Peak memory is the process's peak RSS (``resource.getrusage``, Linux KiB).
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

import olss_jax as oj
from olss_jax._src import linalg  # the streamed TSQR pieces: private, no public equivalent
from olss_jax._src import regression


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def chunks(num_images, chunk, sample_shape, k, log_every):
  """Yields synthetic trajectory chunks; prints progress."""
  t0 = time.perf_counter()
  for start in range(0, num_images, chunk):
    idx = range(start, min(start + chunk, num_images))
    yield oj.testing.synthetic_trajectory(idx, sample_shape, k, noise=0.002, noise_pool=16)
    done = idx[-1] + 1
    if done % log_every == 0 or done == num_images:
      print(f"  {done} images, {time.perf_counter() - t0:.0f} s, peak RSS "
            f"{peak_rss_gib():.2f} GiB", flush=True)


def run_fit(num_images, chunk, sample_shape=(4, 64, 64), k=1000, n=10, log_every=64):
  """Eq. 12 on a fixed path, streamed: each chunk's (2n + 1)^2 factor merged by TSQR."""
  path = jnp.asarray(oj.uniform_path(k, n))
  with jax.enable_x64(True):
    r = jnp.zeros((2 * n + 1, 2 * n + 1), jnp.float64)
    for c in chunks(num_images, chunk, sample_shape, k, log_every):
      r = linalg.stack_rows(r, regression.path_factor(c, path))
    ws, residuals, _ = linalg.nested_solves(r, n + 1, [i + 2 for i in range(n)])
  errors = np.asarray(residuals) / (num_images * int(np.prod(sample_shape)))
  return np.asarray(path), np.asarray(ws), errors


def run_stats(num_images, chunk, sample_shape=(4, 64, 64), k=1000, n=10, log_every=16):
  st = oj.stats.stats_from_chunks(chunks(num_images, chunk, sample_shape, k, log_every))
  path, info = oj.search_path(st, n)
  return st, path, info


def run_closed_loop(num_images, chunk, sample_shape=(4, 64, 64), k=1000, n=5, log_every=256):
  """The closed-loop fit of the uniform n-step path on a stream of mixture teacher runs."""
  mixture = oj.analytic.make_gaussian_mixture(jax.random.key(0), 8, sample_shape, std=0.1)
  alphas = oj.scaled_linear_alphas_cumprod()
  den = oj.analytic.mixture_denoiser(mixture, alphas)
  teacher = oj.ddim_teacher(alphas, k)
  passes = []

  def stream():
    passes.append(time.perf_counter())
    for start in range(0, num_images, chunk):
      x_T = jax.random.normal(jax.random.key(1000 + start), (min(chunk, num_images - start),)
                              + tuple(sample_shape))
      yield oj.collect_trajectory(den, x_T, teacher), den
      done = min(start + chunk, num_images)
      if done % log_every == 0 or done == num_images:
        print(f"  row {len(passes) - 2}'s pass: {done} images, "
              f"{time.perf_counter() - passes[-1]:.0f} s, peak RSS {peak_rss_gib():.2f} GiB",
              flush=True)

  path = oj.uniform_path(k, n)
  sched, info = oj.stats.closed_loop_fit_chunks(stream, path)
  return np.asarray(path), np.asarray(sched.weights), info


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mode", choices=("fit", "stats", "closed-loop"), default="fit")
  parser.add_argument("--images", type=int, default=1024)
  parser.add_argument("--chunk", type=int, default=4)
  parser.add_argument("--latent", type=int, default=64, help="latent height = width")
  parser.add_argument("--teacher-steps", type=int, default=1000)
  parser.add_argument("--steps", type=int, default=5, help="n (closed-loop mode)")
  args = parser.parse_args(argv)
  shape = (4, args.latent, args.latent)
  d = int(np.prod(shape))
  full = args.images * args.teacher_steps * d * 4 / 2**30
  print(f"{args.mode}: {args.images} images x {shape} x {args.teacher_steps} teacher steps in "
        f"chunks of {args.chunk} (all float32 outputs at once would be {full:.1f} GiB); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
  t0, c0 = time.perf_counter(), cpu_seconds()
  if args.mode == "fit":
    path, _, errors = run_fit(args.images, args.chunk, shape, args.teacher_steps)
    print(f"fit on path {path.tolist()}: step errors {np.array2string(errors, precision=3)}")
  elif args.mode == "closed-loop":
    path, _, info = run_closed_loop(args.images, args.chunk, shape, args.teacher_steps,
                                    args.steps)
    print(f"closed-loop fit of {info.num_noises} noises in {info.num_chunks} chunks on path "
          f"{path.tolist()}: step errors {np.array2string(info.step_errors, precision=3)}, "
          f"ridge {info.ridge.tolist()}, {info.num_model_calls} model calls per noise")
  else:
    st, path, info = run_stats(args.images, args.chunk, shape, args.teacher_steps)
    print(f"statistics of {st.num_images} images; searched path {path.tolist()} "
          f"(max step error {float(info.max_error):.3e})")
  wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
  print(f"RESULT mode={args.mode} images={args.images} chunk={args.chunk}: wall {wall:.0f} s, "
        f"CPU {cpu:.0f} s ({cpu / args.images:.2f} CPU s per image, generation included), "
        f"peak RSS {peak_rss_gib():.2f} GiB; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
