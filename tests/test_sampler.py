"""olss_jax._src.sampler: the one n-step sampler (Eq. 12 at inference) against a plain loop."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
SAMPLER_RTOL = {jnp.float32: 1e-5, jnp.float64: 1e-12}


def _model(seed=0):
  return oj.analytic.mixture_denoiser(
      oj.analytic.make_gaussian_mixture(jax.random.key(seed), 8, (16,)), ALPHAS)


def _noise(seed, batch):
  return jax.random.normal(jax.random.key(seed), (batch, 16))


def _python_loop_sample(f, schedule, x_T):
  outputs, x = [], x_T
  w = np.asarray(schedule.weights)
  for i, t in enumerate(np.asarray(schedule.timesteps)):
    outputs.append(f(x, jnp.asarray(t)))
    x = w[i, 0] * x_T + sum(w[i, j + 1] * outputs[j] for j in range(i + 1))
  return x


def _fitted(n=5):
  f = _model()
  traj = oj.collect_trajectory(f, _noise(1, 32), ALPHAS, 200)
  return oj.fit_weights(traj, oj.uniform_path(traj, n))[0]


def test_sample_equals_a_python_loop_jit_and_vmap_with_one_trace_per_step_count():
  f = _model()
  x_T = _noise(2, 16)
  s1 = oj.baselines.ddim_schedule(ALPHAS, oj.baselines.ddim_timesteps(5))
  s2 = _fitted(5)
  ref = _python_loop_sample(f, s1, x_T)
  eager = oj.sample(f, s1, x_T)
  chex.assert_trees_all_close(eager, ref, rtol=SAMPLER_RTOL[jnp.float32], atol=1e-5)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jitted(denoise_fn, schedule, x):
    return oj.sample(denoise_fn, schedule, x)

  chex.clear_trace_counter()
  out1 = jitted(f, s1, x_T)
  out2 = jitted(f, s2, x_T)  # another schedule of the same n: no retrace
  chex.assert_trees_all_close(out1, eager, rtol=SAMPLER_RTOL[jnp.float32], atol=1e-5)
  eager2 = oj.sample(f, s2, x_T)
  scale = float(jnp.max(jnp.abs(eager2)))
  chex.assert_trees_all_close(out2, eager2, rtol=0, atol=1e-3 * scale)
  # Model parameters are traced: a different mixture reuses the compiled sampler too.
  out3 = jitted(_model(seed=5), s1, x_T)
  assert not np.allclose(np.asarray(out3), np.asarray(out1))
  per_sample = jax.vmap(lambda x: oj.sample(f, s1, x[None])[0])(x_T)
  chex.assert_trees_all_close(per_sample, eager, rtol=1e-5, atol=1e-5)
  plain = lambda x, t: f(x, t)  # noqa: E731
  chex.assert_trees_all_close(jax.jit(oj.sample, static_argnums=0)(plain, s1, x_T), eager,
                              rtol=1e-5, atol=1e-5)


def test_sample_in_float64_equals_the_loop_for_a_large_weight_schedule():
  schedule = _fitted(5)
  with jax.enable_x64(True):
    f = _model()
    x_T = jax.random.normal(jax.random.key(2), (4, 16), jnp.float64)
    out = oj.sample(f, schedule, x_T)
    assert out.dtype == jnp.float64
    chex.assert_trees_all_close(out, _python_loop_sample(f, schedule, x_T),
                                rtol=SAMPLER_RTOL[jnp.float64], atol=1e-10)
    chex.assert_trees_all_close(jax.jit(oj.sample)(f, schedule, x_T), out, rtol=1e-10,
                                atol=1e-10)


def test_sample_states_is_the_path_and_ends_at_the_sample():
  f = _model()
  x_T = _noise(3, 4)
  schedule = oj.baselines.ddim_schedule(ALPHAS, oj.baselines.ddim_timesteps(4))
  states = oj.sample_states(f, schedule, x_T)
  chex.assert_shape(states, (5, 4, 16))
  np.testing.assert_array_equal(np.asarray(states[0]), np.asarray(x_T))
  chex.assert_trees_all_close(states[-1], oj.sample(f, schedule, x_T), rtol=0, atol=0)
  # DDIM's states are DDIM's recurrence
  ts = np.asarray(schedule.timesteps)
  levels = np.append(ALPHAS[ts], 1.0)
  x = x_T
  for i, t in enumerate(ts):
    e = f(x, jnp.int32(t))
    x0 = (x - np.sqrt(1 - levels[i]) * e) / np.sqrt(levels[i])
    x = np.sqrt(levels[i + 1]) * x0 + np.sqrt(1 - levels[i + 1]) * e
    chex.assert_trees_all_close(states[i + 1], x, rtol=1e-5, atol=1e-5)


def test_float_timesteps_reach_the_model_as_floats_and_are_differentiable():
  seen = []

  def model(x, t):
    seen.append(t.dtype)
    return jnp.sin(t / 100.0) * x

  schedule = oj.make_schedule(np.array([900.5, 400.25], np.float32),
                              np.array([[1.0, 0.5, 0.0], [1.0, 0.2, 0.3]]))
  assert schedule.timesteps.dtype == np.float32
  x_T = _noise(4, 2)
  oj.sample(model, schedule, x_T)
  assert seen and all(d == jnp.float32 for d in seen)

  def loss(ts):
    return jnp.sum(oj.sample(model, schedule.replace(timesteps=ts), x_T) ** 2)

  ts = jnp.asarray(schedule.timesteps)
  grad = jax.jit(jax.grad(loss))(ts)
  h = 1e-2
  fd = [(loss(ts.at[i].add(h)) - loss(ts.at[i].add(-h))) / (2 * h) for i in range(2)]
  np.testing.assert_allclose(grad, fd, rtol=1e-2)


def test_bad_schedules_are_refused():
  f = _model()
  x_T = _noise(0, 2)
  upper = oj.Schedule(np.array([5], np.int32), np.array([[1.0, 2.0]]))
  oj.sample(f, upper, x_T)  # (1, 2): nothing above the diagonal
  with pytest.raises(ValueError, match="above the diagonal"):
    oj.sample(f, oj.Schedule(np.array([5, 3], np.int32), np.ones((2, 3))), x_T)
  with pytest.raises(ValueError, match="non-finite"):
    oj.sample(f, oj.Schedule(np.array([5], np.int32), np.array([[1.0, np.nan]])), x_T)
  with pytest.raises(TypeError, match="schedule"):
    oj.sample(f, {"timesteps": [1]}, x_T)
  with pytest.raises(ValueError, match="weights"):
    oj.sample(f, oj.Schedule(np.array([5, 3], np.int32), np.ones((2, 2))), x_T)
