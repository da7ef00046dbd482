"""Closed-form diffusion models: Gaussian-mixture data with exact noise prediction.

For data ``x_0 ~ sum_m pi_m N(mu_m, s_m^2 I)`` and ``x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps``,
the marginal is the mixture ``N(sqrt(ab_t) mu_m, v_m I)`` with ``v_m = ab_t s_m^2 + 1 - ab_t``
and the optimal noise prediction is ``E[eps | x_t] = sqrt(1 - ab_t) sum_m r_m(x_t) (x_t -
sqrt(ab_t) mu_m) / v_m`` with posterior responsibilities r_m. These are the ground truth of
the property tests and the models of the fast demo.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """Isotropic Gaussian mixture data (a pytree of arrays).

  Attributes:
    means: (M, *sample_shape) component means mu_m.
    stds: (M,) component standard deviations s_m.
    log_weights: (M,) log mixture weights log pi_m (normalised).
  """

  means: jax.Array
  stds: jax.Array
  log_weights: jax.Array

  @property
  def sample_shape(self) -> tuple[int, ...]:
    return tuple(np.shape(self.means)[1:])


def make_gaussian_mixture(key: jax.Array, num_components: int = 8, sample_shape=(16,), *,
                          spread: float = 1.0, std: float = 0.1) -> GaussianMixture:
  """A random mixture with well separated, sharp modes.

  Args:
    key: PRNG key.
    num_components: M.
    sample_shape: the shape of one sample.
    spread: scale of the component means (drawn N(0, spread^2)).
    std: every component's standard deviation.
  """
  if num_components < 1:
    raise ValueError(f"num_components: expected >= 1, got {num_components}")
  if std <= 0:
    raise ValueError(f"std: expected > 0, got {std}")
  means = spread * jax.random.normal(key, (num_components,) + tuple(sample_shape), jnp.float32)
  stds = jnp.full((num_components,), std, jnp.float32)
  log_weights = jnp.full((num_components,), -np.log(num_components), jnp.float32)
  return GaussianMixture(means, stds, log_weights)


def gaussian(mean, std: float) -> GaussianMixture:
  """A single isotropic Gaussian N(mean, std^2 I): its noise prediction is affine in x_t."""
  mean = jnp.asarray(mean, jnp.float32)
  return GaussianMixture(mean[None], jnp.asarray([std], jnp.float32), jnp.zeros((1,), jnp.float32))


def sample_data(key: jax.Array, mixture: GaussianMixture, num_samples: int) -> jax.Array:
  """Draws (num_samples, *sample_shape) exact samples of x_0."""
  k_comp, k_noise = jax.random.split(key)
  comp = jax.random.categorical(k_comp, mixture.log_weights, shape=(num_samples,))
  eps = jax.random.normal(k_noise, (num_samples,) + mixture.sample_shape, mixture.means.dtype)
  scale = mixture.stds[comp].reshape((num_samples,) + (1,) * len(mixture.sample_shape))
  return mixture.means[comp] + scale * eps


def mixture_noise_prediction(mixture: GaussianMixture, alphas_cumprod: jax.Array, x_t: jax.Array,
                             t: jax.Array) -> jax.Array:
  """Exact E[eps | x_t] for Gaussian-mixture data.

  Args:
    mixture: the data distribution.
    alphas_cumprod: (T,) training alpha_bar.
    x_t: (B, *sample_shape) noisy samples.
    t: scalar timestep: int (indexes alphas_cumprod) or float (`noise.alpha_bar_at`).

  Returns:
    (B, *sample_shape) the noise prediction, in x_t's dtype (computed in float64 for float64
    inputs, else float32).
  """
  dtype = x_t.dtype
  work = jnp.promote_types(dtype, jnp.float32)  # float64 inputs are computed in float64
  ab = noise.alpha_bar_at(jnp.asarray(alphas_cumprod), t).astype(work)
  x = x_t.astype(work).reshape(x_t.shape[0], -1)                          # (B, D)
  mu = mixture.means.reshape(mixture.means.shape[0], -1).astype(work)     # (M, D)
  dim = x.shape[1]
  var = ab * mixture.stds.astype(work) ** 2 + (1.0 - ab)                 # (M,)
  diff = x[:, None, :] - jnp.sqrt(ab) * mu[None]                         # (B, M, D)
  logits = (mixture.log_weights.astype(work)[None] - 0.5 * dim * jnp.log(var)[None]
            - 0.5 * jnp.sum(diff**2, axis=-1) / var[None])
  resp = jax.nn.softmax(logits, axis=-1)                                 # (B, M)
  eps = jnp.sqrt(1.0 - ab) * jnp.einsum("bm,bmd->bd", resp / var[None], diff)
  return eps.reshape(x_t.shape).astype(dtype)


def mixture_denoiser(mixture: GaussianMixture, alphas_cumprod=None) -> jax.tree_util.Partial:
  """The exact noise predictor as a `denoise_fn` (a `Partial`: mixture arrays stay traced).

  Args:
    mixture: the data distribution.
    alphas_cumprod: (T,) training alpha_bar; Stable Diffusion's schedule by default.

  Returns:
    ``denoise_fn(x_t, t) -> e`` for `collect_trajectory` and `sample`.
  """
  if alphas_cumprod is None:
    alphas_cumprod = noise.scaled_linear_alphas_cumprod()
  # A float64 host leaf: float32 under jit by default, full precision under jax.enable_x64.
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  return jax.tree_util.Partial(mixture_noise_prediction, mixture, alphas)
