"""Float64 least squares in JAX: the algebra behind Eq. 12 and Eq. 13 (traceable, vmappable).

The fitting data are tall: every image and element is a row (B images x D elements), while
the bases have a handful of columns. Everything here works on small triangular or square
factors of those tall matrices:

* `qr_r` / `stack_rows`: the triangular factor R of a tall matrix given in blocks of rows
  (TSQR: stacking the factor so far on the next block and re-factoring with
  `jnp.linalg.qr`), so ``||A w - y|| = ||R [w; -1]||`` without holding A;
* `nested_solves`: Eq. 12's rows (target j regressed on the first p_j basis columns) read
  off one factor by back substitution, with the minimum-norm solution where a prefix is
  numerically rank deficient (never NaN);
* `gram_sqrt`: a square root of a Gram matrix ``G = A^T A`` (R with ``R^T R = G``), so that
  every projection question about the columns of A is answered in (K + 1)-space;
* `extend_orthonormal`: one Gram-Schmidt step (twice, for stability) into a fixed-size basis.

Every function computes in float64 inside `jax.enable_x64` (scoped): the inputs are usually
float32 model outputs, whose products are exact in float64.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

RCOND = 1e-12  # relative size of a diagonal entry of R below which a basis is rank deficient


def f64(x):
  """``x`` cast to float64 (call inside `jax.enable_x64`)."""
  return jnp.asarray(x).astype(jnp.float64)


def first_true(flags):
  """Index of the first True (0 if none), int32 whatever the precision scope."""
  return jax.lax.argmax(flags.astype(jnp.int32), 0, jnp.int32)


def x64_call(fn, *args):
  """``fn(*args)`` in float64 (scoped `jax.enable_x64`), differentiable from float32 mode.

  `jax.grad` transposes a function after it has been traced, outside any `jax.enable_x64`
  block the forward pass ran in: in JAX's default float32 mode the transpose rules of the
  float64 operations then build float32 zeros and fail (``lax.scatter requires arguments to
  have the same dtypes, got float32, float64``). So when x64 is off and some argument is
  traced, ``fn`` runs as a `jax.custom_vjp` whose backward pass replays its `jax.vjp`
  inside `jax.enable_x64` as well. The outputs keep ``fn``'s dtypes (float64); each
  argument's cotangent comes back in that argument's dtype (float32 model outputs get float32
  gradients). With x64 on (the caller's `jax.enable_x64`, or inside another float64 block)
  or on concrete arguments, ``fn`` is called directly, so forward mode (`jax.jvp`) and
  higher derivatives work there; in float32 mode ``fn`` supports first-order reverse mode
  (`jax.grad`, `jax.vjp`, under `jax.jit` and `jax.vmap`) only.

  Args:
    fn: a pure function of pytrees of arrays, returning a pytree of arrays.
    *args: its arguments (integer and bool leaves get float0 cotangents).
  """
  leaves, tree = jax.tree_util.tree_flatten(args)
  traced = [isinstance(leaf, jax.core.Tracer) for leaf in leaves]
  if jax.config.jax_enable_x64 or not any(traced):
    with jax.enable_x64(True):
      return fn(*args)
  # Only the traced leaves are the custom_vjp's arguments (concrete ones, such as a teacher's
  # float64 levels, have no cotangent, so none crosses back into float32 code).
  out_dtypes = []

  def inner(*traced_leaves):
    it = iter(traced_leaves)
    full = [next(it) if t else leaf for leaf, t in zip(leaves, traced)]
    return fn(*jax.tree_util.tree_unflatten(tree, full))

  @jax.custom_vjp
  def call(*xs):
    with jax.enable_x64(True):
      return inner(*xs)

  def fwd(*xs):
    with jax.enable_x64(True):
      out, pullback = jax.vjp(inner, *xs)
      out_dtypes[:] = [jnp.result_type(o) for o in jax.tree_util.tree_leaves(out)]
      return out, pullback

  def bwd(pullback, cts):
    with jax.enable_x64(True):
      ct_leaves, ct_tree = jax.tree_util.tree_flatten(cts)
      ct_leaves = [c if not jnp.issubdtype(d, jnp.inexact) else jnp.asarray(c).astype(d)
                   for c, d in zip(ct_leaves, out_dtypes)]
      return tuple(pullback(jax.tree_util.tree_unflatten(ct_tree, ct_leaves)))

  call.defvjp(fwd, bwd)
  with jax.enable_x64(True):
    return call(*(leaf for leaf, t in zip(leaves, traced) if t))


def qr_r(a) -> jax.Array:
  """(min(m, c), c) triangular factor R of a (m, c) matrix: ``A^T A = R^T R`` (Householder)."""
  with jax.enable_x64(True):
    return jnp.linalg.qr(f64(a), mode="r")


def pad_rows(r, num_columns: int) -> jax.Array:
  """A factor with fewer rows than columns padded with zero rows to (c, c)."""
  missing = num_columns - r.shape[0]
  if missing <= 0:
    return r
  return jnp.concatenate([r, jnp.zeros((missing, num_columns), r.dtype)], axis=0)


@jax.jit
def stack_rows(r_prev, rows):
  """TSQR step: the factor of ``[A_prev; rows]`` from A_prev's factor ``r_prev`` (c, c)."""
  with jax.enable_x64(True):
    return pad_rows(qr_r(jnp.concatenate([f64(r_prev), f64(rows)], axis=0)), r_prev.shape[1])


def prefix_solve(r, num_basis: int, prefix, column, *, rcond: float = RCOND):
  """Least squares of one target column on a prefix of the basis columns, from a factor R.

  ``min_w ||A[:, :p] w - A[:, column]||`` for the factored matrix A (R upper triangular,
  ``R^T R = A^T A``, basis columns first). A prefix whose diagonal entries of R are all above
  ``rcond`` times the largest basis diagonal is solved by back substitution; otherwise
  (repeated or zero columns) it gets the minimum-norm solution of the same triangular system
  (SVD), never NaN. ``prefix`` and ``column`` may be traced; differentiable (both branches are
  computed on safe inputs, so no NaN reaches a gradient).

  Args:
    r: (m, m) upper-triangular float64 factor.
    num_basis: the number of basis columns nb (static).
    prefix: p, 1 <= p <= nb.
    column: the target column index (>= nb).
    rcond: the rank threshold.

  Returns:
    (weights (nb,) zero beyond p, squared residual norm, deficient bool).
  """
  with jax.enable_x64(True):
    r = f64(r)
    m = r.shape[0]
    nb = num_basis
    diag = jnp.abs(jnp.diag(r))
    scale = jnp.max(diag[:nb])
    eye = jnp.eye(nb, dtype=jnp.float64)
    mask = jnp.arange(nb) < prefix
    block = jnp.where(mask[:, None] & mask[None, :], r[:nb, :nb], eye)
    target = r[:, column]
    rhs = jnp.where(mask, target[:nb], 0.0)
    ok = (scale > 0) & jnp.all(jnp.where(mask, diag[:nb] > rcond * scale, True))
    tri = jax.scipy.linalg.solve_triangular(jnp.where(ok, block, eye), rhs, lower=False)
    min_norm = jnp.linalg.lstsq(jnp.where(ok, eye, block), rhs, rcond=rcond)[0]
    w = jnp.where(mask, jnp.where(ok, tri, min_norm), 0.0)
    fitted = jnp.where(mask, rhs - block @ w, 0.0)
    below = jnp.where(jnp.arange(m) >= prefix, target, 0.0)
    return w, jnp.sum(fitted**2) + jnp.sum(below**2), ~ok


def nested_solves(r, num_basis: int, prefixes, *, rcond: float = RCOND):
  """`prefix_solve` for targets ``num_basis + j`` on prefixes ``prefixes[j]`` (Eq. 12's rows).

  Column layout of the factored matrix ``[A_basis (num_basis columns), Y (targets)]``:
  target j is regressed on the first ``prefixes[j]`` basis columns.

  Args:
    r: (m, m) upper-triangular float64 factor, m = num_basis + len(prefixes).
    num_basis: the number of basis columns.
    prefixes: static sequence of prefix lengths p_j (1 <= p_j <= num_basis).
    rcond: the rank threshold.

  Returns:
    weights (len(prefixes), num_basis) float64 (zero beyond each prefix), residuals
    (len(prefixes),) squared residual norms, deficient (len(prefixes),) bool.
  """
  with jax.enable_x64(True):
    return _nested_solves(r, num_basis, tuple(int(p) for p in prefixes), float(rcond))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _nested_solves(r, num_basis, prefixes, rcond):
  with jax.enable_x64(True):
    cols = jnp.asarray(num_basis + np.arange(len(prefixes)), jnp.int32)
    return jax.vmap(lambda p, c: prefix_solve(r, num_basis, p, c, rcond=rcond))(
        jnp.asarray(prefixes, jnp.int32), cols)


def ridge_solve(a, y, lam, scale, ref, num_rows, *, rcond: float = RCOND):
  """``argmin_w ||a w - y||^2 + lam * num_rows * sum_j scale_j (w_j - ref_j)^2`` (min-norm).

  Args:
    a: (rows, c) (usually stacked triangular factors); y: (rows,).
    lam: relative ridge strength (0: plain least squares).
    scale: (c,) per-column scale (mean square of each column).
    ref: (c,) the weights the ridge pulls towards.
    num_rows: the number of data rows the factors stand for.

  Returns:
    (c,) float64 weights (SVD least squares on the augmented system).
  """
  with jax.enable_x64(True):
    d = jnp.sqrt(lam * num_rows * scale)
    aa = jnp.concatenate([f64(a), jnp.diag(d)], axis=0)
    yy = jnp.concatenate([f64(y), d * f64(ref)], axis=0)
    return jnp.linalg.lstsq(aa, yy, rcond=rcond)[0]


def ridge_path_max(a, y, lams, scale, ref, num_rows, mask, *, rcond: float = RCOND):
  """The largest ``|w_j|`` (j in ``mask``) of `ridge_solve`'s weights at every strength in ``lams``.

  One SVD serves every strength: with ``D = diag(sqrt(num_rows * scale))`` and
  ``B = a D^-1 = U S V^T``, the weights are ``ref + D^-1 V diag(S / (S^2 + lam)) U^T (y - a ref)``
  (singular values below ``rcond * max(S)`` dropped, the minimum-norm convention of
  `ridge_solve` up to rounding). Used to screen strengths, not to fit.

  Args:
    a: (rows, c); y: (rows,); lams: (L,) relative strengths; scale, ref, mask: (c,);
    num_rows: the number of data rows the factors stand for.

  Returns:
    (L,) float64.
  """
  with jax.enable_x64(True):
    d = jnp.sqrt(num_rows * f64(scale))
    u, s, vt = jnp.linalg.svd(f64(a) / d, full_matrices=False)
    keep = s > rcond * jnp.max(s)
    proj = u.T @ (f64(y) - f64(a) @ f64(ref))
    lams = f64(lams)[:, None]
    filt = jnp.where(keep, s / jnp.where(keep, s**2 + lams, 1.0), 0.0)    # (L, k)
    ws = f64(ref) + (filt * proj) @ vt / d
    return jnp.max(jnp.where(mask, jnp.abs(ws), 0.0), axis=1)


def gram_sqrt(gram) -> jax.Array:
  """A square root R of a Gram matrix (``R^T R = G``) by eigendecomposition of its equilibrated form.

  Columns are scaled to unit norm (zero columns are kept exactly zero), the symmetric
  eigenproblem is solved (`jnp.linalg.eigh`), eigenvalues below ``m * eps`` of the largest
  (round-off of a singular Gram: repeated or dependent columns) are set to zero, and
  ``R = sqrt(Lambda) V^T diag(s)``. R is not triangular; every use of it is a projection in
  R-space, where ``||A w - A c|| = ||R w - R c||`` for every w and c. Backward stable: the
  step errors computed through it agree with tall least squares on the data to about
  ``eps * cond(A)^2`` relative (measured 6e-8 at cond(A) = 5e4, against 1e-6 required).

  Args:
    gram: (m, m) symmetric positive semidefinite.

  Returns:
    (m, m) float64 R.
  """
  with jax.enable_x64(True):
    g = f64(gram)
    m = g.shape[0]
    s = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    live = s > 0
    s_safe = jnp.where(live, s, 1.0)
    ge = g / s_safe[:, None] / s_safe[None, :]
    ge = jnp.where(live[:, None] & live[None, :], ge, 0.0)
    ge = 0.5 * (ge + ge.T)
    w, v = jnp.linalg.eigh(ge)
    w = jnp.where(w > m * jnp.finfo(jnp.float64).eps * jnp.max(w), w, 0.0)
    return (jnp.sqrt(w)[:, None] * v.T) * jnp.where(live, s, 0.0)[None, :]


GS_TOL = 1e-13  # a new column this much smaller after orthogonalisation is already in the span


def orthogonalize(q, v):
  """``v`` minus its projection on the orthonormal columns of q (classical Gram-Schmidt, twice)."""
  for _ in range(2):
    v = v - q @ (q.T @ v)
  return v


def extend_orthonormal(q, count, v):
  """Adds column v to the orthonormal basis held in the first ``count`` columns of q.

  Args:
    q: (M, c) float64, columns ``count..c-1`` zero.
    count: int32 scalar, the columns in use.
    v: (M,) the new column.

  Returns:
    (q, count): v's orthonormalised direction in column ``count`` and count + 1, or both
    unchanged when v is already in the span (repeated or zero outputs) or q is full.
  """
  with jax.enable_x64(True):
    q, v = f64(q), f64(v)
    norm0 = jnp.linalg.norm(v)
    u = orthogonalize(q, v)
    norm = jnp.linalg.norm(u)
    keep = (norm > GS_TOL * jnp.maximum(norm0, 1e-300)) & (count < q.shape[1])
    unit = u / jnp.where(keep, norm, 1.0)
    col = jnp.minimum(count, q.shape[1] - 1).astype(jnp.int32)
    new_q = jax.lax.dynamic_update_slice(q, unit[:, None], (jnp.int32(0), col))
    return jnp.where(keep, new_q, q), count + keep.astype(count.dtype)
