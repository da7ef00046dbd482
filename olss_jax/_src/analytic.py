"""Closed-form diffusion models: Gaussian-mixture data with exact model outputs.

For data ``x_0 ~ sum_m pi_m N(mu_m, s_m^2 I)`` and a state ``x = alpha x_0 + sigma eps``
(VP: ``alpha = sqrt(ab_t)``, ``sigma = sqrt(1 - ab_t)``; rectified flow at level s:
``alpha = 1 - s``, ``sigma = s``), the marginal is the mixture ``N(alpha mu_m, v_m I)`` with
``v_m = alpha^2 s_m^2 + sigma^2``, and with posterior responsibilities r_m(x)

  E[eps | x] = sigma sum_m r_m (x - alpha mu_m) / v_m,
  E[x_0 | x] = sum_m r_m (mu_m + alpha s_m^2 (x - alpha mu_m) / v_m).

Every model output is a fixed combination of these two: epsilon, x_0 ("sample"),
``v = alpha eps - sigma x_0`` ("v_prediction") and the flow velocity ``eps - x_0``. These are
the ground truth of the property tests and the models of the fast demo.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import model as model_lib
from olss_jax._src import noise
from olss_jax._src import teacher as teacher_lib


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


def mixture_posterior(mixture: GaussianMixture, alpha, sigma, x):
  """``(E[eps | x], E[x_0 | x])`` for a state ``x = alpha x_0 + sigma eps`` of mixture data.

  Args:
    mixture: the data distribution.
    alpha, sigma: scalars (in the working dtype).
    x: (B, D) flattened states.

  Returns:
    Two (B, D) arrays in x's dtype (see the module docstring).
  """
  work = x.dtype
  mu = mixture.means.reshape(mixture.means.shape[0], -1).astype(work)     # (M, D)
  s2 = mixture.stds.astype(work) ** 2
  dim = x.shape[1]
  var = alpha**2 * s2 + sigma**2                                         # (M,)
  diff = x[:, None, :] - alpha * mu[None]                                # (B, M, D)
  logits = (mixture.log_weights.astype(work)[None] - 0.5 * dim * jnp.log(var)[None]
            - 0.5 * jnp.sum(diff**2, axis=-1) / var[None])
  resp = jax.nn.softmax(logits, axis=-1)                                 # (B, M)
  eps = sigma * jnp.einsum("bm,bmd->bd", resp / var[None], diff)
  x0 = (jnp.einsum("bm,md->bd", resp, mu)
        + alpha * jnp.einsum("bm,bmd->bd", resp * (s2 / var)[None], diff))
  return eps, x0


def _output(mixture, alpha, sigma, x_t, prediction_type: str):
  dtype = x_t.dtype
  work = jnp.promote_types(dtype, jnp.float32)  # float64 inputs are computed in float64
  alpha, sigma = jnp.asarray(alpha).astype(work), jnp.asarray(sigma).astype(work)
  x = x_t.astype(work).reshape(x_t.shape[0], -1)
  eps, x0 = mixture_posterior(mixture, alpha, sigma, x)
  if prediction_type == "epsilon":
    out = eps
  elif prediction_type == "sample":
    out = x0
  elif prediction_type == "v_prediction":
    out = alpha * eps - sigma * x0
  else:   # flow_prediction
    out = eps - x0
  return out.reshape(x_t.shape).astype(dtype)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def mixture_noise_prediction(mixture: GaussianMixture, alphas_cumprod: jax.Array, x_t: jax.Array,
                             t: jax.Array, prediction_type: str = "epsilon") -> jax.Array:
  """The exact output of a VP model of Gaussian-mixture data (E[eps | x_t] for epsilon).

  Args:
    mixture: the data distribution.
    alphas_cumprod: (T,) training alpha_bar.
    x_t: (B, *sample_shape) noisy samples.
    t: scalar timestep: int (indexes alphas_cumprod) or float (`noise.alpha_bar_at`).
    prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (x_0).

  Returns:
    (B, *sample_shape) the prediction, in x_t's dtype (computed in float64 for float64
    inputs, else float32).
  """
  work = jnp.promote_types(x_t.dtype, jnp.float32)
  ab = noise.alpha_bar_at(jnp.asarray(alphas_cumprod), t).astype(work)
  return _output(mixture, jnp.sqrt(ab), jnp.sqrt(1.0 - ab), x_t, prediction_type)


def mixture_velocity(mixture: GaussianMixture, num_train_timesteps, x_t: jax.Array,
                     t: jax.Array) -> jax.Array:
  """The exact rectified-flow velocity ``E[eps - x_0 | x_s]``, ``s = t / T``.

  Args:
    mixture: the data distribution.
    num_train_timesteps: T (the model's time scale: t = T s).
    x_t: (B, *sample_shape) states ``x_s = (1 - s) x_0 + s eps``.
    t: scalar float time in [0, T].

  Returns:
    (B, *sample_shape) the velocity, in x_t's dtype.
  """
  work = jnp.promote_types(x_t.dtype, jnp.float32)
  s = jnp.asarray(t).astype(work) / jnp.asarray(num_train_timesteps).astype(work)
  return _output(mixture, 1.0 - s, s, x_t, "flow_prediction")


def mixture_denoiser(mixture: GaussianMixture, alphas_cumprod=None, *,
                     prediction_type: str = "epsilon") -> jax.tree_util.Partial:
  """The exact VP model as a `denoise_fn` (a `Partial`: mixture arrays stay traced).

  Args:
    mixture: the data distribution.
    alphas_cumprod: (T,) training alpha_bar; Stable Diffusion's schedule by default.
    prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.

  Returns:
    ``denoise_fn(x_t, t) -> e`` for `collect_trajectory` and `sample`.
  """
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got "
                     f"{prediction_type!r}")
  if alphas_cumprod is None:
    alphas_cumprod = noise.scaled_linear_alphas_cumprod()
  # A float64 host leaf: float32 under jit by default, full precision under jax.enable_x64.
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  return jax.tree_util.Partial(_VP_DENOISERS[prediction_type], mixture, alphas)


def _vp_epsilon(mixture, alphas, x_t, t):
  return mixture_noise_prediction(mixture, alphas, x_t, t, "epsilon")


def _vp_v(mixture, alphas, x_t, t):
  return mixture_noise_prediction(mixture, alphas, x_t, t, "v_prediction")


def _vp_sample(mixture, alphas, x_t, t):
  return mixture_noise_prediction(mixture, alphas, x_t, t, "sample")


# One module-level function per output (a `Partial`'s function is static: no retracing).
_VP_DENOISERS = {"epsilon": _vp_epsilon, "v_prediction": _vp_v, "sample": _vp_sample}


def flow_mixture_denoiser(mixture: GaussianMixture, *,
                          num_train_timesteps: int = 1000) -> jax.tree_util.Partial:
  """The exact rectified-flow model (velocity) as a `denoise_fn`, for `flow_teacher`.

  Args:
    mixture: the data distribution.
    num_train_timesteps: T; the model is called at ``t = T s``.

  Returns:
    ``denoise_fn(x_s, t) -> v`` with ``v = E[eps - x_0 | x_s]``.
  """
  t = noise.check_count(num_train_timesteps, "num_train_timesteps")
  return jax.tree_util.Partial(mixture_velocity, mixture, np.float64(t))


def analytic_comparison_model(*, seed: int = 0, num_components: int = 8, dim: int = 16,
                              std: float = 0.1, sample_shape: tuple[int, ...] | None = None,
                              flow: bool = False) -> model_lib.ComparisonModel:
  """An analytic model: a sharp isotropic Gaussian mixture with its exact prediction.

  Args:
    seed, num_components, std: the mixture (`make_gaussian_mixture`).
    dim: the sample shape ``(dim,)`` unless ``sample_shape`` is given (e.g. (4, 64, 64),
      Stable Diffusion's latent size).
    flow: the exact rectified flow (velocity, `flow_teacher`) instead of the VP epsilon model
      on Stable Diffusion's schedule (DDIM teacher).
  """
  shape = (dim,) if sample_shape is None else tuple(sample_shape)
  mixture = make_gaussian_mixture(jax.random.key(seed), num_components, shape, std=std)
  label = "x".join(str(d) for d in shape)
  if flow:
    denoise_fn = flow_mixture_denoiser(mixture)
    return model_lib.ComparisonModel(
        name=f"gaussian-mixture-flow-{num_components}x{label}-std{std}",
        alphas_cumprod=None, sample_shape=shape, denoiser=lambda conditions: denoise_fn,
        teacher=teacher_lib.flow_teacher)
  alphas = noise.scaled_linear_alphas_cumprod()
  denoise_fn = mixture_denoiser(mixture, alphas)
  suffix = f"{shape[0]}d" if len(shape) == 1 else label
  return model_lib.ComparisonModel(name=f"gaussian-mixture-{num_components}x{suffix}-std{std}",
                                   alphas_cumprod=alphas, sample_shape=shape,
                                   denoiser=lambda conditions: denoise_fn)
