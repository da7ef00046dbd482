"""The Frechet distance (frechet.py) through its public name, ``oj.digits.frechet_distance``.

``d = ||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 sqrt(Sa Sb))`` with the sample means and the unbiased
(N - 1) covariances, in float64. Ground truth from sample sets built to have an exact mean and
covariance: diagonal covariances give ``sum (sqrt(a_i) - sqrt(b_i))^2``; a common rotation
changes nothing; non-commuting covariances ``P^2`` and ``R^2`` give ``Tr sqrt(Sa Sb) = ||P R||_*``
(the nuclear norm) and, in 2-D, ``sqrt(Tr(Sa Sb) + 2 sqrt(det Sa det Sb))``.
"""
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

# float64 throughout (measured: at most 2e-14 relative to the closed forms, 50 random cases)
F64_RTOL = 1e-10
# scipy's general sqrtm of the non-symmetric Sa Sb is the less accurate of the two
SCIPY_SQRTM_RTOL = 1e-8

frechet_distance = oj.digits.frechet_distance


def white(rng, n, f):
  """(n, f) samples whose sample mean is 0 and whose unbiased covariance is I (to round-off)."""
  z = rng.standard_normal((n, f))
  z -= z.mean(0)
  w, v = np.linalg.eigh(np.cov(z, rowvar=False))
  return z @ v @ np.diag(w ** -0.5) @ v.T


def sqrt_spd(s):
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(w)) @ v.T


def random_spd(rng, f):
  a = rng.standard_normal((f, f))
  return a @ a.T + 0.5 * np.eye(f)


def exact_set(rng, mean, cov, n):
  """n samples with exactly this sample mean and unbiased covariance (cov symmetric PD)."""
  return mean + white(rng, n, len(mean)) @ sqrt_spd(cov)


def assert_close(got, expected, rtol=F64_RTOL):
  assert isinstance(got, float), type(got)
  np.testing.assert_allclose(got, expected, rtol=rtol, atol=0)


def test_diagonal_covariances_give_the_closed_form():
  rng = np.random.default_rng(1)
  mu_a, var_a = np.array([0.0, 1.0, 2.0, -1.0]), np.array([1.0, 2.0, 0.5, 3.0])
  mu_b, var_b = np.array([0.5, 1.0, 0.0, 0.0]), np.array([4.0, 2.0, 1.0, 0.1])
  a = exact_set(rng, mu_a, np.diag(var_a), 64)
  b = exact_set(rng, mu_b, np.diag(var_b), 50)        # another sample count
  expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  assert_close(frechet_distance(a, b), expected)


def test_one_feature_is_the_squared_gaps_of_means_and_standard_deviations():
  rng = np.random.default_rng(2)
  a = rng.normal(1.0, 2.0, (5, 1))
  b = rng.normal(-0.5, 0.3, (9, 1))
  expected = ((a.mean() - b.mean()) ** 2
              + (np.std(a, ddof=1) - np.std(b, ddof=1)) ** 2)   # unbiased, N - 1
  assert_close(frechet_distance(a, b), expected)


def test_a_common_rotation_changes_nothing():
  """Rotated by one orthogonal Q, the covariances are no longer diagonal (they still commute)."""
  rng = np.random.default_rng(3)
  f = 5
  mu_a, mu_b = rng.standard_normal(f), rng.standard_normal(f)
  var_a, var_b = rng.uniform(0.1, 4.0, f), rng.uniform(0.1, 4.0, f)
  a = exact_set(rng, mu_a, np.diag(var_a), 40)
  b = exact_set(rng, mu_b, np.diag(var_b), 30)
  q, _ = np.linalg.qr(rng.standard_normal((f, f)))
  rotated_a, rotated_b = a @ q.T, b @ q.T
  assert np.abs(np.cov(rotated_a, rowvar=False) - np.diag(var_a)).max() > 0.1
  expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  assert_close(frechet_distance(rotated_a, rotated_b), expected)
  assert_close(frechet_distance(rotated_a, rotated_b), frechet_distance(a, b))


def test_non_commuting_covariances_in_two_dimensions_give_the_closed_form():
  """2-D: sqrt(Sa Sb) has eigenvalues l1, l2 >= 0 with l1 l2 = sqrt(det Sa det Sb), so
  Tr sqrt(Sa Sb) = sqrt(l1^2 + l2^2 + 2 l1 l2) = sqrt(Tr(Sa Sb) + 2 sqrt(det Sa det Sb))."""
  rng = np.random.default_rng(4)
  for _ in range(5):
    sa, sb = random_spd(rng, 2), random_spd(rng, 2)
    assert np.abs(sa @ sb - sb @ sa).max() > 1e-3                 # they do not commute
    mu_a, mu_b = rng.standard_normal(2), rng.standard_normal(2)
    a, b = exact_set(rng, mu_a, sa, 30), exact_set(rng, mu_b, sb, 45)
    tr_sqrt = np.sqrt(np.trace(sa @ sb) + 2.0 * np.sqrt(np.linalg.det(sa) * np.linalg.det(sb)))
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sa) + np.trace(sb) - 2.0 * tr_sqrt
    assert_close(frechet_distance(a, b), expected)


def test_non_commuting_covariances_give_the_nuclear_norm_form():
  """Sa = P^2, Sb = R^2 (P, R symmetric PD): sqrt(Sa) Sb sqrt(Sa) = (P R)(P R)^T, so
  Tr sqrt(Sa Sb) is the sum of the singular values of P R."""
  rng = np.random.default_rng(5)
  f = 6
  p, r = sqrt_spd(random_spd(rng, f)), sqrt_spd(random_spd(rng, f))
  sa, sb = p @ p, r @ r
  assert np.abs(sa @ sb - sb @ sa).max() > 1e-3
  mu_a, mu_b = rng.standard_normal(f), rng.standard_normal(f)
  a, b = exact_set(rng, mu_a, sa, 80), exact_set(rng, mu_b, sb, 70)
  expected = (np.sum((mu_a - mu_b) ** 2) + np.trace(sa) + np.trace(sb)
              - 2.0 * np.linalg.norm(p @ r, "nuc"))
  assert_close(frechet_distance(a, b), expected)


def test_matches_scipy_sqrtm():
  scipy_linalg = pytest.importorskip("scipy.linalg")
  rng = np.random.default_rng(6)
  f = 6
  a = rng.standard_normal((200, f)) @ rng.standard_normal((f, f))
  b = rng.standard_normal((150, f)) @ rng.standard_normal((f, f)) + 0.3
  sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  expected = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa) + np.trace(sb)
              - 2.0 * np.trace(scipy_linalg.sqrtm(sa @ sb).real))
  assert_close(frechet_distance(a, b), expected, rtol=SCIPY_SQRTM_RTOL)


def test_equal_statistics_give_zero():
  rng = np.random.default_rng(7)
  f = 4
  cov, mean = random_spd(rng, f), rng.standard_normal(f)
  a = exact_set(rng, mean, cov, 40)
  scale = np.trace(cov)
  assert abs(frechet_distance(a, a)) <= F64_RTOL * scale
  # other samples, another count, the same mean and covariance: still 0
  assert abs(frechet_distance(a, exact_set(rng, mean, cov, 25))) <= F64_RTOL * scale
  # the same samples in another order
  assert abs(frechet_distance(a, a[rng.permutation(len(a))])) <= F64_RTOL * scale


def test_symmetric_non_negative_and_exact_under_shifts_and_scaling():
  rng = np.random.default_rng(8)
  f = 5
  a = rng.standard_normal((60, f)) @ rng.standard_normal((f, f))
  b = rng.standard_normal((45, f)) @ rng.standard_normal((f, f)) + 0.7
  d = frechet_distance(a, b)
  assert d > 0.0
  assert_close(frechet_distance(b, a), d)
  # one shift of both sets: unchanged; a shift of one set moves only the mean term
  v = rng.standard_normal(f)
  assert_close(frechet_distance(a + v, b + v), d)
  gap = a.mean(0) - b.mean(0)
  assert_close(frechet_distance(a + v, b), d - gap @ gap + (gap + v) @ (gap + v))
  # scaling both sets by c scales every term by c^2
  assert_close(frechet_distance(3.0 * a, 3.0 * b), 9.0 * d)


def test_any_array_input_is_computed_in_float64():
  rng = np.random.default_rng(9)
  a = rng.normal(1.0, 2.0, (20, 1)).astype(np.float32)
  b = rng.normal(0.0, 0.5, (15, 1)).astype(np.float32)
  a64, b64 = a.astype(np.float64), b.astype(np.float64)      # the same values, exactly
  expected = ((a64.mean() - b64.mean()) ** 2
              + (np.std(a64, ddof=1) - np.std(b64, ddof=1)) ** 2)
  for x, y in ((a, b), (jnp.asarray(a), jnp.asarray(b)), (a.tolist(), b.tolist())):
    assert_close(frechet_distance(x, y), expected)            # float32 arithmetic: ~1e-7 off


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (1, 3), (0, 3), (5, 0)])
def test_a_set_not_n_by_f_with_n_at_least_2_raises_value_error_naming_it(shape):
  good = np.zeros((5, shape[-1] if len(shape) == 2 and shape[-1] else 3))
  with pytest.raises(ValueError, match=r"^features_a: expected shape \(N, F\) with N >= 2"):
    frechet_distance(np.zeros(shape), good)
  with pytest.raises(ValueError, match=r"^features_b: expected shape \(N, F\) with N >= 2"):
    frechet_distance(good, np.zeros(shape))


def test_different_feature_counts_raise_value_error_naming_features_b():
  with pytest.raises(ValueError, match="^features_b: expected 3 features like features_a, got 4"):
    frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_raise_value_error_naming_the_set(bad):
  broken = np.zeros((4, 2))
  broken[2, 1] = bad
  with pytest.raises(ValueError, match="^features_a: contains non-finite values"):
    frechet_distance(broken, np.zeros((5, 2)))
  with pytest.raises(ValueError, match="^features_b: contains non-finite values"):
    frechet_distance(np.ones((5, 2)), broken)
