"""Tall least squares by a streamed QR (TSQR), in float64: the algebra behind Eq. 12.

The fitting data are tall: every image and pixel is a row (K images x C x H x W rows), while
the basis has a handful of columns. Stacking the triangular factor of the rows seen so far on
top of the next chunk and re-factoring (`jnp.linalg.qr`, mode "r") gives the triangular factor
R of the whole matrix without holding it, and ``||A w - y||`` equals ``||R w - R_y||`` for
every w, so every least-squares question about the columns is answered from R alone.
"""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg


@jax.jit
def _stack_and_factor(r_prev, rows):
  return jnp.linalg.qr(jnp.concatenate([r_prev, rows], axis=0), mode="r")


def streamed_r_factor(row_blocks: Iterable, num_columns: int) -> np.ndarray:
  """Triangular factor of a tall matrix given as blocks of rows.

  Args:
    row_blocks: iterable of (rows_b, num_columns) arrays; each is cast to float64.
    num_columns: m.

  Returns:
    (m, m) float64 upper-triangular R with ``R^T R = A^T A`` (rows beyond the rank are 0).
  """
  with jax.enable_x64(True):
    r = jnp.zeros((0, num_columns), jnp.float64)
    for block in row_blocks:
      block = jnp.asarray(block, jnp.float64)
      if block.ndim != 2 or block.shape[1] != num_columns:
        raise ValueError(f"row block: expected shape (rows, {num_columns}), got {block.shape}")
      r = _stack_and_factor(r, block)
    r = np.asarray(r)
  if r.shape[0] < num_columns:  # fewer rows than columns so far: pad to square
    r = np.concatenate([r, np.zeros((num_columns - r.shape[0], num_columns))], axis=0)
  return r


def nested_solves(r: np.ndarray, num_basis: int, targets: list[tuple[int, int]], *,
                  rcond: float = 1e-12):
  """Least squares of target columns on prefixes of the basis columns, from R.

  Column layout of the factored matrix: the first ``num_basis`` columns are the basis, the
  rest are targets. ``targets`` lists (target_column, prefix_length) pairs: solve
  ``min_w ||A[:, :prefix] w - A[:, target]||``.

  A well-conditioned prefix is solved by back substitution on R; a numerically rank-deficient
  one (a diagonal entry of R below ``rcond`` times the largest) gets the minimum-norm solution
  of the same triangular system, never NaN.

  Returns:
    weights: list of (prefix,) float64 arrays.
    residuals: (len(targets),) float64 squared residual norms.
    deficient: list of bools, True where the prefix was rank deficient.
  """
  r = np.asarray(r, np.float64)
  diag = np.abs(np.diag(r))
  scale = diag[:num_basis].max() if num_basis else 0.0
  weights, residuals, deficient = [], [], []
  for col, prefix in targets:
    block = r[:prefix, :prefix]
    rhs = r[:prefix, col]
    rank_ok = scale > 0 and np.all(diag[:prefix] > rcond * scale)
    if rank_ok:
      w = _back_substitute(block, rhs)
    else:
      w = np.linalg.lstsq(block, rhs, rcond=rcond)[0] if scale > 0 else np.zeros(prefix)
    fitted = block @ w
    residual = np.sum((rhs - fitted) ** 2) + np.sum(r[prefix:col + 1, col] ** 2)
    weights.append(w)
    residuals.append(residual)
    deficient.append(not rank_ok)
  return weights, np.asarray(residuals), deficient


def _back_substitute(upper: np.ndarray, rhs: np.ndarray) -> np.ndarray:
  # A host-side LAPACK trsv: these systems are at most (n + 1)^2, and a jitted solve would
  # compile once per prefix length (about 0.17 s each, most of a fit's time at n = 10).
  return scipy.linalg.solve_triangular(upper, rhs, lower=False, check_finite=False)
