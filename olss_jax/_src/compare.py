"""Held-out comparison of schedules against the teacher (the paper's Table 1 / Figure 4 protocol).

Every method is fitted (if it fits anything) on the teacher's fitting noises and evaluated on
other noises, drawn from another seed and never used in any fit; every method sees the same
evaluation noises and conditions. The reference is the teacher's final sample on the same noise.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import fit_olss as fit_olss_lib
from olss_jax._src import sampler
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation
from olss_jax._src.analytic import analytic_comparison_model  # re-exported
from olss_jax._src.baselines import registry
from olss_jax._src.model import ComparisonModel  # re-exported: the type lives in the bottom layer
from olss_jax._src.peers import bns as bns_lib
from olss_jax._src.peers import ds_solver as ds_solver_lib
from olss_jax._src.peers import ld3 as ld3_lib
from olss_jax._src.peers import tuned as tuned_lib


@dataclasses.dataclass(frozen=True)
class FitContext:
  """What a method may use to build its schedule: the fitting teacher and its model."""

  traj: trajectory_lib.Trajectory
  denoise_fn: trajectory_lib.DenoiseFn
  model: ComparisonModel


MethodFn = Callable[[FitContext, int], schedule_lib.Schedule]


def _olss(method: str, max_evaluations: int = fit_olss_lib.DEFAULT_MAX_EVALUATIONS,
          regularization=None) -> MethodFn:
  def fit(ctx: FitContext, n: int) -> schedule_lib.Schedule:
    model = ctx.denoise_fn if method in fit_olss_lib.MODEL_METHODS else None
    kwargs = {"max_evaluations": max_evaluations} if method in fit_olss_lib.TUNED_METHODS else {}
    if method in fit_olss_lib.CLOSED_LOOP_METHODS and regularization is not None:
      kwargs["regularization"] = regularization
    return fit_olss_lib.fit_olss(ctx.traj, n, denoise_fn=model, method=method, **kwargs)
  return fit


def baseline_for(model: ComparisonModel, traj: trajectory_lib.Trajectory, name: str,
                 num_steps: int | None = None, **kwargs) -> schedule_lib.Schedule:
  """`baseline_schedule` for this model: its table for an epsilon model, else its teacher."""
  if model.teacher is None:
    return registry.baseline_schedule(name, model.alphas_cumprod, num_steps, **kwargs)
  if model.alphas_cumprod is not None:
    kwargs.setdefault("alphas_cumprod", model.alphas_cumprod)
  return registry.baseline_schedule(name, traj.teacher, num_steps, **kwargs)


def _baseline(name: str) -> MethodFn:
  def method(ctx: FitContext, n: int) -> schedule_lib.Schedule:
    return baseline_for(ctx.model, ctx.traj, name, n)
  return method


# The learned-timestep peers: (solver, how its timesteps are learned): GITS' dynamic programme
# and a coordinate search pick teacher timesteps (`peers.tuned`), LD3 learns continuous ones by
# backpropagation through the solver (`peers.ld3`); each solver runs through `timesteps=`.
PEERS: dict[str, tuple[str, str]] = {
    "gits-ipndm": ("ipndm", "gits"),
    "gits-dpm_solver_pp": ("dpm_solver_pp", "gits"),
    "tuned-dpm_solver_pp": ("dpm_solver_pp", "tuned"),
    "tuned-unipc": ("unipc", "tuned"),
    "ld3-dpm_solver_pp": ("dpm_solver_pp", "ld3"),
    # every weight and the times trained on the final error (`peers.bns`, from the midpoint
    # solver; `peers.ds_solver`, from flow Euler; "euler" here only says which kinds offer
    # them: every kind); DS-Solver is for flow models only
    "bns": ("euler", "bns"),
    "ds-solver": ("euler", "ds-solver"),
}


def _peer(name: str, max_evaluations: int) -> MethodFn:
  solver, how = PEERS[name]

  def method(ctx: FitContext, n: int) -> schedule_lib.Schedule:
    def build(timesteps):
      return baseline_for(ctx.model, ctx.traj, solver, timesteps=timesteps)
    if how == "gits":
      sched = tuned_lib.gits_schedule(ctx.traj, n, build)
    elif how == "bns":
      sched, _ = bns_lib.bns_schedule(ctx.traj, n, ctx.denoise_fn,
                                      alphas_cumprod=ctx.model.alphas_cumprod)
    elif how == "ds-solver":
      sched, _ = ds_solver_lib.ds_solver_schedule(ctx.traj, n, ctx.denoise_fn)
    elif how == "ld3":
      sched, _ = ld3_lib.ld3_schedule(ctx.traj, n, ctx.denoise_fn,
                                      alphas_cumprod=ctx.model.alphas_cumprod)
    else:
      default = baseline_for(ctx.model, ctx.traj, solver, n).timesteps
      sched = tuned_lib.tuned_schedule(ctx.traj, n, build, ctx.denoise_fn,
                                       default_timesteps=default, max_evaluations=max_evaluations)
    return sched.with_metadata(method=name)
  return method


def default_methods(*, baselines: Sequence[str] | None = None, closed_loop: bool = True,
                    peers: Sequence[str] | bool = True, kind: str = "ddim",
                    max_evaluations: int = fit_olss_lib.DEFAULT_MAX_EVALUATIONS,
                    regularization=None) -> dict[str, MethodFn]:
  """The methods of the comparison table, named as everywhere in olss_jax (`fit_olss.METHODS`).

  Every baseline the teacher kind offers (`baselines.baseline_names(kind)`, including Align
  Your Steps' published schedule for VP models); the learned-timestep peers (`PEERS`: GITS'
  dynamic programme, a coordinate search on the solver's own final error and LD3's gradient
  descent, each on a classical solver the kind offers); the paper's OLSS-P ("olss-p", uniform path) and OLSS
  ("olss", searched path), both fitted teacher-forced (Eq. 12); and, beyond the paper, the
  closed-loop fits ("olss-p-cl", "olss-cl") and the closed-loop fit on a path tuned for the
  final error ("olss-ft").

  Args:
    baselines: baseline names; all the kind offers by default.
    closed_loop: include the closed-loop methods.
    peers: True (all of `PEERS` whose solver the kind offers), False, or names.
    kind: the models' teacher kind (`ComparisonModel.kind`).
    max_evaluations: the coordinate searches' budget (the tuned peers and ``olss-ft`` alike).
    regularization: the closed-loop OLSS fits' ridge (`fit_olss`'s ``regularization``);
      None: each method's default.

  Returns:
    An ordered ``{name: (FitContext, n) -> Schedule}``.
  """
  offered = registry.baseline_names(kind)
  names = list(offered) if baselines is None else list(baselines)
  methods: dict[str, MethodFn] = {name: _baseline(name) for name in names}
  if peers is True:
    peer_names = [p for p, (solver, how) in PEERS.items()
                  if solver in offered and (how != "ds-solver" or kind == "flow")]
  else:
    peer_names = list(peers or ())
  for name in peer_names:
    if name not in PEERS:
      raise ValueError(f"peers: expected names from {sorted(PEERS)}, got {name!r}")
    methods[name] = _peer(name, max_evaluations)
  for method in fit_olss_lib.METHODS:
    if closed_loop or method in fit_olss_lib.PAPER_METHODS:
      methods[method] = _olss(method, max_evaluations, regularization)
  return methods


@dataclasses.dataclass
class Comparison:
  """Results of `run_comparison`.

  Attributes:
    rows: one dict per (method, steps): ``method``, ``steps``, ``rmse``, ``rmse_lo``,
      ``rmse_hi`` (95% interval of the mean per-sample RMSE), ``fit_seconds``,
      ``sample_seconds``, ``fit_model_calls``, plus the model's extra metrics.
    schedules: {(method, steps): Schedule}.
    samples: {(method, steps): (N, ...) final samples} when kept, plus ("teacher", 0).
    eval_conditions: the evaluation conditions (or None).
    info: run facts (seeds, counts, timings).
    per_sample: {(method, steps): (N,) each held-out noise's RMSE} (always kept; what
      `paired_difference` compares).
  """

  rows: list[dict[str, Any]]
  schedules: dict[tuple[str, int], schedule_lib.Schedule]
  samples: dict[tuple[str, int], np.ndarray]
  eval_conditions: Any
  info: dict[str, Any]
  per_sample: dict[tuple[str, int], np.ndarray] = dataclasses.field(default_factory=dict)


def per_sample_rmse(samples, reference) -> np.ndarray:
  """(N,) root mean squared error of each sample against its reference (same noise)."""
  diff = (np.asarray(samples, np.float64) - np.asarray(reference, np.float64))
  return np.sqrt(np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1))


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
  """Mean and a 95% normal-approximation interval of the mean."""
  values = np.asarray(values, np.float64)
  mean = float(values.mean())
  half = 1.96 * float(values.std(ddof=1)) / math.sqrt(values.shape[0]) if values.shape[0] > 1 else 0.0
  return mean, mean - half, mean + half


def paired_difference(comparison: Comparison, method: str, other: str,
                      steps: int) -> tuple[float, float, float]:
  """Mean and 95% interval of ``method``'s per-noise RMSE minus ``other``'s, same noises.

  The paired comparison of two rows of one `run_comparison` (``rmse_method(x) - rmse_other(x)``
  over the N held-out noises x, `mean_interval`): far tighter than two rows' own intervals
  when both miss on the same noises. An interval above 0 says ``method`` is worse beyond the
  noise of the estimate.

  Raises:
    KeyError: naming the (method, steps) the comparison does not hold.
  """
  try:
    a, b = comparison.per_sample[(method, steps)], comparison.per_sample[(other, steps)]
  except KeyError as err:
    raise KeyError(f"paired_difference: no per-noise errors for {err.args[0]!r}") from None
  return mean_interval(np.asarray(a, np.float64) - np.asarray(b, np.float64))


_sample_jit = jax.jit(sampler.sample)


def draw_noises(model: ComparisonModel, seed: int, num: int) -> jax.Array:
  """The starting noises x_T of `run_comparison` for a seed: (num, *model.sample_shape) float32."""
  return jax.random.normal(jax.random.key(seed), (num,) + tuple(model.sample_shape), jnp.float32)


def run_comparison(model: ComparisonModel, *, steps: Sequence[int] = (5, 10, 20),
                   num_fit: int = 32, num_eval: int = 256, num_teacher_steps: int = 1000,
                   methods: Mapping[str, MethodFn] | None = None, fit_seed: int = 1,
                   eval_seed: int = 2, keep_samples: bool = True,
                   progress: Callable[[str], None] | None = None,
                   fit_teacher_steps: int | None = None) -> Comparison:
  """Fits every method on ``num_fit`` teacher runs and scores it on ``num_eval`` other noises.

  Args:
    model: the model and its conditioning.
    steps: step counts n to evaluate.
    num_fit: K fitting noises (the paper's 32).
    num_eval: held-out noises (>= 2), from ``eval_seed`` (must differ from ``fit_seed``).
    num_teacher_steps: K teacher steps (the paper's 1000 DDIM steps; `ComparisonModel.teacher`),
      the reference every method is scored against on the held-out noises.
    methods: ``{name: (FitContext, n) -> Schedule}``; `default_methods(kind=model.kind)` when
      None.
    fit_seed: seed of the fitting noises and conditions.
    eval_seed: seed of the evaluation noises and conditions.
    keep_samples: keep final samples for grids and feature metrics.
    progress: optional ``callback(message)``.
    fit_teacher_steps: the teacher run on the fitting noises (None: ``num_teacher_steps``);
      fewer steps make a cheaper reference to fit on (issue 21's "more fitting noises from a
      cheaper reference"), while the held-out noises are still scored against
      ``num_teacher_steps``. Its own distance to that reference is measured on the held-out
      noises (``info["fit_teacher_rmse"]``: mean per-sample RMSE and its 95% interval).

  Returns:
    A `Comparison`.
  """
  if fit_seed == eval_seed:
    raise ValueError(f"eval_seed: must differ from fit_seed ({fit_seed}); evaluation noises are "
                     "never the fitting noises")
  if num_fit < 1 or num_eval < 2:
    raise ValueError(f"num_fit/num_eval: expected >= 1 and >= 2, got {num_fit} and {num_eval}")
  fit_teacher_steps = (num_teacher_steps if fit_teacher_steps is None
                       else validation.check_count(fit_teacher_steps, "fit_teacher_steps"))
  methods = default_methods(kind=model.kind) if methods is None else dict(methods)
  say = progress or (lambda msg: None)
  x_fit = draw_noises(model, fit_seed, num_fit)
  x_eval = draw_noises(model, eval_seed, num_eval)
  c_fit = model.draw_conditions(fit_seed, num_fit)
  c_eval = model.draw_conditions(eval_seed, num_eval)
  f_fit, f_eval = model.denoiser(c_fit), model.denoiser(c_eval)

  teacher = model.make_teacher(num_teacher_steps)
  fit_teacher = (teacher if fit_teacher_steps == num_teacher_steps
                 else model.make_teacher(fit_teacher_steps))
  t0 = time.perf_counter()
  say(f"teacher: {fit_teacher_steps} {teacher.kind} steps on {num_fit} fitting noises")
  traj = trajectory_lib.collect_trajectory(f_fit, x_fit, fit_teacher)
  jax.block_until_ready(traj.model_outputs)
  teacher_fit_s = time.perf_counter() - t0
  say(f"teacher: {num_teacher_steps} {teacher.kind} steps on {num_eval} held-out noises")
  t0 = time.perf_counter()
  eval_traj = trajectory_lib.collect_trajectory(f_eval, x_eval, teacher)
  reference = np.asarray(eval_traj.states[-1])
  del eval_traj
  teacher_eval_s = time.perf_counter() - t0
  fit_teacher_rmse = None
  if fit_teacher is not teacher:
    say(f"the fitting teacher ({fit_teacher_steps} steps) on the held-out noises")
    cheap = trajectory_lib.collect_trajectory(f_eval, x_eval, fit_teacher)
    fit_teacher_rmse = mean_interval(per_sample_rmse(np.asarray(cheap.states[-1]), reference))
    del cheap

  ctx = FitContext(traj=traj, denoise_fn=f_fit, model=model)
  rows, schedules, samples, per_sample = [], {}, {}, {}
  if keep_samples:
    samples[("teacher", 0)] = reference
  for n in steps:
    for name, method in methods.items():
      say(f"{name}: {n} steps")
      t0 = time.perf_counter()
      sched = method(ctx, n)
      fit_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      out = np.asarray(jax.block_until_ready(_sample_jit(f_eval, sched, x_eval)))
      sample_s = time.perf_counter() - t0
      per_sample[(name, int(n))] = per_sample_rmse(out, reference)
      mean, lo, hi = mean_interval(per_sample[(name, int(n))])
      row = {"method": name, "steps": int(n), "rmse": mean, "rmse_lo": lo, "rmse_hi": hi,
             "fit_seconds": fit_s, "sample_seconds": sample_s,
             "fit_model_calls": int(sched.metadata.get("fit_model_calls", 0))}
      if model.metrics is not None:
        row.update(model.metrics(out, reference, c_eval))
      rows.append(row)
      schedules[(name, int(n))] = sched
      if keep_samples:
        samples[(name, int(n))] = out
  info = {"model": model.name, "teacher_kind": teacher.kind, "num_fit": num_fit,
          "num_eval": num_eval,
          "num_teacher_steps": num_teacher_steps, "fit_teacher_steps": fit_teacher_steps,
          "fit_seed": fit_seed, "eval_seed": eval_seed,
          "teacher_fit_seconds": teacher_fit_s, "teacher_eval_seconds": teacher_eval_s,
          "fit_teacher_rmse": fit_teacher_rmse}
  if model.metrics is not None:
    info["teacher_metrics"] = dict(model.metrics(reference, reference, c_eval))
  return Comparison(rows=rows, schedules=schedules, samples=samples, eval_conditions=c_eval,
                    info=info, per_sample=per_sample)


def format_markdown(comparison: Comparison, *, metric: str = "rmse",
                    best: str | None = "min") -> str:
  """A markdown table: one row per method, one column per step count (best in bold; none
  with ``best=None``).

  For ``metric="rmse"`` each cell is ``mean [lo, hi]``; any other metric key of the rows
  (e.g. ``"fd_teacher"``) shows its value.
  """
  steps = sorted({r["steps"] for r in comparison.rows})
  methods = list(dict.fromkeys(r["method"] for r in comparison.rows))
  cell = {(r["method"], r["steps"]): r for r in comparison.rows}
  if best not in ("min", "max", None):
    raise ValueError(f"best: expected 'min', 'max' or None, got {best!r}")
  pick = {"min": min, "max": max, None: lambda values, default: None}[best]
  best_values = {n: pick((cell[(m, n)][metric] for m in methods if (m, n) in cell), default=None)
                 for n in steps}
  lines = ["| method | " + " | ".join(f"{n} steps" for n in steps) + " |",
           "|---|" + "---|" * len(steps)]
  for m in methods:
    parts = []
    for n in steps:
      r = cell.get((m, n))
      if r is None:
        parts.append("")
        continue
      text = f"{r[metric]:.4g}"
      if metric == "rmse":
        text += f" [{r['rmse_lo']:.3g}, {r['rmse_hi']:.3g}]"
      parts.append(f"**{text}**" if r[metric] == best_values[n] else text)
    lines.append(f"| {m} | " + " | ".join(parts) + " |")
  return "\n".join(lines)
