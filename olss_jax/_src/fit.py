"""Fitting a path's weights by least squares: the paper's teacher-forced fit (Section 3.3, Eq. 12)."""
from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import linalg
from olss_jax._src import noise
from olss_jax._src import regression
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import validation


class FitInfo(NamedTuple):
  """Diagnostics of a least-squares fit (arrays; concrete outside jit).

  Attributes:
    step_errors: (n,) float64 per-element MSE of each row against its teacher state on the
      fitting noises (the paper's d; for the closed-loop fit, on the sampler's own basis).
    rank_deficient: (n,) bool, rows whose basis was numerically rank deficient (repeated or
      zero model outputs): they got the minimum-norm least-squares weights.
  """

  step_errors: jax.Array
  rank_deficient: jax.Array


def fit_metadata(data, fit: str) -> dict:
  """The static facts a fitted schedule records about its teacher and fit."""
  return {"method": "olss", "fit": fit, "teacher": data.teacher.kind,
          "teacher_steps": data.num_teacher_steps, "num_fit_images": data.batch_size,
          "sample_shape": list(data.sample_shape)}


def warn_if_deficient(deficient, where: str, stacklevel: int = 3) -> None:
  """The rank-deficiency warning of a concrete fit (none under jit)."""
  if not noise.is_traced(deficient) and bool(np.any(np.asarray(deficient))):
    warnings.warn(f"{where}: the basis of some steps is rank deficient (repeated or zero "
                  "model outputs); the minimum-norm least-squares weights were used",
                  RuntimeWarning, stacklevel=stacklevel)


def poison_unless(valid, *arrays):
  """``arrays`` where ``valid`` (a traced bool), NaN everywhere otherwise (float64 scope)."""
  with jax.enable_x64(True):
    return tuple(jnp.where(valid, a, jnp.asarray(jnp.nan, a.dtype)) for a in arrays)


def fit_weights(traj, path):
  """Fits OLSS weights on a path by least squares (paper Eq. 12), teacher-forced as the paper.

  For each step i, the weights minimise the mean squared error
  ``|| w_0 x_T + sum_{j <= i} w_{j+1} e_{path[j]} - x_target ||^2`` over every image and
  element of the trajectory, where x_target is the teacher state at ``path[i + 1]`` (the
  teacher's final output for the last step) and the e's are the teacher's own model outputs.
  The solve is a float64 QR factorisation (`jnp.linalg.qr`, streamed over blocks of rows, or
  of the statistics' square root) followed by back substitution; one factorisation serves
  every row because the bases are nested (`regression.solve_path`). A rank-deficient basis
  (repeated or zero outputs) gets the minimum-norm solution and a warning, never NaN.

  Pure JAX: ``jax.jit(fit_weights)`` and ``jax.vmap(fit_weights, in_axes=(None, 0))`` (a
  batch of paths) work, and the weights are differentiable in the model outputs, also from
  JAX's default float32 mode (reverse mode, `linalg.x64_call`: the gradient comes back in
  the outputs' dtype; cast the float64 weights to float32 before float32 arithmetic).

  Checked under jit: the trajectory's and the path's shapes and dtypes (raise at trace time).
  The path's values (``path[0] == 0``, strictly increasing, below K) and the trajectory's
  finiteness can only be seen at run time: a traced path that `validation.check_path` would
  refuse gives NaN weights and NaN step errors (`validation.path_is_valid`), and NaN in the
  trajectory gives NaN weights. Eagerly every one of these raises.

  Args:
    traj: the teacher `Trajectory` (B fitting noises, K steps), or its `TrajectoryStats`
      (`trajectory_stats`; the same weights from the (K + 1)^2 Gram, without the images).
    path: (n,) int indices into the teacher's timesteps, strictly increasing, ``path[0] == 0``.

  Returns:
    (schedule, info): a `Schedule` with timesteps ``traj.timesteps[path]``, (n, n + 1) float64
    weights and metadata ``method="olss"``, ``fit="teacher_forced"``, ``teacher_steps``,
    ``num_fit_images``, ``sample_shape``; and a `FitInfo` (host numpy arrays when called
    eagerly, traced arrays under jit).

  Raises:
    ValueError: a bad path, or non-finite weights (the trajectory holds NaN or inf).
  """
  validation.check_data(traj)
  return _fit_weights(traj, validation.check_path(path, traj.num_teacher_steps))


def _fit_weights(traj, path):
  """`fit_weights` on a checked trajectory and path (the core that trusts its inputs)."""
  path = jnp.asarray(path, jnp.int32)
  traced_path = noise.is_traced(path)

  def solve(data, path):
    weights, errors, deficient = regression.solve_path(data, path)
    if traced_path:  # under jit a bad path cannot raise: it gives NaN weights
      weights, errors = poison_unless(validation.path_is_valid(path, data.num_teacher_steps),
                                      weights, errors)
    return weights, errors, deficient

  # float64 inside; `grad` from JAX's float32 mode also transposes in float64 (`x64_call`)
  weights, errors, deficient = linalg.x64_call(solve, traj, path)
  if not noise.is_traced(weights):
    with jax.enable_x64(True):
      finite = bool(jnp.all(jnp.isfinite(weights)))
    if not finite:
      raise ValueError("traj: the least-squares fit produced non-finite weights; the "
                       "trajectory contains non-finite values")
  warn_if_deficient(deficient, "fit_weights", stacklevel=4)
  timesteps = jnp.asarray(traj.timesteps)[path]
  schedule = schedule_lib.Schedule(timesteps, weights, fit_metadata(traj, "teacher_forced"))
  return noise.to_host((schedule, FitInfo(errors, deficient)))
