"""Fitting a path's weights by least squares (paper Section 3.3, Eq. 12)."""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import lstsq
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import stats as stats_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

# Images per block are chosen so one float64 block of all K outputs stays near this size.
_BLOCK_BYTES = 1 << 28


def path_targets(path: np.ndarray, num_teacher_steps: int) -> np.ndarray:
  """Teacher state indices that the rows of a path's schedule predict: path[1:], then K."""
  return np.append(path[1:], num_teacher_steps).astype(np.int64)


def images_per_block(traj: trajectory_lib.Trajectory) -> int:
  """How many images' rows to factor at once (bounded float64 working memory)."""
  per_image = max(1, int(np.prod(traj.sample_shape))) * (traj.num_teacher_steps + 1) * 8
  return int(max(1, min(traj.batch_size, _BLOCK_BYTES // per_image)))


@jax.jit
def _path_rows(x_T, outputs, path, target_coeffs):
  """Rows [x_T, e_path..., y_targets...] for a block of images, float64 (x64 on).

  x_T: (b, ...); outputs: (K, b, ...); path: (n,); target_coeffs: (n, K + 1).
  Returns (b * D, 2n + 1).
  """
  b = x_T.shape[0]
  x = x_T.reshape(b, -1).astype(jnp.float64).reshape(-1)               # (bD,)
  e = outputs.reshape(outputs.shape[0], -1).astype(jnp.float64)        # (K, bD)
  targets = target_coeffs[:, :1] * x[None] + target_coeffs[:, 1:] @ e  # (n, bD)
  return jnp.concatenate([x[None], e[path], targets], axis=0).T


def _path_factor(traj: trajectory_lib.Trajectory, path: np.ndarray) -> np.ndarray:
  """(2n + 1, 2n + 1) R factor of [x_T, e_{p_0..p_{n-1}}, teacher targets] over all rows."""
  n = path.shape[0]
  coeffs = traj.state_coefficients()[path_targets(path, traj.num_teacher_steps)]
  step = images_per_block(traj)

  def blocks():
    with jax.enable_x64(True):
      for start in range(0, traj.batch_size, step):
        stop = min(start + step, traj.batch_size)
        yield _path_rows(jnp.asarray(traj.x_T[start:stop]),
                         jnp.asarray(traj.model_outputs[:, start:stop]),
                         jnp.asarray(path), jnp.asarray(coeffs))

  return lstsq.streamed_r_factor(blocks(), 2 * n + 1)


def solve_path(traj: trajectory_lib.Trajectory, path) -> tuple[np.ndarray, np.ndarray, bool]:
  """Eq. 12 for every step of a path: weights, per-step errors and a rank flag.

  Row i regresses the teacher state ``states[path[i + 1]]`` (the final state for the last
  row) on the basis ``[x_T, e_{path[0]}, ..., e_{path[i]}]`` over all images and elements.

  Returns:
    weights: (n, n + 1) float64, zero above the diagonal.
    errors: (n,) float64 mean squared error per element of each row's fit (the paper's d).
    rank_deficient: True if any row's basis was numerically rank deficient (minimum-norm
      solution used for it).
  """
  path = validation.check_path(path, traj.num_teacher_steps)
  if isinstance(traj, stats_lib.TrajectoryStats):  # same solves, from the Gram (issue 6)
    return stats_lib.solve_path(traj, path)
  n = path.shape[0]
  r = _path_factor(traj, path)
  targets = [(n + 1 + i, i + 2) for i in range(n)]
  ws, residuals, deficient = lstsq.nested_solves(r, n + 1, targets)
  weights = np.zeros((n, n + 1))
  for i, w in enumerate(ws):
    weights[i, : i + 2] = w
  num_elements = traj.batch_size * int(np.prod(traj.sample_shape))
  return weights, residuals / num_elements, any(deficient)


def fit_weights(traj: trajectory_lib.Trajectory, path, *, denoise_fn=None,
                **closed_loop_kwargs) -> schedule_lib.Schedule:
  """Fits OLSS weights on a path by least squares (paper Eq. 12).

  With ``denoise_fn`` given, the fit is closed-loop instead (beyond the paper, issue 8; see
  `closed_loop.closed_loop_fit`): row i is regressed on x_T and the model outputs along the
  fitted sampler's own trajectory on the fitting noises (n model calls); extra keyword
  arguments (``regularization``, ``batch_size``) go to it. Without it, the paper's
  teacher-forced fit below.

  For each step i, the weights minimise the mean squared error
  ``|| w_0 x_T + sum_{j <= i} w_{j+1} e_{path[j]} - x_target ||^2`` over every image and
  element of the trajectory, where x_target is the teacher state at ``path[i + 1]`` (the
  teacher's final output for the last step). The solve is a QR factorisation
  (`jnp.linalg.qr`, float64, streamed over blocks of images) followed by back substitution;
  one factorisation serves every row because the bases are nested. A rank-deficient basis
  (repeated or zero outputs) gets the minimum-norm solution and a warning, never NaN.

  Args:
    traj: the teacher `Trajectory` (B fitting noises, K steps), or its `TrajectoryStats`
      (`trajectory_stats`; same weights from the (K + 1)^2 Gram, without the images).
    path: (n,) int indices into ``traj.timesteps``, strictly increasing, ``path[0] == 0``.

  Returns:
    A `Schedule` with timesteps ``traj.timesteps[path]``, (n, n + 1) weights, and metadata
    ``method="olss"``, ``path``, ``step_errors``, ``teacher_steps``, ``num_fit_images``.
  """
  if denoise_fn is not None:
    from olss_jax._src import closed_loop  # local: closed_loop imports this module
    return closed_loop.closed_loop_fit(traj, path, denoise_fn, **closed_loop_kwargs)
  if closed_loop_kwargs:
    raise TypeError(f"fit_weights: {sorted(closed_loop_kwargs)} apply only with denoise_fn")
  if not isinstance(traj, stats_lib.TrajectoryStats):
    validation.check_trajectory(traj)
  path = validation.check_path(path, traj.num_teacher_steps)
  weights, errors, deficient = solve_path(traj, path)
  if not np.all(np.isfinite(weights)):
    raise ValueError("traj: the least-squares fit produced non-finite weights; the trajectory "
                     "contains non-finite values")
  if deficient:
    warnings.warn("fit_weights: the basis of some steps is rank deficient (repeated or zero "
                  "model outputs); the minimum-norm least-squares weights were used",
                  RuntimeWarning, stacklevel=2)
  meta = {
      "method": "olss",
      "fit": "teacher_forced",
      "path": path.tolist(),
      "step_errors": errors.tolist(),
      "teacher_steps": traj.num_teacher_steps,
      "num_fit_images": traj.batch_size,
      "sample_shape": list(traj.sample_shape),
      "rank_deficient": bool(deficient),
  }
  return schedule_lib.make_schedule(np.asarray(traj.timesteps)[path], weights, meta)
