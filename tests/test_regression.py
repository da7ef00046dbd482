"""regression (Eq. 12's per-step least squares): the triangular factors, the per-step solves and
the exact teacher states, against numpy float64 on the tall matrix ``A = [x_T, e_0..e_{K-1}]``.

`olss_jax.fit_weights` / `path_errors` are the public face of this module (tests/test_fit.py);
here its pieces are checked on their own, eagerly and under `jax.jit`.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import least_squares_helpers
import olss_jax as oj
from olss_jax._src import regression
from olss_jax._src import search
from olss_jax._src import stats as stats_lib

ALPHAS = oj.scaled_linear_alphas_cumprod()
LSTSQ_RTOL_F64 = 1e-8       # weights vs numpy.linalg.lstsq, well-conditioned data
PINV_RTOL_F64 = 1e-7        # minimum-norm weights vs numpy.linalg.pinv (a rank-deficient basis)
PINV_ATOL_F64 = 1e-9
STATES_RTOL_F64 = 1e-12     # the same float64 recurrence in another order
GRAM_RTOL_F64 = 1e-9        # R^T R of a float64 QR vs A^T A (rounding of the factorisation)
# Gram-based step errors vs the direct float64 tall least squares (issue 6's requirement).
ERROR_RTOL_F64 = 1e-6



def _tall(traj):
  """A = [x_T, e_0, ..., e_{K-1}] in numpy float64, (B * D, K + 1)."""
  k = traj.num_teacher_steps
  x = np.asarray(traj.x_T, np.float64).reshape(-1)
  e = np.asarray(traj.model_outputs, np.float64).reshape(k, -1)
  return np.concatenate([x[:, None], e.T], axis=1)


def _states(traj):
  """Every teacher state by the recurrence states[k + 1] = a_k states[k] + b_k e_k (float64)."""
  a, b = (np.asarray(v, np.float64) for v in traj.step_coefficients())
  x = np.asarray(traj.x_T, np.float64).reshape(-1)
  e = np.asarray(traj.model_outputs, np.float64).reshape(traj.num_teacher_steps, -1)
  out = [x]
  for k in range(traj.num_teacher_steps):
    out.append(a[k] * out[-1] + b[k] * e[k])
  return np.stack(out)                                                # (K + 1, B * D)


def test_regression_path_targets_are_the_next_path_states_then_the_final_one():
  np.testing.assert_array_equal(regression.path_targets(jnp.asarray([0, 3, 7]), 10), [3, 7, 10])
  np.testing.assert_array_equal(regression.path_targets(jnp.asarray([0]), 5), [5])
  got = jax.jit(regression.path_targets, static_argnums=1)(jnp.asarray([0, 2], jnp.int32), 4)
  np.testing.assert_array_equal(got, [2, 4])
  assert got.dtype == jnp.int32


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("on_stats", [False, True])
def test_regression_solve_path_equals_numpy_lstsq_per_step(jit, on_stats):
  with jax.enable_x64(True):  # float64 data stays float64 on its way into jit
    traj = least_squares_helpers.synthetic(11, k=16, b=4, d=16, dtype=np.float64)
    path = jnp.asarray([0, 2, 5, 9, 14], jnp.int32)
    data = oj.trajectory_stats(traj) if on_stats else traj
    solve = jax.jit(regression.solve_path) if jit else regression.solve_path
    weights, errors, deficient = (np.asarray(v) for v in solve(data, path))
  a, states = _tall(traj), _states(traj)
  targets = np.append(np.asarray(path)[1:], traj.num_teacher_steps)
  assert weights.shape == (5, 6) and weights.dtype == np.float64
  for i, target in enumerate(targets):
    basis = a[:, np.concatenate([[0], np.asarray(path)[: i + 1] + 1])]
    want, *_ = np.linalg.lstsq(basis, states[target], rcond=None)
    np.testing.assert_allclose(weights[i, : i + 2], want, rtol=LSTSQ_RTOL_F64)
    assert np.all(weights[i, i + 2:] == 0)
    resid = states[target] - basis @ want
    np.testing.assert_allclose(errors[i], resid @ resid / a.shape[0], rtol=LSTSQ_RTOL_F64)
  assert not deficient.any()


def test_regression_rank_deficient_basis_gets_the_minimum_norm_solution():
  traj = least_squares_helpers.synthetic(12, k=12, b=3, d=8)
  outputs = np.asarray(traj.model_outputs).copy()
  outputs[3] = outputs[1]   # a repeated model output
  outputs[5] = 0.0          # a zero model output
  traj = traj.replace(model_outputs=outputs)
  path = jnp.asarray([0, 1, 3, 5, 8], jnp.int32)
  weights, errors, deficient = (np.asarray(v) for v in regression.solve_path(traj, path))
  np.testing.assert_array_equal(deficient, [False, False, True, True, True])
  assert np.all(np.isfinite(weights)) and np.all(np.isfinite(errors))
  a, states = _tall(traj), _states(traj)
  for i, target in enumerate(np.append(np.asarray(path)[1:], traj.num_teacher_steps)):
    basis = a[:, np.concatenate([[0], np.asarray(path)[: i + 1] + 1])]
    np.testing.assert_allclose(weights[i, : i + 2], np.linalg.pinv(basis) @ states[target],
                               rtol=PINV_RTOL_F64, atol=PINV_ATOL_F64)


@pytest.mark.parametrize("on_stats", [False, True])
def test_regression_full_factor_is_an_r_of_every_column(on_stats):
  traj = least_squares_helpers.synthetic(13, k=10, b=4, d=8)
  data = oj.trajectory_stats(traj) if on_stats else traj
  r = np.asarray(regression.full_factor(data))
  a = _tall(traj)
  assert r.shape == (11, 11) and r.dtype == np.float64
  if not on_stats:  # a Householder QR of the rows (statistics: any square root of the Gram)
    assert np.all(np.tril(r, -1) == 0)
  gram = a.T @ a
  np.testing.assert_allclose(r.T @ r, gram, rtol=GRAM_RTOL_F64,
                             atol=GRAM_RTOL_F64 * np.max(np.abs(gram)))
  assert regression.qr_flops(traj) == 2.0 * a.shape[0] * a.shape[1] ** 2


@pytest.mark.parametrize("jit", [False, True])
def test_regression_teacher_states_and_state_norms_replay_the_teacher(jit):
  traj = least_squares_helpers.synthetic(14, k=9, b=3, d=5)
  want = _states(traj)
  indices = jnp.asarray([0, 4, 9], jnp.int32)
  states_fn = jax.jit(regression.teacher_states) if jit else regression.teacher_states
  norms_fn = jax.jit(regression.state_norms) if jit else regression.state_norms
  got = np.asarray(states_fn(traj, indices))
  assert got.shape == (3, 15) and got.dtype == np.float64
  np.testing.assert_allclose(got, want[[0, 4, 9]], rtol=STATES_RTOL_F64, atol=1e-14)
  np.testing.assert_allclose(np.asarray(norms_fn(traj)), np.sum(want**2, axis=1),
                             rtol=STATES_RTOL_F64)


def test_path_factor_of_statistics_and_images_agree():
  traj = least_squares_helpers.synthetic(7, k=25)
  path = jnp.asarray([0, 6, 13, 21], jnp.int32)
  r_img = np.asarray(regression.path_factor(traj, path))
  r_stats = np.asarray(regression.path_factor(oj.trajectory_stats(traj), path))
  # both are R factors of the same matrix: equal Grams
  np.testing.assert_allclose(r_img.T @ r_img, r_stats.T @ r_stats, rtol=1e-9,
                             atol=1e-9 * np.max(np.abs(r_img.T @ r_img)))


@pytest.fixture(scope="module")
def correlated():
  """Strongly correlated outputs (cond(A) ~ 5e4): the hard case for a Gram."""
  return least_squares_helpers.correlated_problem()



def test_large_trajectory_is_searched_through_its_gram(correlated, monkeypatch):
  traj, a, states = correlated
  assert regression.qr_flops(traj) == 2.0 * a.shape[0] * a.shape[1] ** 2
  calls = []
  original = stats_lib.trajectory_stats
  monkeypatch.setattr(stats_lib, "trajectory_stats",
                      lambda t, **kw: calls.append(t) or original(t, **kw))
  by_qr = search.projection(traj)
  assert not calls  # this small trajectory is under the limit: Householder QR
  monkeypatch.setattr(regression, "QR_FLOPS_LIMIT", regression.qr_flops(traj) - 1)
  path, info = search.search_path(traj, 6)
  assert len(calls) == 1 and calls[0] is traj  # over the limit: the Gram, computed once
  want = np.asarray(search.projection_path_errors(by_qr, jnp.asarray(path)))
  chex.assert_trees_all_close(info.step_errors, want, rtol=ERROR_RTOL_F64)
  for i, target in enumerate(np.append(path[1:], traj.num_teacher_steps)):
    direct, _ = least_squares_helpers.direct_error(a, states, path[:i + 1], int(target))
    np.testing.assert_allclose(info.step_errors[i], direct, rtol=ERROR_RTOL_F64)
  np.testing.assert_array_equal(path, search.search_path(original(traj), 6)[0])
