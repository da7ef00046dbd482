"""The closed-loop fit: Eq. 12 on the sampler's own states, and the final error of a path so fitted.

The paper (Section 3.3, Eq. 12) fits row i of a schedule on the *teacher's* model outputs
``e_{t(1)}, ..., e_{t(i)}`` (`fit.fit_weights`, the teacher-forced twin of this module). At
sampling time the outputs come from the model evaluated on OLSS's own approximate states
instead. When the outputs are strongly correlated the teacher-forced weights are large and
cancel, and the small differences between the two bases compound. The closed-loop fit removes
the mismatch: it runs the n-step sampler on the fitting noises while fitting, so row i is
regressed on ``[x_T, e'_0, ..., e'_i]``, the outputs at the states produced by rows 0..i-1.
Same objective (the teacher's state), float64 least squares, n model calls on the fitting
noises.

`final_errors_fn` scores paths by the final error of their closed-loop fit, for searches that
try many paths of one length (`path_tuning.tune_path`). The path search on the same basis is
`closed_loop_search`.

Pure JAX: the model calls and the least squares run under one `jax.jit`; the model is traced
in the caller's precision (float64 only where the caller enabled it, `model_calls`), the
algebra in float64.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import fit as fit_lib
from olss_jax._src import linalg
from olss_jax._src import model_calls
from olss_jax._src import noise
from olss_jax._src import regression
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

# Relative ridge strengths tried by the cross-validation (0: plain least squares).
RIDGE_GRID = (0.0,) + tuple(10.0 ** p for p in range(-12, 0))
NUM_FOLDS = 4
# ``regularization`` values: the cross-validated ridge, judged by the held-out folds' summed
# squared error ("cv") or by their summed per-noise RMSE ("cv-rmse", the comparison's metric),
# or "cv"'s fit re-weighted by Huber's rule on each noise's residual ("cv-robust").
CV_CRITERIA = {"cv": "mse", "cv-rmse": "rmse", "cv-robust": "robust"}
# "cv-robust": a noise is down-weighted when its residual norm exceeds both ROBUST_THRESHOLD
# times the fitting noises' median and ROBUST_FLOOR times their median target norm (a 10%
# relative error: where every noise is fitted closely nothing changes); ROBUST_ITERATIONS
# re-weighting passes.
ROBUST_THRESHOLD = 3.0
ROBUST_FLOOR = 0.1
ROBUST_ITERATIONS = 3
# The cross-validation refuses ridge strengths whose weights exceed this multiple of the
# teacher's own largest step weight (at least 1): an amplifying row that validates well on
# the fitting noises can blow up on rare new ones (README, "More fitting noises").
WEIGHT_BOUND = 10.0
DEFAULT_REGULARIZATION = "cv"


class ClosedLoopFitInfo(NamedTuple):
  """Diagnostics of `closed_loop_fit` (arrays; concrete outside jit).

  Attributes:
    step_errors: (n,) float64 per-element MSE of each row against the teacher state, on the
      fitting noises and the sampler's own basis.
    rank_deficient: (n,) bool, rows whose basis was numerically rank deficient.
    ridge: (n,) float64 the relative ridge strength each row used (0: plain least squares).
    states: (n + 1, B, ...) the states the fitted sampler visits on the fitting noises.
    num_model_calls: int32, model evaluations on the B fitting noises (n).
    holdout_errors: (n,) float64 the same errors on the noises left out of the fit
      (``fit_noises``), with the weights fitted on the others; NaN when none is left out.
    guarded: (n,) bool, rows whose cross-validated strength was refused by the amplification
      guard (its weights exceeded ``WEIGHT_BOUND`` times the teacher's; the row was held to
      the bound instead).
  """

  step_errors: jax.Array
  rank_deficient: jax.Array
  ridge: jax.Array
  states: jax.Array
  num_model_calls: jax.Array
  holdout_errors: jax.Array
  guarded: jax.Array



def _grid(regularization) -> tuple[float, ...]:
  """The ridge strengths ``regularization`` tries (checked; named in the error)."""
  if isinstance(regularization, str):
    if regularization not in CV_CRITERIA:
      raise ValueError(f"regularization: expected 'cv', 'cv-rmse', 'cv-robust' or a float "
                       f">= 0, got {regularization!r}")
    return RIDGE_GRID
  if (isinstance(regularization, (int, float, np.floating, np.integer))
      and not isinstance(regularization, bool) and np.isfinite(regularization)
      and regularization >= 0):
    return (float(regularization),)
  raise ValueError(f"regularization: expected 'cv', 'cv-rmse', 'cv-robust' or a float >= 0, got "
                   f"{regularization!r}")


def _criterion(regularization) -> str:
  """The cross-validation's criterion for a checked ``regularization`` (`CV_CRITERIA`)."""
  return CV_CRITERIA.get(regularization, "mse") if isinstance(regularization, str) else "mse"


def noise_factors(m, elements: int) -> jax.Array:
  """(S, c, c) triangular factor of each noise's rows of ``m`` (S * elements, c), noise-major.

  One Householder QR per noise in a `jax.lax.map` loop, not a `vmap`: jaxlib 0.10's batched
  CPU LAPACK kernels split their batch over XLA's intra-op thread pool and wait for it, and
  two of them running at once on a 2-thread pool waited on each other forever (measured: the
  MNIST model's fit hung with both pool threads blocked, one in a batched QR, one in a batched
  SVD).
  """
  c = m.shape[1]
  per = jax.lax.map(linalg.qr_r, m.reshape(-1, elements, c))
  if per.shape[1] < c:
    per = jnp.concatenate([per, jnp.zeros((per.shape[0], c - per.shape[1], c), per.dtype)],
                          axis=1)
  return per



def _fold_rows(num_samples: int, elements: int) -> list[np.ndarray]:
  """Static row indices of each cross-validation fold: fold f holds the samples b % F == f."""
  folds = min(NUM_FOLDS, num_samples)
  sample_of_row = np.arange(num_samples * elements) // elements
  return [np.flatnonzero(sample_of_row % folds == f) for f in range(folds)]


def _row_factors(cols, y, grid, folds, elements: int | None = None):
  """The small statistics of one row's regression, from its rows (one device).

  With cross-validation the folds are factored first and the factor of all the fitting rows
  is the factor of the folds' stacked factors (TSQR: the folds partition the rows), one
  Householder pass over the rows instead of two.

  Args:
    cols: (N, c) the basis on the fitting rows; y: (N,) the target.
    grid: the ridge grid (static); folds: static row indices of each CV fold (a partition of
      the N rows).
    elements: the rows of one noise (static), for the per-noise criterion ("cv-rmse"): the
      rows are noise-major; None for the squared-error criterion.

  Returns:
    (r_all (c + 1, c + 1) factor of ``[cols, y]``, colsq (c,) column sums of squares or None
    (no ridge), r_folds: a factor per fold, or () when no cross-validation runs, noise_r:
    (S, c + 1, c + 1) each noise's factor for the per-noise criterion, else None).
  """
  c = cols.shape[1]
  m = jnp.concatenate([cols, y[:, None]], axis=1)
  if grid == (0.0,):
    return linalg.pad_rows(linalg.qr_r(m), c + 1), None, (), None
  colsq = jnp.sum(cols**2, axis=0)
  if len(folds) < 2 or len(grid) == 1:
    return linalg.pad_rows(linalg.qr_r(m), c + 1), colsq, (), None
  noise_r = None if elements is None else noise_factors(m, elements)
  r_folds = tuple(linalg.pad_rows(linalg.qr_r(m[idx]), c + 1) for idx in folds)
  r_all = linalg.pad_rows(linalg.qr_r(jnp.concatenate(r_folds, axis=0)), c + 1)
  return r_all, colsq, r_folds, noise_r


def _sharded_row_factors(cols, y, fold_of_row, grid, num_folds: int, part,
                         elements: int | None = None):
  """`_row_factors` of batch-sharded rows: per-device factors, then TSQR across devices.

  Each device factors its own rows of ``[cols, y]`` (one masked Householder QR per fold, or
  for all the fitting rows without cross-validation), the (c + 1, c + 1) factors are
  all-gathered and factored again (``R`` of the stacked factors is ``R`` of the stacked
  rows; all rows' factor is then that of the folds' factors), and the column sums of squares
  are `psum`-med: only (devices x folds) small triangles cross devices. For the per-noise
  criterion each noise's factor is all-gathered too (S small triangles).

  Args:
    cols: (N, c) the basis on every row, rows split by ``part``; y: (N,) likewise.
    fold_of_row: (N,) int32: the CV fold of each row, -1 for rows not fitted (held out).
    grid, num_folds: as in `_row_factors` (static); part: ``(mesh, axes)`` (static).
    elements: as in `_row_factors`.

  Returns:
    As `_row_factors`, with ``noise_r`` for every noise of the batch and, for the per-noise
    criterion, the (B,) fold of each noise (-1: not fitted) appended, else None.
  """
  c = cols.shape[1]
  ridge = grid != (0.0,)
  cross = ridge and num_folds >= 2 and len(grid) > 1
  per_noise = cross and elements is not None

  def local(cols, y, fold, axes):
    with jax.enable_x64(True):
      m = jnp.concatenate([cols, y[:, None]], axis=1)

      def factor(keep):
        r = linalg.pad_rows(linalg.qr_r(jnp.where(keep[:, None], m, 0.0)), c + 1)
        stacked = jax.lax.all_gather(r, axes, tiled=True)
        return linalg.pad_rows(linalg.qr_r(stacked), c + 1)

      fit = fold >= 0
      colsq = jax.lax.psum(jnp.sum(jnp.where(fit[:, None], cols, 0.0)**2, axis=0), axes)
      if not cross:
        return factor(fit), colsq, (), ()
      r_folds = tuple(factor(fold == f) for f in range(num_folds))
      # the folds partition the fitting rows: their stacked factors give all rows' factor
      r_all = linalg.pad_rows(linalg.qr_r(jnp.concatenate(r_folds, axis=0)), c + 1)
      if not per_noise:
        return r_all, colsq, r_folds, ()
      noises = (jax.lax.all_gather(noise_factors(m, elements), axes, tiled=True),
                jax.lax.all_gather(fold[::elements], axes, tiled=True))
      return r_all, colsq, r_folds, noises

  r_all, colsq, r_folds, noises = sharding_lib.shard_rows(local, part, (0, 0, 0), None)(
      cols, y, fold_of_row)
  return r_all, colsq if ridge else None, r_folds, (noises if per_noise else None)


def _row_solve(r_all, colsq, r_folds, noises, sizes, ref, mask, grid, num_rows: int,
               guard: bool = True, robust: bool = False):
  """One row's weights from its factors: plain least squares, a fixed ridge, or CV's ridge.

  Ridge towards ``ref`` with strength lam picked from ``grid`` by K-fold cross-validation
  over samples (fold f: samples ``b % F == f``), so the validation error measures how a row
  generalises to new noises; each fold is reduced to its R factor once (`_row_factors`),
  every candidate strength is then a small solve. The CV error of a strength is the held-out
  folds' summed squared error, ``sum_f ||R_f [w_f; -1]||^2`` with w_f fitted on the other
  folds, or with ``noises`` their summed per-noise RMSE, ``sum_s sqrt(||R_s [w_f(s); -1]||^2)``
  over each held-out noise s (its own factor R_s; the per-element scale does not change the
  choice). The smallest strength within a relative 1e-9 of the best CV error wins (ties at
  rounding level keep plain least squares), among the strengths whose weights stay within
  ``WEIGHT_BOUND * max(1, max_j |ref_j|)`` (the amplification guard; if none does, the
  strengths with the smallest largest weight).

  With ``robust`` (and ``noises``), that fit is then re-weighted ``ROBUST_ITERATIONS`` times
  (iteratively re-weighted least squares of Huber's loss on the per-noise residual norms):
  each noise's residual ``r_s = ||R_s [w; -1]||``, the bound ``k = max(ROBUST_THRESHOLD *
  median(r), ROBUST_FLOOR * median_s ||y_s||)``, noise weights ``a_s = min(1, k / r_s)``
  (mean 1 over the fitting noises), each fold's factor that of its noises' ``sqrt(a_s) R_s``,
  and the strength picked again by the held-out folds' summed Huber loss (``r^2`` up to ``k``,
  ``2 k r - k^2`` beyond), the ridge's row count the weighted one.

  Args:
    r_all: (c + 1, c + 1) factor of ``[cols, y]`` over the fitting rows; colsq: (c,) their
      column sums of squares (None without ridge); r_folds: per-fold factors (() for none);
      noises: None, or ``(noise_r (S, c + 1, c + 1), fold (S,) int)`` for the per-noise
      criterion (fold -1: a noise not fitted, ignored);
      sizes: static rows per fold; ref, mask: (c,); grid: static; num_rows: fitting rows.
    guard: apply the amplification guard (static; off only to score candidate paths).
    robust: the Huber re-weighting above (static; needs ``noises``).

  Returns:
    (weights (c,), lam, deficient, guarded: the guard refused the cross-validation's pick).
  """
  c = r_all.shape[1] - 1
  prefix = jnp.sum(mask).astype(jnp.int32)
  w_ls, _, deficient = linalg.prefix_solve(r_all, c, prefix, c)
  unguarded = jnp.asarray(False)
  if grid == (0.0,):
    return w_ls, jnp.asarray(0.0, jnp.float64), deficient, unguarded
  scale = jnp.maximum(colsq / num_rows, 1e-300)
  if not r_folds:
    lam = jnp.asarray(grid[0], jnp.float64)
    w = linalg.ridge_solve(r_all[:, :c], r_all[:, c], lam, scale, ref, num_rows)
    return jnp.where(mask, w, 0.0), lam, deficient, unguarded

  def pick(r_folds, sizes, bound=None):   # CV's strength on these folds, guarded; the weights
    def cv_error(lam):
      held = []      # [w_f; -1] fitted without fold f
      for f in range(len(r_folds)):
        others = jnp.concatenate([r for g, r in enumerate(r_folds) if g != f], axis=0)
        w = linalg.ridge_solve(others[:, :c], others[:, c], lam, scale, ref,
                               num_rows - sizes[f])
        held.append(jnp.append(w, -1.0))
      if noises is None or (robust and bound is None):
        return sum(jnp.sum((r_f @ v) ** 2) for r_f, v in zip(r_folds, held))
      noise_r, fold = noises
      v = jnp.stack(held)[jnp.clip(fold, 0)]                                  # (S, c + 1)
      res = jnp.sqrt(jnp.sum(jnp.einsum("sij,sj->si", noise_r, v) ** 2, axis=1))
      if bound is not None:   # Huber: squares up to the bound, linear beyond
        res = jnp.where(res <= bound, res**2, 2 * bound * res - bound**2)
      return jnp.sum(jnp.where(fold >= 0, res, 0.0))

    def smallest_best(cv):   # the smallest strength within a relative 1e-9 of the best
      return linalg.first_true(cv <= jnp.min(cv) * (1 + 1e-9) + 1e-300)

    grid_arr = jnp.asarray(grid, jnp.float64)
    cv = jax.lax.map(cv_error, grid_arr)   # a loop, not vmap: see noise_factors
    stacked = jnp.concatenate(r_folds, axis=0)
    best, held = smallest_best(cv), unguarded
    if guard:   # strengths whose weights leave the teacher's scale are refused
      largest = linalg.ridge_path_max(stacked[:, :c], stacked[:, c], grid_arr, scale, ref,
                                      num_rows, mask)
      allowed = largest <= WEIGHT_BOUND * jnp.maximum(1.0, jnp.max(jnp.abs(ref)))
      held = ~allowed[best]
      allowed = jnp.where(jnp.any(allowed), allowed, largest <= jnp.min(largest))
      best = smallest_best(jnp.where(allowed, cv, jnp.inf))
    lam = grid_arr[best]
    w = linalg.ridge_solve(stacked[:, :c], stacked[:, c], lam, scale, ref, num_rows)
    return jnp.where(mask, w, 0.0), lam, held

  w, lam, held = pick(r_folds, sizes)
  if robust and noises is not None:
    for _ in range(ROBUST_ITERATIONS):
      r_w, sizes_w, bound = _downweighted_folds(noises, w, len(r_folds), num_rows)
      w, lam, held = pick(r_w, sizes_w, bound)
  return w, lam, deficient, held


def _downweighted_folds(noises, w, num_folds: int, num_rows: int):
  """Per-fold factors with each noise weighted by Huber's rule on its residual under ``w``.

  One IRLS step of Huber's loss on the per-noise residual norms (`_row_solve`): the bound
  ``k``, weights ``a_s = min(1, k / r_s)`` rescaled to mean 1 over the fitting noises
  (``noises``' fold >= 0; the others 0), fold f's factor that of its noises' stacked
  ``sqrt(a_s) R_s``.

  Args:
    noises: ``(noise_r (S, c + 1, c + 1), fold (S,) int)``; w: (c,) the current weights;
    num_folds: static; num_rows: the fitting rows (``elements`` per noise).

  Returns:
    (r_folds: a (c + 1, c + 1) factor per fold, sizes: the folds' weighted row counts, k).
  """
  noise_r, fold = noises
  fitted = fold >= 0
  res = jnp.sqrt(jnp.sum(jnp.einsum("sij,j->si", noise_r, jnp.append(w, -1.0)) ** 2, axis=1))
  med = jnp.nanmedian(jnp.where(fitted, res, jnp.nan))
  size = jnp.nanmedian(jnp.where(fitted, jnp.sqrt(jnp.sum(noise_r[:, :, -1] ** 2, axis=1)),
                                 jnp.nan))
  bound = jnp.maximum(ROBUST_THRESHOLD * med, ROBUST_FLOOR * size)
  a = jnp.minimum(1.0, bound / jnp.maximum(res, 1e-300))
  a = jnp.where(fitted, a, 0.0)
  a = a * jnp.sum(fitted) / jnp.maximum(jnp.sum(a), 1e-300)
  elements = num_rows / jnp.sum(fitted)
  scaled = noise_r * jnp.sqrt(a)[:, None, None]
  c1 = noise_r.shape[-1]
  r_folds = tuple(
      linalg.pad_rows(linalg.qr_r(jnp.where((fold == f)[:, None, None], scaled, 0.0)
                                  .reshape(-1, c1)), c1) for f in range(num_folds))
  sizes = [elements * jnp.sum(jnp.where(fold == f, a, 0.0)) for f in range(num_folds)]
  return r_folds, sizes, bound


def _row_fit(cols, y, ref, mask, grid, folds, num_rows: int, guard: bool = True,
             elements: int | None = None, robust: bool = False):
  """One row's weights from its rows (`_row_factors`, then `_row_solve`).

  ``elements`` (static): the rows of one noise for the per-noise criterion, else None.

  Returns:
    (weights (c,), lam, deficient, guarded).
  """
  r_all, colsq, r_folds, noise_r = _row_factors(cols, y, grid, folds, elements)
  sizes = [int(idx.shape[0]) for idx in folds]
  noises = None if noise_r is None else (
      noise_r, jnp.asarray(np.arange(noise_r.shape[0]) % len(folds), jnp.int32))
  return _row_solve(r_all, colsq, r_folds, noises, sizes, ref, mask, grid, num_rows, guard,
                    robust)


def _solve(traj, path, denoise_fn, grid: tuple, x64: bool, fit_noises: tuple | None = None,
           part=None, ys=None, guard: bool = True, criterion: str = "mse"):
  """The closed-loop fit (see `closed_loop_fit`); traceable, statics: grid, x64, fit_noises.

  ``part`` (static ``(mesh, axes)``, `sharding.trajectory_partition`): the trajectory is
  batch-sharded; the rows stay where they are (basis, states, teacher targets, model calls)
  and each row's regression is reduced from per-device factors (`_sharded_row_factors`).
  ``ys``: the (n, N) float64 teacher targets when the caller has them (`final_errors_fn`
  keeps them between candidate paths), else computed here (one pass over the outputs).
  ``guard`` (static): the amplification guard (`_row_solve`), off for scoring candidates.
  ``criterion`` (static): the cross-validation's, "mse" or "rmse" (`_criterion`).
  """
  n = path.shape[0]
  k = traj.num_teacher_steps
  x_T = jnp.asarray(traj.x_T)
  dtype = x_T.dtype
  num_rows = traj.num_elements
  elements = num_rows // traj.batch_size
  fit_samples = np.arange(traj.batch_size) if fit_noises is None else np.asarray(fit_noises)
  fit_rows = (fit_samples[:, None] * elements + np.arange(elements)[None]).reshape(-1)
  hold = np.ones(traj.batch_size, bool)
  hold[fit_samples] = False
  hold_rows = np.repeat(hold, elements)
  num_fit_rows, num_hold_rows = int(fit_rows.size), int(hold_rows.sum())
  folds = _fold_rows(fit_samples.size, elements)
  per_noise = elements if criterion in ("rmse", "robust") else None
  robust = criterion == "robust"
  sizes = [int(idx.shape[0]) for idx in folds]
  fold_of_sample = np.full(traj.batch_size, -1, np.int32)
  fold_of_sample[fit_samples] = np.arange(fit_samples.size) % max(len(folds), 1)
  with jax.enable_x64(True):
    if ys is None:                                                               # (n, N)
      ys = regression.teacher_states(traj, regression.path_targets(path, k), part=part)
    refs = traj.teacher.path_weights(path)                                       # (n, n + 1)
    timesteps = jnp.asarray(traj.timesteps)[path]
    basis = jnp.zeros((num_rows, n + 1), jnp.float64).at[:, 0].set(linalg.f64(x_T).reshape(-1))
    basis = sharding_lib.constrain(basis, part, 0)
    states = sharding_lib.constrain(jnp.zeros((n + 1,) + x_T.shape, dtype).at[0].set(x_T),
                                    part, 1)
    cols_idx = jnp.arange(n + 1)
    fit_rows_j = jnp.asarray(fit_rows)
    hold_rows_j = jnp.asarray(hold_rows)
    fold_of_row = jnp.asarray(np.repeat(fold_of_sample, elements))

    def row(i, carry):
      basis, states, weights, errors, hold_errors, lams, deficient, guarded = carry
      e = model_calls.call_model(denoise_fn, states[i], timesteps[i], x64)
      basis = jax.lax.dynamic_update_slice(basis, linalg.f64(e).reshape(-1, 1),
                                           (jnp.int32(0), (i + 1).astype(jnp.int32)))
      basis = sharding_lib.constrain(basis, part, 0)
      mask = cols_idx <= i + 1
      cols = jnp.where(mask[None, :], basis, 0.0)
      ref = jnp.where(mask, refs[i], 0.0)
      if part is not None:   # per-device factors, reduced across devices (and processes)
        factors = _sharded_row_factors(cols, ys[i], fold_of_row, grid, len(folds), part,
                                       per_noise)
        w, lam, defic, held = _row_solve(*factors, sizes, ref, mask, grid, num_fit_rows,
                                         guard, robust)
      elif fit_noises is None:
        w, lam, defic, held = _row_fit(cols, ys[i], ref, mask, grid, folds, num_fit_rows,
                                       guard, per_noise, robust)
      else:
        w, lam, defic, held = _row_fit(cols[fit_rows_j], ys[i][fit_rows_j], ref, mask, grid,
                                       folds, num_fit_rows, guard, per_noise, robust)
      fitted = cols @ w
      states = states.at[i + 1].set(fitted.reshape(x_T.shape).astype(dtype))
      states = sharding_lib.constrain(states, part, 1)
      sq = (fitted - ys[i]) ** 2
      if part is not None:
        err = jnp.sum(jnp.where(fold_of_row >= 0, sq, 0.0)) / num_fit_rows
      else:
        err = jnp.sum(sq if fit_noises is None else sq[fit_rows_j]) / num_fit_rows
      hold_err = (jnp.sum(jnp.where(hold_rows_j, sq, 0.0)) / num_hold_rows if num_hold_rows
                  else jnp.asarray(jnp.nan, jnp.float64))
      return (basis, states, weights.at[i].set(w), errors.at[i].set(err),
              hold_errors.at[i].set(hold_err), lams.at[i].set(lam), deficient.at[i].set(defic),
              guarded.at[i].set(held))

    init = (basis, states, jnp.zeros((n, n + 1), jnp.float64), jnp.zeros((n,), jnp.float64),
            jnp.zeros((n,), jnp.float64), jnp.zeros((n,), jnp.float64), jnp.zeros((n,), bool),
            jnp.zeros((n,), bool))
    _, states, weights, errors, hold_errors, lams, deficient, guarded = jax.lax.fori_loop(
        0, n, row, init)
    return weights, ClosedLoopFitInfo(errors, deficient, lams, states, jnp.asarray(n, jnp.int32),
                                      hold_errors, guarded)


_solve_jit = jax.jit(_solve, static_argnums=(3, 4, 5, 6, 8, 9))


def closed_loop_fit(traj: trajectory_lib.Trajectory, path, denoise_fn, *,
                    regularization=DEFAULT_REGULARIZATION, fit_noises=None):
  """Fits OLSS weights on a path by closed-loop least squares (Eq. 12 on the sampler's basis).

  Row by row: call the model at the current predicted state (x_T for row 0) at timestep
  ``traj.timesteps[path[i]]``, append the output to the basis ``[x_T, e'_0, ..., e'_{i-1}]``,
  fit row i by float64 least squares against the teacher state ``states[path[i + 1]]`` (the
  final state for the last row) over every fitting noise and element, and predict the next
  state with it. n model calls on the B fitting noises.

  Regularisation: late rows see nearly collinear outputs, and plain least squares then finds
  huge cancelling weights that reproduce the fitting noises and blow up on new ones (measured:
  weights ~1e7 and a 20-step RMSE of 3.7 on held-out noises against 0.14 for DDIM). With
  ``regularization="cv"`` each row is a ridge regression towards the teacher's own step
  between the same teacher states (`Teacher.path_weights`: DDIM on the path),
  ``||A w - y||^2 / N + lam * sum_j s_j (w_j - w_ref_j)^2`` with ``s_j`` the mean square of
  column j, and lam picked from `RIDGE_GRID` by 4-fold cross-validation over the fitting
  noises (no extra model calls); lam = 0 (plain least squares) wins whenever it generalises
  as well. Cross-validation on a few dozen noises can still pick an amplifying row that
  diverges on rare new noises (measured: a largest weight of 2,637 and 9 of 1,024 held-out
  noises above RMSE 1), so strengths whose weights exceed ``WEIGHT_BOUND`` (10) times the
  teacher's largest step weight (at least 1) are refused. A rank-deficient basis gets the
  minimum-norm solution and a warning, never NaN.

  Pure JAX: the n model calls and every solve run under one `jax.jit` (this function jits
  itself for concrete inputs and traces inline under the caller's jit). Under the caller's
  jit the path's values cannot raise: a path `validation.check_path` would refuse gives NaN
  weights and step errors (`validation.path_is_valid`).

  Args:
    traj: the teacher `Trajectory` (B fitting noises, K steps).
    path: (n,) int indices into ``traj.timesteps`` (``path[0] == 0``, strictly increasing).
    denoise_fn: ``(x_t (B, ...), t) -> e (B, ...)``, the model the teacher ran (conditioned
      on the fitting noises' labels or prompts).
    regularization: "cv" (default), "cv-rmse", "cv-robust", or a float: a fixed relative
      ridge strength (0.0: plain least squares, the unregularised closed-loop fit). "cv-rmse"
      picks the
      strength by the held-out folds' summed per-noise RMSE (each noise's own R factor; the
      comparison's metric) instead of their summed squared error, which a few noises with
      large errors (a noise that ends in another mode) can set alone: on a sharp mixture
      where "cv" chose 0.1 for the last row, lowering that sum by 3% and tripling the row's
      error on the fitting noises, "cv-rmse" chose 1e-5 and kept least squares' error; on
      other sharp mixtures it lowered some fits' held-out errors and raised others' (README,
      "More fitting noises"), and it changed nothing on the digits and MNIST models.
      "cv-robust" keeps "cv"'s strengths where every noise is fitted closely, and down-weights
      the noises whose residual exceeds both 3x the median and a tenth of the typical target
      norm (iteratively re-weighted least squares of Huber's loss over the noises' residual
      norms, the strength re-picked by the held-out folds' Huber loss; `_row_solve`): a few
      noises that end in another mixture component no longer pull every other noise's fit.
    fit_noises: indices of the noises to fit on (default: all B). The model still runs on
      the whole batch (per-noise conditioning stays aligned) and the others are held out:
      their states follow the weights fitted on these, and `ClosedLoopFitInfo.holdout_errors`
      reports their errors (a validation split at no extra model calls).

  Returns:
    (schedule, info): a `Schedule` (timesteps ``traj.timesteps[path]``, (n, n + 1) weights,
    metadata ``method="olss"``, ``fit="closed_loop"``, ...) and a `ClosedLoopFitInfo`.
  """
  validation.check_model_data(traj)
  return _closed_loop_fit(traj, validation.check_path(path, traj.num_teacher_steps),
                          denoise_fn, regularization=regularization, fit_noises=fit_noises)


def _closed_loop_fit(traj, path, denoise_fn, *, regularization=DEFAULT_REGULARIZATION,
                     fit_noises=None):
  """`closed_loop_fit` on a checked trajectory and path (the core that trusts them)."""
  path = jnp.asarray(path, jnp.int32)
  grid = _grid(regularization)
  fit_noises = validation.check_fit_noises(fit_noises, traj.batch_size)
  denoise_fn = trajectory_lib.as_denoise_pytree(denoise_fn)
  traced = noise.is_traced(path) or noise.is_traced(traj.x_T)
  solve = _solve if traced else _solve_jit
  weights, info = solve(traj, path, denoise_fn, grid, model_calls.caller_x64(), fit_noises,
                        sharding_lib.trajectory_partition(traj), None, True,
                        _criterion(regularization))
  if noise.is_traced(path):  # under jit a bad path cannot raise: it gives NaN weights
    weights, errors = fit_lib.poison_unless(
        validation.path_is_valid(path, traj.num_teacher_steps), weights, info.step_errors)
    info = info._replace(step_errors=errors)
  if not noise.is_traced(weights):
    with jax.enable_x64(True):
      finite = bool(jnp.all(jnp.isfinite(weights)))
    if not finite:
      raise ValueError("denoise_fn: the closed-loop fit produced non-finite weights (the model "
                       "returned non-finite outputs along the fitted trajectory)")
  fit_lib.warn_if_deficient(info.rank_deficient, "closed_loop_fit", stacklevel=4)
  meta = fit_lib.fit_metadata(traj, "closed_loop")
  meta["regularization"] = regularization if isinstance(regularization, str) else float(
      regularization)
  timesteps = jnp.asarray(traj.timesteps)[path]
  return noise.to_host((schedule_lib.Schedule(timesteps, weights, meta), info))


def final_errors_fn(traj: trajectory_lib.Trajectory, denoise_fn, *, fit_noises,
                    regularization=DEFAULT_REGULARIZATION) -> Callable:
  """``errors(path) -> (fit MSE, held-out MSE)`` of the final state, closed-loop fitted.

  One jitted `closed_loop_fit` per call (n model calls on all B noises, weights fitted on
  ``fit_noises``), for searches that score many paths of one length
  (`path_tuning.tune_path`). The exact teacher targets are kept between calls (at most
  `model_calls.CACHE_BYTES` of them), so a path that moves one step computes one new target.

  Args:
    traj: the teacher `Trajectory` (B fitting noises, K steps).
    denoise_fn: ``(x_t (B, ...), t) -> e (B, ...)``, as for `closed_loop_fit`.
    fit_noises: (m,) indices of the noises the weights are fitted on; the other B - m are
      held out (as `closed_loop_fit`'s ``fit_noises``; `holdout_split` makes such a split).
    regularization: as for `closed_loop_fit`.

  Returns:
    ``errors(path (n,) int) -> (float, float)``: the final state's mean square error on the
    fitting noises and on the held-out ones (NaN when none is held out). Scored without
    `closed_loop_fit`'s amplification guard: the guard bounds the returned fit only. Scoring
    candidates with it (or refusing the paths it holds) changed the searches' paths on the
    flow mixtures, better on some and up to 66x worse on others (README, "More fitting
    noises").
  """
  validation.check_model_data(traj)
  return _final_errors_fn(traj, denoise_fn, fit_noises=fit_noises,
                          regularization=regularization)


def _final_errors_fn(traj, denoise_fn, *, fit_noises,
                     regularization=DEFAULT_REGULARIZATION) -> Callable:
  """`final_errors_fn` of a checked trajectory (the core that trusts it)."""
  grid = _grid(regularization)
  criterion = _criterion(regularization)
  fit_noises = validation.check_fit_noises(fit_noises, traj.batch_size)
  denoise_fn = trajectory_lib.as_denoise_pytree(denoise_fn)
  x64 = model_calls.caller_x64()
  part = sharding_lib.trajectory_partition(traj)
  k = traj.num_teacher_steps
  # Teacher targets by state index, kept between candidates (a coordinate search moves one
  # step at a time: one new target per candidate instead of n passes over the outputs).
  kept: dict[int, jax.Array] = {}
  most = max(2, model_calls.CACHE_BYTES // max(1, traj.num_elements * 8))
  states_jit = jax.jit(lambda tr, idx: regression.teacher_states(tr, idx, part=part))

  def targets(path):
    want = [int(t) for t in path[1:]] + [k]
    missing = sorted({t for t in want if t not in kept})
    with jax.enable_x64(True):
      if missing:
        new = states_jit(traj, jnp.asarray(missing, jnp.int32))
        kept.update((t, new[j]) for j, t in enumerate(missing))
      for old in [t for t in kept if t not in want][:max(0, len(kept) - most)]:
        del kept[old]
      return jnp.stack([kept[t] for t in want])

  def errors(path):
    path = np.asarray(validation.check_path(path, traj.num_teacher_steps), np.int32)
    ys = targets(path)
    path = jnp.asarray(path)
    _, info = _solve_jit(traj, path, denoise_fn, grid, x64, fit_noises, part, ys, False,
                         criterion)
    with jax.enable_x64(True):
      return float(info.step_errors[-1]), float(info.holdout_errors[-1])

  return errors
