"""Issue 8 evidence: paper fit vs closed-loop fit vs end-to-end refinement, held-out noises.

For each analytic model (exact Gaussian-mixture noise prediction) and step count it prints a
markdown table of the RMSE (and median per-sample RMSE) of the n-step sample against the
1000-step DDIM teacher's final sample on held-out noises that no fit ever sees (the same
noises for every row), with the fitting cost: extra model calls on the fitting noises (the
teacher's K calls are common to every OLSS row and listed once) and seconds.

  python benchmarks/closed_loop_table.py            # full table (a few minutes on CPU)
  python benchmarks/closed_loop_table.py --small    # seconds; exercised by a test
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import olss_jax as oj  # noqa: E402

MODELS = {
    # name: (sample_shape, components, std)
    "mixture-16": ((16,), 8, 0.1),
    "mixture-4x4x4": ((4, 4, 4), 8, 0.1),
}


def _errors(den, sched, x_eval, ref):
  out = np.asarray(jax.jit(oj.sample)(den, sched, x_eval), np.float64)
  per = np.sqrt(np.mean((out - ref).reshape(out.shape[0], -1) ** 2, axis=1))
  return float(np.sqrt(np.mean(per**2))), float(np.median(per))


def run(small: bool = False, models=None, steps=None, refine_iters=None):
  """Returns a list of row dicts and prints the tables."""
  k = 50 if small else 1000
  num_fit, num_eval = (8, 16) if small else (32, 256)
  steps = steps or ((3,) if small else (5, 10, 20))
  models = models or (("mixture-16",) if small else tuple(MODELS))
  iters = refine_iters if refine_iters is not None else (3 if small else 200)
  bisect = 4 if small else 30
  alphas = oj.scaled_linear_alphas_cumprod()
  rows = []
  for name in models:
    shape, comps, std = MODELS[name]
    mix = oj.make_gaussian_mixture(jax.random.key(0), comps, shape, std=std)
    den = oj.mixture_denoiser(mix, alphas)
    x_fit = jax.random.normal(jax.random.key(1), (num_fit,) + shape)
    x_eval = jax.random.normal(jax.random.key(2), (num_eval,) + shape)  # disjoint key
    t0 = time.perf_counter()
    traj = oj.collect_trajectory(den, x_fit, alphas, k)
    t_teacher = time.perf_counter() - t0
    ref = np.asarray(oj.collect_trajectory(den, x_eval, alphas, k).states[-1], np.float64)
    print(f"\n### {name}: {num_fit} fitting noises (key 1), {num_eval} held-out noises "
          f"(key 2), {k}-step DDIM teacher ({k} calls on the fitting noises, {t_teacher:.1f} s)\n")
    print("| steps | method | RMSE | median | fit model calls | fit seconds |")
    print("|---|---|---|---|---|---|")
    for n in steps:
      uniform = oj.uniform_path(traj, n)
      results = []

      def add(label, make):
        t = time.perf_counter()
        sched, calls = make()
        secs = time.perf_counter() - t
        rmse, med = _errors(den, sched, x_eval, ref)
        results.append((label, sched))
        row = dict(model=name, steps=n, method=label, rmse=rmse, median=med, calls=calls,
                   seconds=secs)
        rows.append(row)
        print(f"| {n} | {label} | {rmse:.4g} | {med:.3g} | {calls} | {secs:.1f} |", flush=True)
        return sched

      add("DDIM", lambda: (oj.baseline_schedule("ddim", alphas, n), 0))
      add("OLSS-P (paper fit, uniform)", lambda: (oj.fit_weights(traj, uniform), 0))
      add("OLSS (paper fit, searched)",
          lambda: (oj.fit_weights(traj, oj.search_path(traj, n, num_bisection_steps=bisect)), 0))
      add("closed-loop, uniform", lambda: (oj.fit_weights(traj, uniform, denoise_fn=den), n))

      def closed_searched():
        path, info = oj.search_path(traj, n, denoise_fn=den, num_bisection_steps=bisect,
                                    return_info=True)
        return oj.fit_weights(traj, path, denoise_fn=den), info.num_model_calls + n

      cl = add("closed-loop, searched", closed_searched)

      def refined():
        out = oj.refine(den, traj, cl, optimizer=optax.adam(1e-3), num_iters=iters)
        return out, 2 * (out.metadata["refine_iters"] + 1) * n  # forward + backward per iter

      add("closed-loop, searched + refined", refined)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny configuration (seconds)")
  args = parser.parse_args()
  run(small=args.small)


if __name__ == "__main__":
  main()
