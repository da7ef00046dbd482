"""Does the default fit's final refit on every fitting noise keep what its validation saw?

A developer experiment (issue 21's safeguards), run from a clone. `olss-ft` validates its path
with weights fitted on three quarters of the fitting noises (`tune_path`'s split) and then
returns the closed-loop fit of that path on all of them, a fit nothing validated. On the unseen
sharp mixtures of ``closed_loop_table --mixture-seeds`` (32 fitting noises, seed 1; held-out
noises, seed 2: the table's own) it scores, paired on the same held-out noises
(`olss_jax.compare.paired_difference`):

* ``olss-ft``: the default as shipped (path validated, weights refitted on all 32 noises);
* ``olss-ft/fit-part``: the same path with the weights fitted on the tuning's fit part only
  (the 24 noises its validation used);
* ``olss-ft/cv-rmse``: the same path refitted on all 32 with ``regularization="cv-rmse"``;
* ``olss-cl``: the closed-loop search's path, the default's start.

Usage:
  python tests/benchmarks/refit_check.py                                  # seeds 50-57
  python tests/benchmarks/refit_check.py --seeds 34 --kinds vp --steps 5
"""
from __future__ import annotations

import argparse

import olss_jax as oj
from olss_jax.benchmarks.closed_loop_table import mixture_models

FIT_SEED, EVAL_SEED = 1, 2
NUM_FIT = 32


def variants(holdout: float = 0.25) -> dict:
  """``{name: (FitContext, n) -> Schedule}``: the default and its path's other fits (docstring)."""
  cache = {}

  def default(ctx, n):
    if n not in cache:
      cache[n] = oj.fit_olss(ctx.traj, n, denoise_fn=ctx.denoise_fn)
    return cache[n]

  def fit_part(ctx, n):
    train, _ = oj.peers.holdout_split(ctx.traj.batch_size, holdout)
    sched, _ = oj.closed_loop_fit(ctx.traj, default(ctx, n).metadata["path"], ctx.denoise_fn,
                                  fit_noises=train)
    return sched

  def cv_rmse(ctx, n):
    sched, _ = oj.closed_loop_fit(ctx.traj, default(ctx, n).metadata["path"], ctx.denoise_fn,
                                  regularization="cv-rmse")
    return sched

  def closed_loop(ctx, n):
    return oj.fit_olss(ctx.traj, n, denoise_fn=ctx.denoise_fn, method="olss-cl")

  return {"olss-ft": default, "olss-ft/fit-part": fit_part, "olss-ft/cv-rmse": cv_rmse,
          "olss-cl": closed_loop}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=list(range(50, 58)))
  parser.add_argument("--kinds", nargs="+", default=["vp", "flow"], choices=["vp", "flow"])
  parser.add_argument("--steps", type=int, nargs="+", default=[5, 10])
  parser.add_argument("--num-eval", type=int, default=512)
  args = parser.parse_args(argv)
  print("| model | steps | olss-ft | fit-part | cv-rmse | olss-cl | fit-part minus olss-ft "
        "| cv-rmse minus olss-ft | fit-part minus olss-cl |")
  print("|---|---|---|---|---|---|---|---|---|")
  for model in mixture_models(args.seeds, args.kinds):
    result = oj.compare.run_comparison(model, steps=args.steps, num_fit=NUM_FIT,
                                       num_eval=args.num_eval, num_teacher_steps=1000,
                                       methods=variants(), fit_seed=FIT_SEED,
                                       eval_seed=EVAL_SEED, keep_samples=False)
    mean = {(r["method"], r["steps"]): r["rmse"] for r in result.rows}
    for n in args.steps:
      def diff(a, b, n=n):
        d, lo, hi = oj.compare.paired_difference(result, a, b, n)
        return f"{d:.3g} [{lo:.3g}, {hi:.3g}]"
      cells = " | ".join(f"{mean[(m, n)]:.3g}" for m in variants())
      print(f"| {model.name} | {n} | {cells} | {diff('olss-ft/fit-part', 'olss-ft')} | "
            f"{diff('olss-ft/cv-rmse', 'olss-ft')} | {diff('olss-ft/fit-part', 'olss-cl')} |",
            flush=True)


if __name__ == "__main__":
  main()
