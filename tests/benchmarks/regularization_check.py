"""The closed-loop fits with another ridge criterion against "cv", paired.

A developer experiment (issue 21's safeguards), run from a clone. For each closed-loop method
(`olss_jax.fit_olss`'s ``olss-p-cl``, ``olss-cl``, ``olss-ft``) it fits with
``regularization="cv"`` and with ``--regularization`` (default ``"cv-robust"``); plus
``olss-ft/cv+<criterion>``: ``olss-ft`` tuning its path once per criterion, ``("cv",
<criterion>)``, the held-out quarter of the fitting noises choosing (with the default
``"cv-robust"``, `fit_olss`'s default), and ``olss-ft/refit``: ``olss-ft``'s path tuned with
``"cv"`` refitted with ``--regularization``. Each is paired with its method fitted with
``"cv"`` on the same held-out noises (32 fitting noises, seed 1; held-out noises, seed 2:
`closed_loop_table`'s own) by `olss_jax.compare.paired_difference`: "better" / "worse" where
its 95% interval lies below / above 0, "within" otherwise. One line per model and step count,
then a summary per variant (cells better / worse / within, the geometric mean of the ratio of
mean RMSE, and the cells that moved more than 1.5x).

With ``--default-only`` it compares just the default fit (`fit_olss` with a model) with the
previous default (``olss-ft`` tuned with ``"cv"`` alone, no divergence probe).

Usage:
  python tests/benchmarks/regularization_check.py                          # seeds 50-57
  python tests/benchmarks/regularization_check.py --default-only --seeds 80 81 82 83
  python tests/benchmarks/regularization_check.py --seeds 34 --kinds vp --steps 5
  python tests/benchmarks/regularization_check.py --models digits digits-flow --seeds \\
      --steps 5 10 20 --num-eval 256
"""
from __future__ import annotations

import argparse
import collections
import math

import olss_jax as oj
from olss_jax.benchmarks.closed_loop_table import mixture_models

FIT_SEED, EVAL_SEED = 1, 2
NUM_FIT = 32
METHODS = ("olss-ft", "olss-cl", "olss-p-cl")


def previous_default(ctx, n):
  """``olss-ft`` as it was before it walked with "cv-robust" too and probed for divergence:
  one walk with "cv", no probe (the same verbs `fit_olss` calls)."""
  path, _ = oj.closed_loop_search(ctx.traj, n, ctx.denoise_fn)
  path, _ = oj.tune_path(ctx.traj, path, ctx.denoise_fn, regularization="cv", probe=None,
                         alternatives=[oj.uniform_path(ctx.traj, n)])
  return oj.closed_loop_fit(ctx.traj, path, ctx.denoise_fn)[0]


def default_fit(ctx, n):
  return oj.fit_olss(ctx.traj, n, denoise_fn=ctx.denoise_fn)


def variants(regularization: str) -> dict:
  """``{name: (FitContext, n) -> Schedule}``: each method with "cv" and with ``regularization``,
  ``olss-ft`` validating the two (``olss-ft/cv+<regularization>``), and ``olss-ft``'s "cv" path
  refitted with it (``olss-ft/refit``)."""
  cache = {}

  def fit(method, reg):
    def run(ctx, n):
      sched = oj.fit_olss(ctx.traj, n, denoise_fn=ctx.denoise_fn, method=method,
                          regularization=reg)
      cache[(method, reg, n)] = sched
      return sched
    return run

  def refit(ctx, n):
    if ("olss-ft", "cv", n) not in cache:
      fit("olss-ft", "cv")(ctx, n)
    path = cache[("olss-ft", "cv", n)].metadata["path"]
    return oj.closed_loop_fit(ctx.traj, path, ctx.denoise_fn, regularization=regularization)[0]

  out = {}
  for method in METHODS:
    out[method] = fit(method, "cv")
    out[f"{method}/{regularization}"] = fit(method, regularization)
  out[f"olss-ft/cv+{regularization}"] = fit("olss-ft", ("cv", regularization))
  out["olss-ft/refit"] = refit
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="*", default=list(range(50, 58)))
  parser.add_argument("--kinds", nargs="+", default=["vp", "flow"], choices=["vp", "flow"])
  parser.add_argument("--models", nargs="+", default=[],
                      help="embedded models too (olss_jax.compare.embedded_model names)")
  parser.add_argument("--steps", type=int, nargs="+", default=[5, 10])
  parser.add_argument("--num-eval", type=int, default=512)
  parser.add_argument("--regularization", default="cv-robust",
                      help="the criterion compared with 'cv' (default: cv-robust)")
  parser.add_argument("--default-only", action="store_true",
                      help="only the default fit (olss_jax.fit_olss) against the previous one "
                           "(olss-ft with 'cv' alone and no divergence probe)")
  args = parser.parse_args(argv)
  if args.default_only:
    methods = {"olss-ft (previous)": previous_default, "olss-ft": default_fit}
    pairs = [("olss-ft", "olss-ft (previous)")]
  else:
    methods = variants(args.regularization)
    pairs = ([(f"{m}/{args.regularization}", m) for m in METHODS]
             + [(f"olss-ft/cv+{args.regularization}", "olss-ft"), ("olss-ft/refit", "olss-ft")])
  summary = collections.defaultdict(lambda: {"better": 0, "worse": 0, "within": 0, "logs": [],
                                             "moved": []})
  models = ([oj.compare.embedded_model(name) for name in args.models]
            + mixture_models(args.seeds, args.kinds))
  for model in models:
    result = oj.compare.run_comparison(model, steps=args.steps, num_fit=NUM_FIT,
                                       num_eval=args.num_eval, num_teacher_steps=1000,
                                       methods=methods, fit_seed=FIT_SEED, eval_seed=EVAL_SEED,
                                       keep_samples=False)
    mean = {(r["method"], r["steps"]): r["rmse"] for r in result.rows}
    for n in args.steps:
      cells = []
      for new, base in pairs:
        _, lo, hi = oj.compare.paired_difference(result, new, base, n)
        verdict = "better" if hi < 0 else ("worse" if lo > 0 else "within")
        a, b = mean[(base, n)], mean[(new, n)]
        s = summary[new]
        s[verdict] += 1
        s["logs"].append(math.log(b / a))
        if not 1 / 1.5 <= b / a <= 1.5:
          s["moved"].append(f"{model.name} at {n} steps {a:.3g} to {b:.3g} ({verdict})")
        cells.append(f"{new} {a:.3g} -> {b:.3g} {verdict}")
      print(f"{model.name}, {n} steps: " + " | ".join(cells), flush=True)
  print("\n| fit | better / worse / within | geometric mean of its mean RMSE over its "
        "reference's |\n|---|---|---|")
  for new, s in summary.items():
    print(f"| {new} | {s['better']} / {s['worse']} / {s['within']} | "
          f"{math.exp(sum(s['logs']) / len(s['logs'])):.2f}x |")
  for new, s in summary.items():
    print(f"{new}, moved more than 1.5x: " + ("; ".join(s["moved"]) or "none"))


if __name__ == "__main__":
  main()
