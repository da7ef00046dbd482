"""olss_jax.sample: the one n-step sampler (Eq. 12 at inference) against a plain loop."""
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


# --- the sampler checks that a schedule fits the model (issue 26) ------------------------------

FLOW = oj.flow_teacher(20)
VP = oj.ddim_teacher(ALPHAS, 20)


def _identity(x, t):
  del t
  return x


def test_a_schedule_for_other_samples_is_refused_eagerly_and_under_jit():
  f = _model()
  x_T = _noise(0, 2)                                      # (2, 16)
  two_d = _fitted(3).with_metadata(sample_shape=[2])      # fitted on 2-D data
  with pytest.raises(ValueError, match="sample shape"):
    oj.sample(f, two_d, x_T)
  with pytest.raises(ValueError, match="sample shape"):
    jax.jit(oj.sample)(f, two_d, x_T)
  digits_x = jnp.zeros((2, 1, 8, 8))                      # the digits model's samples
  with pytest.raises(ValueError, match=r"sample shape \(1, 8, 8\)"):
    oj.sample(_identity, two_d, digits_x)
  # a spatial size alone may change (a convolutional model runs at any resolution)
  latent = two_d.with_metadata(sample_shape=[4, 8, 8])
  chex.assert_shape(oj.sample(_identity, latent, jnp.zeros((2, 4, 16, 16))), (2, 4, 16, 16))


def test_a_schedule_of_another_kind_is_refused_with_the_teacher():
  f = _model()
  x_T = _noise(0, 2)
  vp_schedule = oj.baseline_schedule("dpm_solver_pp", ALPHAS, 4)
  flow_schedule = oj.baseline_schedule("dpm_solver_pp", FLOW, 4)
  with pytest.raises(ValueError, match="'ddim' teacher .* used with a 'flow' teacher"):
    oj.sample(f, vp_schedule, x_T, teacher=FLOW)
  with pytest.raises(ValueError, match="'flow' teacher .* used with a 'ddim' teacher"):
    oj.sample(f, flow_schedule, x_T, teacher=VP)
  with pytest.raises(ValueError, match="'flow' teacher"):      # at trace time under jit
    jax.jit(oj.sample)(f, flow_schedule, x_T, teacher=VP)
  fitted_vp = _fitted(3)                                        # metadata["teacher"] == "ddim"
  with pytest.raises(ValueError, match="used with a 'flow' teacher"):
    oj.sample(f, fitted_vp, x_T, teacher=FLOW)
  with pytest.raises(TypeError, match="teacher"):
    oj.sample(f, fitted_vp, x_T, teacher="ddim")
  # the right kind runs: flow Euler calls the model at t = T s, up to T itself
  flow_euler = oj.baseline_schedule("euler", FLOW, 4)
  assert float(np.max(flow_euler.timesteps)) == 1000.0
  out = oj.sample(_identity, flow_euler, x_T, teacher=FLOW)
  assert bool(jnp.all(jnp.isfinite(out)))
  chex.assert_trees_all_close(oj.sample(f, vp_schedule, x_T, teacher=VP),
                              oj.sample(f, vp_schedule, x_T), rtol=0, atol=0)


def test_the_checks_keep_one_compiled_sampler_per_step_count():
  f = _model()
  x_T = _noise(2, 4)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jitted(denoise_fn, schedule, x):
    return oj.sample(denoise_fn, schedule, x, teacher=VP)

  chex.clear_trace_counter()
  jitted(f, oj.baseline_schedule("ddim", ALPHAS, 4), x_T)
  jitted(f, _fitted(4), x_T)                          # other metadata, same n: no retrace
  jitted(f, oj.baseline_schedule("unipc", ALPHAS, 4), x_T)


def test_under_jit_values_that_cannot_raise_give_nan():
  f = _model()
  x_T = _noise(0, 2)
  upper = oj.Schedule(np.array([5, 3], np.int32), np.ones((2, 3)))   # above the diagonal
  with pytest.raises(ValueError, match="above the diagonal"):
    oj.sample(f, upper, x_T)
  assert bool(jnp.all(jnp.isnan(jax.jit(oj.sample)(f, upper, x_T))))
  assert bool(jnp.all(jnp.isnan(jax.jit(oj.sample_states)(f, upper, x_T))))
  late = oj.make_schedule(np.array([5000, 10]), np.tril(np.ones((2, 3)), 1))  # T = 1000
  with pytest.raises(ValueError, match="< 1000"):
    oj.sample(f, late, x_T, teacher=VP)
  with pytest.raises(ValueError, match="< 1000"):          # the schedule's own record of T
    oj.sample(f, late.with_metadata(num_train_timesteps=1000), x_T)
  assert bool(jnp.all(jnp.isnan(jax.jit(oj.sample)(f, late, x_T, teacher=VP))))
  good = oj.baseline_schedule("ddim", ALPHAS, 2)
  assert bool(jnp.all(jnp.isfinite(jax.jit(oj.sample)(f, good, x_T, teacher=VP))))


def test_nan_in_x_T_is_refused():
  f = _model()
  x_T = np.asarray(_noise(0, 3)).copy()
  x_T[1, 4] = np.nan
  with pytest.raises(ValueError, match="x_T: non-finite .*sample 1"):
    oj.sample(f, oj.baseline_schedule("ddim", ALPHAS, 2), x_T)
  with pytest.raises(TypeError, match="x_T: expected a float dtype"):
    oj.sample(f, oj.baseline_schedule("ddim", ALPHAS, 2), np.zeros((2, 16), np.int32))


def test_plain_functions_jit_as_a_static_argument_and_the_docstring_says_so():
  f = _model()
  plain = lambda x, t: f(x, t)  # noqa: E731
  schedule = oj.baseline_schedule("ddim", ALPHAS, 3)
  x_T = _noise(1, 2)
  chex.assert_trees_all_close(jax.jit(oj.sample, static_argnums=0)(plain, schedule, x_T),
                              oj.sample(plain, schedule, x_T), rtol=1e-6, atol=1e-6)
  partial = jax.tree_util.Partial(plain)
  chex.assert_trees_all_close(jax.jit(oj.sample)(partial, schedule, x_T),
                              oj.sample(plain, schedule, x_T), rtol=1e-6, atol=1e-6)
  assert "static_argnums=0" in oj.sample.__doc__ and "Partial" in oj.sample.__doc__
  assert "Under `jax.jit`" in oj.sample.__doc__      # what is checked under jit


def test_a_model_built_for_another_batch_fails_in_one_line_naming_denoise_fn():
  labels = jnp.arange(4)
  model = jax.tree_util.Partial(lambda lab, x, t: x * lab[:, None].astype(x.dtype), labels)
  with pytest.raises((ValueError, TypeError), match=r"^denoise_fn: failed on x_t of shape "
                     r"\(8, 16\)") as info:
    oj.sample(model, oj.baseline_schedule("ddim", ALPHAS, 2), _noise(0, 8))
  assert "\n" not in str(info.value)
