"""The closed-loop fit streamed over chunks of noises: the memory of one chunk, for any number.

`closed_loop_fit.closed_loop_fit` holds every fitting noise's basis and teacher targets at
once; at Stable Diffusion's latent size a thousand noises would need gigabytes. This module
fits the same weights (Eq. 12 on the sampler's own states, the same cross-validated ridge with
folds by noise index ``b % 4``) from chunks of noises seen one at a time. Row i is one pass
over the chunks: each chunk replays rows 0..i-1 with the weights already fitted (i model
calls), calls the model once more, adds its rows ``[basis, target]`` to its fold's
(n + 2)^2 triangular factor (TSQR, `linalg.stack_rows`) and is dropped. Memory: one chunk,
its n + 1 basis columns and 4 small factors (with ``regularization="cv-rmse"`` or
``"cv-robust"`` one small factor per noise as well). Model calls: n (n + 1) / 2 per noise over all
rows (15 at n = 5, 55 at n = 10, against the teacher's 1000 per noise).
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import closed_loop_fit
from olss_jax._src import fit as fit_lib
from olss_jax._src import linalg
from olss_jax._src import model_calls
from olss_jax._src import noise
from olss_jax._src import regression
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation


class StreamedFitInfo(NamedTuple):
  """Diagnostics of `closed_loop_fit_chunks` (concrete arrays).

  Attributes:
    step_errors: (n,) float64 per-element MSE of each row against the teacher state over
      every noise (the closed-loop fit's ``step_errors``).
    rank_deficient: (n,) bool, rows whose basis was numerically rank deficient.
    ridge: (n,) float64 the relative ridge strength each row used.
    num_model_calls: int, model evaluations per noise (n (n + 1) / 2: the replays included).
    num_noises: int, the noises of every chunk together.
    num_chunks: int, chunks per pass.
    guarded: (n,) bool, rows the amplification guard held (`ClosedLoopFitInfo.guarded`).
  """

  step_errors: np.ndarray
  rank_deficient: np.ndarray
  ridge: np.ndarray
  num_model_calls: int
  num_noises: int
  num_chunks: int
  guarded: np.ndarray


def _fold_indices(batch: int, elements: int, offset: int) -> list[np.ndarray]:
  """Static row indices of a chunk's rows in each fold (noise ``offset + b`` in fold ``% 4``)."""
  fold_of_row = np.repeat((offset + np.arange(batch)) % closed_loop_fit.NUM_FOLDS, elements)
  return [np.flatnonzero(fold_of_row == f) for f in range(closed_loop_fit.NUM_FOLDS)]


def _chunk_factors(denoise_fn, x_T, y, weights, timesteps, row, offset: int, x64: bool,
                   per_noise: bool = False):
  """One chunk's contribution to row ``row``: per-fold factors of ``[basis, y]`` and colsq.

  Replays rows 0..row-1 of ``weights`` (n, n + 1) from x_T (model calls at ``timesteps``),
  calls the model at the row's state, and factors the chunk's rows of each fold.

  Returns:
    (factors (4, n + 2, n + 2) float64, one per fold (zero for a fold without rows here),
    colsq (n + 1,) column sums of squares of the masked basis, and with ``per_noise`` (static,
    the "cv-rmse" criterion) each noise's factor (B, n + 2, n + 2), else None).
  """
  n = weights.shape[0]
  with jax.enable_x64(True):
    num_rows = x_T.size
    basis = jnp.zeros((num_rows, n + 1), jnp.float64).at[:, 0].set(
        linalg.f64(x_T).reshape(-1))
    cols_idx = jnp.arange(n + 1)

    def add_output(j, basis, state):
      e = model_calls.call_model(denoise_fn, state, timesteps[j], x64)
      return jax.lax.dynamic_update_slice(basis, linalg.f64(e).reshape(-1, 1),
                                          (jnp.int32(0), (j + 1).astype(jnp.int32)))

    def replay(j, carry):   # `closed_loop_fit._solve`'s row j with its fitted weights
      basis, state = carry
      basis = add_output(j, basis, state)
      fitted = jnp.where((cols_idx <= j + 1)[None, :], basis, 0.0) @ weights[j]
      return basis, fitted.reshape(x_T.shape).astype(x_T.dtype)

    row = jnp.asarray(row, jnp.int32)
    basis, state = jax.lax.fori_loop(jnp.int32(0), row, replay, (basis, x_T))
    basis = add_output(row, basis, state)
    cols = jnp.where((cols_idx <= row + 1)[None, :], basis, 0.0)
    m = jnp.concatenate([cols, y[:, None]], axis=1)
    zero = jnp.zeros((n + 2, n + 2), jnp.float64)
    elements = num_rows // x_T.shape[0]
    factors = [linalg.pad_rows(linalg.qr_r(m[idx]), n + 2) if idx.size else zero
               for idx in _fold_indices(x_T.shape[0], elements, offset)]
    noise_r = closed_loop_fit.noise_factors(m, elements) if per_noise else None
    return jnp.stack(factors), jnp.sum(cols**2, axis=0), noise_r


_chunk_factors_jit = jax.jit(_chunk_factors, static_argnums=(6, 7, 8))


@jax.jit
def _merge(acc, new):
  """Per-fold TSQR merge of (4, c, c) factors."""
  return jax.vmap(linalg.stack_rows)(acc, new)


_targets_jit = jax.jit(lambda traj, index: regression.teacher_states(traj, index))


def _solve_row(factors, colsq, ref, mask, grid, fold_sizes, num_rows: int, num_folds: int,
               noise_r=None, robust: bool = False):
  """Row weights from the merged factors (`closed_loop_fit`'s solve), and the row's MSE.

  ``noise_r``: (S, n + 2, n + 2) every noise's factor in stream order (noise b in fold
  ``b % 4``) for the per-noise criterion, else None.

  Returns:
    (weights (n + 1,), lam, deficient, guarded, mse).
  """
  with jax.enable_x64(True):
    c = factors.shape[-1]
    cross = grid != (0.0,) and num_folds >= 2 and len(grid) > 1
    r_folds = tuple(factors[f] for f in range(num_folds)) if cross else ()
    r_all = linalg.pad_rows(linalg.qr_r(factors.reshape(-1, c)), c)
    noises = None if noise_r is None or not cross else (
        noise_r, jnp.asarray(np.arange(noise_r.shape[0]) % closed_loop_fit.NUM_FOLDS,
                             jnp.int32))
    w, lam, deficient, held = closed_loop_fit._row_solve(  # pylint: disable=protected-access
        r_all, colsq if grid != (0.0,) else None, r_folds, noises, list(fold_sizes),
        jnp.where(mask, ref, 0.0), mask, grid, num_rows, robust=robust)
    return w, lam, deficient, held, jnp.sum((r_all @ jnp.append(w, -1.0)) ** 2) / num_rows


_solve_row_jit = jax.jit(_solve_row, static_argnums=(4, 5, 6, 7, 9))


def _same_stream(a, b) -> bool:
  """Two chunks of one stream: the same teacher (`teacher.same_teacher`) and sample shape."""
  return teacher_lib.same_teacher(a.teacher, b.teacher) and a.sample_shape == b.sample_shape


def closed_loop_fit_chunks(chunks: Callable[[], Iterable[tuple]], path, *,
                           regularization=closed_loop_fit.DEFAULT_REGULARIZATION):
  """`closed_loop_fit` on noises streamed in chunks, holding one chunk at a time.

  Fits the weights `closed_loop_fit` fits on all the chunks' noises together (the same rows,
  targets, ridge and folds: noise b of the stream, counted across chunks, is in fold
  ``b % 4``; equal up to rounding, tested), one row per pass over the chunks: each chunk
  replays the rows fitted so far (i model calls for row i), calls the model at row i's
  state, and merges its rows of ``[basis, teacher state]`` into its fold's triangular factor
  (TSQR); the row's weights then come from the small factors (`closed_loop_fit`'s solve).
  Runs eagerly (a Python loop over rows and chunks; each chunk's work is one jitted call) and
  never holds more than one chunk: to fit on a few noises held in memory, `closed_loop_fit`.

  Args:
    chunks: ``() -> iterable of (traj, denoise_fn)``, called once per row (n passes), each
      time yielding the same chunks in the same order: a `Trajectory` of some noises (one
      teacher for all) and the model conditioned on those noises (a `jax.tree_util.Partial`
      with the conditions as arguments is compiled once for all chunks; a new closure per
      chunk compiles per chunk). For example a function that loads or regenerates each
      chunk of a `olss_jax.store` directory.
    path: (n,) int teacher-step indices (``path[0] == 0``, strictly increasing).
    regularization: as `closed_loop_fit` ("cv", "cv-rmse", "cv-robust", or a float >= 0; the
      per-noise criteria keep each noise's small factor, (n + 2)^2 float64 numbers a noise).

  Returns:
    (schedule, info): the `Schedule` ((n,) timesteps ``timesteps[path]``, (n, n + 1) float64
    weights; metadata as `closed_loop_fit`'s, ``num_fit_images`` the stream's noises,
    ``streamed_chunks``) and a `StreamedFitInfo`.

  Raises:
    ValueError: no chunk, chunks of different teachers or shapes, passes that yield
      different chunks, non-finite outputs, or a bad path (named).
  """
  if not callable(chunks):
    raise TypeError(f"chunks: expected a function returning an iterable of (trajectory, "
                    f"denoise_fn) pairs, got {type(chunks).__name__}")
  grid = closed_loop_fit._grid(regularization)  # pylint: disable=protected-access
  criterion = closed_loop_fit._criterion(regularization)  # pylint: disable=protected-access
  per_noise, robust = criterion in ("rmse", "robust"), criterion == "robust"
  first = next(iter(chunks()), None)   # the teacher and shapes (one chunk read ahead)
  if first is None:
    raise ValueError("chunks: expected at least one (trajectory, denoise_fn) pair, got none")
  first = first[0]
  k = first.num_teacher_steps
  path = np.asarray(validation.check_path(path, k), np.int32)
  n = path.shape[0]
  elements = first.num_elements // first.batch_size
  x64 = model_calls.caller_x64()
  targets = regression.path_targets(path, k)
  with jax.enable_x64(True):
    refs = first.teacher.path_weights(jnp.asarray(path))                   # (n, n + 1)
    timesteps = jnp.asarray(first.timesteps)[path]
  sizes: list[int] = []

  def one_pass(i, weights):
    """Row i's per-fold factors and column sums over every chunk (pass 0 checks them).

    The chunks are drawn in the caller's precision (the user's code runs outside the
    library's float64 scope); the library's algebra runs in float64.
    """
    with jax.enable_x64(True):
      factors = jnp.zeros((closed_loop_fit.NUM_FOLDS, n + 2, n + 2), jnp.float64)
      colsq = jnp.zeros((n + 1,), jnp.float64)
    seen, noise_r = [], []
    for traj, denoise_fn in chunks():
      if i == 0:
        validation.check_model_data(traj)
      if not _same_stream(first, traj):
        raise ValueError(f"chunks: chunk {len(seen)} has another teacher or sample shape "
                         "than chunk 0")
      model = jax.tree.map(jnp.asarray, trajectory_lib.as_denoise_pytree(denoise_fn))
      x_T = jnp.asarray(traj.x_T)
      with jax.enable_x64(True):
        y = _targets_jit(traj, jnp.asarray([targets[i]], jnp.int32))[0]
        f_chunk, c_chunk, r_chunk = _chunk_factors_jit(
            model, x_T, y, weights, timesteps, i, int(sum(seen)) % closed_loop_fit.NUM_FOLDS,
            x64, per_noise)
        factors, colsq = _merge(factors, f_chunk), colsq + c_chunk
        if per_noise:
          noise_r.append(r_chunk)
      seen.append(traj.batch_size)
    if i == 0:
      sizes.extend(seen)
    elif seen != sizes:
      raise ValueError(f"chunks: pass {i + 1} yielded chunks of {seen} noises, the first "
                       f"{sizes}; every call must yield the same chunks in the same order")
    with jax.enable_x64(True):
      return factors, colsq, (jnp.concatenate(noise_r) if per_noise else None)

  with jax.enable_x64(True):
    weights = jnp.zeros((n, n + 1), jnp.float64)
  errors, lams, deficient, guarded = np.zeros(n), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
  for i in range(n):
    factors, colsq, noise_r = one_pass(i, weights)
    total = int(sum(sizes))
    num_rows = total * elements
    num_folds = min(closed_loop_fit.NUM_FOLDS, total)
    fold_sizes = tuple(int(np.sum(np.arange(total) % closed_loop_fit.NUM_FOLDS == f)) * elements
                       for f in range(num_folds))
    with jax.enable_x64(True):
      w, lam, defic, held, mse = _solve_row_jit(factors, colsq, refs[i], jnp.arange(n + 1) <= i + 1,
                                          grid, fold_sizes, num_rows, num_folds, noise_r, robust)
      weights = weights.at[i].set(w)
    errors[i] = float(mse)
    lams[i], deficient[i], guarded[i] = float(lam), bool(defic), bool(held)
  with jax.enable_x64(True):
    if not bool(jnp.all(jnp.isfinite(weights))):
      raise ValueError("denoise_fn: the streamed closed-loop fit produced non-finite weights "
                       "(the model returned non-finite outputs along the fitted trajectory)")
  fit_lib.warn_if_deficient(deficient, "closed_loop_fit_chunks")
  meta = fit_lib.fit_metadata(first, "closed_loop")
  meta.update(num_fit_images=total, streamed_chunks=len(sizes),
              regularization=regularization if isinstance(regularization, str)
              else float(regularization))
  sched = schedule_lib.Schedule(timesteps, weights, meta)
  info = StreamedFitInfo(errors, deficient, lams, n * (n + 1) // 2, total, len(sizes), guarded)
  return noise.to_host(sched), info
