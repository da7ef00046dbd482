"""``fit_olss(..., method="olss-e2e")``: every weight and the times trained end to end, multi-start.

The fitting noises are split once (`split.holdout_split`). Two kinds of start are trained on
the fit part with `learned`'s engine (the final sample's log MSE, Adam) and judged on the
held-out part:

* the library's closed-loop least squares (`closed_loop_fit` on the fit part; ``"olss-p-cl"``
  on the uniform path, ``"olss-cl"`` on `closed_loop_search`'s path, optionally
  ``"olss-ft"``'s tuned path): the one with the lowest held-out criterion is trained in
  Eq. 12's own coordinates (`learned.FreeSchedule`: every lower-triangular weight and the
  times);
* ``"midpoint"``: the classical RK2 midpoint solver on uniform flow times, trained in the
  velocity coordinates of a BNS solver (`peers.bns`; the same span, other coordinates).

The trained schedule with the lowest held-out criterion is returned (each training already
keeps its start unless an iterate beats it there). Why two kinds: measured on the digits
model (README, "Learned end to end"), the least-squares start is the better one at 10 steps
and the midpoint one at 5; the held-out quarter tells them apart (at 5 steps 0.0239 vs
0.0289, at 10 steps 0.00718 vs 0.00579, mean RMSE), so neither start alone is the best at
every step count. Neither start nor training fits the held-out noises, so the choice is honest,
but it is only as good as the held-out part: on sharp mixtures a quarter of 32 noises rarely
holds the few that change component, and the choice can go the wrong way (README, "On models
no method was developed on": the 16-dim flow mixture at 5 steps, 0.0266 against the
least-squares start's 0.0122 on fresh noises).

For a VP teacher the midpoint start reads the model's noise levels at continuous times from
its ``alphas_cumprod`` table: exactly when the teacher visits every training timestep,
otherwise interpolated (log-linearly) between the teacher's own timesteps (a slightly other
start, evaluated exactly as built, so the choice stays honest).
"""
from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from olss_jax._src import closed_loop_fit
from olss_jax._src import closed_loop_search
from olss_jax._src import fit as fit_lib
from olss_jax._src import learned
from olss_jax._src import path_tuning
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import search
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation
from olss_jax._src.peers import bns

LEAST_SQUARES_STARTS = ("olss-p-cl", "olss-cl", "olss-ft")
SOLVER_STARTS = ("midpoint",)
E2E_STARTS = LEAST_SQUARES_STARTS + SOLVER_STARTS
DEFAULT_E2E_STARTS = ("olss-p-cl", "olss-cl", "midpoint")


def vp_table(teacher: teacher_lib.Teacher) -> tuple[np.ndarray, bool]:
  """``(alphas_cumprod (T,), exact)``: a VP teacher's table, exact or interpolated.

  Exact when the teacher visits every training timestep (the table is its levels);
  otherwise ``log alpha_bar`` is interpolated linearly in t between the teacher's timesteps
  (constant beyond them), T = the model's ``num_train_timesteps`` (1000 when not recorded).
  """
  try:
    return np.asarray(bns.teacher_table(teacher), np.float64), True
  except ValueError:
    pass
  num_train = int(teacher.config.get("num_train_timesteps", 1000))
  ts = np.asarray(teacher.timesteps, np.float64)
  log_levels = np.log(np.asarray(teacher.levels, np.float64)[:-1])
  order = np.argsort(ts)
  table = np.exp(np.interp(np.arange(num_train, dtype=np.float64), ts[order], log_levels[order]))
  return table, False


def _least_squares_start(traj, n, denoise_fn, starts, train_idx, hold_idx, criterion, holdout):
  """The closed-loop least-squares start with the lowest held-out criterion, and the facts."""
  calls, candidates, meta, searched = 0, {}, {}, None
  for name in starts:
    if name == "olss-p-cl":
      path = search.uniform_path(traj, n)
    elif searched is None:
      path, sinfo = closed_loop_search._closed_loop_search(  # pylint: disable=protected-access
          traj, n, denoise_fn)
      calls += int(sinfo.num_model_calls)
      meta["search_max_error"] = float(sinfo.max_error)
      searched = path
    regularization = closed_loop_fit.DEFAULT_REGULARIZATION
    if name == "olss-ft":
      # the tuning's fit part is this split's (same holdout): its walks never see the held-out
      # targets, but its final choice did (so its held-out error is optimistic)
      path, tinfo = path_tuning._tune_path(  # pylint: disable=protected-access
          traj, searched, denoise_fn, holdout=holdout,
          alternatives=[search.uniform_path(traj, n)])
      calls += tinfo.num_model_calls
      regularization = tinfo.regularization
    elif name == "olss-cl":
      path = searched
    sched, _ = closed_loop_fit._closed_loop_fit(  # pylint: disable=protected-access
        traj, path, denoise_fn, fit_noises=train_idx, regularization=regularization)
    calls += 2 * n                                  # the fit and its held-out evaluation
    err = learned.holdout_criterion(sched, denoise_fn, traj, hold_idx, criterion)
    candidates[name] = (err, sched, np.asarray(path))
  name = min(candidates, key=lambda k: candidates[k][0])
  _, start, path = candidates[name]
  start = start.with_metadata(method=name, path=path.tolist())
  meta["e2e_start_holdout"] = {k: float(v[0]) for k, v in candidates.items()}
  return name, start, calls, meta


def _midpoint_trained(traj, n, denoise_fn, learn_kwargs):
  """The midpoint solver trained in BNS's velocity coordinates: (schedule, info, exact table)."""
  teacher = traj.teacher
  flow = teacher_lib.KINDS[teacher.kind].process == "flow"
  table, exact = (None, True) if flow else vp_table(teacher)
  kwargs = dict(learn_kwargs)
  time_scale = kwargs.pop("time_scale", learned.DEFAULT_TIME_SCALE)
  kwargs.pop("learn_times", None)
  param, params0, data, start = bns.bns_parametrisation(
      teacher, n, init="midpoint", alphas_cumprod=table, time_scale=time_scale,
      dtype=jnp.asarray(traj.x_T).dtype)
  times, weights, info = learned._train(  # pylint: disable=protected-access
      denoise_fn, traj, param, params0, (start.timesteps, start.weights), data=data, **kwargs)
  return schedule_lib.make_schedule(times, weights), info, exact


def fit_e2e(traj: trajectory_lib.Trajectory, num_steps: int, denoise_fn, *,
            starts=DEFAULT_E2E_STARTS, holdout=learned.DEFAULT_HOLDOUT,
            **learn_kwargs) -> schedule_lib.Schedule:
  """``method="olss-e2e"``: least-squares and solver starts trained end to end (module docstring).

  Algorithm: split the B fitting noises once (fit / held-out); fit each least-squares start
  in ``starts`` closed loop on the fit part and keep the one with the lowest held-out
  criterion; train it with `learned.learn_schedule` (times and weights, the log loss); train
  the ``"midpoint"`` start (if in ``starts``) in BNS coordinates with the same engine, split
  and options; return the trained schedule with the lowest held-out criterion.

  Args:
    traj: the teacher `Trajectory` (B >= 2 fitting noises).
    num_steps: n model calls (the ``"midpoint"`` start needs 2; at n = 1 it is skipped).
    denoise_fn: the model ``(x_t (B, ...), t) -> e (B, ...)`` the teacher ran.
    starts: names from `E2E_STARTS`: least-squares starts (``"olss-p-cl"``, ``"olss-cl"``,
      ``"olss-ft"``: hundreds of closed-loop fits, and its held-out error is optimistic since
      its path was chosen on the same held-out part) and ``"midpoint"``.
    holdout: the held-out fitting noises (`split.holdout_split`).
    **learn_kwargs: `learned.learn_schedule` options (num_iters, learning_rate, loss,
      criterion, ...), used for every start (``learn_times`` only for the least-squares
      start: the midpoint start always learns its times, as BNS does).

  Returns:
    The `Schedule` (float32 times, (n, n + 1) weights); metadata ``method="olss-e2e"``,
    ``e2e_start`` (the start the returned schedule was trained from), ``e2e_start_holdout``
    ({least-squares start: held-out criterion}), ``e2e_trained_holdout`` ({start trained:
    held-out criterion after training}), ``path`` (the least-squares start's teacher-grid
    path, None for the midpoint start), the `learned.info_metadata` facts of the returned
    training and ``fit_model_calls`` (searches, fits and every training).
  """
  t0 = time.perf_counter()
  validation.check_model_data(traj)
  n = validation.check_num_steps(num_steps, traj.num_teacher_steps)
  return _fit_e2e(traj, n, denoise_fn, starts=starts, holdout=holdout, t0=t0, **learn_kwargs)


def _fit_e2e(traj, num_steps: int, denoise_fn, *, starts=DEFAULT_E2E_STARTS,
             holdout=learned.DEFAULT_HOLDOUT, t0: float | None = None,
             **learn_kwargs) -> schedule_lib.Schedule:
  """`fit_e2e` on a checked trajectory and step count (the core that trusts them)."""
  t0 = time.perf_counter() if t0 is None else t0
  n = num_steps
  starts = tuple(starts)
  if not starts or any(s not in E2E_STARTS for s in starts):
    raise ValueError(f"starts: expected names from {E2E_STARTS}, got {starts!r}")
  if "midpoint" in starts and n < 2:      # no midpoint solver of one call: the others only
    starts = tuple(s for s in starts if s != "midpoint")
    if not starts:
      raise ValueError("num_steps: the midpoint start needs at least 2 model calls")
  criterion = validation.check_choice(learn_kwargs.get("criterion", "rmse"), "criterion",
                                        learned.CRITERIA)
  train_idx, hold_idx = learned.split_noises(traj.batch_size, holdout)
  if hold_idx.size == 0:
    raise ValueError("holdout: olss-e2e validates on held-out fitting noises (got none)")
  trained, calls, meta = {}, 0, {}
  ls_starts = tuple(s for s in starts if s in LEAST_SQUARES_STARTS)
  if ls_starts:
    name, start, calls, meta = _least_squares_start(traj, n, denoise_fn, ls_starts, train_idx,
                                                    hold_idx, criterion, holdout)
    sched, info = learned._learn_schedule(  # pylint: disable=protected-access
        denoise_fn, traj, start, holdout=holdout, **learn_kwargs)
    trained[name] = (info.holdout_error, sched, info, start.metadata["path"])
  if "midpoint" in starts:
    sched, info, exact = _midpoint_trained(traj, n, denoise_fn, dict(learn_kwargs,
                                                                      holdout=holdout))
    sched = sched.with_metadata(**fit_lib.fit_metadata(traj, "end_to_end"),
                                **learned.info_metadata(info), learned_from="midpoint")
    if info.kept_start:
      sched = sched.with_metadata(fit="midpoint")   # the untrained solver validated best
    trained["midpoint"] = (info.holdout_error, sched, info, None)
    meta["e2e_midpoint_exact_levels"] = bool(exact)
  name = min(trained, key=lambda k: trained[k][0])
  _, sched, info, path = trained[name]
  meta.update(method="olss-e2e", e2e_start=name, path=path,
              e2e_trained_holdout={k: float(v[0]) for k, v in trained.items()},
              fit_model_calls=calls + sum(v[2].num_model_calls for v in trained.values()),
              fit_seconds=time.perf_counter() - t0)
  return sched.with_metadata(**meta)
