"""olss_jax.analytic: the closed-form models the other tests trust, checked independently."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
F64_RTOL = 1e-10


def _log_density(mixture, ab, x, alpha=None, sigma=None):
  """log p(x) of the noised mixture in float64, written from the definition:
  x = alpha x_0 + sigma eps, x_0 ~ sum_m pi_m N(mu_m, s_m^2 I) (VP: alpha = sqrt(ab),
  sigma = sqrt(1 - ab))."""
  if alpha is None:
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1 - ab)
  mu = mixture.means.reshape(mixture.means.shape[0], -1)
  d = mu.shape[1]
  var = alpha**2 * mixture.stds**2 + sigma**2
  diff = x.reshape(-1)[None] - alpha * mu
  log_components = (mixture.log_weights - 0.5 * d * jnp.log(2 * jnp.pi * var)
                    - 0.5 * jnp.sum(diff**2, axis=1) / var)
  return jax.scipy.special.logsumexp(log_components)


@pytest.mark.parametrize("t", [999, 500, 120, 3])
def test_mixture_noise_prediction_is_minus_sigma_times_the_score(t):
  """E[eps | x_t] = -sqrt(1 - ab_t) grad log p_t(x_t) (Tweedie), by autodiff of the density."""
  with jax.enable_x64(True):
    mixture = oj.analytic.make_gaussian_mixture(jax.random.key(0), 5, (2, 3), std=0.2)
    mixture = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), mixture)
    x = jax.random.normal(jax.random.key(1), (6, 2, 3), jnp.float64)
    ab = jnp.asarray(ALPHAS[t], jnp.float64)
    score = jax.vmap(jax.grad(lambda xi: _log_density(mixture, ab, xi)))(x)
    want = -jnp.sqrt(1 - ab) * score
    got = oj.analytic.mixture_denoiser(mixture, ALPHAS)(x, jnp.int32(t))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=F64_RTOL, atol=1e-12)


def _mixture64(seed=0):
  mixture = oj.analytic.make_gaussian_mixture(jax.random.key(seed), 5, (2, 3), std=0.2)
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), mixture)


@pytest.mark.parametrize("t", [999, 500, 120, 3])
def test_mixture_v_and_x0_predictions_follow_from_the_score(t):
  """Tweedie: E[x_0 | x] = (x + sigma^2 grad log p) / alpha; v = alpha eps - sigma x_0."""
  with jax.enable_x64(True):
    mixture = _mixture64()
    x = jax.random.normal(jax.random.key(1), (6, 2, 3), jnp.float64)
    ab = jnp.asarray(ALPHAS[t], jnp.float64)
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    score = jax.vmap(jax.grad(lambda xi: _log_density(mixture, ab, xi)))(x)
    eps = -sigma * score
    x0 = (x + sigma**2 * score) / alpha
    for kind, want in (("sample", x0), ("v_prediction", alpha * eps - sigma * x0)):
      got = oj.analytic.mixture_denoiser(mixture, ALPHAS, prediction_type=kind)(x, jnp.int32(t))
      assert got.dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=F64_RTOL, atol=1e-11)


@pytest.mark.parametrize("s", [0.999, 0.7, 0.3, 0.01])
def test_flow_velocity_follows_from_the_score(s):
  """x_s = (1 - s) x_0 + s eps: E[eps | x] = -s grad log p_s, x_0 = (x - s eps) / (1 - s),
  v = eps - x_0, with the model called at t = 1000 s."""
  with jax.enable_x64(True):
    mixture = _mixture64(7)
    x = jax.random.normal(jax.random.key(8), (6, 2, 3), jnp.float64)
    a, sg = jnp.asarray(1 - s, jnp.float64), jnp.asarray(s, jnp.float64)
    score = jax.vmap(jax.grad(lambda xi: _log_density(mixture, None, xi, a, sg)))(x)
    eps = -sg * score
    want = eps - (x - sg * eps) / a
    got = oj.analytic.flow_mixture_denoiser(mixture)(x, jnp.asarray(1000.0 * s, jnp.float64))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=F64_RTOL, atol=1e-11)


def test_one_component_is_the_closed_form_gaussian():
  with jax.enable_x64(True):
    mean = jnp.asarray([0.5, -1.0, 2.0], jnp.float64)
    g = oj.analytic.gaussian(mean, 0.25)  # exact in float32, the mixture's storage
    g = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), g)
    x = jax.random.normal(jax.random.key(2), (4, 3), jnp.float64)
    for t in (999, 400, 10):
      ab = ALPHAS[t]
      want = np.sqrt(1 - ab) * (np.asarray(x) - np.sqrt(ab) * np.asarray(mean)) / (
          ab * 0.0625 + 1 - ab)
      got = oj.analytic.mixture_denoiser(g, ALPHAS)(x, jnp.int32(t))
      np.testing.assert_allclose(np.asarray(got), want, rtol=F64_RTOL)
      np.testing.assert_allclose(
          np.asarray(oj.testing.gaussian_epsilon(mean, 0.25, ALPHAS, x, jnp.int32(t))), want,
          rtol=F64_RTOL)


def test_samples_have_the_mixture_moments():
  mixture = oj.analytic.make_gaussian_mixture(jax.random.key(3), 3, (2,), std=0.1)
  x = np.asarray(oj.analytic.sample_data(jax.random.key(4), mixture, 20000), np.float64)
  mu = np.asarray(mixture.means, np.float64)
  np.testing.assert_allclose(x.mean(0), mu.mean(0), atol=0.03)
  # second moment: E[x x^T] = mean_m (mu mu^T) + s^2 I
  want = np.mean([np.outer(m, m) for m in mu], axis=0) + 0.01 * np.eye(2)
  np.testing.assert_allclose(x.T @ x / x.shape[0], want, atol=0.05)


def test_continuous_timesteps_interpolate_the_integer_ones():
  mixture = oj.analytic.make_gaussian_mixture(jax.random.key(5), 4, (3,))
  f = oj.analytic.mixture_denoiser(mixture, ALPHAS)
  x = jax.random.normal(jax.random.key(6), (2, 3))
  np.testing.assert_array_equal(np.asarray(f(x, jnp.float32(500.0))),
                                np.asarray(f(x, jnp.int32(500))))
  mid = np.asarray(f(x, jnp.float32(500.5)))
  lo, hi = np.asarray(f(x, jnp.int32(500))), np.asarray(f(x, jnp.int32(501)))
  assert np.all((mid - np.minimum(lo, hi)) >= -1e-6) and np.all((np.maximum(lo, hi) - mid) >= -1e-6)


def test_bad_arguments():
  mixture = oj.analytic.make_gaussian_mixture(jax.random.key(0), 2)
  with pytest.raises(ValueError, match="prediction_type"):
    oj.analytic.mixture_denoiser(mixture, ALPHAS, prediction_type="flow")
  with pytest.raises(ValueError, match="num_train_timesteps"):
    oj.analytic.flow_mixture_denoiser(mixture, num_train_timesteps=0)
  with pytest.raises(ValueError, match="num_components"):
    oj.analytic.make_gaussian_mixture(jax.random.key(0), 0)
  with pytest.raises(ValueError, match="std"):
    oj.analytic.make_gaussian_mixture(jax.random.key(0), 2, std=0.0)
