"""Peers that learn a classical solver's timesteps: GITS' and a coordinate search's.

A classical multistep solver (DPM-Solver++, UniPC, iPNDM, ...) takes its n model-call
timesteps as an argument (``timesteps=``); what these peers learn is only which timesteps.
Both pick them among the teacher's own steps (a path of teacher-step indices, as OLSS does),
so the solver's model is called exactly where the teacher called it:

* `gits_schedule`: GITS' dynamic programme on a one-step cost matrix (`gits.gits_path`).
* `tuned_schedule`: a coordinate search (`path_tuning.coordinate_search`) whose score is the
  solver's own final-sample MSE against the teacher on the fitting noises, started from the
  solver's default timesteps: the cheap learned-timestep baseline a researcher would run
  first (each candidate costs one n-step sampling of the B fitting noises).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import path_tuning
from olss_jax._src import regression
from olss_jax._src import sampler
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src.peers import gits

# ``build(timesteps (n,)) -> Schedule``: a solver on the given model-call timesteps.
BuildFn = Callable[[np.ndarray], schedule_lib.Schedule]

_sample_jit = jax.jit(sampler.sample)


@jax.jit
def _mse64(out, target):
  """float64 mean of ``(out - target)^2`` over every element (call under `jax.enable_x64`)."""
  return jnp.mean((out.astype(jnp.float64).reshape(-1) - target) ** 2)


def nearest_path(traj: trajectory_lib.Trajectory, timesteps) -> np.ndarray:
  """(n,) int32 teacher-step indices whose timesteps are nearest the given ones (path[0] = 0).

  Args:
    traj: the teacher `Trajectory` (K model-call timesteps, decreasing).
    timesteps: (n,) decreasing model-call times (a solver's default ones).

  Returns:
    A strictly increasing path: each time's nearest teacher step, collisions moved up by one.
  """
  ts = np.asarray(traj.timesteps, np.float64)
  want = np.asarray(timesteps, np.float64)
  idx = np.abs(ts[None, :] - want[:, None]).argmin(axis=1)
  idx[0] = 0
  for i in range(1, idx.shape[0]):
    idx[i] = max(idx[i], idx[i - 1] + 1)
  if idx[-1] >= ts.shape[0]:
    raise ValueError(f"timesteps: {want.shape[0]} steps do not fit the teacher's "
                     f"{ts.shape[0]} distinct steps")
  return idx.astype(np.int32)


def gits_schedule(traj: trajectory_lib.Trajectory, num_steps: int, build: BuildFn,
                  **gits_kwargs) -> schedule_lib.Schedule:
  """The solver ``build`` on GITS' timesteps (Chen et al. 2024), learned from ``traj``.

  Args:
    traj: the teacher `Trajectory` (GITS' warm-up samples).
    num_steps: n model calls.
    build: ``timesteps (n,) -> Schedule``.
    **gits_kwargs: `gits.gits_path` options (grid_size, rho, metric, coeff).

  Returns:
    The `Schedule`, metadata ``peer="gits"``, ``path``, ``fit_model_calls=0`` (GITS reuses
    the teacher's warm-up trajectories and calls no model).
  """
  path, info = gits.gits_path(traj, num_steps, **gits_kwargs)
  sched = build(np.asarray(traj.timesteps)[path])
  return sched.with_metadata(peer="gits", path=path.tolist(), gits_grid_size=int(info.grid.size),
                             gits_value=info.value, fit_model_calls=0)


def tuned_schedule(traj: trajectory_lib.Trajectory, num_steps: int, build: BuildFn,
                   denoise_fn, *, default_timesteps=None,
                   max_evaluations: int = path_tuning.DEFAULT_MAX_EVALUATIONS
                   ) -> schedule_lib.Schedule:
  """The solver ``build`` on timesteps tuned for its final error on the fitting noises.

  ``score(path) = mean((sample(f, build(traj.timesteps[path]), x_T) - teacher_final)^2)``
  over the B fitting noises, minimised by `path_tuning.coordinate_search` from ``default_timesteps``
  (the solver's own default, mapped to teacher steps by `nearest_path`).

  Args:
    traj: the teacher `Trajectory` (B fitting noises).
    num_steps: n model calls.
    build: ``timesteps (n,) -> Schedule``.
    denoise_fn: the model conditioned on the fitting noises.
    default_timesteps: (n,) the start; default ``build``'s schedule for the uniform path.
    max_evaluations: candidate paths sampled at most (n model calls on B noises each).

  Returns:
    The `Schedule`, metadata ``peer="tuned"``, ``path``, ``tune_start_path``,
    ``tune_evaluations`` and ``fit_model_calls`` (evaluations * n).
  """
  k = traj.num_teacher_steps
  if default_timesteps is None:
    start = np.asarray((np.arange(num_steps) * k) // num_steps, np.int32)
  else:
    start = nearest_path(traj, default_timesteps)
  if start.shape[0] != num_steps:
    raise ValueError(f"default_timesteps: expected {num_steps} timesteps, got {start.shape[0]}")
  x_T = jnp.asarray(traj.x_T)
  denoise_fn = trajectory_lib.as_denoise_pytree(denoise_fn)
  with jax.enable_x64(True):
    target = regression.teacher_states(traj, [k])[0]
    if not sharding_lib.is_global(target):
      target = np.asarray(target, np.float64)
  timesteps = np.asarray(traj.timesteps)

  def score(path):
    out = _sample_jit(denoise_fn, build(timesteps[path]), x_T)
    if sharding_lib.is_global(out):   # across processes: reduced where it lives
      with jax.enable_x64(True):
        return float(_mse64(out, target))
    return float(np.mean((np.asarray(out, np.float64).reshape(-1) - target) ** 2))

  result = path_tuning.coordinate_search(score, start, k, max_evaluations=max_evaluations)
  sched = build(timesteps[result.path])
  return sched.with_metadata(peer="tuned", path=result.path.tolist(),
                             tune_start_path=start.tolist(),
                             tune_evaluations=result.num_evaluations,
                             fit_model_calls=result.num_evaluations * num_steps)
