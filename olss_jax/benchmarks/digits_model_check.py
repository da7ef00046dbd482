"""Checks the shipped digits model: UNet forward time and guidance vs sample quality.

Usage: ``python -m olss_jax.benchmarks.digits_model_check [--per-class 6] [--guidance 1,2,3,5]``

Prints the time of one jitted guided forward pass on 256 noises (a UNet batch of 512), the
Frechet distance of the real test digits to the real train digits (the floor), then for each
guidance scale the class accuracy and the Frechet distance (classifier features) to the real
train digits of 1000-step DDIM samples (the OLSS teacher) from fixed noises.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import olss_jax as oj


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--per-class", type=int, default=6)
  parser.add_argument("--guidance", default="1,2,3,5")
  args = parser.parse_args()
  model, clf = oj.digits.load_digits_model(), oj.digits.load_digits_classifier()
  d = model.denoiser(jnp.arange(256) % 10, guidance_scale=2.0)
  x = jax.random.normal(jax.random.PRNGKey(1), (256, 1, 8, 8))
  f = jax.jit(lambda d, x, t: d(x, t))
  f(d, x, jnp.int32(500)).block_until_ready()
  walls, cpus = [], []
  for i in range(30):
    s, c = time.perf_counter(), time.process_time()
    f(d, x, jnp.int32(i * 30)).block_until_ready()
    walls.append(time.perf_counter() - s)
    cpus.append(time.process_time() - c)
  print(f"forward, UNet batch 512 (CFG on 256): wall min {1e3 * min(walls):.1f} ms, median "
        f"{1e3 * np.median(walls):.1f} ms; process CPU median {1e3 * np.median(cpus):.1f} ms")
  x_tr, _ = oj.digits.load_digits_dataset("train")
  x_te, _ = oj.digits.load_digits_dataset("test")
  f_tr = clf.features(x_tr)
  print(f"FD(real test, real train) {oj.digits.frechet_distance(clf.features(x_te), f_tr):.3f}")
  labels = jnp.tile(jnp.arange(10), args.per_class)
  x_T = jax.random.normal(jax.random.PRNGKey(2024), (labels.shape[0], 1, 8, 8))
  for g in (float(v) for v in args.guidance.split(",")):
    traj = oj.collect_trajectory(model.denoiser(labels, guidance_scale=g), x_T,
                                 model.alphas_cumprod, 1000)
    final = np.asarray(traj.states[-1])
    acc = np.mean(np.asarray(clf.predict(final)) == np.asarray(labels))
    fd = oj.digits.frechet_distance(clf.features(final), f_tr)
    print(f"g={g:.1f}: class accuracy {acc:.3f}, FD to real train digits {fd:.2f}")


if __name__ == "__main__":
  main()
