"""DS-Solver / NeuralSolver (arXiv 2505.21114) for flow models, on the engine of `learned`.

"Differentiable Solver Search" learns, for a rectified-flow model and n steps, the time
increments and a lower-triangular matrix of coefficients over all previous velocities:

  x_{i+1} = x_i + dt_i (sum_{j < i} c_ij v_j + (1 - sum_{j < i} c_ij) v_i),

with ``dt = softmax(u)`` scaled to the whole time range (so the times stay ordered and the last
step lands on the data) and n + n (n - 1) / 2 parameters (21 / 36 / 55 at 6 / 8 / 10 steps).
The constraint (the coefficients of each step sum to one) keeps every step consistent: a
constant velocity is integrated exactly. At ``c = 0`` and equal logits it is flow Euler on
uniform times (the paper's and its official code's initialisation).

In this library's flow convention (``x_s = (1 - s) x_0 + s eps``, model called at ``t = T s``
predicting ``v = eps - x_0``, s from 1 to 0) ``dt_i = s_{i+1} - s_i < 0`` and the final state is
at s = 0. Unrolled, ``x_{i+1} = x_T + sum_{k <= i} dt_k sum_{j <= k} C_kj v_j`` with
``C_kk = 1 - sum_{j<k} c_kj``: a `Schedule` (paper Eq. 12's span with the x_T weight fixed at 1
and a constrained e-part), built differentiably by `ds_solver_weights` and trained by
`learned.train` on the final sample's error (loss ``"mse"``). The official code trains with
Lion on a final-state Huber term plus per-step trajectory matching on ImageNet-scale models;
here, as for every method in the comparison, Adam on the final error of the fitting noises,
with the held-out part choosing rate and iterate.
"""
from __future__ import annotations

import dataclasses
import time

import jax.numpy as jnp
import numpy as np

from olss_jax._src import learned
from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation


def ds_solver_weights(dt, c):
  """(n, n + 1) Schedule weights of DS-Solver's update (module docstring), differentiable.

  Args:
    dt: (n,) the steps' flow-time increments ``s_{i+1} - s_i``.
    c: (n, n) coefficients; only the strictly lower triangle is used (the diagonal is
      ``1 - sum_{j < i} c_ij``).

  Returns:
    Weights over [x_T, v_0, ..., v_{n-1}]: column 0 is 1, the rest
    ``cumsum_k dt_k C_k`` (row i sums the steps 0..i).
  """
  n = dt.shape[0]
  lower = jnp.tril(c, -1)
  full = lower + jnp.diag(1.0 - jnp.sum(lower, axis=1))
  steps = dt[:, None] * full
  return jnp.concatenate([jnp.ones((n, 1), dt.dtype), jnp.cumsum(steps, axis=0)], axis=1)


@dataclasses.dataclass(frozen=True)
class DsSolverParametrisation:
  """DS-Solver's parameters ``{"c": (n (n - 1) / 2,), "u": (n,)}`` -> (times, weights)."""
  num_steps: int
  grid: learned.TimeGrid        # from the first call to the final state's time (0)
  flow_scale: float             # T: s = t / T
  time_scale: float = learned.DEFAULT_TIME_SCALE

  def build(self, params, data):
    del data
    n = self.num_steps
    times = self.grid.times(self.time_scale * params["u"])
    s = jnp.concatenate([times, jnp.asarray([self.grid.end], times.dtype)]) / jnp.asarray(
        self.flow_scale, times.dtype)
    rows, cols = np.tril_indices(n, -1)
    c = jnp.zeros((n, n), times.dtype).at[rows, cols].set(params["c"])
    return times, ds_solver_weights(s[1:] - s[:-1], c)


def ds_solver_schedule(traj: trajectory_lib.Trajectory, num_steps: int, denoise_fn, *,
                       loss: str = "mse", criterion: str = "rmse",
                       num_iters: int = learned.DEFAULT_NUM_ITERS,
                       learning_rate=learned.DEFAULT_LEARNING_RATES,
                       time_scale: float = learned.DEFAULT_TIME_SCALE,
                       holdout=learned.DEFAULT_HOLDOUT,
                       patience: int | None = learned.DEFAULT_PATIENCE, jit: bool = True):
  """DS-Solver (module docstring) trained on ``traj``'s fitting noises (flow models only).

  Args:
    traj: a flow teacher's `Trajectory` (B >= 2 fitting noises).
    num_steps: n model calls.
    denoise_fn: the flow model the teacher ran.
    loss: "mse" (final-sample matching) or "log_mse".
    criterion, num_iters, learning_rate, holdout, patience, jit: `learned.train`'s.
    time_scale: the time logits' step relative to the coefficients'.

  Returns:
    ``(schedule, learned.LearnInfo)``: the `Schedule` (float32 times; metadata
    ``peer="ds-solver"``, ``fit_model_calls``, ``fit_seconds`` and the facts of
    `learned.info_metadata`); flow Euler on uniform times when training did not beat it on the
    held-out fitting noises.

  Raises:
    ValueError: a teacher that is not a rectified flow.
  """
  t0 = time.perf_counter()
  param, params0, start = ds_solver_parametrisation(
      traj.teacher, num_steps, time_scale=time_scale, dtype=jnp.asarray(traj.x_T).dtype)
  out_t, out_w, info = learned.train(
      denoise_fn, traj, param, params0, (start.timesteps, start.weights), loss=loss,
      criterion=criterion, num_iters=num_iters, learning_rate=learning_rate, holdout=holdout,
      patience=patience, jit=jit)
  meta = {"method": "ds-solver", "peer": "ds-solver", "ds_solver_loss": loss,
          "teacher": traj.teacher.kind, "teacher_steps": traj.num_teacher_steps,
          "num_fit_images": traj.batch_size, "sample_shape": list(traj.sample_shape),
          "fit": "initial" if info.kept_start else "end_to_end",
          "fit_model_calls": info.num_model_calls, **learned.info_metadata(info)}
  meta["fit_seconds"] = time.perf_counter() - t0
  return schedule_lib.make_schedule(out_t, out_w, meta), info


def ds_solver_parametrisation(teacher: teacher_lib.Teacher, num_steps: int, *,
                              time_scale: float = learned.DEFAULT_TIME_SCALE,
                              dtype=jnp.float32):
  """What `ds_solver_schedule` hands to `learned.train`.

  Returns:
    ``(param, params0, start)``: a `DsSolverParametrisation`, its parameters at the paper's
    initialisation (c = 0, equal logits: flow Euler on uniform times; n + n (n - 1) / 2 of
    them) in ``dtype`` and that start as a float64 `Schedule` (`initial_schedule`).
    ``params0`` is ``{"c": (n (n - 1) / 2,), "u": (n,)}``; ``param.build(params, {})``
    returns ``(times (n,), weights (n, n + 1))``.
  """
  scale = validation.check_flow_teacher(teacher, what="DS-Solver")
  n = noise.check_count(num_steps, "num_steps")
  time_scale = validation.check_positive(time_scale, "time_scale")
  first = float(np.asarray(teacher.timesteps, np.float64)[0])
  final = float(np.asarray(teacher.levels, np.float64)[-1]) * scale
  param = DsSolverParametrisation(n, learned.TimeGrid(first, final), scale, float(time_scale))
  params0 = {"c": jnp.zeros((n * (n - 1) // 2,), dtype), "u": jnp.zeros((n,), dtype)}
  return param, params0, initial_schedule(teacher, n)


def initial_schedule(teacher: teacher_lib.Teacher, num_steps: int) -> schedule_lib.Schedule:
  """DS-Solver's start as a float64 `Schedule`: flow Euler on n uniform times from the first."""
  scale = validation.check_flow_teacher(teacher, what="DS-Solver")
  first = float(np.asarray(teacher.timesteps, np.float64)[0])
  final = float(np.asarray(teacher.levels, np.float64)[-1]) * scale
  times = (first - (first - final) * np.arange(num_steps) / num_steps).astype(np.float32)
  s = np.append(times / np.float32(scale), np.float32(final / scale)).astype(np.float64)
  weights = np.concatenate([np.ones((num_steps, 1)), np.tril(np.cumsum(
      np.diag(np.diff(s)), axis=0))], axis=1)
  return schedule_lib.make_schedule(times, weights, {"method": "ds-solver-init"})
