"""Fitting a path's weights by least squares (paper Section 3.3, Eq. 12)."""
from __future__ import annotations

import warnings

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


# A chunk of elements of all K outputs, in float64, stays near this size (in cache) while the
# teacher targets are formed from it.
_TARGET_CHUNK_BYTES = 1 << 23


def path_rows(x_T, outputs, path, target_coeffs) -> np.ndarray:
  """Rows [x_T, e_path..., y_targets...] of Eq. 12's regressions for a block of images.

  The targets are the teacher states ``y = c_0 x_T + sum_j c_{j+1} e_j`` (Eq. 9), formed on
  the host in float64 by BLAS, one cache-sized chunk of elements at a time.

  Args:
    x_T: (b, ...) starting noises.
    outputs: (K, b, ...) model outputs (any float dtype; host or device arrays).
    path: (n,) int indices of the basis outputs.
    target_coeffs: (n, K + 1) float64 coefficients of the targets over [x_T, e_0..e_{K-1}].

  Returns:
    (b * D, 2n + 1) float64; row ``i * D + d`` is element d of image i.
  """
  x = np.asarray(x_T)
  b = x.shape[0]
  x = x.reshape(b, -1)
  d = x.shape[1]
  e = np.asarray(outputs).reshape(-1, b, d)
  k, n = e.shape[0], len(path)
  coeffs = np.asarray(target_coeffs, np.float64)
  out = np.empty((b, d, 2 * n + 1), np.float64)
  out[:, :, 0] = x
  for j, p in enumerate(np.asarray(path)):
    out[:, :, 1 + j] = e[int(p)]
  chunk = max(1, _TARGET_CHUNK_BYTES // (8 * k * b))
  for s in range(0, d, chunk):
    block = e[:, :, s:s + chunk].astype(np.float64).reshape(k, -1)      # (K, b * c)
    y = (coeffs[:, 1:] @ block).reshape(n, b, -1)                        # (n, b, c)
    out[:, s:s + chunk, n + 1:] = np.moveaxis(y, 0, -1) + x[:, s:s + chunk, None] * coeffs[:, 0]
  return out.reshape(b * d, 2 * n + 1)


def _path_factor(traj: trajectory_lib.Trajectory, path: np.ndarray) -> np.ndarray:
  """(2n + 1, 2n + 1) R factor of [x_T, e_{p_0..p_{n-1}}, teacher targets] over all rows."""
  n = path.shape[0]
  coeffs = traj.state_coefficients()[path_targets(path, traj.num_teacher_steps)]
  step = images_per_block(traj)

  def blocks():
    for start in range(0, traj.batch_size, step):
      stop = min(start + step, traj.batch_size)
      yield path_rows(traj.x_T[start:stop], traj.model_outputs[:, start:stop], path, coeffs)

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
