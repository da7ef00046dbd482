"""The paper's fit vs the closed-loop fit vs end-to-end refinement, on held-out noises.

For each analytic model (exact Gaussian-mixture noise prediction) and step count it prints a
markdown table of the RMSE (and median per-sample RMSE) of the n-step sample against the
1000-step DDIM teacher's final sample on held-out noises that no fit ever sees (the same
noises for every row), with the fitting cost: extra model calls on the fitting noises (the
teacher's K calls are common to every OLSS row and listed once) and seconds.

  python -m olss_jax.benchmarks.closed_loop_table            # full table (a few minutes on CPU)
  python -m olss_jax.benchmarks.closed_loop_table --small    # seconds; exercised by a test
  python -m olss_jax.benchmarks.closed_loop_table --models digits --steps 5 10 --refine-iters 50
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def _problem(name, num_fit, num_eval):
  """(fit denoiser, eval denoiser, alphas_cumprod, sample shape, description)."""
  if name == "digits":
    model = oj.digits.load_digits_model()
    # Class-conditional: the labels are part of the model call, cycled 0..9 over the noises.
    den_fit = model.denoiser(jnp.arange(num_fit) % 10)
    den_eval = model.denoiser(jnp.arange(num_eval) % 10)
    return (den_fit, den_eval, model.alphas_cumprod, model.sample_shape,
            f"digits UNet (guidance {model.default_guidance_scale})")
  shape, comps, std = MODELS[name]
  alphas = oj.scaled_linear_alphas_cumprod()
  mix = oj.analytic.make_gaussian_mixture(jax.random.key(0), comps, shape, std=std)
  den = oj.analytic.mixture_denoiser(mix, alphas)
  return den, den, alphas, shape, name


def run(small: bool = False, models=None, steps=None, refine_iters=None, num_eval=None):
  """Returns a list of row dicts and prints the tables."""
  k = 50 if small else 1000
  num_fit = 8 if small else 32
  num_eval = num_eval or (16 if small else 256)
  steps = steps or ((3,) if small else (5, 10, 20))
  models = models or (("mixture-16",) if small else tuple(MODELS))
  iters = refine_iters if refine_iters is not None else (3 if small else 200)
  bisect = 4 if small else 30
  rows = []
  for name in models:
    den, den_eval, alphas, shape, title = _problem(name, num_fit, num_eval)
    x_fit = jax.random.normal(jax.random.key(1), (num_fit,) + tuple(shape))
    x_eval = jax.random.normal(jax.random.key(2), (num_eval,) + tuple(shape))  # disjoint key
    t0 = time.perf_counter()
    traj = oj.collect_trajectory(den, x_fit, alphas, k)
    t_teacher = time.perf_counter() - t0
    ref = np.asarray(oj.collect_trajectory(den_eval, x_eval, alphas, k).states[-1], np.float64)
    print(f"\n### {title}: {num_fit} fitting noises (key 1), {num_eval} held-out noises "
          f"(key 2), {k}-step DDIM teacher ({k} calls on the fitting noises, {t_teacher:.1f} s)\n")
    print("| steps | method | RMSE | median | fit model calls | fit seconds |")
    print("|---|---|---|---|---|---|")
    for n in steps:
      uniform = oj.uniform_path(traj, n)

      def add(label, make):
        t = time.perf_counter()
        sched, calls = make()
        secs = time.perf_counter() - t
        rmse, med = _errors(den_eval, sched, x_eval, ref)
        rows.append(dict(model=name, steps=n, method=label, rmse=rmse, median=med, calls=calls,
                         seconds=secs))
        print(f"| {n} | {label} | {rmse:.4g} | {med:.3g} | {calls} | {secs:.1f} |", flush=True)
        return sched

      add("DDIM", lambda: (oj.baseline_schedule("ddim", alphas, n), 0))
      add("OLSS-P (paper fit, uniform)", lambda: (oj.fit_weights(traj, uniform)[0], 0))
      add("OLSS (paper fit, searched)", lambda: (oj.fit_weights(
          traj, oj.search_path(traj, n, num_bisection_steps=bisect)[0])[0], 0))
      add("closed-loop, uniform", lambda: (oj.closed_loop_fit(traj, uniform, den)[0], n))

      def closed_searched():
        path, info = oj.closed_loop_search(traj, n, den, num_bisection_steps=bisect)
        return oj.closed_loop_fit(traj, path, den)[0], int(info.num_model_calls) + n

      cl = add("closed-loop, searched", closed_searched)

      def refined():
        out, info = oj.refine(den, traj, cl, optimizer=optax.adam(1e-3), num_iters=iters)
        # Forward and (checkpointed) backward: about 3 model passes per iteration and step.
        return out, 3 * (len(info.train_losses)) * n

      add("closed-loop, searched + refined", refined)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny configuration (seconds)")
  parser.add_argument("--models", nargs="+", choices=sorted(MODELS) + ["digits"],
                      help="models to run (default: the analytic mixtures)")
  parser.add_argument("--steps", nargs="+", type=int, help="step counts (default 5 10 20)")
  parser.add_argument("--refine-iters", type=int, help="refinement iterations (default 200)")
  parser.add_argument("--num-eval", type=int, help="held-out noises (default 256)")
  args = parser.parse_args()
  run(small=args.small, models=args.models, steps=args.steps, refine_iters=args.refine_iters,
      num_eval=args.num_eval)


if __name__ == "__main__":
  main()
