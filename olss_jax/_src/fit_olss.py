"""`fit_olss`: the one recipe from a teacher trajectory to a fitted schedule, and its method names.

The only place that chooses a method. Every caller (the API, the command line, the
comparison, the Stable Diffusion helpers) names methods from `METHODS`:

==============  =====================================================  ==================
method          path                                                   weights
==============  =====================================================  ==================
``olss-p``      uniform (OLSS-P)                                       teacher-forced Eq. 12
``olss``        Algorithms 1-3 on teacher-forced errors (the paper)    teacher-forced Eq. 12
``olss-p-cl``   uniform                                                closed-loop Eq. 12
``olss-cl``     Algorithms 1-3 on closed-loop errors                   closed-loop Eq. 12
``olss-ft``     ``olss-cl``'s path (or the uniform one, if its final   closed-loop Eq. 12
                error is lower) tuned for the final error, once per    (``"cv"`` or
                ridge criterion (`path_tuning.tune_path`, the result   ``"cv-robust"``,
                validated on held-out fitting noises, then probed for  as validated)
                divergence on fresh noises)
``olss-e2e``    continuous times trained with the weights on the       all of Eq. 12's span,
                final error (`e2e.fit_e2e`), from the better of        end to end
                ``olss-p-cl`` / ``olss-cl`` and from the midpoint
                solver; the better trained one on held-out noises
==============  =====================================================  ==================

The paper's methods need only the trajectory (or its statistics); the closed-loop ones call
the model (``denoise_fn``). The default is the paper's ``olss`` without a model and the
library's measured best, ``olss-ft``, with one (its path chosen by the final error that is
evaluated, validated on a held-out quarter of the fitting noises; README, "Results").
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import numpy as np

from olss_jax._src import closed_loop_fit
from olss_jax._src import closed_loop_search
from olss_jax._src import fit
from olss_jax._src import e2e
from olss_jax._src import path_tuning
from olss_jax._src import refine as refine_lib
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import search
from olss_jax._src import validation

METHODS = ("olss-p", "olss", "olss-p-cl", "olss-cl", "olss-ft", "olss-e2e")
PAPER_METHODS = ("olss-p", "olss")
MODEL_METHODS = ("olss-p-cl", "olss-cl", "olss-ft", "olss-e2e")
TUNED_METHODS = ("olss-ft",)                 # take ``max_evaluations``
CLOSED_LOOP_METHODS = ("olss-p-cl", "olss-cl", "olss-ft")   # take ``regularization``
DEFAULT_MAX_EVALUATIONS = path_tuning.DEFAULT_MAX_EVALUATIONS
DEFAULT_PAPER_METHOD = "olss"
DEFAULT_MODEL_METHOD = "olss-ft"
# The fewest fitting noises each method can use: the closed-loop ridge picks its strength by
# cross-validation over the noises (two at least), and olss-ft also holds a quarter of them
# out to validate its path (one held out, three to fit: a 3-fold cross-validation).
MIN_FIT_NOISES = {"olss-p": 1, "olss": 1, "olss-p-cl": 2, "olss-cl": 2, "olss-ft": 4,
                  "olss-e2e": 4}
# Below this a fit warns (README, "Beyond the paper": 8 noises come close to the paper's 32).
RECOMMENDED_FIT_NOISES = 8


# The spellings of olss_jax 0.1 (method="paper" / "closed_loop", uniform=True).
_LEGACY = {("paper", False): "olss", ("paper", True): "olss-p",
           ("closed_loop", False): "olss-cl", ("closed_loop", True): "olss-p-cl"}


def resolve_method(method: str | None, *, has_model: bool) -> str:
  """The method name to run: ``method`` checked, or the default for having a model or not."""
  if method is None:
    return DEFAULT_MODEL_METHOD if has_model else DEFAULT_PAPER_METHOD
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  if method in MODEL_METHODS and not has_model:
    raise ValueError(f"denoise_fn: required for method={method!r} (it calls the model); the "
                     f"paper's methods {PAPER_METHODS} need only the trajectory")
  return method


def _why_minimum(method: str) -> str:
  """Why ``method`` needs `MIN_FIT_NOISES` of them (for the refusal's message)."""
  if method == "olss-ft":
    return ("its path is validated on a held-out quarter of them and each row's ridge is "
            "cross-validated over the rest")
  return "each row's ridge is cross-validated over them"


def _concrete_list(x) -> list:
  return np.asarray(jax.device_get(x)).tolist()


def fit_olss(traj, num_steps: int, *, denoise_fn=None, method: str | None = None,
             refine: bool = False, refine_kwargs: dict[str, Any] | None = None,
             uniform: bool | None = None,
             max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
             e2e_kwargs: dict[str, Any] | None = None,
             regularization=None,
             progress: Callable[[str], None] | None = None) -> schedule_lib.Schedule:
  """Searches a path and fits its weights in one call: the library's front door to OLSS.

  Runs the method's path choice (`search_path`, Algorithms 1-3; `closed_loop_search`; or the
  uniform path) and its least squares (`fit_weights`, Eq. 12; or `closed_loop_fit`), see
  `METHODS`. ``refine=True`` then trains the weights end to end through the sampler
  (`refine`, needs the model). Runs eagerly and records its diagnostics in the schedule's
  metadata (the verbs it calls are each jittable). Its inputs are checked once, here (one
  scan of the trajectory for NaN); the verbs' cores it calls trust them.

  Args:
    traj: the teacher `Trajectory` (B fitting noises, K steps); the paper's methods also take
      its `TrajectoryStats`.
    num_steps: n, the number of model calls of the schedule.
    denoise_fn: the model ``(x_t (B, ...), t) -> e (B, ...)`` the teacher ran, conditioned on
      the fitting noises (needed by the closed-loop methods and refinement).
    method: a name from `METHODS`; None: ``"olss"`` without a model, ``"olss-ft"`` with one.
      (The 0.1 spellings ``"paper"`` / ``"closed_loop"`` still work, with a warning.)
    refine: refine the fitted weights end to end.
    refine_kwargs: keyword arguments for `refine` (optimizer, num_iters, holdout, ...).
    uniform: deprecated (0.1): with ``"paper"`` / ``"closed_loop"``, the uniform-path variant.
    max_evaluations: ``"olss-ft"``: the most candidate paths each of its path tunings fits
      (one per ridge criterion; n model calls on the B fitting noises each;
      `path_tuning.tune_path`).
    e2e_kwargs: ``"olss-e2e"``: keyword arguments for `e2e.fit_e2e` (``starts``,
      ``holdout`` and `learn_schedule`'s num_iters, learning_rate, loss, criterion, ...).
    regularization: the closed-loop fits' ridge (`CLOSED_LOOP_METHODS`): ``"cv"`` (the
      default of ``"olss-p-cl"`` / ``"olss-cl"``), ``"cv-rmse"`` (the strength chosen by the
      held-out folds' per-noise RMSE), ``"cv-robust"`` (the noises far off the fit
      down-weighted, Huber's rule) or a fixed float, as for `closed_loop_fit`; for
      ``"olss-ft"`` also a sequence of them, one path tuning each, the held-out fitting noises
      choosing the path and the criterion its returned fit uses (default ``("cv",
      "cv-robust")``, `path_tuning.tune_path`). None: the method's default.
    progress: optional ``callback(message)`` called at each stage (path search, every
      candidate path ``"olss-ft"`` fits, the weights' fit, refinement): the default fit runs
      for seconds to minutes.

  Returns:
    A `Schedule` ((n,) timesteps, (n, n + 1) weights) whose metadata records ``method``,
    ``fit`` ("teacher_forced", "closed_loop" or "refined"), ``path``, ``step_errors`` and the
    search's facts.

  Raises:
    ValueError: fewer fitting noises than the method needs (`MIN_FIT_NOISES`; below
      `RECOMMENDED_FIT_NOISES` a `validation.FewFitNoisesWarning`), or the errors of the
      verbs it calls.
  """
  has_model = denoise_fn is not None
  if method in ("paper", "closed_loop"):
    new = _LEGACY[(method, bool(uniform))]
    warnings.warn(f"fit_olss: method={method!r}{', uniform=True' if uniform else ''} is the "
                  f"0.1 spelling of method={new!r}", DeprecationWarning, stacklevel=2)
    method = new
  elif uniform is not None:
    raise TypeError("uniform: only with the 0.1 method names; use method='olss-p' or "
                    "'olss-p-cl' for the uniform path")
  method = resolve_method(method, has_model=has_model)
  if refine and not has_model:
    raise ValueError("denoise_fn: required for refine=True (it trains through the sampler)")
  # The one check of the trajectory (a scan of its outputs for NaN); the verbs below are the
  # cores of `search_path`, `closed_loop_fit`, ... that trust it (`validation`'s docstring).
  if method in MODEL_METHODS:
    validation.check_model_data(traj)
  else:
    validation.check_data(traj)
  num_steps = validation.check_num_steps(num_steps, traj.num_teacher_steps)
  validation.check_fit_noise_count(traj, num_steps, method=method,
                                   minimum=MIN_FIT_NOISES.get(method, 1),
                                   recommended=RECOMMENDED_FIT_NOISES, why=_why_minimum(method))
  say = progress or (lambda message: None)
  if e2e_kwargs is not None and method != "olss-e2e":
    raise ValueError(f"e2e_kwargs: only for method='olss-e2e', got method={method!r}")
  if regularization is not None and method not in CLOSED_LOOP_METHODS:
    raise ValueError(f"regularization: only for the closed-loop methods "
                     f"{CLOSED_LOOP_METHODS}, got method={method!r}")
  if regularization is None:
    regularization = (path_tuning.DEFAULT_CRITERIA if method in TUNED_METHODS
                      else closed_loop_fit.DEFAULT_REGULARIZATION)
  regs = path_tuning.criteria(regularization)
  if len(regs) > 1 and method not in TUNED_METHODS:
    raise ValueError(f"regularization: a sequence of criteria only for {TUNED_METHODS} (one "
                     f"path tuning each), got {regularization!r} for method={method!r}")
  regularization = regs if method in TUNED_METHODS else regs[0]
  if method == "olss-e2e":   # weights and times trained end to end (`e2e.fit_e2e`)
    if refine:
      raise ValueError("refine: method='olss-e2e' already trains its weights end to end")
    say("olss-e2e: closed-loop least-squares and midpoint starts, trained end to end")
    return e2e._fit_e2e(traj, num_steps, denoise_fn,  # pylint: disable=protected-access
                        **(e2e_kwargs or {}))
  meta: dict[str, Any] = {}
  # pylint: disable=protected-access
  if method in ("olss-p", "olss-p-cl"):
    path = search.uniform_path(traj, num_steps)
    meta["path_search"] = "uniform"
  elif method == "olss":
    say(f"search path: Algorithms 1-3, {num_steps} of {traj.num_teacher_steps} teacher steps")
    path, info = search._search_path(traj, num_steps)
    meta.update(path_search="teacher_forced", search_max_error=float(info.max_error),
                search_chose_uniform=bool(info.chose_uniform))
  else:
    say(f"search path: closed loop, {num_steps} of {traj.num_teacher_steps} teacher steps")
    path, info = closed_loop_search._closed_loop_search(traj, num_steps, denoise_fn)
    meta.update(path_search="closed_loop", search_max_error=float(info.max_error),
                search_source=info.source_name, search_model_calls=int(info.num_model_calls))
    if method == "olss-ft":
      path, tinfo = path_tuning._tune_path(traj, path, denoise_fn,
                                           max_evaluations=max_evaluations,
                                           regularization=regularization,
                                           alternatives=[search.uniform_path(traj, num_steps)],
                                           progress=progress)
      meta.update(path_search="closed_loop+final_error", tune_start_path=_concrete_list(
          tinfo.start_path), tune_kept_start=tinfo.kept_start,
          tune_evaluations=tinfo.num_evaluations,
          tune_holdout_error=_concrete_list(tinfo.holdout_error),
          tune_criteria=list(regularization),
          tune_criterion_holdout_error=[None if np.isnan(v) else float(v)   # None: skipped
                                        for v in tinfo.criterion_holdout_error],
          tune_divergent=_concrete_list(tinfo.divergent))
      regularization = tinfo.regularization
      meta["search_model_calls"] += tinfo.num_model_calls
  say("fit weights: " + ("teacher-forced least squares" if method in PAPER_METHODS
                          else "closed-loop least squares"))
  if method in PAPER_METHODS:
    sched, fit_info = fit._fit_weights(traj, path)
  else:
    sched, fit_info = closed_loop_fit._closed_loop_fit(traj, path, denoise_fn,
                                                       regularization=regularization)
    meta["regularization"] = regularization
    meta["fit_model_calls"] = int(fit_info.num_model_calls) + meta.get("search_model_calls", 0)
    meta["ridge"] = _concrete_list(fit_info.ridge)
    meta["guarded"] = _concrete_list(fit_info.guarded)   # rows the amplification guard held
  meta.update(method=method, path=_concrete_list(path),
              step_errors=_concrete_list(fit_info.step_errors),
              rank_deficient=bool(np.any(jax.device_get(fit_info.rank_deficient))))
  sched = sched.with_metadata(**meta)
  if refine:
    say("refine weights end to end")
    sched, _ = refine_lib._refine(denoise_fn, traj, sched, **(refine_kwargs or {}))
    sched = sched.with_metadata(method=method + "+refine")
  return sched
