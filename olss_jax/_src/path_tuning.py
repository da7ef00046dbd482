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
path is kept only if it is no worse than the starting path on the other part. It walks once
per ridge criterion (by default `closed_loop_fit`'s ``"cv"`` and ``"cv-robust"``), and the
other part also chooses between the walks: the path and the criterion to fit it with.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import closed_loop_fit
from olss_jax._src import sampler
from olss_jax._src import split
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

DEFAULT_HOLDOUT = 0.25
DEFAULT_MAX_EVALUATIONS = 400
# The ridge criteria `tune_path` walks with by default (olss-ft's): one walk each, the held-out
# fitting noises pick (README, "A fit the few noises cannot pull").
DEFAULT_CRITERIA = ("cv", "cv-robust")
# The divergence probe (`tune_path`): 2 * min(PROBE_SHIFTS, B - 1) batches of fresh noises, and
# a noise diverges when its sample's RMS exceeds DIVERGENCE_FACTOR times the largest RMS of the
# teacher's final states on the fitting noises.
PROBE_SHIFTS = 4
DIVERGENCE_FACTOR = 2.0


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

  With several ridge criteria (``regularization``) the fields describe the walk whose result
  was chosen, except the counts, which add up every walk.

  Attributes:
    start_path, tuned_path: (n,) int32, the start and the coordinate search's best.
    fit_error: (2,) final-state MSE on the fit part (start, tuned), weights fitted there.
    holdout_error: (2,) the same on the held-out part of the fitting noises.
    kept_start: bool, the given path is returned (the held-out part preferred it).
    num_evaluations: int, paths fitted (each n model calls on the B fitting noises).
    num_model_calls: int, ``num_evaluations * n`` plus the divergence probe's (``n * (1 +
      batches)`` per candidate probed).
    origin_path: (n,) int32, where the walk started (the given path or an alternative).
    regularization: the ridge criterion of the chosen walk (fit the returned path with it).
    criterion_holdout_error: (len(criteria),) each walk's returned path's held-out error, in
      the order of ``regularization``; NaN for a walk skipped as a repeat of the first.
    divergent: (m,) int, the divergence probe: for each candidate probed, in order, how many
      fresh noises its sampler sent beyond the bound (the last is the returned one's unless
      every candidate diverged; empty without the probe).
  """
  start_path: np.ndarray
  tuned_path: np.ndarray
  fit_error: np.ndarray
  holdout_error: np.ndarray
  kept_start: bool
  num_evaluations: int
  num_model_calls: int
  origin_path: np.ndarray
  regularization: str | float
  criterion_holdout_error: np.ndarray
  divergent: np.ndarray


def criteria(regularization) -> tuple:
  """``regularization`` as a checked tuple of ridge criteria (one value, or a sequence)."""
  if isinstance(regularization, (str, int, float, np.floating, np.integer)):
    out = (regularization,)
  else:
    try:
      out = tuple(regularization)
    except TypeError:
      out = (regularization,)
    if not out:
      raise ValueError("regularization: expected a criterion or a non-empty sequence of them, "
                       "got an empty sequence")
  for reg in out:
    closed_loop_fit._grid(reg)  # pylint: disable=protected-access (names it in the error)
  if len(set(map(repr, out))) != len(out):
    raise ValueError(f"regularization: each criterion once, got {regularization!r}")
  return out


def tune_path(traj: trajectory_lib.Trajectory, path, denoise_fn, *,
              holdout=DEFAULT_HOLDOUT, max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
              regularization=DEFAULT_CRITERIA, alternatives=(),
              probe: float | None = DIVERGENCE_FACTOR,
              progress: Callable[[str], None] | None = None):
  """Moves a path's steps to lower the closed-loop sampler's *final* error (beyond the paper).

  Each candidate path is fitted closed loop (`closed_loop_fit`, n model calls) on the fit
  part of the fitting noises and scored by its final-state MSE there; `coordinate_search`
  walks from ``path`` (or from the best of ``alternatives`` by the same score, e.g. the
  uniform path). The walk's result is the tuned path unless the final error on the held-out
  part (weights fitted on the fit part) of ``path`` or of the walk's start is lower; then
  that one, so it is never worse on validation than ``path``.

  With several ridge criteria (the default: ``"cv"`` and ``"cv-robust"``, `closed_loop_fit`)
  there is one walk per criterion, each fitting and scoring its candidates with its own, and
  the held-out part picks among the walks' results (a later criterion's only if lower beyond
  round-off: within the tolerance below, the earlier criterion is kept). A later
  walk is skipped when every starting path (``path`` and ``alternatives``) scores the same
  under its criterion as under the first (fit and held-out error within a relative 1e-6, or
  both below 1e-12 of the teacher's final mean square):
  where no fitting noise is off the fit, ``"cv-robust"`` is ``"cv"`` and its walk would
  repeat the first (README, "A fit the few noises cannot pull").

  The divergence probe (``probe``; no teacher runs): a fit that the held-out noises accept can
  still blow up on a few noises in a hundred. The candidates, in order of preference (each
  walk's returned path, the best walk's first; then each walk's start and the given path),
  are fitted on all B fitting noises with their criterion and sampled on fresh noises, 2 *
  min(`PROBE_SHIFTS`, B - 1) batches of ``(x_T + s roll(x_T, k)) / sqrt(2)`` (k = 1..,
  s = +-1: standard normal noises, none a fitting noise, each with the conditioning of its
  batch position); a noise diverges when its sample's RMS exceeds ``probe`` (default
  `DIVERGENCE_FACTOR`) times the largest RMS of the teacher's final states. The first
  candidate with no divergent noise is returned (if all diverge, the one with the fewest). It
  costs ``n * (1 + batches)`` model calls per candidate probed, usually one.

  Args:
    traj: the teacher `Trajectory` (B fitting noises).
    path: (n,) the starting path (e.g. from `closed_loop_search`).
    denoise_fn: the model the teacher ran, conditioned on the B fitting noises.
    holdout: fraction in (0, 1) or count of fitting noises held out (`split.holdout_split`;
      a fraction holds out at least one noise).
    max_evaluations: paths scored at most by each walk (the cost is n model calls each).
    regularization: a ridge criterion as in `closed_loop_fit`, or a sequence of them.
    alternatives: other (n,) starting paths; each walk starts from whichever of ``path`` and
      these scores lowest on the fit part (one evaluation each).
    probe: the divergence probe's bound (above), a multiple of the teacher's largest final
      RMS (default `DIVERGENCE_FACTOR`); None: no probe, the validated choice as is.
    progress: optional ``callback(message)``, called after every candidate path fitted.

  Returns:
    ``(path (n,) int32, TuneInfo)``; ``TuneInfo.start_path`` is ``path`` and
    ``TuneInfo.regularization`` the criterion to fit the returned path with.
  """
  validation.check_model_data(traj)
  return _tune_path(traj, validation.check_path(path, traj.num_teacher_steps), denoise_fn,
                    holdout=holdout, max_evaluations=max_evaluations,
                    regularization=regularization, alternatives=alternatives, probe=probe,
                    progress=progress)


class _Walk(NamedTuple):
  """One criterion's walk: its returned path and that path's held-out error, its search's
  result and start, whether validation kept the given path, and every path's scores."""
  chosen: np.ndarray
  chosen_hold: float
  result: SearchResult
  origin: np.ndarray
  kept_start: bool
  record: dict


def _walk(errors, start, alternatives, num_teacher_steps: int, max_evaluations: int,
          progress, label: str, scored=None) -> _Walk:
  """A coordinate search from the best of ``start`` and ``alternatives``, then validation.

  ``scored``: ``{path tuple: (fit, held-out error)}`` already evaluated with ``errors``.
  """
  record: dict[tuple, tuple[float, float]] = dict(scored or {})

  def score(p):
    key = tuple(int(v) for v in p)
    if key not in record:
      record[key] = errors(p)
      if progress is not None:
        most = max(max_evaluations, len(alternatives) + 1)
        progress(f"tune path{label}: {len(record)} of at most {most} candidates fitted "
                 f"(fit error {record[key][0]:.3g})")
    return record[key][0]

  origin = start
  for alt in alternatives:
    if score(alt) < score(origin):
      origin = alt
  # The budget counts every distinct path fitted: the walk counts its start, which is already
  # in the record when alternatives were compared (then not counted twice).
  before = len(record) - (tuple(int(v) for v in origin) in record)
  result = coordinate_search(score, origin, num_teacher_steps,
                             max_evaluations=max(1, max_evaluations - before))
  s_hold = record[tuple(int(v) for v in start)][1]
  o_hold = record[tuple(int(v) for v in origin)][1]
  t_hold = record[tuple(int(v) for v in result.path)][1]
  # Validation: the tuned path unless the held-out part prefers the given path or the walk's
  # start (at most three candidates judged on the held-out noises).
  if t_hold <= min(s_hold, o_hold):
    chosen, hold = result.path, t_hold
  else:
    chosen, hold = (origin, o_hold) if o_hold < s_hold else (start, s_hold)
  return _Walk(np.asarray(chosen, np.int32), float(hold), result, origin, chosen is start,
               record)


def _same_scores(a: tuple[float, float], b: tuple[float, float], floor: float) -> bool:
  """Equal within a relative 1e-6, or both at round-off level (below ``floor``)."""
  return bool(np.allclose(a, b, rtol=1e-6, atol=floor, equal_nan=True))


def _tune_path(traj, path, denoise_fn, *, holdout=DEFAULT_HOLDOUT,
               max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
               regularization=DEFAULT_CRITERIA, alternatives=(),
               probe: float | None = DIVERGENCE_FACTOR,
               progress: Callable[[str], None] | None = None):
  """`tune_path` on a checked trajectory and path (the core that trusts them)."""
  regs = criteria(regularization)
  if probe is not None and not (isinstance(probe, (int, float, np.integer, np.floating))
                                and not isinstance(probe, bool) and 0 < probe < np.inf):
    raise ValueError(f"probe: expected None or a bound > 0 (a multiple of the teacher's "
                     f"largest final RMS), got {probe!r}")
  start = np.asarray(path, np.int32)
  alts = []
  for alt in alternatives:
    alt = np.asarray(validation.check_path(alt, traj.num_teacher_steps), np.int32)
    if alt.shape != start.shape:
      raise ValueError(f"alternatives: expected paths of shape {start.shape}, got {alt.shape}")
    alts.append(alt)
  if (isinstance(holdout, (float, np.floating)) and 0 < holdout < 1 and traj.batch_size >= 2
      and round(holdout * traj.batch_size) == 0):
    holdout = 1                      # a fraction of very few noises: still hold one out
  train, hold = split.holdout_split(traj.batch_size, holdout)
  if hold.size == 0:
    raise ValueError("holdout: tune_path needs held-out fitting noises (got none)")
  walks: list[_Walk | None] = []
  evaluations = 0
  # round-off level of a final MSE (a device reduction: the states may span hosts)
  floor = 1e-12 * float(jax.device_get(jnp.mean(jnp.square(traj.states[-1]))))
  for j, reg in enumerate(regs):
    errors = closed_loop_fit._final_errors_fn(  # pylint: disable=protected-access
        traj, denoise_fn, fit_noises=train, regularization=reg)
    label = "" if len(regs) == 1 else f" ({reg})"
    scored = None
    if j > 0:                        # a repeat of the first walk is skipped (docstring)
      scored = {}
      for p in [start] + alts:
        key = tuple(int(v) for v in p)
        if key in scored:
          continue
        scored[key] = errors(p)
        if progress is not None:
          progress(f"tune path{label}: {len(scored)} of at most "
                   f"{max(max_evaluations, len(alts) + 1)} candidates fitted "
                   f"(fit error {scored[key][0]:.3g})")
      if all(_same_scores(v, walks[0].record[key], floor) for key, v in scored.items()):
        evaluations += len(scored)
        walks.append(None)
        continue
    walk = _walk(errors, start, alts, traj.num_teacher_steps, max_evaluations, progress, label,
                 scored)
    evaluations += len(walk.record)
    walks.append(walk)
  hold_by = np.asarray([np.nan if w is None else w.chosen_hold for w in walks])
  best = 0        # a later walk wins only by more than round-off (its tie goes to the earlier)
  for j in range(1, len(walks)):
    if hold_by[j] < hold_by[best] and not _same_scores((hold_by[j],), (hold_by[best],), floor):
      best = j
  # The candidates in order of preference (docstring), then the divergence probe.
  walked = [best] + [j for j, w in enumerate(walks) if w is not None and j != best]
  candidates: list[tuple[np.ndarray, int]] = []
  for path_of in (lambda w: [w.chosen], lambda w: [w.origin, start]):
    for j in walked:
      for p in path_of(walks[j]):
        if not any(np.array_equal(p, q) and j == i for q, i in candidates):
          candidates.append((np.asarray(p, np.int32), j))
  n = start.shape[0]
  divergent: list[int] = []
  pick = 0
  if probe is not None:
    divergent, pick = _probe_candidates(traj, denoise_fn, candidates, regs, float(probe),
                                        progress)
  chosen, j = candidates[pick]
  w = walks[j]
  s_fit, s_hold = w.record[tuple(int(v) for v in start)]
  t_fit, t_hold = w.record[tuple(int(v) for v in w.result.path)]
  calls = evaluations * n + len(divergent) * n * (1 + 2 * _probe_shifts(traj.batch_size))
  kept_start = bool(np.array_equal(chosen, start) and not np.array_equal(chosen, w.result.path))
  info = TuneInfo(start, w.result.path, np.asarray([s_fit, t_fit]), np.asarray([s_hold, t_hold]),
                  kept_start, evaluations, calls, np.asarray(w.origin, np.int32), regs[j],
                  hold_by, np.asarray(divergent, np.int64))
  return chosen, info


def _probe_shifts(batch_size: int) -> int:
  return min(PROBE_SHIFTS, batch_size - 1)


@jax.jit
def _divergent_count(denoise_fn, sched, x_T, shift, sign, bound):
  """How many of one probe batch's noises the sampler sends beyond ``bound`` (RMS; NaN too)."""
  x = (x_T + sign * jnp.roll(x_T, shift, axis=0)) / jnp.sqrt(2.0).astype(x_T.dtype)
  out = sampler.sample(denoise_fn, sched, x)
  rms = jnp.sqrt(jnp.mean(jnp.square(out.reshape(out.shape[0], -1)), axis=1))
  return jnp.sum(~(rms <= bound))


def _probe_candidates(traj, denoise_fn, candidates, regs, factor: float, progress):
  """The divergence probe over ``candidates`` ((path, criterion index) in order of preference).

  Returns:
    (divergent counts of the candidates probed, index of the one to return).
  """
  denoise_fn = trajectory_lib.as_denoise_pytree(denoise_fn)
  final = traj.states[-1]
  bound = factor * jnp.max(jnp.sqrt(jnp.mean(
      jnp.square(final.reshape(final.shape[0], -1)), axis=1)))
  shifts = _probe_shifts(traj.batch_size)
  counts: list[int] = []
  for path, j in candidates:
    with warnings.catch_warnings():   # the returned fit warns where it is made (fit_olss)
      warnings.filterwarnings("ignore", message="closed_loop_fit: the basis",
                              category=RuntimeWarning)
      sched, _ = closed_loop_fit._closed_loop_fit(  # pylint: disable=protected-access
          traj, path, denoise_fn, regularization=regs[j])
    count = 0
    if shifts > 0:
      for shift in range(1, shifts + 1):
        for sign in (1.0, -1.0):
          count += int(jax.device_get(_divergent_count(denoise_fn, sched, traj.x_T, shift,
                                                       sign, bound)))
    counts.append(count)
    if progress is not None:
      progress(f"divergence probe: {count} of {2 * shifts * traj.batch_size} fresh noises "
               f"diverged")
    if count == 0:
      return counts, len(counts) - 1
  return counts, int(np.argmin(counts))
