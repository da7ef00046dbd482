"""The main job: the scheduler comparison on the embedded default model (`python -m olss_jax`).

Fits OLSS and OLSS-P on the teacher's fitting noises, runs every scheduler at 5, 10 and 20
steps on held-out noises (the same for every scheduler), prints markdown tables (RMSE to the
teacher with 95% intervals; on the digits model also the Frechet distance in the classifier's
features and the class accuracy) and writes a sample grid and an error-vs-steps plot.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

from olss_jax._src import compare
from olss_jax._src import recipe


def digits_metrics(model: compare.ComparisonModel) -> compare.ComparisonModel:
  """Adds the digits metrics: Frechet distance to the teacher's and to real test digits in the
  frozen classifier's features (``fd_teacher``, ``fd_real``) and class accuracy (``accuracy``)."""
  from olss_jax._src import frechet  # noqa: PLC0415
  from olss_jax._src.digits import classifier as classifier_lib  # noqa: PLC0415
  from olss_jax._src.digits import data  # noqa: PLC0415
  clf = classifier_lib.load_digits_classifier()
  real_features = np.asarray(clf.features(data.load_digits_dataset("test")[0]))

  def metrics(samples, teacher, labels):
    feats = np.asarray(clf.features(samples))
    return {"fd_teacher": frechet.frechet_distance(feats, np.asarray(clf.features(teacher))),
            "fd_real": frechet.frechet_distance(feats, real_features),
            "accuracy": float(np.mean(np.asarray(clf.predict(samples)) == np.asarray(labels)))}

  return dataclasses.replace(model, metrics=metrics)


def build_model(name: str, guidance_scale: float | None = None) -> compare.ComparisonModel:
  """The comparison model for a ``--model`` choice (digits models carry their metrics)."""
  from olss_jax._src import embedded  # noqa: PLC0415
  model = embedded.embedded_model(name, guidance_scale=guidance_scale)
  return digits_metrics(model) if model.name.startswith("digits") else model


def _write_figures(result: compare.Comparison, out: str) -> list[str]:
  from olss_jax._src import figures  # noqa: PLC0415
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
  return written


def main(args: argparse.Namespace) -> int:
  """Runs the comparison and prints markdown tables. Returns the exit code.

  Args:
    args: the ``olss-jax demo`` options (``model``, ``guidance_scale``, ``steps``,
      ``num_fit``, ``num_eval``, ``teacher_steps``, ``methods``, ``out``, ``quiet``).
  """
  from olss_jax._src import progress as progress_lib  # noqa: PLC0415
  start = time.perf_counter()
  model = build_model(args.model, args.guidance_scale)
  methods = compare.default_methods(kind=model.kind)
  if args.methods:
    unknown = sorted(set(args.methods) - set(methods))
    if unknown:
      raise ValueError(f"--methods: unknown {unknown}; choose from {sorted(methods)}")
    methods = {name: methods[name] for name in args.methods}
  total = 2 + len(args.steps) * len(methods)
  with progress_lib.progress_bar(total, "demo", enabled=not args.quiet, unit="task") as bar:
    def say(message: str) -> None:
      bar.set_postfix_str(message[:60], refresh=False)
      bar.update(1)
    result = compare.run_comparison(model, steps=args.steps, num_fit=args.num_fit,
                                    num_eval=args.num_eval, num_teacher_steps=args.teacher_steps,
                                    methods=methods, progress=say)
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
        f"the paper; the library's default with a model is {recipe.DEFAULT_MODEL_METHOD})\n")
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
