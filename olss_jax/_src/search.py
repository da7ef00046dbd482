"""Choosing the n steps: the paper's path optimisation (Section 3.4, Eq. 13-14, Algorithms 1-3)."""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import fit
from olss_jax._src import lstsq
from olss_jax._src import stats as stats_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation


class SearchInfo(NamedTuple):
  """Diagnostics of `search_path`.

  Attributes:
    path: (n,) int32 the returned path.
    step_errors: (n,) float64 d(t(1..i+1)) of each step of the returned path (per-element MSE).
    max_error: float, max(step_errors), the objective of Eq. 13.
    bound: float, the smallest feasible error bound D found by the bisection (Algorithm 3).
    uniform_max_error: float, the objective on the uniform path (OLSS-P).
    chose_uniform: True when the uniform path was better and was returned instead.
    num_walks: int, how many greedy walks (Algorithm 2) were run.
  """

  path: np.ndarray
  step_errors: np.ndarray
  max_error: float
  bound: float
  uniform_max_error: float
  chose_uniform: bool
  num_walks: int


def uniform_path(traj: trajectory_lib.Trajectory, num_steps: int) -> np.ndarray:
  """OLSS-P's path: n equally spaced teacher steps, ``floor(i * K / n)`` for i < n.

  With K = 1000 and n = 5 this calls the model at timesteps 999, 799, 599, 399, 199.

  Returns:
    (n,) int32 indices into ``traj.timesteps`` (``path[0] == 0``).
  """
  k = (traj.num_teacher_steps
       if isinstance(traj, (trajectory_lib.Trajectory, stats_lib.TrajectoryStats)) else int(traj))
  n = validation.check_num_steps(num_steps, k)
  return ((np.arange(n, dtype=np.int64) * k) // n).astype(np.int32)


def greedy_walk(error, extend, state, num_teacher_steps: int, num_steps: int, bound: float):
  """Algorithm 2 with Algorithm 1 inside: the greedy path under an error bound.

  From the current step, binary search (Algorithm 1, assuming the error grows with the jump)
  for the farthest teacher state whose step error is <= ``bound``, but no farther than leaves
  one teacher step for each remaining model call, so that a feasible walk has exactly n calls.
  Feasible when the n-th jump reaches the final state K.

  Args:
    error: ``error(state, target) -> float``, the step error of jumping to teacher state
      ``target`` from the path so far (summarised by ``state``).
    extend: ``extend(state, index) -> state`` after adding teacher step ``index`` to the path.
    state: the state of the path [0].
    num_teacher_steps: K.
    num_steps: n.
    bound: the error bound D.

  Returns:
    (path (n,) int32, step_errors (n,)) or None when infeasible.
  """
  k = num_teacher_steps
  path, errs_out = [0], []
  for i in range(1, num_steps + 1):
    current, cap = path[-1], k - (num_steps - i)
    lo, hi, err_lo = current, cap, None
    while lo < hi:  # Algorithm 1 in index space (index = K - t)
      mid = (lo + hi + 1) // 2
      err = error(state, mid)
      if err > bound:
        hi = mid - 1
      else:
        lo, err_lo = mid, err
    if lo == current:
      return None
    errs_out.append(err_lo if err_lo is not None else error(state, lo))
    if i == num_steps:
      return (np.asarray(path, np.int32), np.asarray(errs_out)) if lo == k else None
    path.append(lo)
    state = extend(state, lo)
  return None  # pragma: no cover


def bisect_bound(walk, num_bisection_steps: int):
  """Algorithm 3: bisection on the error bound D over greedy walks.

  The bracket starts at the maximum error of the always-feasible walk with D = inf (every jump
  to its cap), doubled until a walk under it is feasible; then ``num_bisection_steps`` halvings.

  Args:
    walk: ``walk(bound) -> (path, step_errors) | None``.
    num_bisection_steps: halvings of the bracket.

  Returns:
    (best, bound, num_walks): the feasible walk with the smallest maximum step error seen,
    the smallest feasible bound, and how many walks ran.
  """
  if num_bisection_steps < 0:
    raise ValueError(f"num_bisection_steps: expected >= 0, got {num_bisection_steps}")

  def worst(w):
    return float(np.max(w[1]))

  best = walk(math.inf)  # always feasible: every jump reaches its cap
  walks = 1
  hi = worst(best)
  found = walk(hi)
  walks += 1
  for _ in range(64):
    if found is not None:
      break
    hi *= 2.0
    found = walk(hi)
    walks += 1
  lo = 0.0
  if found is None:
    return best, math.inf, walks
  best = min(best, found, key=worst)
  for _ in range(num_bisection_steps):
    mid = 0.5 * (lo + hi)
    found = walk(mid)
    walks += 1
    if found is None:
      lo = mid
    else:
      hi = mid
      best = min(best, found, key=worst)
  return best, hi, walks


# Above this many flops (2 m n^2 for m = B * D rows, n = K + 1 columns) a `Trajectory` is not
# factored by a Householder QR but through its float64 Gram (`trajectory_stats`): the QR runs at
# 3-4 GFLOP/s on a 2-core CPU (about 5 minutes at Stable Diffusion's size), the Gram's BLAS syrk
# at ~60 (about 9 s). Below it (the digits model: 2048 x 1001, ~1.5 s) the QR is kept: its
# rounding grows with cond(A), the Gram's with cond(A)^2.
QR_FLOPS_LIMIT = 1e10


def qr_flops(traj: trajectory_lib.Trajectory) -> float:
  """Flops of the Householder QR of all K + 1 columns of a trajectory, ``2 m (K + 1)^2``."""
  rows = traj.batch_size * int(np.prod(traj.sample_shape))
  return 2.0 * rows * (traj.num_teacher_steps + 1) ** 2


def compress_if_large(traj):
  """``trajectory_stats(traj)`` when a QR of all its K + 1 columns exceeds `QR_FLOPS_LIMIT`.

  Returns the `Trajectory` itself otherwise (and `TrajectoryStats` unchanged), so that one
  call before `search_path` and `fit_weights` lets both share one Gram at large sizes.
  """
  if not isinstance(traj, stats_lib.TrajectoryStats) and qr_flops(traj) > QR_FLOPS_LIMIT:
    return stats_lib.trajectory_stats(traj)  # minutes of QR -> seconds of BLAS syrk
  return traj


class ProjectionErrors:
  """Every candidate step error d(.) for a growing path, in the compressed R-space.

  With A = [x_T, e_0, ..., e_{K-1}] (all images and elements as rows) and a square root R of
  its Gram (``R^T R = A^T A``), every teacher state is ``A c_m`` (DDIM coefficients, paper
  Eq. 9), and the projection error of any state on any set of columns of A equals that of
  ``R c_m`` on the same columns of R. A path's basis is orthonormalised one column at a time
  (classical Gram-Schmidt, twice), and each candidate's error is one projection of a
  (K + 1)-vector: a greedy walk costs O(n log K) such projections, whatever the image size.

  R comes from `TrajectoryStats` (pivoted Cholesky of the Gram) when given, and from a
  `Trajectory` by a streamed Householder QR while that costs at most `QR_FLOPS_LIMIT` flops,
  else from the trajectory's statistics (`trajectory_stats`), computed here.
  """

  def __init__(self, traj: trajectory_lib.Trajectory):
    k = traj.num_teacher_steps
    traj = compress_if_large(traj)
    if isinstance(traj, stats_lib.TrajectoryStats):  # a square root of the Gram (issue 6)
      self.r = traj.factor()
      self.targets = self.r @ traj.state_coefficients().T
      self.num_elements = traj.num_elements
      self.num_teacher_steps = k
      return
    step = fit.images_per_block(traj)

    def blocks():
      with jax.enable_x64(True):
        for start in range(0, traj.batch_size, step):
          stop = min(start + step, traj.batch_size)
          yield _basis_rows(jnp.asarray(traj.x_T[start:stop]),
                            jnp.asarray(traj.model_outputs[:, start:stop]))

    self.r = lstsq.streamed_r_factor(blocks(), k + 1)          # (K+1, K+1)
    self.targets = self.r @ traj.state_coefficients().T        # column m: state m
    self.num_elements = traj.batch_size * int(np.prod(traj.sample_shape))
    self.num_teacher_steps = k

  def start(self) -> np.ndarray:
    """The orthonormal basis of span{x_T} in R-space: (K + 1, 1) (or (K + 1, 0) if x_T = 0)."""
    return self.add(np.zeros((self.r.shape[0], 0)), 0)

  def add(self, q: np.ndarray, column: int) -> np.ndarray:
    """Adds column ``column`` of A (0: x_T, j + 1: e_j) to the orthonormal basis ``q``.

    Classical Gram-Schmidt applied twice; a column already in the span (repeated or zero
    outputs) leaves the basis unchanged.
    """
    v = self.r[:, column].copy()
    norm0 = np.linalg.norm(v)
    for _ in range(2):
      v -= q @ (q.T @ v)
    norm = np.linalg.norm(v)
    if norm <= 1e-13 * max(norm0, 1e-300):
      return q
    return np.concatenate([q, (v / norm)[:, None]], axis=1)

  def error(self, q: np.ndarray, target: int) -> float:
    """Per-element MSE of projecting teacher state ``target`` on span(q)."""
    v = self.targets[:, target].copy()
    for _ in range(2):
      v -= q @ (q.T @ v)
    return float(v @ v) / self.num_elements

  def path_errors(self, path: np.ndarray) -> np.ndarray:
    """(n,) step errors of a given path (same quantity as `fit.solve_path`'s errors)."""
    targets = fit.path_targets(path, self.num_teacher_steps)
    q = self.start()
    out = []
    for i, p in enumerate(path):
      q = self.add(q, int(p) + 1)
      out.append(self.error(q, int(targets[i])))
    return np.asarray(out)

  def walk(self, bound: float, num_steps: int):
    """`greedy_walk` (Algorithms 1-2) on these teacher-forced projection errors."""
    return greedy_walk(self.error, lambda q, index: self.add(q, index + 1),
                       self.add(self.start(), 1), self.num_teacher_steps, num_steps, bound)


def search_path(traj: trajectory_lib.Trajectory, num_steps: int, *,
                num_bisection_steps: int = 30, prefer_uniform_if_better: bool = True,
                return_info: bool = False, denoise_fn=None, batch_size: int | None = None):
  """Path optimisation (paper Eq. 13-14, Algorithms 1-3): min over paths of the max step error.

  Bisection (Algorithm 3) on the error bound D; for each D a greedy walk (Algorithm 2) jumps
  to the farthest step whose projection error is within D (Algorithm 1). Step errors are the
  per-element mean squared error of projecting the teacher state on span{x_T, e_{t(1)}, ...,
  e_{t(i)}} (the paper's Eq. 12 basis in both search and fit). Differences from the
  reference code, all deliberate: the bracket starts at the error of an always-feasible walk
  rather than the fixed [0, 10], so the 30 halvings are relative to the data's scale; a jump
  never goes so far that fewer teacher steps than remaining model calls are left; among all
  feasible walks the one with the smallest actual maximum error is returned; and when the
  uniform path (OLSS-P) has a smaller maximum error than the greedy result, the uniform path
  is returned (the greedy walk assumes the error grows with the jump length, which real
  models can violate).

  Args:
    traj: the teacher `Trajectory`.
    num_steps: n, the number of model calls (1 <= n <= K).
    num_bisection_steps: halvings of the bound bracket (the reference code's 30).
    prefer_uniform_if_better: return the uniform path when it beats the search.
    return_info: also return a `SearchInfo`.
    denoise_fn: the model; when given, the search is closed-loop (beyond the paper, issue 8;
      `closed_loop.closed_loop_search`): each walk measures step errors on the basis of its
      own predicted trajectory (one model call per chosen step, shared between walks), and
      the info is a `ClosedLoopSearchInfo`. Needs the `Trajectory` itself.
    batch_size: samples per model call in closed-loop mode (None: all at once).

  All K + 1 columns [x_T, e_0, ..., e_{K-1}] are compressed once into a (K + 1, K + 1)
  factor, then every candidate is a small projection (`ProjectionErrors`). A large trajectory
  (QR above `QR_FLOPS_LIMIT` flops, e.g. Stable Diffusion's size) is compressed through its
  float64 Gram automatically; pass `TrajectoryStats` (`trajectory_stats`) yourself to reuse
  one Gram for several step counts and for `fit_weights`.

  Returns:
    (n,) int32 path into ``traj.timesteps`` (``path[0] == 0``), and the info if asked.
  """
  if denoise_fn is not None:
    from olss_jax._src import closed_loop  # local: closed_loop imports this module
    return closed_loop.closed_loop_search(
        traj, num_steps, denoise_fn, num_bisection_steps=num_bisection_steps,
        prefer_uniform_if_better=prefer_uniform_if_better, return_info=return_info,
        batch_size=batch_size)
  if not isinstance(traj, stats_lib.TrajectoryStats):
    validation.check_trajectory(traj)
  k = traj.num_teacher_steps
  n = validation.check_num_steps(num_steps, k)
  if num_bisection_steps < 0:  # checked before the (costly) factorisation
    raise ValueError(f"num_bisection_steps: expected >= 0, got {num_bisection_steps}")
  proj = ProjectionErrors(traj)
  best, hi, walks = bisect_bound(lambda bound: proj.walk(bound, n), num_bisection_steps)
  path, errors = best
  uniform = uniform_path(traj, n)
  uniform_errors = proj.path_errors(uniform)
  chose_uniform = bool(prefer_uniform_if_better and np.max(uniform_errors) < np.max(errors))
  if chose_uniform:
    path, errors = uniform, uniform_errors
  if not return_info:
    return path
  return path, SearchInfo(path=path, step_errors=errors, max_error=float(np.max(errors)),
                          bound=float(hi), uniform_max_error=float(np.max(uniform_errors)),
                          chose_uniform=chose_uniform, num_walks=walks)


def path_errors(traj: trajectory_lib.Trajectory, path) -> np.ndarray:
  """Per-step least-squares errors of a path (the paper's d(t(1), ..., t(i+1)), Eq. 13).

  Returns:
    (n,) float64 mean squared error per element of each step's Eq. 12 fit.
  """
  if not isinstance(traj, stats_lib.TrajectoryStats):
    validation.check_trajectory(traj)
  return fit.solve_path(traj, path)[1]


@jax.jit
def _basis_rows(x_T, outputs):
  """Rows [x_T, e_0, ..., e_{K-1}] for a block of images, float64: (b * D, K + 1)."""
  b = x_T.shape[0]
  x = x_T.reshape(b, -1).astype(jnp.float64).reshape(-1)
  e = outputs.reshape(outputs.shape[0], -1).astype(jnp.float64)
  return jnp.concatenate([x[None], e], axis=0).T
