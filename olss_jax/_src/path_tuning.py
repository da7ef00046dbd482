"""Path tuning: an n-step path's steps moved to lower the final error, by a coordinate search.

The paper's search (Algorithms 1-3) minimises the worst *step* error; what a user measures is
the *final* sample's error. `coordinate_search` improves an n-step path (teacher-step indices,
``path[0] = 0`` fixed) one position at a time: for each of positions 1..n-1 it tries moving
that step by -delta and +delta (within its neighbours) and keeps any move that lowers the
score; when a sweep over every position brings nothing, delta halves, down to one teacher
step. It is the generic engine of `tune_path` (the library's OLSS: candidates refitted closed
loop, scored by their final error) and of the tuned-timestep peers (`peers/tuned.py`).

`tune_path` guards against overfitting a few noises: the fitting noises are split
(`split.holdout_split`), each candidate is fitted on one part and scored there, and the tuned
path is kept only if it is no worse than the starting path on the other part.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from olss_jax._src import closed_loop_fit
from olss_jax._src import split
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

DEFAULT_HOLDOUT = 0.25
DEFAULT_MAX_EVALUATIONS = 400


class SearchResult(NamedTuple):
  """The outcome of `coordinate_search`: path (n,) int32, its score and the scores evaluated."""
  path: np.ndarray
  score: float
  num_evaluations: int


def coordinate_search(score: Callable[[np.ndarray], float], path, num_teacher_steps: int, *,
                      initial_step: int | None = None,
                      max_evaluations: int = DEFAULT_MAX_EVALUATIONS) -> SearchResult:
  """Greedy coordinate descent on an increasing integer path with a halving step.

  Args:
    score: ``score(path (n,) int32) -> float``, lower is better (a NaN counts as +inf).
    path: (n,) the start: strictly increasing teacher-step indices, ``path[0] == 0``.
    num_teacher_steps: K; positions stay in [1, K - 1].
    initial_step: the first delta; default a quarter of the widest gap of the start (with
      the final state K as the last point), at least 1.
    max_evaluations: stop after this many distinct paths were scored (the start included).

  Returns:
    `SearchResult` with the best path found (the start when nothing beats it).
  """
  path = np.asarray(validation.check_path(path, num_teacher_steps), np.int64)
  n, k = path.shape[0], num_teacher_steps
  max_evaluations = validation.check_count(max_evaluations, "max_evaluations")
  cache: dict[tuple, float] = {}

  def value(p) -> float:
    key = tuple(int(v) for v in p)
    if key not in cache:
      s = float(score(np.asarray(p, np.int32)))
      cache[key] = s if np.isfinite(s) else np.inf
    return cache[key]

  best = value(path)
  if initial_step is None:
    initial_step = max(1, int(np.max(np.diff(np.append(path, k)))) // 4)
  step = validation.check_count(initial_step, "initial_step")
  while step >= 1 and len(cache) < max_evaluations:
    improved = False
    for i in range(1, n):
      upper = path[i + 1] if i + 1 < n else k
      for cand in (path[i] - step, path[i] + step):
        if not path[i - 1] < cand < upper or len(cache) >= max_evaluations:
          continue
        trial = path.copy()
        trial[i] = cand
        s = value(trial)
        if s < best:
          best, path, improved = s, trial, True
          break
    if not improved:
      step //= 2
  return SearchResult(path.astype(np.int32), float(best), len(cache))


class TuneInfo(NamedTuple):
  """Diagnostics of `tune_path` (host values).

  Attributes:
    start_path, tuned_path: (n,) int32, the start and the coordinate search's best.
    fit_error: (2,) final-state MSE on the fit part (start, tuned), weights fitted there.
    holdout_error: (2,) the same on the held-out part of the fitting noises.
    kept_start: bool, the given path is returned (the held-out part preferred it).
    num_evaluations: int, paths fitted (each n model calls on the B fitting noises).
    num_model_calls: int, ``num_evaluations * n``.
    origin_path: (n,) int32, where the walk started (the given path or an alternative).
  """
  start_path: np.ndarray
  tuned_path: np.ndarray
  fit_error: np.ndarray
  holdout_error: np.ndarray
  kept_start: bool
  num_evaluations: int
  num_model_calls: int
  origin_path: np.ndarray


def tune_path(traj: trajectory_lib.Trajectory, path, denoise_fn, *,
              holdout=DEFAULT_HOLDOUT, max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
              regularization=closed_loop_fit.DEFAULT_REGULARIZATION, alternatives=(),
              progress: Callable[[str], None] | None = None):
  """Moves a path's steps to lower the closed-loop sampler's *final* error (beyond the paper).

  Each candidate path is fitted closed loop (`closed_loop_fit`, n model calls) on the fit
  part of the fitting noises and scored by its final-state MSE there; `coordinate_search`
  walks from ``path`` (or from the best of ``alternatives`` by the same score, e.g. the
  uniform path). The result is the tuned path unless the final error on the held-out part
  (weights fitted on the fit part) of ``path`` or of the walk's start is lower; then that one
  is returned, so the result is never worse on validation than ``path``.

  Args:
    traj: the teacher `Trajectory` (B fitting noises).
    path: (n,) the starting path (e.g. from `closed_loop_search`).
    denoise_fn: the model the teacher ran, conditioned on the B fitting noises.
    holdout: fraction in (0, 1) or count of fitting noises held out (`split.holdout_split`;
      a fraction holds out at least one noise).
    max_evaluations: paths scored at most (the cost is n model calls each).
    regularization: as in `closed_loop_fit`.
    alternatives: other (n,) starting paths; the walk starts from whichever of ``path`` and
      these scores lowest on the fit part (one evaluation each).
    progress: optional ``callback(message)``, called after every candidate path fitted.

  Returns:
    ``(path (n,) int32, TuneInfo)``; ``TuneInfo.start_path`` is ``path``.
  """
  validation.check_model_data(traj)
  return _tune_path(traj, validation.check_path(path, traj.num_teacher_steps), denoise_fn,
                    holdout=holdout, max_evaluations=max_evaluations,
                    regularization=regularization, alternatives=alternatives,
                    progress=progress)


def _tune_path(traj, path, denoise_fn, *, holdout=DEFAULT_HOLDOUT,
               max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
               regularization=closed_loop_fit.DEFAULT_REGULARIZATION,
               alternatives=(), progress: Callable[[str], None] | None = None):
  """`tune_path` on a checked trajectory and path (the core that trusts them)."""
  start = np.asarray(path, np.int32)
  if (isinstance(holdout, (float, np.floating)) and 0 < holdout < 1 and traj.batch_size >= 2
      and round(holdout * traj.batch_size) == 0):
    holdout = 1                      # a fraction of very few noises: still hold one out
  train, hold = split.holdout_split(traj.batch_size, holdout)
  if hold.size == 0:
    raise ValueError("holdout: tune_path needs held-out fitting noises (got none)")
  errors = closed_loop_fit._final_errors_fn(  # pylint: disable=protected-access
      traj, denoise_fn, fit_noises=train, regularization=regularization)
  record: dict[tuple, tuple[float, float]] = {}

  def score(p):
    key = tuple(int(v) for v in p)
    if key not in record:
      record[key] = errors(p)
      if progress is not None:
        most = max(max_evaluations, len(alternatives) + 1)
        progress(f"tune path: {len(record)} of at most {most} candidates fitted "
                 f"(fit error {record[key][0]:.3g})")
    return record[key][0]

  origin = start
  for alt in alternatives:
    alt = np.asarray(validation.check_path(alt, traj.num_teacher_steps), np.int32)
    if alt.shape != start.shape:
      raise ValueError(f"alternatives: expected paths of shape {start.shape}, got {alt.shape}")
    if score(alt) < score(origin):
      origin = alt
  # The budget counts every distinct path fitted: the walk counts its start, which is already
  # in the record when alternatives were compared (then not counted twice).
  before = len(record) - (tuple(int(v) for v in origin) in record)
  result = coordinate_search(score, origin, traj.num_teacher_steps,
                             max_evaluations=max(1, max_evaluations - before))
  s_fit, s_hold = record[tuple(int(v) for v in start)]
  o_hold = record[tuple(int(v) for v in origin)][1]
  t_fit, t_hold = record[tuple(int(v) for v in result.path)]
  # Validation: the tuned path unless the held-out part prefers the given path or the walk's
  # start (at most three candidates judged on the held-out noises).
  if t_hold <= min(s_hold, o_hold):
    chosen = result.path
  else:
    chosen = origin if o_hold < s_hold else start
  n = start.shape[0]
  evaluations = len(record)
  info = TuneInfo(start, result.path, np.asarray([s_fit, t_fit]), np.asarray([s_hold, t_hold]),
                  bool(chosen is start), evaluations, evaluations * n, origin)
  return np.asarray(chosen, np.int32), info
