"""The main job: the scheduler comparison on the embedded default model (`python -m olss_jax`).

By default a quick comparison (`QUICK`: the key classical solvers, the strongest learned peer,
the paper's OLSS and the library's default at 5 and 10 steps on 64 held-out noises, about two
minutes on a 2-core CPU); ``--full`` runs every method at 5, 10 and 20 steps on 256 held-out
noises (`FULL`; what the README's tables come from). Every method is fitted on the teacher's
fitting noises and run on held-out noises (the same for every method); it prints markdown
tables (RMSE to the teacher with 95% intervals; on the image models also the Frechet distance
in the classifier's features and the class accuracy) and writes sample grids and an
error-vs-steps plot.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

from olss_jax._src import compare
from olss_jax._src import figures
from olss_jax._src import fit_olss as fit_olss_lib
from olss_jax._src import frechet
from olss_jax._src import progress as progress_lib
from olss_jax._src import shipped_models
from olss_jax._src.digits import classifier as classifier_lib
from olss_jax._src.digits import data
from olss_jax._src.digits import mnist


def digits_metrics(model: compare.ComparisonModel,
                   dataset: str = "digits") -> compare.ComparisonModel:
  """Adds the image metrics: Frechet distance to the teacher's and to real held-out images in
  the frozen classifier's features (``fd_teacher``, ``fd_real``) and class accuracy
  (``accuracy``); ``dataset`` ``"digits"`` (8x8) or ``"mnist"`` (28x28) picks the classifier
  and the real images."""
  if dataset == "mnist":
    clf = classifier_lib.load_mnist_classifier()
    real_images = mnist.load_mnist_dataset("test")[0]
  else:
    clf = classifier_lib.load_digits_classifier()
    real_images = data.load_digits_dataset("test")[0]
  real_features = np.asarray(clf.features(real_images))

  def metrics(samples, teacher, labels):
    feats = np.asarray(clf.features(samples))
    return {"fd_teacher": frechet.frechet_distance(feats, np.asarray(clf.features(teacher))),
            "fd_real": frechet.frechet_distance(feats, real_features),
            "accuracy": float(np.mean(np.asarray(clf.predict(samples)) == np.asarray(labels)))}

  return dataclasses.replace(model, metrics=metrics)


def build_model(name: str, guidance_scale: float | None = None) -> compare.ComparisonModel:
  """The comparison model for a ``--model`` choice (digits and MNIST carry their metrics)."""
  model = shipped_models.embedded_model(name, guidance_scale=guidance_scale)
  dataset = shipped_models.image_dataset(shipped_models.resolved_name(model))
  return digits_metrics(model, dataset) if dataset else model


# The two comparisons of the main job: what each runs unless an option says otherwise.
# "first_order" is DDIM for a VP model and flow Euler for a flow model; tuned UniPC is the
# learned peer of the quick run (the strongest peer on the digits models at 5 and 10 steps
# among those that fit in its budget; --full runs every peer, LD3 included).
QUICK = {"steps": (5, 10), "num_eval": 64, "max_evaluations": 60,
         "methods": ("first_order", "dpm_solver_pp", "unipc", "tuned-unipc", "olss", "olss-ft")}
FULL = {"steps": (5, 10, 20), "num_eval": 256,
        "max_evaluations": fit_olss_lib.DEFAULT_MAX_EVALUATIONS, "methods": None}


def run_settings(kind: str, *, full: bool = False, steps=None, num_eval=None,
                 max_evaluations=None, methods=None) -> tuple[list[int], int, int, list[str]]:
  """What the main job runs: the preset (`QUICK`, or `FULL` with ``full``) with the options
  given (not None) in its place.

  Returns:
    (step counts, held-out noises, the coordinate searches' budget, method names), the names
    checked against `compare.default_methods(kind=kind)` (a ValueError names ``--methods``).
  """
  preset = FULL if full else QUICK
  offered = list(compare.default_methods(kind=kind))
  if methods:
    names = list(methods)
  elif preset["methods"] is None:
    names = offered
  else:
    first = "euler" if kind == "flow" else "ddim"
    names = [first if n == "first_order" else n for n in preset["methods"]]
  unknown = sorted(set(names) - set(offered))
  if unknown:
    raise ValueError(f"--methods: unknown {unknown}; choose from {sorted(offered)}")
  return (list(steps or preset["steps"]), int(num_eval or preset["num_eval"]),
          int(max_evaluations or preset["max_evaluations"]), names)


def task_cost(method: str, n: int, *, num_fit: int, num_eval: int, max_evaluations: int) -> float:
  """A rough cost of one (method, n) task of the comparison, in model calls on the fitting batch.

  Used only to weight the progress bar and to estimate the run's duration from the measured
  cost of one teacher step: sampling the held-out noises (n calls of ``num_eval / num_fit``
  batches), plus what the fit calls the model (its measured counts on digits, README), plus a
  fixed allowance for compilation.
  """
  per_eval = n * num_eval / num_fit
  fit = {"olss-p-cl": n, "olss-cl": 25 * n, "olss-ft": 25 * n + max_evaluations * n,
         "ld3-dpm_solver_pp": 1250 * n}.get(method, 0.0)
  if method.startswith("tuned-"):
    fit = max_evaluations * n
  return per_eval + fit + 150.0


def _write_figures(result: compare.Comparison, out: str) -> list[str]:
  os.makedirs(out, exist_ok=True)
  written = []
  path = os.path.join(out, "error_vs_steps.png")
  figures.error_vs_steps_figure(result, path=path)
  written.append(path)
  methods = list(dict.fromkeys(r["method"] for r in result.rows))
  for n in sorted({min(r["steps"] for r in result.rows), max(r["steps"] for r in result.rows)}):
    rows = {f"teacher ({result.info['num_teacher_steps']} steps)":
            result.samples[("teacher", 0)][:8]}
    rows.update({f"{m} ({n})": result.samples[(m, n)][:8] for m in methods
                 if (m, n) in result.samples})
    path = os.path.join(out, f"samples_{n}_steps.png")
    figures.image_grid_figure(rows, path=path)
    written.append(path)
  n = min(r["steps"] for r in result.rows)
  picked = headline_methods(result, n)
  if picked:
    rows = {f"teacher ({result.info['num_teacher_steps']} steps)":
            result.samples[("teacher", 0)][:8]}
    rows.update({f"{label}: {m} ({n})": result.samples[(m, n)][:8] for label, m in picked})
    path = os.path.join(out, f"headline_{n}_steps.png")
    figures.image_grid_figure(rows, path=path, title=f"the same 8 held-out noises, {n} model "
                              f"calls each ({result.info['model']})")
    written.append(path)
  return written


def headline_methods(result: compare.Comparison, n: int) -> list[tuple[str, str]]:
  """The rows of the headline grid at n steps, as (label, method): the first-order solver
  (DDIM, or flow Euler), DPM-Solver++, the learned peer with the lowest held-out RMSE and the
  library's default; those the run has."""
  rmse = {r["method"]: r["rmse"] for r in result.rows if r["steps"] == n}
  peers = [m for m in compare.PEERS if m in rmse]
  picked = [("classical", m) for m in ("ddim", "euler", "dpm_solver_pp") if m in rmse]
  if peers:
    picked.append(("best peer", min(peers, key=rmse.get)))
  if fit_olss_lib.DEFAULT_MODEL_METHOD in rmse:
    picked.append(("default", fit_olss_lib.DEFAULT_MODEL_METHOD))
  return picked


def main(args: argparse.Namespace) -> int:
  """Runs the comparison and prints markdown tables. Returns the exit code.

  Args:
    args: the ``olss-jax demo`` options (``model``, ``guidance_scale``, ``steps``,
      ``num_fit``, ``num_eval``, ``teacher_steps``, ``methods``, ``out``, ``quiet``).
  """
  start = time.perf_counter()
  model = build_model(args.model, args.guidance_scale)
  full = bool(getattr(args, "full", False))
  steps, num_eval, max_evaluations, names = run_settings(
      model.kind, full=full, steps=args.steps, num_eval=args.num_eval,
      max_evaluations=getattr(args, "max_evaluations", None), methods=args.methods)
  methods = compare.default_methods(kind=model.kind, max_evaluations=max_evaluations)
  methods = {name: methods[name] for name in names}
  costs = {(m, n): task_cost(m, n, num_fit=args.num_fit, num_eval=num_eval,
                             max_evaluations=max_evaluations) for n in steps for m in methods}
  teacher_cost = args.teacher_steps * (1 + num_eval / args.num_fit)
  total = teacher_cost + sum(costs.values())
  mode = "full" if full else "quick (--full for every method, 20 steps, 256 noises)"
  if not args.quiet:
    print(f"olss-jax demo, {mode}: {len(methods)} methods x {len(steps)} step counts on "
          f"{model.name}", file=sys.stderr, flush=True)
  with progress_lib.progress_bar(round(total), "demo", enabled=not args.quiet,
                                 unit="call") as bar:
    state = {"last": None, "t_teacher": time.perf_counter()}

    def say(message: str) -> None:
      last = state["last"]
      if last is not None:  # the task just finished
        bar.update(round(last))
      if message.startswith("teacher") and state["last"] is None:
        state["last"] = args.teacher_steps
      elif message.startswith("teacher"):
        per_call = (time.perf_counter() - state["t_teacher"]) / args.teacher_steps
        state["last"] = args.teacher_steps * num_eval / args.num_fit
        if not args.quiet:
          print(f"\nexpected: about {max(1, round(per_call * total / 60))} min in all "
                f"({per_call * 1e3:.1f} ms per model call on the fitting batch)",
                file=sys.stderr, flush=True)
      else:
        name, n = message.rsplit(":", 1)
        state["last"] = costs.get((name, int(n.split()[0])), 0.0)
      bar.set_postfix_str(message[:60], refresh=False)
    result = compare.run_comparison(model, steps=steps, num_fit=args.num_fit,
                                    num_eval=num_eval, num_teacher_steps=args.teacher_steps,
                                    methods=methods, progress=say)
    bar.update(max(0, round(total) - bar.n))
  info = result.info
  print(f"# OLSS comparison on {info['model']}"
        + (f" (guidance {model.guidance_scale:g})" if model.guidance_scale else ""))
  teacher_name = {"flow": "flow Euler"}.get(info["teacher_kind"], "DDIM")
  print(f"teacher: {info['num_teacher_steps']}-step {teacher_name}; fitted on {info['num_fit']} noises "
        f"(seed {info['fit_seed']}); evaluated on {info['num_eval']} held-out noises "
        f"(seed {info['eval_seed']}), the same for every method\n")
  print("methods: the diffusers baselines (ays_* = Align Your Steps' published timesteps); "
        "gits-* = the solver on GITS' timesteps, tuned-* = on timesteps tuned by a coordinate "
        "search for its final error on the fitting noises; olss-p / olss = the paper "
        "(teacher-forced Eq. 12 fit on uniform / searched steps); olss-p-cl / olss-cl = "
        "closed-loop fit; olss-ft = closed-loop fit on a path tuned for the final error (beyond "
        f"the paper; the library's default with a model is {fit_olss_lib.DEFAULT_MODEL_METHOD})\n")
  print("RMSE of the final sample against the teacher's on the same noise "
        "(mean [95% interval]; lowest in bold):\n")
  print(compare.format_markdown(result))
  if model.metrics is not None:
    for metric, title in (("fd_teacher", "Frechet distance to the teacher's samples "
                           "(classifier features; lower is better)"),
                          ("fd_real", "Frechet distance to real test digits"),
                          ("accuracy", "class accuracy of the conditional samples")):
      print(f"\n{title}:\n")
      print(compare.format_markdown(result, metric=metric, best="max" if metric == "accuracy"
                                    else "min"))
    teacher = info["teacher_metrics"]
    print(f"\nteacher ({info['num_teacher_steps']} steps): Frechet distance to real digits {teacher['fd_real']:.4g}, "
          f"class accuracy {teacher['accuracy']:.3f}")
  print("\nfit cost: model calls on the fitting noises beyond the teacher's (each call is one "
        f"batch of {info['num_fit']}; the teacher's {info['num_teacher_steps']} are shared by every "
        "fitted method):\n")
  print(compare.format_markdown(result, metric="fit_model_calls", best=None))
  print("\nfit seconds (this machine, compile time included):\n")
  print(compare.format_markdown(result, metric="fit_seconds", best=None))
  if args.out:
    for path in _write_figures(result, args.out):
      print(f"wrote {path}")
  print(f"\ntotal {time.perf_counter() - start:.1f} s (teacher {info['teacher_fit_seconds']:.1f} s"
        f" + {info['teacher_eval_seconds']:.1f} s)")
  return 0
