"""One call from a teacher trajectory to a fitted OLSS schedule: search, fit, optionally refine."""
from __future__ import annotations

from olss_jax._src import closed_loop
from olss_jax._src import fit
from olss_jax._src import refine as refine_lib
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import search

METHODS = ("closed_loop", "paper")


def fit_olss(traj, num_steps: int, *, denoise_fn=None, method: str = "closed_loop",
             refine: bool = False, uniform: bool = False, refine_kwargs=None,
             batch_size: int | None = None) -> schedule_lib.Schedule:
  """Searches a path (Algorithms 1-3) and fits its weights (Eq. 12) in one call.

  ``method="paper"`` is the paper exactly: teacher-forced path search and least squares (no
  model calls). ``method="closed_loop"`` (beyond the paper, issue 8) searches and fits on
  the sampler's own trajectory (`closed_loop.closed_loop_search`, `closed_loop_fit`) and
  needs ``denoise_fn``. ``refine=True`` then trains the weights end to end through the
  sampler (`refine.refine`, needs ``denoise_fn``).

  Args:
    traj: the teacher `Trajectory` (B fitting noises, K steps).
    num_steps: n, the number of model calls of the schedule.
    denoise_fn: the model ``(x_t (B, ...), t) -> e (B, ...)`` the teacher ran.
    method: "closed_loop" or "paper".
    refine: refine the fitted weights end to end.
    uniform: use the uniform path (OLSS-P) instead of searching.
    refine_kwargs: keyword arguments for `refine.refine` (optimizer, num_iters, holdout, ...).
    batch_size: samples per model call (None: all at once).

  Returns:
    A `Schedule` ((n,) timesteps, (n, n + 1) weights) whose metadata records the method
    (``fit``: "teacher_forced", "closed_loop" or "refined"; ``path_search``).
  """
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  if (method == "closed_loop" or refine) and denoise_fn is None:
    raise ValueError(f"denoise_fn: required for method={method!r}"
                     f"{' and refine=True' if refine else ''}")
  model = denoise_fn if method == "closed_loop" else None
  if uniform:
    path = search.uniform_path(traj, num_steps)
  elif model is None:
    path = search.search_path(traj, num_steps)
  else:
    path = closed_loop.closed_loop_search(traj, num_steps, model, batch_size=batch_size)
  if model is None:
    sched = fit.fit_weights(traj, path)
  else:
    sched = closed_loop.closed_loop_fit(traj, path, model, batch_size=batch_size)
  sched = sched.with_metadata(path_search="uniform" if uniform else f"{method}_search")
  if refine:
    sched = refine_lib.refine(denoise_fn, traj, sched, **(refine_kwargs or {}))
  return sched
