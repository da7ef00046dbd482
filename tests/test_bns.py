"""olss_jax.peers.bns_schedule / bns_init (peers/bns.py): BNS's parametrisation, its Euler
and midpoint starts, its training."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
F64_WEIGHTS_ATOL = 1e-12   # the same float64 solver written two ways
F64_BUILD_ATOL = 1e-9      # the parametrisation at its start (times through the logits)
F32_SAMPLE_ATOL = 2e-5     # float32 samples of the same solver


@functools.lru_cache(maxsize=None)
def _problem(flow: bool, num_noises: int = 16, k: int = 100):
  mix = oj.analytic.make_gaussian_mixture(jax.random.key(0), 6, (8,), std=0.1)
  if flow:
    den, teacher = oj.analytic.flow_mixture_denoiser(mix), oj.flow_teacher(k)
  else:
    den, teacher = oj.analytic.mixture_denoiser(mix, ALPHAS), oj.ddim_teacher(ALPHAS, k)
  x_T = jax.random.normal(jax.random.key(1), (num_noises, 8))
  return den, oj.collect_trajectory(den, x_T, teacher)


def _euler(teacher, times, flow):
  if flow:
    return oj.baseline_schedule("euler", teacher, timesteps=times)
  return oj.baselines.ddim_schedule(ALPHAS, times)


@pytest.mark.parametrize("flow", [False, True])
def test_bns_initialised_from_euler_reproduces_euler_exactly(flow):
  den, traj = _problem(flow)
  teacher = traj.teacher
  param, params0, data, start = oj.peers.bns_parametrisation(teacher, 5, init="euler",
                                                             alphas_cumprod=ALPHAS)
  times = np.asarray(start.timesteps)
  assert times.dtype == np.float32 and times[0] == teacher.timesteps[0]
  assert np.all(np.diff(times) < 0)
  euler = _euler(teacher, times, flow)
  chex.assert_trees_all_close(start.weights, euler.weights, atol=F64_WEIGHTS_ATOL)
  # the parametrisation at its start: float32, through `build`, samples as Euler does
  t32, w32 = param.build(params0, data)
  chex.assert_trees_all_close(t32, times, rtol=1e-6)
  chex.assert_trees_all_close(oj.sample(den, oj.Schedule(t32, w32), traj.x_T),
                              oj.sample(den, euler, traj.x_T), atol=F32_SAMPLE_ATOL)
  with jax.enable_x64(True):
    _, p64, d64, _ = oj.peers.bns_parametrisation(teacher, 5, init="euler", alphas_cumprod=ALPHAS,
                                                  dtype=jnp.float64)
    t64, w64 = jax.jit(param.build)(p64, d64)
    chex.assert_trees_all_close(w64, euler.weights, atol=F64_BUILD_ATOL)
    chex.assert_trees_all_close(t64, times.astype(np.float64), rtol=1e-12)


@pytest.mark.parametrize("num_steps", [5, 6])
def test_the_midpoint_start_is_the_rk2_midpoint_loop_on_a_flow(num_steps):
  den, traj = _problem(True)
  _, _, _, start = oj.peers.bns_parametrisation(traj.teacher, num_steps, init="midpoint")
  t = np.asarray(start.timesteps)
  s = np.append(t / np.float32(1000.0), 0.0).astype(np.float64)
  x = traj.x_T
  for i in range(0, num_steps - 1, 2):       # midpoint steps: half with u(x), full with u(half)
    v = den(x, t[i])
    half = x + (s[i + 1] - s[i]) * v
    x = x + (s[i + 2] - s[i]) * den(half, t[i + 1])
  if num_steps % 2:                           # the last step Euler
    x = x + (s[-1] - s[-2]) * den(x, t[-1])
  chex.assert_trees_all_close(oj.sample(den, start, traj.x_T), x, atol=F32_SAMPLE_ATOL)
  np.testing.assert_allclose(np.diff(s[:num_steps - num_steps % 2]),
                             np.diff(s)[0], rtol=1e-4)    # uniform in flow time


def test_bns_lowers_the_error_on_fresh_noises_and_records_its_cost():
  """BNS from midpoint, 5 steps, on the flow mixture: 16 fitting noises (seed 1), 64 fresh
  ones (seed 7). Measured: RMSE 0.114 -> 0.0387; asserted 1.5x."""
  den, traj = _problem(True)
  sched, info = oj.peers.bns_schedule(traj, 5, den, num_iters=150, patience=None)
  meta = sched.metadata
  assert meta["peer"] == "bns" and meta["bns_init"] == "midpoint" and meta["bns_loss"] == "log_mse"
  assert meta["fit_model_calls"] == info.num_model_calls > 0 and meta["fit_seconds"] > 0
  assert not info.kept_start and info.holdout_error < info.start_holdout_error
  t = np.asarray(sched.timesteps)
  assert t[0] == traj.timesteps[0] and np.all(np.diff(t) < 0) and t[-1] > traj.timesteps[-1]
  assert np.all(np.triu(np.asarray(sched.weights), 2) == 0)
  _, _, _, start = oj.peers.bns_parametrisation(traj.teacher, 5)
  x = jax.random.normal(jax.random.key(7), (64, 8))
  ref = np.asarray(oj.collect_trajectory(den, x, traj.teacher).states[-1])
  rmse = lambda s: float(oj.compare.per_sample_rmse(oj.sample(den, s, x), ref).mean())  # noqa: E731
  assert rmse(sched) * 1.5 < rmse(start), (rmse(sched), rmse(start))


@pytest.mark.slow
def test_bns_jit_and_eager_agree_on_a_vp_model():
  """Slow (about 30 s: the gradient through the sampler op by op): the engine's jit and eager
  updates agree in tests/test_learned.py (`test_jit_and_eager_agree_and_the_update_is_traced_once`);
  this repeats the check through BNS's parametrisation."""
  den, traj = _problem(False)
  kw = dict(alphas_cumprod=ALPHAS, num_iters=1, learning_rate=1e-3, patience=None)
  _, a = oj.peers.bns_schedule(traj, 3, den, jit=True, **kw)
  _, b = oj.peers.bns_schedule(traj, 3, den, jit=False, **kw)
  np.testing.assert_allclose(a.train_losses, b.train_losses, rtol=1e-4)
  np.testing.assert_allclose(a.holdout_errors, b.holdout_errors, rtol=1e-4)


def test_bns_is_registered_and_rejects_bad_arguments_by_name():
  den, traj = _problem(False)
  assert "bns" in oj.compare.default_methods(kind="ddim")
  assert "bns" in oj.compare.default_methods(kind="flow")
  with pytest.raises(ValueError, match="init"):
    oj.peers.bns_init(traj.teacher, 4, init="rk4", alphas_cumprod=ALPHAS)
  with pytest.raises(ValueError, match="num_steps"):
    oj.peers.bns_init(traj.teacher, 1, init="midpoint", alphas_cumprod=ALPHAS)
  with pytest.raises(ValueError, match="alphas_cumprod"):
    oj.peers.bns_init(traj.teacher, 4)           # a 100-step VP teacher does not carry the table
  with pytest.raises(ValueError, match="loss"):
    oj.peers.bns_schedule(traj, 3, den, alphas_cumprod=ALPHAS, loss="psnr")
