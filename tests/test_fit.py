"""olss_jax.fit_weights: Eq. 12 by float64 QR against numpy, under jit, vmap and grad.

The regression's own pieces (factors, per-step solves, teacher states): tests/test_regression.py.
"""
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import least_squares_helpers
import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
LSTSQ_RTOL_F64 = 1e-8          # weights vs numpy.linalg.lstsq, well-conditioned data
RESIDUAL_RTOL_F64 = 1e-8       # residuals on ill-conditioned data (weights not unique there)
STATS_WEIGHT_ATOL_F64 = 1e-6   # the Gram route's weights (cond(A)^2) vs the direct QR
TEACHER_REPRO_RTOL_F32 = 1e-5  # a fit on every teacher step reproduces the float32 teacher
GRAD_RTOL_F64 = 1e-6           # autodiff through QR vs central differences



def _rows(traj, path):
  """The tall matrices of Eq. 12 in numpy float64: basis per row and teacher-state targets."""
  k = traj.num_teacher_steps
  x = np.asarray(traj.x_T, np.float64).reshape(-1)
  e = np.asarray(traj.model_outputs, np.float64).reshape(k, -1)
  coeffs = np.asarray(traj.state_coefficients())
  for i, m in enumerate(np.append(path[1:], k)):
    yield (np.stack([x] + [e[p] for p in path[: i + 1]], axis=1),
           coeffs[m, 0] * x + coeffs[m, 1:] @ e)


@pytest.mark.parametrize("correlated", [False, True])
def test_fit_equals_numpy_lstsq(correlated):
  traj = least_squares_helpers.synthetic(3, correlated=correlated)
  path = np.array([0, 3, 7, 12, 16], np.int32)
  schedule, info = oj.fit_weights(traj, path)
  np.testing.assert_array_equal(schedule.timesteps, np.asarray(traj.timesteps)[path])
  for i, (a, y) in enumerate(_rows(traj, path)):
    w, *_ = np.linalg.lstsq(a, y, rcond=None)
    got = schedule.weights[i, : i + 2]
    assert np.all(schedule.weights[i, i + 2:] == 0)
    resid_got, resid_ref = np.sum((a @ got - y) ** 2), np.sum((a @ w - y) ** 2)
    if not correlated:
      np.testing.assert_allclose(got, w, rtol=LSTSQ_RTOL_F64)
    # On ill-conditioned data the weights are not unique to 1e-8, the residual is.
    np.testing.assert_allclose(resid_got, resid_ref, rtol=RESIDUAL_RTOL_F64)
    np.testing.assert_allclose(info.step_errors[i], resid_ref / a.shape[0], rtol=RESIDUAL_RTOL_F64)
  assert not np.any(info.rank_deficient)
  assert schedule.metadata["fit"] == "teacher_forced" and schedule.metadata["num_fit_images"] == 8


def test_fit_on_statistics_equals_the_direct_fit():
  traj = least_squares_helpers.synthetic(4, k=30, correlated=True)
  path = np.array([0, 5, 11, 20, 27], np.int32)
  direct, d_info = oj.fit_weights(traj, path)
  stats, s_info = oj.fit_weights(oj.trajectory_stats(traj), path)
  chex.assert_trees_all_close(stats.weights, direct.weights, atol=STATS_WEIGHT_ATOL_F64)
  np.testing.assert_allclose(s_info.step_errors, d_info.step_errors, rtol=1e-6)


def test_full_path_reproduces_the_teacher_and_its_weights_are_ddim():
  f = oj.analytic.mixture_denoiser(oj.analytic.make_gaussian_mixture(jax.random.key(0), 8, (16,)),
                                   ALPHAS)
  traj = oj.collect_trajectory(f, jax.random.normal(jax.random.key(1), (64, 16)), ALPHAS, 50)
  schedule, _ = oj.fit_weights(traj, np.arange(50))
  final = oj.sample(f, schedule, traj.x_T)
  ref = traj.states[-1]
  rel = float(jnp.linalg.norm(final - ref) / jnp.linalg.norm(ref))
  assert rel < TEACHER_REPRO_RTOL_F32, rel
  ddim = oj.baselines.ddim_schedule(ALPHAS, traj.timesteps)
  np.testing.assert_allclose(schedule.weights, ddim.weights, atol=1e-6)


def test_fit_lowers_the_teacher_forced_error_of_ddim_on_its_path():
  """Least squares can only lower the (teacher-forced) error of any linear scheduler."""
  f = oj.analytic.mixture_denoiser(oj.analytic.make_gaussian_mixture(jax.random.key(0), 8, (16,)),
                                   ALPHAS)
  traj = oj.collect_trajectory(f, jax.random.normal(jax.random.key(1), (32, 16)), ALPHAS, 200)
  rng = np.random.default_rng(0)
  for n in (3, 5, 10):
    path = np.concatenate([[0], np.sort(rng.choice(np.arange(1, 200), n - 1, replace=False))])
    _, info = oj.fit_weights(traj, path.astype(np.int32))
    ddim_w = np.asarray(traj.teacher.path_weights(path))
    e_ddim = np.asarray([np.mean((a @ ddim_w[i, : i + 2] - y) ** 2)
                         for i, (a, y) in enumerate(_rows(traj, path))])
    assert np.all(info.step_errors <= e_ddim * (1 + 1e-9))
    assert info.step_errors[-1] < 0.5 * e_ddim[-1]  # and the gap is real


def test_fit_under_jit_and_vmap_over_paths_equals_single_fits():
  traj = least_squares_helpers.synthetic(5)
  paths = jnp.asarray([[0, 3, 7, 12], [0, 2, 9, 15], [0, 1, 2, 3]], jnp.int32)
  singles = [oj.fit_weights(traj, p)[0].weights for p in np.asarray(paths)]
  jitted = jax.jit(oj.fit_weights)(traj, paths[0])[0].weights
  batched = jax.vmap(oj.fit_weights, in_axes=(None, 0))(traj, paths)[0].weights
  chex.assert_shape(batched, (3, 4, 5))
  chex.assert_trees_all_close(jitted, singles[0], rtol=1e-12, atol=1e-12)
  for i, w in enumerate(singles):
    chex.assert_trees_all_close(batched[i], w, rtol=1e-10, atol=1e-12)
  # statistics work the same way
  stats = oj.trajectory_stats(traj)
  batched_stats = jax.vmap(oj.fit_weights, in_axes=(None, 0))(stats, paths)[0].weights
  chex.assert_trees_all_close(batched_stats, batched, atol=STATS_WEIGHT_ATOL_F64)


def test_grad_of_the_weights_wrt_the_model_outputs_matches_finite_differences():
  with jax.enable_x64(True):
    traj = least_squares_helpers.synthetic(6, k=12, b=3, d=5, dtype=np.float64)
    path = jnp.asarray([0, 4, 9], jnp.int32)
    probe = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)))

    def loss(outputs):
      schedule, _ = oj.fit_weights(traj.replace(model_outputs=outputs), path)
      return jnp.sum(probe * schedule.weights)

    outputs = jnp.asarray(traj.model_outputs)
    grad = jax.grad(loss)(outputs)
    chex.assert_tree_all_finite(grad)
    rng = np.random.default_rng(1)
    h = 1e-6
    for _ in range(6):
      idx = tuple(int(rng.integers(0, s)) for s in outputs.shape)
      bump = jnp.zeros_like(outputs).at[idx].set(h)
      fd = (loss(outputs + bump) - loss(outputs - bump)) / (2 * h)
      np.testing.assert_allclose(grad[idx], fd, rtol=GRAD_RTOL_F64, atol=1e-9)
    # the first two rows (targets: states 4 and 9) never read the outputs from step 9 on
    early = jax.grad(lambda o: jnp.sum(probe[:2] * oj.fit_weights(
        traj.replace(model_outputs=o), path)[0].weights[:2]))(outputs)
    early = np.asarray(early)
    assert np.max(np.abs(early[9:])) <= 1e-12 * np.max(np.abs(early)), np.max(np.abs(early[9:]))
    assert np.max(np.abs(early[:9])) > 0


def test_rank_deficient_basis_gets_the_minimum_norm_weights_and_a_warning():
  traj = least_squares_helpers.synthetic(5)
  outputs = np.asarray(traj.model_outputs).copy()
  outputs[4] = outputs[2]   # a repeated model output
  outputs[6] = 0.0          # a zero model output
  traj = traj.replace(model_outputs=outputs)
  path = np.array([0, 2, 4, 6, 9], np.int32)
  with pytest.warns(RuntimeWarning, match="rank deficient"):
    schedule, info = oj.fit_weights(traj, path)
  np.testing.assert_array_equal(info.rank_deficient, [False, False, True, True, True])
  for i, (a, y) in enumerate(_rows(traj, path)):
    np.testing.assert_allclose(schedule.weights[i, : i + 2], np.linalg.pinv(a) @ y,
                               rtol=1e-7, atol=1e-9)


def test_bad_inputs_name_the_argument():
  traj = least_squares_helpers.synthetic(8)
  with pytest.raises(ValueError, match="path"):
    oj.fit_weights(traj, np.array([1, 2, 3]))
  with pytest.raises(ValueError, match="path"):
    oj.fit_weights(traj, np.array([0, 5, 5]))
  with pytest.raises(ValueError, match="path"):
    oj.fit_weights(traj, np.array([0, 20]))
  with pytest.raises(TypeError, match="path"):
    oj.fit_weights(traj, np.array([0.0, 1.0]))
  with pytest.raises(TypeError, match="traj"):
    oj.fit_weights("not a trajectory", np.array([0]))
  bad = np.asarray(traj.model_outputs).copy()
  bad[3, 1, 0] = np.nan
  with pytest.raises(ValueError, match="step 3, sample 1"):
    oj.fit_weights(traj.replace(model_outputs=bad), np.array([0, 5]))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a clean fit warns about nothing
    oj.fit_weights(traj, np.array([0, 5]))


def test_under_jit_a_path_check_path_refuses_gives_nan_weights():
  traj = least_squares_helpers.synthetic(3, k=100)
  fit_jit = jax.jit(oj.fit_weights)
  for bad in ([0, 20, 10], [0, 50, 500], [3, 20, 50]):     # decreasing, past K, not from 0
    with pytest.raises(ValueError, match="path"):
      oj.fit_weights(traj, np.array(bad))
    schedule, info = fit_jit(traj, jnp.array(bad))
    assert bool(jnp.all(jnp.isnan(schedule.weights))), bad
    assert bool(jnp.all(jnp.isnan(info.step_errors))), bad
  schedule, info = fit_jit(traj, jnp.array([0, 20, 50]))
  assert bool(jnp.all(jnp.isfinite(schedule.weights)))
  eager, _ = oj.fit_weights(traj, np.array([0, 20, 50]))
  chex.assert_trees_all_close(schedule.weights, eager.weights, rtol=LSTSQ_RTOL_F64,
                              atol=LSTSQ_RTOL_F64)
  batched, _ = jax.vmap(oj.fit_weights, in_axes=(None, 0))(traj, jnp.array([[0, 20, 50],
                                                                            [0, 20, 10]]))
  assert bool(jnp.all(jnp.isfinite(batched.weights[0])))
  assert bool(jnp.all(jnp.isnan(batched.weights[1])))
  assert "Checked under jit" in oj.fit_weights.__doc__
