"""The paper's figures end to end on a model: one comparison run feeds every figure."""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from olss_jax._src import compare
from olss_jax._src import figures
from olss_jax._src import fit_olss as fit_olss_lib
from olss_jax._src import noise
from olss_jax._src import progress
from olss_jax._src import sampler
from olss_jax._src import trajectory as trajectory_lib

FIGURE_NAMES = ("correlation", "paths", "errors", "weights", "grid")
FIGURE_BASELINES = ("ddim", "dpm_solver_pp", "unipc", "deis")
PATH_METHODS = ("olss-ft", "olss-cl", "olss", "dpm_solver_pp", "ddim")


def generation_paths(model: compare.ComparisonModel, result: compare.Comparison, num_steps: int,
                     *, num_shown: int = 3, methods: Sequence[str] = PATH_METHODS
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Figure 5's data: the states each sampler visits, and the teacher's, on held-out noises.

  The noises are the first ``num_shown`` held-out noises of ``result`` (its ``eval_seed`` and
  ``num_eval``: `compare.draw_noises`), never fitting ones; the teacher is run again on them
  (``result.info["num_teacher_steps"]`` steps) and each method's n-step schedule of ``result``
  is sampled with `sample_states`.

  Args:
    model: the `ComparisonModel` ``result`` was run on.
    result: a `compare.run_comparison` result.
    num_steps: n, the step count whose schedules are drawn.
    num_shown: S, how many held-out noises.
    methods: the methods drawn, those ``result`` has at n.

  Returns:
    ({method: (n + 1, S, *sample_shape) states}, (K + 1, S, *sample_shape) teacher states).
  """
  info = result.info
  num_shown = noise.check_count(num_shown, "num_shown", maximum=info["num_eval"])
  x_T = compare.draw_noises(model, info["eval_seed"], info["num_eval"])[:num_shown]
  conditions = result.eval_conditions
  conditions = None if conditions is None else np.asarray(conditions)[:num_shown]
  denoise = model.denoiser(conditions)
  teacher = trajectory_lib.collect_trajectory(denoise, x_T, model.alphas_cumprod,
                                              info["num_teacher_steps"])
  histories = {}
  for method in methods:
    if (method, num_steps) in result.schedules:
      hist = jax.jit(sampler.sample_states)(denoise, result.schedules[(method, num_steps)], x_T)
      histories[method] = np.asarray(hist)
  return histories, np.asarray(teacher.states)


def paper_figures(model: compare.ComparisonModel, out_dir, *,
                  which: Sequence[str] = FIGURE_NAMES, steps: Sequence[int] = (5, 10, 20),
                  num_fit: int = 32, num_eval: int = 64, num_teacher_steps: int = 1000,
                  baselines: Sequence[str] = FIGURE_BASELINES,
                  peers: Sequence[str] | bool = True,
                  max_evaluations: int = fit_olss_lib.DEFAULT_MAX_EVALUATIONS,
                  fit_seed: int = 1, eval_seed: int = 2, quiet: bool = False) -> list[str]:
  """Runs one held-out comparison and writes the paper's figures from it as PNGs.

  ``correlation.png`` (Figure 2, the fitting teacher), ``errors.png`` (Figure 4, RMSE to the
  teacher against steps), ``paths.png`` (Figure 5, PCA of the paths of OLSS (closed loop and
  the paper's fit), DDIM and DPM-Solver++ at the smallest n against the teacher, on three
  held-out noises), ``weights.png`` (OLSS's fitted weights, closed loop and paper, beside
  DDIM's at the smallest n) and ``grid.png``
  (Figure 6, teacher and schedulers at the smallest n on the same held-out noises).

  Args:
    model: a `ComparisonModel` (e.g. `olss_jax.embedded_model()`).
    out_dir: directory for the PNGs (created).
    which: the subset of `FIGURE_NAMES` to write.
    steps: step counts n of the comparison (the errors figure); the others use min(steps).
    num_fit: K fitting noises of the teacher.
    num_eval: held-out noises (errors and grid).
    num_teacher_steps: teacher DDIM steps (the paper's 1000).
    baselines: classical schedulers compared (names of `olss_jax.BASELINES`).
    peers: the learned-timestep peers compared (`compare.default_methods`: True for all of
      `compare.PEERS` the model's kind offers, False for none, or names).
    max_evaluations: the coordinate searches' budget (``olss-ft`` and the tuned peers).
    fit_seed, eval_seed: seeds of the fitting and held-out noises.
    quiet: no progress bar.

  Returns:
    The paths written, in the order of ``which``.
  """
  unknown = [w for w in which if w not in FIGURE_NAMES]
  if unknown:
    raise ValueError(f"which: unknown figures {unknown}; expected names from {FIGURE_NAMES}")
  steps = sorted({int(n) for n in steps})
  if not steps or steps[0] < 1:
    raise ValueError(f"steps: expected positive step counts, got {steps}")
  n0 = steps[0]
  methods = compare.default_methods(baselines=list(baselines), peers=peers, kind=model.kind,
                                    max_evaluations=max_evaluations)
  captured = {}

  def capture(name, fn):
    def method(ctx, n):
      captured.setdefault("ctx", ctx)
      return fn(ctx, n)
    return method

  methods = {name: capture(name, fn) for name, fn in methods.items()}
  run_steps = steps if "errors" in which else [n0]
  os.makedirs(os.fspath(out_dir), exist_ok=True)
  with progress.progress_bar(2 + len(run_steps) * len(methods), "figures: comparison",
                             enabled=not quiet, unit="task") as bar:
    def say(message):
      bar.set_postfix_str(message[:60], refresh=False)
      bar.update(1)
    result = compare.run_comparison(model, steps=run_steps, num_fit=num_fit, num_eval=num_eval,
                                    num_teacher_steps=num_teacher_steps, methods=methods,
                                    fit_seed=fit_seed, eval_seed=eval_seed, keep_samples=True,
                                    progress=say)
  ctx = captured["ctx"]
  written = []
  for name in which:
    path = os.path.join(os.fspath(out_dir), f"{name}.png")
    if name == "correlation":
      figures.correlation_figure(ctx.traj, path=path)
    elif name == "errors":
      figures.error_vs_steps_figure(result, path=path)
    elif name == "weights":
      shown_weights = {f"OLSS closed loop ({n0} steps)": result.schedules.get(("olss-cl", n0)),
                       f"OLSS paper fit ({n0} steps)": result.schedules[("olss", n0)],
                       f"DDIM ({n0} steps)": result.schedules.get(("ddim", n0))}
      figures.weights_figure({k: v for k, v in shown_weights.items() if v is not None}, path=path)
    elif name == "paths":
      histories, teacher_states = generation_paths(model, result, n0)
      figures.generation_paths_figure(histories, teacher_states,
                                      samples=range(teacher_states.shape[1]), path=path)
    elif name == "grid":
      rows = {f"teacher ({num_teacher_steps})": result.samples[("teacher", 0)]}
      for method in list(baselines) + ["olss-p", "olss", "olss-p-cl", "olss-cl", "olss-ft"]:
        if (method, n0) in result.samples:
          rows[f"{method} ({n0})"] = result.samples[(method, n0)]
      figures.image_grid_figure(rows, path=path)
    written.append(path)
  return written
