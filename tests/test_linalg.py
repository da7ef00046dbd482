"""olss_jax._src.linalg: float64 TSQR, nested solves, the Gram's square root, Gram-Schmidt, ridge."""
import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import linalg

LSTSQ_RTOL_F64 = 1e-10


def _factor(a):
  return np.asarray(linalg.pad_rows(linalg.qr_r(a), a.shape[1]))


def test_streamed_factor_equals_one_qr():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((500, 7))
  with jax.enable_x64(True):  # internals: the verbs open this scope themselves
    r = jnp.zeros((7, 7), jnp.float64)
    for start in range(0, 500, 64):
      r = linalg.stack_rows(r, a[start:start + 64])
  r = np.asarray(r)
  np.testing.assert_allclose(r.T @ r, a.T @ a, rtol=1e-12, atol=1e-10)
  assert np.all(np.tril(r, -1) == 0)


def test_nested_solves_equal_numpy_lstsq_on_every_prefix():
  rng = np.random.default_rng(1)
  basis = rng.standard_normal((300, 5))
  targets = rng.standard_normal((300, 4))
  r = _factor(np.concatenate([basis, targets], axis=1))
  prefixes = [2, 3, 4, 5]
  w, res, deficient = (np.asarray(v) for v in linalg.nested_solves(r, 5, prefixes))
  for j, p in enumerate(prefixes):
    want, *_ = np.linalg.lstsq(basis[:, :p], targets[:, j], rcond=None)
    np.testing.assert_allclose(w[j, :p], want, rtol=LSTSQ_RTOL_F64)
    assert np.all(w[j, p:] == 0)
    np.testing.assert_allclose(res[j], np.sum((basis[:, :p] @ want - targets[:, j]) ** 2),
                               rtol=1e-10)
  assert not deficient.any()


def test_rank_deficient_prefixes_get_the_pinv_solution_not_nan():
  rng = np.random.default_rng(2)
  basis = rng.standard_normal((200, 4))
  basis[:, 2] = basis[:, 1]          # repeated column
  basis[:, 3] = 0.0                  # zero column
  target = rng.standard_normal(200)
  r = _factor(np.concatenate([basis, target[:, None]], axis=1))
  for p, want_deficient in ((2, False), (3, True), (4, True)):
    w, res, deficient = linalg.prefix_solve(r, 4, p, 4)
    w = np.asarray(w)
    assert bool(deficient) == want_deficient
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w[:p], np.linalg.pinv(basis[:, :p]) @ target, rtol=1e-8,
                               atol=1e-10)
    resid = target - basis[:, :p] @ w[:p]
    np.testing.assert_allclose(float(res), resid @ resid, rtol=1e-9)


def test_prefix_solve_gradients_are_finite_on_deficient_input():
  rng = np.random.default_rng(3)
  basis = rng.standard_normal((50, 3))
  basis[:, 2] = basis[:, 1]
  with jax.enable_x64(True):
    a = jnp.asarray(np.concatenate([basis, rng.standard_normal((50, 1))], axis=1))
    grad = jax.grad(lambda m: jnp.sum(linalg.prefix_solve(linalg.qr_r(m), 3, 2, 3)[0]))(a)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_gram_sqrt_reproduces_the_gram_and_keeps_zero_columns_zero():
  rng = np.random.default_rng(4)
  a = rng.standard_normal((400, 6)) * np.array([1e3, 1.0, 1e-3, 1.0, 1.0, 1.0])
  a[:, 4] = 0.0
  a[:, 5] = a[:, 1]
  g = a.T @ a
  r = np.asarray(linalg.gram_sqrt(g))
  np.testing.assert_allclose(r.T @ r, g, rtol=0, atol=1e-12 * np.max(np.abs(g)))
  assert np.all(r[:, 4] == 0.0)
  # the repeated column adds no direction: Gram-Schmidt sees it as in the span
  q, count = linalg.extend_orthonormal(np.zeros((6, 3)), jnp.int32(0), r[:, 1])
  q, count = linalg.extend_orthonormal(q, count, r[:, 5])
  assert int(count) == 1


def test_extend_orthonormal_builds_an_orthonormal_basis_and_stops_when_full():
  rng = np.random.default_rng(5)
  q, count = np.zeros((10, 3)), jnp.int32(0)
  vs = rng.standard_normal((4, 10))
  for v in vs:
    q, count = linalg.extend_orthonormal(q, count, v)
  q = np.asarray(q)
  assert int(count) == 3
  np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-14)
  # span(q) = span of the first three vectors
  proj = q @ (q.T @ vs[:3].T)
  np.testing.assert_allclose(proj, vs[:3].T, atol=1e-12)


def test_ridge_solve_is_the_closed_form_ridge():
  rng = np.random.default_rng(6)
  a, y = rng.standard_normal((80, 4)), rng.standard_normal(80)
  scale, ref, lam = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4), 0.3
  w = np.asarray(linalg.ridge_solve(a, y, lam, scale, ref, 80))
  d = lam * 80 * np.diag(scale)
  want = np.linalg.solve(a.T @ a + d, a.T @ y + d @ ref)
  np.testing.assert_allclose(w, want, rtol=1e-10)
  np.testing.assert_allclose(np.asarray(linalg.ridge_solve(a, y, 0.0, scale, ref, 80)),
                             np.linalg.lstsq(a, y, rcond=None)[0], rtol=1e-10)


def test_ridge_path_max_screens_every_strength_with_one_svd():
  rng = np.random.default_rng(7)
  a, y = rng.standard_normal((60, 5)), rng.standard_normal(60)
  a[:, 4] = a[:, 3] + 1e-3 * rng.standard_normal(60)         # near-collinear: large weights
  scale, ref = rng.uniform(0.5, 2.0, 5), rng.standard_normal(5)
  lams = np.array([0.0, 1e-6, 1e-3, 1e-1])
  mask = np.array([True, True, True, True, False])
  got = np.asarray(linalg.ridge_path_max(a, y, lams, scale, ref, 60, mask))
  want = [np.max(np.abs(np.asarray(linalg.ridge_solve(a, y, lam, scale, ref, 60)))[mask])
          for lam in lams]
  np.testing.assert_allclose(got, want, rtol=1e-8)
  assert want[0] > 10 * want[-1]                                # the screen sees the blow-up
