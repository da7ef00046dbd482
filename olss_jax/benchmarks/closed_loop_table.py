"""Every method against every peer on held-out noises, with its fit cost, model by model.

For each model it runs `olss_jax.compare.run_comparison` (fit on ``--num-fit`` teacher runs,
evaluate on ``--num-eval`` noises from another seed that no fit sees, the same for every row)
over the strongest classical solvers the model's kind offers, Align Your Steps (VP models),
the learned-timestep peers (GITS, coordinate-searched DPM-Solver++ / UniPC timesteps, LD3), the
paper's fits and the closed-loop ones, and prints three markdown tables: the RMSE to the
teacher's final sample (mean [95% interval]), the model calls each fit spent on the fitting
noises beyond the teacher's (shared by every fitted row), and its seconds.

``--num-fit 8 32 128`` repeats the default fit and the tuned peers for each number of fitting
noises (the held-out error against the fit's data and cost).

  python -m olss_jax.benchmarks.closed_loop_table                 # the analytic models
  python -m olss_jax.benchmarks.closed_loop_table --small         # seconds; exercised by a test
  python -m olss_jax.benchmarks.closed_loop_table --models digits-flow --steps 5 10 20
  python -m olss_jax.benchmarks.closed_loop_table --models analytic-latent --num-eval 64
  python -m olss_jax.benchmarks.closed_loop_table --models digits --num-fit 8 32 128 --steps 5 10
  python -m olss_jax.benchmarks.closed_loop_table --mixture-seeds 31 32 33 --steps 5 10

When the default fit (`olss_jax.compare.DEFAULT_MODEL_METHOD`) ran, a fourth table checks its
safeguards: against ``olss-p-cl``, ``olss-cl`` and the best classical solver of the cell (the
lowest mean RMSE among `SOLVERS`), the paired difference of per-noise RMSE on the same held-out
noises (`olss_jax.compare.paired_difference`, mean [95% interval]); "worse" marks an interval
above 0, a loss beyond the noise of the estimate.

``--mixture-seeds`` adds models no method was developed on: for each seed a sharp 3x8x8
Gaussian mixture (8 components, std 0.1; `compare.analytic_comparison_model`) as a VP epsilon
model on Stable Diffusion's schedule and as a rectified flow (``--mixture-kinds``).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import olss_jax as oj

MODELS = ("analytic", "analytic-flow", "analytic-latent", "digits", "digits-flow", "mnist")
MIXTURE_KINDS = ("vp", "flow")
MIXTURE_SHAPE = (3, 8, 8)          # the unseen mixtures (``--mixture-seeds``)
MIXTURE_COMPONENTS = 8
DEFAULT_MODELS = ("analytic", "analytic-flow")
# The strongest classical solvers of each kind (the main job runs all of them).
SOLVERS = {"flow": ("euler", "dpm_solver_pp", "unipc"),
           "vp": ("ddim", "dpm_solver_pp", "unipc", "ays_dpm_solver_pp")}
# What `--num-fit` sweeps: the default fit and the peers that learn from the fitting noises.
SWEPT = ("olss-cl", "olss-ft", "tuned-dpm_solver_pp", "tuned-unipc", "gits-ipndm",
         "gits-dpm_solver_pp", "ld3-dpm_solver_pp", "olss-e2e", "bns", "ds-solver")


def methods_for(kind: str, *, max_evaluations: int, swept_only: bool = False,
                regularization: str | None = None) -> dict:
  """The table's methods for a teacher kind (`ComparisonModel.kind`)."""
  solvers = SOLVERS["flow" if kind == "flow" else "vp"]
  methods = oj.compare.default_methods(baselines=solvers, kind=kind,
                                       max_evaluations=max_evaluations,
                                       regularization=regularization)
  if swept_only:
    methods = {k: v for k, v in methods.items() if k in SWEPT}
  return methods


def safeguard_rows(result, kind: str) -> list[dict]:
  """The default fit against the methods it must not lose to, paired on the same noises.

  One dict per (steps, reference) present in ``result``: ``steps``, ``reference`` (``olss-p-cl``,
  ``olss-cl``, or ``best classical (<name>)``), ``diff``, ``lo``, ``hi`` (the default's
  per-noise RMSE minus the reference's, mean and 95% interval) and ``worse`` (``lo > 0``).
  """
  default = oj.compare.DEFAULT_MODEL_METHOD
  mean = {(r["method"], r["steps"]): r["rmse"] for r in result.rows}
  out = []
  for n in sorted({s for m, s in mean if m == default}):
    refs = [(m, m) for m in ("olss-p-cl", "olss-cl") if (m, n) in mean]
    solvers = [m for m in SOLVERS["flow" if kind == "flow" else "vp"] if (m, n) in mean]
    if solvers:
      best = min(solvers, key=lambda m: mean[(m, n)])
      refs.append((best, f"best classical ({best})"))
    for method, label in refs:
      diff, lo, hi = oj.compare.paired_difference(result, default, method, n)
      out.append({"steps": n, "reference": label, "diff": diff, "lo": lo, "hi": hi,
                  "worse": lo > 0})
  return out


def format_safeguards(rows: list[dict]) -> str:
  """`safeguard_rows` as a markdown table (one line per step count and reference)."""
  lines = [f"| steps | {oj.compare.DEFAULT_MODEL_METHOD} minus | mean [95% interval] | |",
           "|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['steps']} | {r['reference']} | {r['diff']:.3g} [{r['lo']:.3g}, "
                 f"{r['hi']:.3g}] | {'worse' if r['worse'] else ''} |")
  return "\n".join(lines)


def mixture_models(seeds, kinds=MIXTURE_KINDS) -> list:
  """The unseen mixtures: a `ComparisonModel` per (seed, kind) (module docstring)."""
  models = []
  for seed in seeds:
    for kind in kinds:
      model = oj.compare.analytic_comparison_model(seed=seed, sample_shape=MIXTURE_SHAPE,
                                                   num_components=MIXTURE_COMPONENTS,
                                                   flow=kind == "flow")
      models.append(dataclasses.replace(model, name=f"{model.name}-seed{seed}"))
  return models


def run(small: bool = False, models=None, steps=None, num_eval=None, num_fit=None,
        num_teacher_steps=None, max_evaluations=None, only=None,
        regularization: str | None = None, fit_teacher_steps=None) -> list[dict]:
  """Prints the tables; returns one row dict per (model, num_fit, method, steps).

  ``models``: names from `MODELS` or `ComparisonModel`s (e.g. `mixture_models`);
  ``regularization``: the closed-loop OLSS fits' ridge (`olss_jax.fit_olss`; None: each
  method's default); ``fit_teacher_steps``: a cheaper teacher on the fitting noises
  (`olss_jax.compare.run_comparison`; held-out noises are scored against the full one).
  """
  models = models or (("analytic",) if small else DEFAULT_MODELS)
  steps = steps or ((3,) if small else (5, 10, 20))
  num_fits = num_fit or ((8,) if small else (32,))
  num_eval = num_eval or (16 if small else 256)
  k = num_teacher_steps or (50 if small else 1000)
  budget = max_evaluations or (20 if small else oj.compare.DEFAULT_MAX_EVALUATIONS)
  rows = []
  for name in models:
    model = oj.compare.embedded_model(name) if isinstance(name, str) else name
    name = name if isinstance(name, str) else model.name
    for b in num_fits:
      swept_only = len(num_fits) > 1
      methods = methods_for(model.kind, max_evaluations=budget, swept_only=swept_only,
                            regularization=regularization)
      if only:
        methods = {k: v for k, v in methods.items() if k in only}
      t0 = time.perf_counter()
      result = oj.compare.run_comparison(model, steps=steps, num_fit=b, num_eval=num_eval,
                                         num_teacher_steps=k, methods=methods,
                                         keep_samples=False,
                                         fit_teacher_steps=fit_teacher_steps)
      info = result.info
      cheap = ""
      if info["fit_teacher_rmse"] is not None:
        mean, lo, hi = info["fit_teacher_rmse"]
        cheap = (f"; fitted on a {info['fit_teacher_steps']}-step teacher, {mean:.3g} "
                 f"[{lo:.3g}, {hi:.3g}] RMSE from the {k}-step one on the held-out noises")
      print(f"\n### {model.name} ({info['teacher_kind']} teacher, {k} steps): {b} fitting "
            f"noises (seed {info['fit_seed']}), {num_eval} held-out noises (seed "
            f"{info['eval_seed']}); coordinate searches at most {budget} candidates{cheap}; "
            f"teacher on the fitting noises {info['teacher_fit_seconds']:.0f} s; "
            f"{time.perf_counter() - t0:.0f} s\n")
      print("RMSE to the teacher (mean [95% interval]; lowest in bold):\n")
      print(oj.compare.format_markdown(result))
      print(f"\nfit model calls on the {b} fitting noises beyond the teacher's "
            f"{info['fit_teacher_steps']}:\n")
      print(oj.compare.format_markdown(result, metric="fit_model_calls", best=None))
      print("\nfit seconds:\n")
      print(oj.compare.format_markdown(result, metric="fit_seconds", best=None), flush=True)
      guards = safeguard_rows(result, model.kind)
      if guards:
        print(f"\nthe default against what it must not lose to (per-noise RMSE, paired on "
              f"the same {num_eval} held-out noises):\n")
        print(format_safeguards(guards), flush=True)
      rows += [dict(r, model=name, num_fit=b) for r in result.rows]
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny configuration (seconds)")
  parser.add_argument("--models", nargs="+", choices=MODELS,
                      help=f"models to run (default: {' '.join(DEFAULT_MODELS)})")
  parser.add_argument("--steps", nargs="+", type=int, help="step counts (default 5 10 20)")
  parser.add_argument("--num-eval", type=int, help="held-out noises (default 256)")
  parser.add_argument("--num-fit", nargs="+", type=int,
                      help="fitting noises (default 32; several: the sweep of the fitted methods)")
  parser.add_argument("--teacher-steps", type=int, help="teacher steps (default 1000)")
  parser.add_argument("--fit-teacher-steps", type=int,
                      help="a cheaper teacher on the fitting noises only (default: the same); "
                           "held-out noises are scored against --teacher-steps")
  parser.add_argument("--max-evaluations", type=int,
                      help="the coordinate searches' budget, the same for olss-ft and the tuned "
                           "peers (default 400)")
  parser.add_argument("--methods", nargs="+",
                      help="only these rows (each row is independent and deterministic)")
  parser.add_argument("--mixture-seeds", nargs="+", type=int,
                      help="add the unseen 3x8x8 mixtures of these seeds (module docstring)")
  parser.add_argument("--mixture-kinds", nargs="+", choices=MIXTURE_KINDS,
                      default=list(MIXTURE_KINDS), help="their kinds (default: vp flow)")
  parser.add_argument("--regularization", choices=("cv", "cv-rmse", "cv-robust"),
                      help="every closed-loop OLSS fit's cross-validated ridge: by squared "
                           "error (cv), per-noise RMSE (cv-rmse), or with the noises far off "
                           "the fit down-weighted (cv-robust; olss_jax.closed_loop_fit); by "
                           "default each method's own (olss-ft validates cv against cv-robust)")
  args = parser.parse_args()
  models = list(args.models or ())
  if args.mixture_seeds:
    models += mixture_models(args.mixture_seeds, args.mixture_kinds)
  run(small=args.small, models=models or None, steps=args.steps, num_eval=args.num_eval,
      num_fit=args.num_fit, num_teacher_steps=args.teacher_steps,
      max_evaluations=args.max_evaluations, only=args.methods,
      regularization=args.regularization, fit_teacher_steps=args.fit_teacher_steps)


if __name__ == "__main__":
  main()
