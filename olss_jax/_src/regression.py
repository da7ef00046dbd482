"""Eq. 12's regressions over ``A = [x_T, e_0, ..., e_{K-1}]``, for a trajectory or its statistics.

For a path (teacher-step indices ``p_0 = 0 < p_1 < ... < p_{n-1}``), row i of a schedule
regresses the teacher state ``y_i = A c_{t_i}`` (``t_i = p_{i+1}``, the final state K for the
last row; c from `Teacher.state_coefficients`) on the basis ``[x_T, e_{p_0}, ..., e_{p_i}]``,
over every image and element. One triangular factor of the (2n + 1)-column matrix
``[x_T, e_{p_0..p_{n-1}}, y_0..y_{n-1}]`` answers all n rows, since the bases are nested
(`linalg.nested_solves`). The factor comes either from the images (a streamed Householder QR,
`rows.fold_rows`) or from the statistics' square root R (``A c = R c`` in R-space, a QR of
the (K + 1, 2n + 1) matrix ``[R_{x_T}, R_{e_path}, R C_targets]``). Pure JAX, float64.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from olss_jax._src import linalg
from olss_jax._src import noise
from olss_jax._src import rows
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import stats as stats_lib
from olss_jax._src import trajectory as trajectory_lib

# Above this many flops (2 m (K + 1)^2 for m = B * D rows) a `Trajectory`'s full factor (the
# search's R) comes from its float64 Gram (`trajectory_stats`) rather than a streamed
# Householder QR: the QR's rounding grows with cond(A), the Gram's with cond(A)^2, but at
# Stable Diffusion's size the QR of all 1001 columns runs at 3-4 GFLOP/s (minutes), the Gram
# at ~30 (seconds). The digits model (2048 x 1001, 4e9 flops) stays on the QR.
QR_FLOPS_LIMIT = 1e10


def path_targets(path, num_teacher_steps: int) -> jax.Array:
  """Teacher state indices that the rows of a path's schedule predict: path[1:], then K."""
  path = jnp.asarray(path, jnp.int32)
  return jnp.concatenate([path[1:], jnp.asarray([num_teacher_steps], jnp.int32)])


def qr_flops(data) -> float:
  """Flops of the Householder QR of all K + 1 columns of a trajectory, ``2 m (K + 1)^2``."""
  return 2.0 * rows.num_rows(data.x_T) * (data.num_teacher_steps + 1) ** 2


@jax.jit
def _qr_step(r, x_rows, e_rows, extra):
  del extra
  with jax.enable_x64(True):
    block = jnp.concatenate([linalg.f64(x_rows)[:, None], linalg.f64(e_rows).T], axis=1)
    return linalg.stack_rows(r, block)


def full_factor(data) -> jax.Array:
  """(K + 1, K + 1) float64 R of all columns of A (``R^T R = A^T A``), for the search.

  `TrajectoryStats`: their square root (`TrajectoryStats.with_factor`). A `Trajectory`: a
  streamed Householder QR of its rows while that costs at most `QR_FLOPS_LIMIT` flops, else
  through its statistics (`stats.trajectory_stats`).
  """
  if isinstance(data, stats_lib.TrajectoryStats):
    return data.with_factor().factor
  if qr_flops(data) > QR_FLOPS_LIMIT:
    return stats_lib.trajectory_stats(data).factor
  k = data.num_teacher_steps
  with jax.enable_x64(True):
    r0 = jnp.zeros((k + 1, k + 1), jnp.float64)
    return rows.fold_rows(_qr_step, r0, data.x_T, data.model_outputs)


@jax.jit
def _path_block(r, x_rows, e_rows, path, coeffs):
  """TSQR step with the rows [x, e_path, y_targets] of one block (y = coeffs @ [x; e])."""
  with jax.enable_x64(True):
    x = linalg.f64(x_rows)
    e = linalg.f64(e_rows)
    y = coeffs[:, :1] * x[None] + coeffs[:, 1:] @ e                     # (n, r)
    block = jnp.concatenate([x[:, None], e[path].T, y.T], axis=1)        # (r, 2n + 1)
    return linalg.stack_rows(r, block)



def path_factor(data, path) -> jax.Array:
  """(2n + 1, 2n + 1) float64 R of ``[x_T, e_{path}, y_targets]`` over all rows (see module doc).

  Args:
    data: a `Trajectory` or its `TrajectoryStats`.
    path: (n,) int32 teacher-step indices (validated by the caller; may be traced).
  """
  n = path.shape[0]
  with jax.enable_x64(True):
    coeffs = data.state_coefficients()[path_targets(path, data.num_teacher_steps)]   # (n, K + 1)
    if isinstance(data, stats_lib.TrajectoryStats):
      r = data.with_factor().factor
      small = jnp.concatenate([r[:, :1], r[:, path + 1], r @ coeffs.T], axis=1)
      return linalg.pad_rows(linalg.qr_r(small), 2 * n + 1)
    r0 = jnp.zeros((2 * n + 1, 2 * n + 1), jnp.float64)
    return rows.fold_rows(lambda r, x, e, _: _path_block(r, x, e, path, coeffs), r0,
                          data.x_T, data.model_outputs)


def solve_path(data, path):
  """Eq. 12 for every step of a path: weights, per-step errors and rank flags (traceable).

  Row i regresses the teacher state ``states[path[i + 1]]`` (the final state for the last
  row) on the basis ``[x_T, e_{path[0]}, ..., e_{path[i]}]`` over all images and elements.

  Args:
    data: a `Trajectory` or its `TrajectoryStats`.
    path: (n,) int32 indices (validated by the caller).

  Returns:
    weights (n, n + 1) float64, zero above the diagonal; errors (n,) float64 mean squared
    error per element of each row's fit (the paper's d); deficient (n,) bool, True where a
    row's basis was numerically rank deficient (its minimum-norm solution was used).
  """
  n = path.shape[0]
  r = path_factor(data, path)
  weights, residuals, deficient = linalg.nested_solves(r, n + 1, [i + 2 for i in range(n)])
  with jax.enable_x64(True):
    return weights, residuals / data.num_elements, deficient


def _states_block(coeffs, x_rows, e_rows):
  return coeffs[:, :1] * linalg.f64(x_rows)[None] + coeffs[:, 1:] @ linalg.f64(e_rows)


def _local_states(x, e, coeffs, axes):
  del axes
  with jax.enable_x64(True):
    return rows.map_rows(lambda xr, er: _states_block(coeffs, xr, er), x, e)


def _sharded_states(x_T, outputs, coeffs, part):
  return sharding_lib.shard_rows(_local_states, part, (0, 1, None), 1)(x_T, outputs, coeffs)


_sharded_states_jit = jax.jit(_sharded_states, static_argnums=3)


def teacher_states(traj: trajectory_lib.Trajectory, indices, *, part=None) -> jax.Array:
  """Exact float64 teacher states ``states[m] = C[m] @ [x_T, e_0, ..., e_{K-1}]`` (Eq. 9).

  A batch-sharded trajectory (``part``, by default `sharding.trajectory_partition`) is mapped
  on each device's own rows, the result split the same way (nothing crosses devices).

  Args:
    traj: the teacher `Trajectory`.
    indices: (m,) ints in [0, K].
    part: ``(mesh, axes)`` of a batch-sharded trajectory (static; inside jitted code that
      knows it), or None.

  Returns:
    (m, B * D) float64, one flattened state per index.
  """
  part = part or sharding_lib.trajectory_partition(traj)
  with jax.enable_x64(True):
    coeffs = traj.state_coefficients()[jnp.asarray(indices, jnp.int32)]      # (m, K + 1)
    if part is not None:
      traced = any(noise.is_traced(v) for v in (traj.x_T, traj.model_outputs, coeffs))
      fn = _sharded_states if traced else _sharded_states_jit
      return fn(traj.x_T, traj.model_outputs, coeffs, part)
    return rows.map_rows(lambda x_rows, e_rows: _states_block(coeffs, x_rows, e_rows),
                         traj.x_T, traj.model_outputs)


def _local_norms(x, e, a, b, axes):
  with jax.enable_x64(True):
    init = jnp.zeros((e.shape[0] + 1,), jnp.float64)
    acc = rows.fold_rows(lambda acc, xr, er, _: _norms_step(acc, xr, er, a, b), init, x, e)
    return jax.lax.psum(acc, axes)


def _sharded_norms(x_T, outputs, a, b, part):
  return sharding_lib.shard_rows(_local_norms, part, (0, 1, None, None), None)(x_T, outputs,
                                                                               a, b)


_sharded_norms_jit = jax.jit(_sharded_norms, static_argnums=4)


def state_norms(traj: trajectory_lib.Trajectory, *, part=None) -> jax.Array:
  """(K + 1,) float64 squared norms ``||states[m]||^2`` of every exact teacher state.

  Replays the teacher's recurrence in float64 over each block of rows (O(K * B * D)), far
  cheaper than the Gram. A batch-sharded trajectory (``part``, as in `teacher_states`) sums
  each device's rows, then a `psum` of the (K + 1,) partial sums.
  """
  part = part or sharding_lib.trajectory_partition(traj)
  with jax.enable_x64(True):
    a, b = traj.step_coefficients()
    if part is not None:
      traced = any(noise.is_traced(v) for v in (traj.x_T, traj.model_outputs, a, b))
      return (_sharded_norms if traced else _sharded_norms_jit)(traj.x_T, traj.model_outputs,
                                                                a, b, part)
    init = jnp.zeros((traj.num_teacher_steps + 1,), jnp.float64)
    return rows.fold_rows(lambda acc, x, e, _: _norms_step(acc, x, e, a, b), init, traj.x_T,
                          traj.model_outputs)


@jax.jit
def _norms_step(acc, x_rows, e_rows, a, b):
  """acc + the squared norms of the states of one block of rows (teacher recurrence, float64)."""
  with jax.enable_x64(True):
    x = linalg.f64(x_rows)

    def one(state, inputs):
      a_k, b_k, e_k = inputs
      nxt = a_k * state + b_k * linalg.f64(e_k)
      return nxt, jnp.sum(nxt**2)

    _, norms = jax.lax.scan(one, x, (a, b, e_rows))
    return acc + jnp.concatenate([jnp.sum(x**2)[None], norms])
