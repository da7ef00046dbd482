"""olss_jax.peers.ds_solver_schedule (peers/ds_solver.py): DS-Solver's parametrisation, its
Euler start, its training."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

F64_ATOL = 1e-12          # float64: the same weights written two ways
F32_SAMPLE_ATOL = 2e-5    # float32 samples of the same solver


@functools.lru_cache(maxsize=None)
def _problem(num_noises: int = 16, k: int = 100):
  mix = oj.analytic.make_gaussian_mixture(jax.random.key(0), 6, (8,), std=0.1)
  den = oj.analytic.flow_mixture_denoiser(mix)
  x_T = jax.random.normal(jax.random.key(1), (num_noises, 8))
  return den, oj.collect_trajectory(den, x_T, oj.flow_teacher(k))


@pytest.mark.parametrize("jit", [True, False])
def test_the_start_is_flow_euler_on_its_timesteps(jit):
  den, traj = _problem()
  param, params0, start = oj.peers.ds_solver_parametrisation(traj.teacher, 6)
  assert sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params0)) == 21
  for n, count in ((8, 36), (10, 55)):
    _, p, _ = oj.peers.ds_solver_parametrisation(traj.teacher, n)
    assert sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(p)) == count
  times = np.asarray(start.timesteps)
  np.testing.assert_allclose(times, 1000.0 * (1 - np.arange(6) / 6), rtol=1e-6)
  euler = oj.baseline_schedule("euler", traj.teacher, timesteps=times)
  chex.assert_trees_all_close(start.weights, euler.weights, atol=F64_ATOL)
  build = jax.jit(param.build) if jit else param.build
  t32, w32 = build(params0, {})
  chex.assert_trees_all_close(t32, times, rtol=1e-6)
  chex.assert_trees_all_close(oj.sample(den, oj.Schedule(t32, w32), traj.x_T),
                              oj.sample(den, euler, traj.x_T), atol=F32_SAMPLE_ATOL)


def test_the_coefficients_of_each_step_sum_to_one():
  """The (1 - sum_j c_ij) constraint: any c integrates a constant velocity exactly, and each
  step's velocity weights sum to one."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    n = 5
    dt = -np.diff(np.append(np.sort(rng.uniform(0.05, 1.0, n))[::-1], 0.0))
    c = rng.normal(size=(n, n))
    w = np.asarray(oj.peers.ds_solver_weights(jnp.asarray(dt), jnp.asarray(c)))
    np.testing.assert_array_equal(w[:, 0], 1.0)
    assert np.all(np.triu(w, 2) == 0)          # row i sees x_T and e_0..e_i only
    steps = np.diff(np.vstack([np.zeros(n), w[:, 1:]]), axis=0)     # dt_i * (row i of C)
    np.testing.assert_allclose(steps.sum(axis=1), dt, atol=F64_ATOL)
    np.testing.assert_allclose(w[:, 1:].sum(axis=1), np.cumsum(dt), atol=F64_ATOL)
    # the strictly upper part of c is ignored
    w2 = oj.peers.ds_solver_weights(jnp.asarray(dt), jnp.asarray(np.tril(c, -1)))
    np.testing.assert_allclose(w2, w, atol=F64_ATOL)


def test_ds_solver_lowers_the_error_on_fresh_noises_and_records_its_cost():
  """10 steps from flow Euler on the flow mixture: 16 fitting noises (seed 1), 64 fresh ones
  (seed 7). Measured: RMSE 0.0862 -> 0.0428; asserted 1.5x."""
  den, traj = _problem()
  sched, info = oj.peers.ds_solver_schedule(traj, 10, den, num_iters=150, patience=None)
  meta = sched.metadata
  assert meta["peer"] == "ds-solver" and meta["teacher"] == "flow"
  assert meta["fit_model_calls"] == info.num_model_calls > 0 and meta["fit_seconds"] > 0
  assert not info.kept_start and info.holdout_error < info.start_holdout_error
  t = np.asarray(sched.timesteps)
  assert t[0] == 1000.0 and np.all(np.diff(t) < 0) and t[-1] > 0.0
  np.testing.assert_array_equal(np.asarray(sched.weights)[:, 0], 1.0)
  _, _, start = oj.peers.ds_solver_parametrisation(traj.teacher, 10)
  x = jax.random.normal(jax.random.key(7), (64, 8))
  ref = np.asarray(oj.collect_trajectory(den, x, traj.teacher).states[-1])
  rmse = lambda s: float(oj.compare.per_sample_rmse(oj.sample(den, s, x), ref).mean())  # noqa: E731
  assert rmse(sched) * 1.5 < rmse(start), (rmse(sched), rmse(start))


def test_ds_solver_is_for_flow_models_only():
  mix = oj.analytic.make_gaussian_mixture(jax.random.key(0), 3, (4,), std=0.1)
  alphas = oj.scaled_linear_alphas_cumprod()
  den = oj.analytic.mixture_denoiser(mix, alphas)
  traj = oj.collect_trajectory(den, jax.random.normal(jax.random.key(1), (8, 4)),
                               oj.ddim_teacher(alphas, 50))
  with pytest.raises(ValueError, match="flow"):
    oj.peers.ds_solver_schedule(traj, 4, den)
  assert "ds-solver" not in oj.compare.default_methods(kind="ddim")
  assert "ds-solver" in oj.compare.default_methods(kind="flow")
  vp_model = oj.compare.analytic_comparison_model(dim=4)
  ctx = oj.compare.FitContext(traj=traj, denoise_fn=den, model=vp_model)
  peer = oj.compare.default_methods(baselines=[], peers=["ds-solver"], kind="ddim")["ds-solver"]
  with pytest.raises(ValueError, match="flow"):      # asked for by name on a VP model
    peer(ctx, 4)
  with pytest.raises(ValueError, match="time_scale"):
    oj.peers.ds_solver_parametrisation(oj.flow_teacher(10), 3, time_scale=-1.0)
