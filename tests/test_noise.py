"""noise.py: noise schedules, diffusers' DDIM timesteps and alpha_bar at continuous t."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()


def test_schedules_equal_diffusers():
  from diffusers import DDIMScheduler  # pylint: disable=import-outside-toplevel
  for schedule, ours in (("scaled_linear", ALPHAS), ("linear", oj.linear_alphas_cumprod())):
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    ref = DDIMScheduler(beta_schedule=schedule, **kw).alphas_cumprod.double().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6)  # diffusers computes in float32


def test_ddim_timesteps_are_diffusers_leading():
  from diffusers import DDIMScheduler  # pylint: disable=import-outside-toplevel
  for n, offset in ((1000, 0), (50, 1), (7, 0)):
    sched = DDIMScheduler(steps_offset=offset)
    sched.set_timesteps(n)
    np.testing.assert_array_equal(oj.baselines.ddim_timesteps(n, steps_offset=offset),
                                  sched.timesteps)


def test_alpha_bar_at_integer_and_continuous_times():
  with jax.enable_x64(True):
    table = jnp.asarray(ALPHAS)
    ints = jnp.arange(0, 1000, 37)
    np.testing.assert_array_equal(oj.baselines.alpha_bar_at(table, ints), ALPHAS[np.asarray(ints)])
    # float t on the integers: the table exactly
    np.testing.assert_array_equal(oj.baselines.alpha_bar_at(table, ints.astype(jnp.float64)),
                                  ALPHAS[np.asarray(ints)])
    # between: log sigma linear in t (the inverse of diffusers' _sigma_to_t)
    t = 412.3
    log_sigma = 0.5 * (np.log1p(-ALPHAS) - np.log(ALPHAS))
    ls = 0.7 * log_sigma[412] + 0.3 * log_sigma[413]
    np.testing.assert_allclose(float(oj.baselines.alpha_bar_at(table, jnp.float64(t))),
                               1.0 / (1.0 + np.exp(2 * ls)), rtol=1e-13)
    # monotone and differentiable in t
    grad = jax.grad(lambda s: oj.baselines.alpha_bar_at(table, s))(jnp.float64(500.5))
    assert float(grad) < 0
    # on the integers too (learned timesteps start there): the next segment's slope, not 0
    at_int = jax.grad(lambda s: oj.baselines.alpha_bar_at(table, s))(jnp.float64(500.0))
    just_after = jax.grad(lambda s: oj.baselines.alpha_bar_at(table, s))(jnp.float64(500.0 + 1e-7))
    np.testing.assert_allclose(float(at_int), float(just_after), rtol=1e-5)


def test_bad_schedules_and_counts():
  with pytest.raises(ValueError, match="alphas_cumprod"):
    oj.validation.check_alphas_cumprod(ALPHAS[::-1])
  with pytest.raises(ValueError, match="alphas_cumprod"):
    oj.validation.check_alphas_cumprod(np.append(ALPHAS, 0.0))
  with pytest.raises(TypeError, match="alphas_cumprod"):
    oj.validation.check_alphas_cumprod(np.arange(3))
  with pytest.raises(TypeError, match="num_steps"):
    oj.baselines.ddim_timesteps(2.0)
  with pytest.raises(ValueError, match="num_steps"):
    oj.baselines.ddim_timesteps(1001)
  with pytest.raises(ValueError, match="steps_offset"):
    oj.baselines.ddim_timesteps(1000, steps_offset=1)
