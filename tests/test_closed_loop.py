"""olss_jax._src.closed_loop: Eq. 12 and Algorithms 1-3 on the sampler's own states, in pure JAX."""
import importlib.util
import pathlib
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing
from olss_jax._src import closed_loop

ALPHAS = oj.scaled_linear_alphas_cumprod()
F64_WEIGHTS_ATOL = 1e-7     # float64 trajectories: the two fits' weights
F64_STATE_ATOL = 1e-9       # float64: predicted states / samples
F32_SAMPLE_ATOL = 2e-4      # float32 analytic models: samples of equivalent schedules
CRITERION_RTOL = 1e-6       # the search's Gram-projection errors vs QR residuals (float64 both)


@pytest.mark.parametrize("num_steps", [1, 3, 5])
def test_closed_loop_equals_teacher_forced_for_a_linear_model(num_steps):
  # eps is affine in x_t: the closed-loop states are exact projections, so its basis is the
  # teacher's and both least-squares problems coincide.
  with jax.enable_x64(True):
    den, traj = testing.gaussian_problem()
    path = oj.uniform_path(traj, num_steps)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # rank-deficient basis: min-norm both
      paper, _ = oj.fit_weights(traj, path)
      closed, info = oj.closed_loop_fit(traj, path, den, regularization=0.0)
      default, _ = oj.closed_loop_fit(traj, path, den)
    assert paper.metadata["fit"] == "teacher_forced"
    assert closed.metadata["fit"] == "closed_loop" and int(info.num_model_calls) == num_steps
    chex.assert_trees_all_close(closed.weights, paper.weights, atol=F64_WEIGHTS_ATOL)
    np.testing.assert_array_equal(closed.timesteps, paper.timesteps)
    x_new = jax.random.normal(jax.random.key(7), (5, 6), jnp.float64)
    ref = oj.sample(den, paper, x_new)
    chex.assert_trees_all_close(oj.sample(den, closed, x_new), ref, atol=F64_STATE_ATOL)
    chex.assert_trees_all_close(oj.sample(den, default, x_new), ref, atol=F64_STATE_ATOL)
    teacher_final = oj.collect_trajectory(den, x_new, ALPHAS, 100).states[-1]
    chex.assert_trees_all_close(ref, teacher_final, atol=1e-6)


def test_closed_loop_fit_reproduces_its_own_sampler_eagerly_and_under_jit():
  den, traj = testing.mixture_problem()
  path = oj.uniform_path(traj, 4)
  sched, info = oj.closed_loop_fit(traj, path, den)
  states = oj.sample_states(den, sched, traj.x_T)
  chex.assert_trees_all_close(states, info.states, atol=F32_SAMPLE_ATOL)
  chex.assert_shape(info.states, (5,) + traj.x_T.shape)
  j_sched, j_info = jax.jit(oj.closed_loop_fit)(traj, jnp.asarray(path), den)
  chex.assert_trees_all_close(j_sched.weights, sched.weights, rtol=1e-9, atol=1e-9)
  np.testing.assert_array_equal(np.asarray(j_info.ridge), info.ridge)
  chex.assert_tree_all_finite(sched.weights)


@pytest.mark.parametrize("sample_shape,num_steps,seed", [((8,), 3, 0), ((2, 2, 2), 5, 2)])
def test_search_never_loses_to_uniform_by_its_criterion(sample_shape, num_steps, seed):
  den, traj = testing.mixture_problem(sample_shape, seed=seed)
  path, info = oj.closed_loop_search(traj, num_steps, den, num_bisection_steps=8)
  assert info.source_name in closed_loop.SOURCES
  assert float(info.max_error) <= float(info.uniform_max_error)
  assert path[0] == 0 and path.shape == (num_steps,) and np.all(np.diff(path) > 0)
  # Its criterion is the closed-loop least-squares residual: check against the QR fit.
  _, fit_info = oj.closed_loop_fit(traj, path, den, regularization=0.0)
  np.testing.assert_allclose(info.step_errors, fit_info.step_errors, rtol=CRITERION_RTOL,
                             atol=1e-12)
  _, uniform_info = oj.closed_loop_fit(traj, oj.uniform_path(traj, num_steps), den,
                                       regularization=0.0)
  np.testing.assert_allclose(float(info.uniform_max_error), np.max(uniform_info.step_errors),
                             rtol=CRITERION_RTOL)


def test_search_shares_model_calls_between_walks_and_reports_its_walk():
  den, traj = testing.mixture_problem()
  path, info = oj.closed_loop_search(traj, 3, den, num_bisection_steps=6,
                                     prefer_uniform_if_better=False, include_teacher_forced=False)
  assert not bool(info.chose_uniform) and info.source_name == "closed_loop_walk"
  walks, calls = int(info.num_walks), int(info.num_model_calls)
  assert walks == 8
  # the root, then two extensions per walk (distinct bounds give distinct prefixes here)
  assert calls == 1 + walks * 2, calls
  np.testing.assert_allclose(float(info.max_error), np.max(info.step_errors))
  # with the teacher-forced and uniform candidates, prefixes repeat: the cache shares them
  n = 10
  _, full = oj.closed_loop_search(traj, n, den, num_bisection_steps=8)
  unshared = 1 + (int(full.num_walks) + 2) * (n - 1)
  assert int(full.num_model_calls) < 0.8 * unshared, (int(full.num_model_calls), unshared)
  jpath, jinfo = jax.jit(oj.closed_loop_search, static_argnums=(1,),
                         static_argnames=("num_bisection_steps", "prefer_uniform_if_better",
                                          "include_teacher_forced"))(
      traj, 3, den, num_bisection_steps=6, prefer_uniform_if_better=False,
      include_teacher_forced=False)
  np.testing.assert_array_equal(np.asarray(jpath), path)
  assert int(jinfo.num_model_calls) == calls


def test_cv_ridge_generalises_where_plain_least_squares_blows_up():
  """20 steps on the sharp 16-dim mixture (200-step teacher, 32 fitting noises): plain
  closed-loop least squares finds huge cancelling weights (1e4) that fail on held-out noises
  (RMSE 2.5, 16x worse than DDIM); the cross-validated ridge is 8x better than DDIM."""
  mix = oj.analytic.make_gaussian_mixture(jax.random.key(0), 8, (16,), std=0.1)
  den = oj.analytic.mixture_denoiser(mix, ALPHAS)
  traj = oj.collect_trajectory(den, jax.random.normal(jax.random.key(1), (32, 16)), ALPHAS, 200)
  x_eval = jax.random.normal(jax.random.key(2), (128, 16))
  ref = oj.collect_trajectory(den, x_eval, ALPHAS, 200).states[-1]
  path = oj.uniform_path(traj, 20)

  def rmse(schedule):
    return float(jnp.sqrt(jnp.mean((oj.sample(den, schedule, x_eval) - ref) ** 2)))

  cv, info = oj.closed_loop_fit(traj, path, den)
  plain, _ = oj.closed_loop_fit(traj, path, den, regularization=0.0)
  ddim = oj.Schedule(np.asarray(traj.timesteps)[path], np.asarray(traj.teacher.path_weights(path)))
  r_cv, r_plain, r_ddim = rmse(cv), rmse(plain), rmse(ddim)
  assert np.max(np.abs(plain.weights)) > 1e3 > np.max(np.abs(cv.weights))
  assert r_cv < r_ddim / 5 and r_plain > 10 * r_ddim, (r_cv, r_plain, r_ddim)
  assert np.any(info.ridge > 0)  # the ridge did the work


def test_bad_arguments_are_named():
  den, traj = testing.mixture_problem()
  with pytest.raises(ValueError, match="regularization"):
    oj.closed_loop_fit(traj, [0, 50], den, regularization="lots")
  with pytest.raises(ValueError, match="regularization"):
    oj.closed_loop_fit(traj, [0, 50], den, regularization=-1.0)
  with pytest.raises(TypeError, match="denoise_fn"):
    oj.closed_loop_fit(traj, [0, 50], "not a model")
  with pytest.raises(ValueError, match="path"):
    oj.closed_loop_fit(traj, [1, 50], den)
  with pytest.raises(TypeError, match="traj"):
    oj.closed_loop_fit(oj.trajectory_stats(traj), [0, 50], den)
  with pytest.raises(ValueError, match="num_steps"):
    oj.closed_loop_search(traj, 0, den)
  with pytest.raises(ValueError, match="num_bisection_steps"):
    oj.closed_loop_search(traj, 3, den, num_bisection_steps=-2)


def test_closed_loop_table_small_runs(capsys):
  path = pathlib.Path(__file__).parents[1] / "olss_jax" / "benchmarks" / "closed_loop_table.py"
  spec = importlib.util.spec_from_file_location("closed_loop_table", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # The methods asserted below (the benchmark's other methods have their own test files).
  rows = module.run(small=True, only=("ddim", "olss-p", "olss-p-cl", "gits-dpm_solver_pp",
                                      "tuned-unipc", "olss-ft"))
  out = capsys.readouterr().out
  assert "| method | 3 steps |" in out and "fit model calls" in out
  by = {r["method"]: r["rmse"] for r in rows}
  assert list(by)[0] == "ddim" and {"gits-dpm_solver_pp", "tuned-unipc", "olss-ft"} <= set(by)
  assert all(np.isfinite(v) for v in by.values())
  # even in the tiny configuration (50-step teacher, 8 fitting noises, 3 steps) the
  # closed-loop fit is ahead of DDIM (measured 0.77x) and of the paper's fit (0.53x)
  assert by["olss-p-cl"] < 0.85 * by["ddim"], by
  assert by["olss-p-cl"] < 0.6 * by["olss-p"], by
  calls = {r["method"]: r["fit_model_calls"] for r in rows}
  assert calls["ddim"] == 0 and 0 < calls["tuned-unipc"] <= 20 * 3 and calls["olss-p-cl"] == 3


