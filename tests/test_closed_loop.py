"""Closed-loop fit and search (issue 8): ground truth from closed-form Gaussian models."""
import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from olss_jax._src import closed_loop

# Named tolerances.
F64_WEIGHTS_ATOL = 1e-7     # float64 trajectories: the two fits' weights
F64_STATE_ATOL = 1e-9       # float64: predicted states / samples
F32_SAMPLE_ATOL = 2e-4      # float32 analytic models: samples of equivalent schedules
CRITERION_RTOL = 1e-6       # Gram-projection errors vs QR residuals (float64 both)

K_TEACHER = 100
ALPHAS = oj.scaled_linear_alphas_cumprod()


def _gaussian_eps64(mean, std, x, t):
  """Exact E[eps | x_t] for N(mean, std^2 I) data, in x's dtype (affine in x)."""
  ab = jnp.asarray(ALPHAS, x.dtype)[t]
  return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mean) / (ab * std**2 + 1 - ab)


def _linear_problem(num_noises=12, dim=6, seed=0):
  mean = jax.random.normal(jax.random.key(seed), (dim,), jnp.float64)
  den = jax.tree_util.Partial(_gaussian_eps64, mean, 0.3)
  x_T = jax.random.normal(jax.random.key(seed + 1), (num_noises, dim), jnp.float64)
  return den, oj.collect_trajectory(den, x_T, ALPHAS, K_TEACHER)


@pytest.mark.parametrize("num_steps", [1, 3, 5])
def test_closed_loop_equals_teacher_forced_for_a_linear_model(num_steps):
  # eps is affine in x_t: the closed-loop states are exact projections, so its basis is the
  # teacher's and both least-squares problems coincide.
  with jax.enable_x64(True):
    den, traj = _linear_problem()
    path = oj.uniform_path(traj, num_steps)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # rank-deficient basis: min-norm both
      paper = oj.fit_weights(traj, path)
      closed = oj.fit_weights(traj, path, denoise_fn=den, regularization=0.0)
      default = oj.fit_weights(traj, path, denoise_fn=den)
    assert paper.metadata["fit"] == "teacher_forced"
    assert closed.metadata["fit"] == "closed_loop"
    assert closed.metadata["fit_model_calls"] == num_steps
    chex.assert_trees_all_close(closed.weights, paper.weights, atol=F64_WEIGHTS_ATOL)
    np.testing.assert_array_equal(closed.timesteps, paper.timesteps)
    x_new = jax.random.normal(jax.random.key(7), (5, 6), jnp.float64)
    ref = oj.sample(den, paper, x_new)
    chex.assert_trees_all_close(oj.sample(den, closed, x_new), ref, atol=F64_STATE_ATOL)
    chex.assert_trees_all_close(oj.sample(den, default, x_new), ref, atol=F64_STATE_ATOL)
    teacher_final = oj.collect_trajectory(den, x_new, ALPHAS, K_TEACHER).states[-1]
    chex.assert_trees_all_close(ref, teacher_final, atol=1e-6)


@functools.lru_cache(maxsize=None)
def _mixture_problem(sample_shape=(8,), num_noises=16, seed=0, std=0.1):
  mix = oj.make_gaussian_mixture(jax.random.key(seed), 6, sample_shape, std=std)
  den = oj.mixture_denoiser(mix, ALPHAS)
  x_T = jax.random.normal(jax.random.key(seed + 1), (num_noises,) + sample_shape)
  return den, oj.collect_trajectory(den, x_T, ALPHAS, K_TEACHER)


def test_closed_loop_fit_reproduces_its_own_sampler_on_the_fitting_noises():
  # The fit's predicted states are what `sample` (jitted or not) computes with its weights.
  den, traj = _mixture_problem()
  path = oj.uniform_path(traj, 4)
  run = closed_loop.closed_loop_solve(traj, path, den)
  sched = oj.closed_loop_fit(traj, path, den)
  chex.assert_trees_all_close(sched.weights, run.weights)
  final, hist = oj.sample(den, sched, traj.x_T, return_history=True)
  final_jit, _ = jax.jit(oj.sample, static_argnames="return_history")(
      den, sched, traj.x_T, return_history=True)
  chex.assert_trees_all_close(hist, run.states, atol=F32_SAMPLE_ATOL)
  chex.assert_trees_all_close(final_jit, final, atol=F32_SAMPLE_ATOL)
  chex.assert_shape(run.states, (5,) + traj.x_T.shape)
  # Its fitting-set step errors are (weakly) below the teacher-forced fit's samples' error
  # at the final step, and finite.
  chex.assert_tree_all_finite(sched.weights)


@pytest.mark.parametrize("sample_shape,num_steps,seed", [((8,), 3, 0), ((2, 2, 2), 5, 2)])
def test_search_never_loses_to_uniform(sample_shape, num_steps, seed):
  den, traj = _mixture_problem(sample_shape, seed=seed)
  path, info = oj.search_path(traj, num_steps, denoise_fn=den, num_bisection_steps=8,
                              return_info=True)
  assert info.source in ("closed_loop_walk", "teacher_forced_walk", "uniform")
  assert isinstance(info, oj.ClosedLoopSearchInfo)
  assert info.max_error <= info.uniform_max_error
  assert path[0] == 0 and path.shape == (num_steps,) and np.all(np.diff(path) > 0)
  # Its criterion is the closed-loop least-squares residual: check against the QR fit.
  run = closed_loop.closed_loop_solve(traj, path, den, regularization=0.0)
  np.testing.assert_allclose(info.step_errors, run.step_errors, rtol=CRITERION_RTOL,
                             atol=1e-12)
  uniform = oj.uniform_path(traj, num_steps)
  run_u = closed_loop.closed_loop_solve(traj, uniform, den, regularization=0.0)
  assert np.max(info.step_errors) <= np.max(run_u.step_errors) * (1 + CRITERION_RTOL)
  # The paper's (teacher-forced) mode keeps the same guarantee by its own criterion.
  _, tf_info = oj.search_path(traj, num_steps, num_bisection_steps=8, return_info=True)
  assert tf_info.max_error <= tf_info.uniform_max_error


def test_search_without_uniform_fallback_reports_its_walk():
  den, traj = _mixture_problem()
  _, info = oj.closed_loop_search(traj, 3, den, num_bisection_steps=6,
                                  prefer_uniform_if_better=False, include_teacher_forced=False,
                                  return_info=True)
  assert not info.chose_uniform and info.source == "closed_loop_walk"
  assert info.num_walks >= 2 and info.num_model_calls >= 3
  np.testing.assert_allclose(info.max_error, np.max(info.step_errors))


def test_fit_olss_methods_record_how_they_were_made():
  den, traj = _mixture_problem()
  paper = oj.fit_olss(traj, 3, method="paper", uniform=True)
  closed = oj.fit_olss(traj, 3, denoise_fn=den)
  assert paper.metadata["fit"] == "teacher_forced"
  assert paper.metadata["path_search"] == "uniform"
  assert closed.metadata["fit"] == "closed_loop"
  assert closed.metadata["path_search"] == "closed_loop_search"
  chex.assert_shape(closed.weights, (3, 4))


def test_bad_arguments_are_named():
  den, traj = _mixture_problem()
  with pytest.raises(ValueError, match="regularization"):
    oj.closed_loop_fit(traj, [0, 50], den, regularization="lots")
  with pytest.raises(ValueError, match="regularization"):
    oj.closed_loop_fit(traj, [0, 50], den, regularization=-1.0)
  with pytest.raises(ValueError, match="method"):
    oj.fit_olss(traj, 3, denoise_fn=den, method="magic")
  with pytest.raises(ValueError, match="denoise_fn"):
    oj.fit_olss(traj, 3)
  with pytest.raises(TypeError, match="denoise_fn"):
    oj.closed_loop_fit(traj, [0, 50], "not a model")
  with pytest.raises(TypeError, match="fit_weights"):
    oj.fit_weights(traj, [0, 50], regularization=0.0)
  with pytest.raises(ValueError, match="path"):
    oj.fit_weights(traj, [1, 50], denoise_fn=den)


@pytest.mark.slow
def test_cv_ridge_generalises_where_plain_least_squares_blows_up():
  # The measured failure of the unregularised closed-loop fit: 20 steps on the sharp
  # 16-dim mixture (weights ~1e7). Held-out noises are disjoint from the fitting ones.
  mix = oj.make_gaussian_mixture(jax.random.key(0), 8, (16,), std=0.1)
  den = oj.mixture_denoiser(mix, ALPHAS)
  traj = oj.collect_trajectory(den, jax.random.normal(jax.random.key(1), (32, 16)), ALPHAS)
  x_eval = jax.random.normal(jax.random.key(2), (256, 16))
  ref = oj.collect_trajectory(den, x_eval, ALPHAS).states[-1]
  path = oj.uniform_path(traj, 20)
  cv = oj.closed_loop_fit(traj, path, den)
  rmse = float(jnp.sqrt(jnp.mean((oj.sample(den, cv, x_eval) - ref) ** 2)))
  ddim = oj.baseline_schedule("ddim", ALPHAS, 20)
  rmse_ddim = float(jnp.sqrt(jnp.mean((oj.sample(den, ddim, x_eval) - ref) ** 2)))
  assert rmse < 0.1 * rmse_ddim


def test_closed_loop_table_small_runs(capsys):
  import importlib.util
  import pathlib
  path = pathlib.Path(__file__).parents[1] / "olss_jax" / "benchmarks" / "closed_loop_table.py"
  spec = importlib.util.spec_from_file_location("closed_loop_table", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  rows = module.run(small=True)
  out = capsys.readouterr().out
  assert "| steps | method | RMSE |" in out
  methods = [r["method"] for r in rows]
  assert len(methods) == 6 and methods[0] == "DDIM"
  assert all(np.isfinite(r["rmse"]) for r in rows)
  # The closed-loop fit beats DDIM on held-out noises even in the tiny configuration.
  by = {r["method"]: r["rmse"] for r in rows}
  assert by["closed-loop, uniform"] < by["DDIM"]
