"""Would a fallback chosen on extra validation noises make the default fit safe on unseen models?

A developer experiment (issue 21's safe fallback), run from a clone: on the unseen sharp
mixtures of ``closed_loop_table --mixture-seeds`` it fits `olss-ft`, `olss-cl`, `olss-p-cl` and
the classical solvers on 32 fitting noises (seed 1), scores every schedule by its mean
per-sample RMSE to the teacher on ``--num-validation`` extra noises (seed 5, their own 1000-step
teacher) and on the 128 held-out noises of the README's table (seed 2), and prints which
method the validation noises pick and what it scores held out, beside `olss-ft` and the best.

Usage:
  python tests/benchmarks/validation_selection.py                      # seeds 31 32 33, VP and flow
  python tests/benchmarks/validation_selection.py --seeds 31 --kinds vp --num-validation 512
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

import olss_jax as oj
from olss_jax.benchmarks.closed_loop_table import mixture_models

FIT_SEED, EVAL_SEED, VALIDATION_SEED = 1, 2, 5


def _rmse(samples, reference) -> float:
  diff = np.asarray(samples, np.float64) - np.asarray(reference, np.float64)
  return float(np.mean(np.sqrt(np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1))))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[31, 32, 33])
  parser.add_argument("--kinds", nargs="+", default=["vp", "flow"], choices=["vp", "flow"])
  parser.add_argument("--steps", type=int, nargs="+", default=[5, 10])
  parser.add_argument("--num-validation", type=int, default=128)
  parser.add_argument("--num-eval", type=int, default=128)
  args = parser.parse_args(argv)
  print("| model | steps | picked on validation | its held-out RMSE | olss-ft held out "
        "| best held out | olss-ft / olss-cl on validation |")
  print("|---|---|---|---|---|---|---|")
  for model in mixture_models(args.seeds, args.kinds):
    offered = oj.compare.default_methods(kind=model.kind)
    names = ["olss-ft", "olss-cl", "olss-p-cl"] + [
        m for m in ("dpm_solver_pp", "unipc", "euler", "ddim") if m in offered]
    result = oj.compare.run_comparison(model, steps=args.steps, num_fit=32,
                                       num_eval=args.num_eval, num_teacher_steps=1000,
                                       methods={m: offered[m] for m in names},
                                       fit_seed=FIT_SEED, eval_seed=EVAL_SEED, keep_samples=False)
    held_out = {(r["method"], r["steps"]): r["rmse"] for r in result.rows}
    x_val = oj.compare.draw_noises(model, VALIDATION_SEED, args.num_validation)
    denoise_fn = model.denoiser(None)
    reference = oj.collect_trajectory(denoise_fn, x_val, model.make_teacher(1000)).states[-1]
    for n in args.steps:
      val = {m: _rmse(jax.jit(oj.sample)(denoise_fn, result.schedules[(m, n)], x_val), reference)
             for m in names}
      pick = min(val, key=val.get)
      best = min(names, key=lambda m: held_out[(m, n)])
      print(f"| {model.name} | {n} | {pick} | {held_out[(pick, n)]:.3g} | "
            f"{held_out[('olss-ft', n)]:.3g} | {best} {held_out[(best, n)]:.3g} | "
            f"{val['olss-ft']:.3g} / {val['olss-cl']:.3g} |", flush=True)


if __name__ == "__main__":
  main()
