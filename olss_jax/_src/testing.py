"""Fixtures shared by the tests (and by tests of code built on olss_jax).

Closed-form models are the ground truth: a single Gaussian's exact noise prediction is affine
in x_t (so the closed-loop and teacher-forced fits must coincide), and Gaussian mixtures have
exact, nonlinear noise predictions (`analytic`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import analytic
from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib

ALPHAS = noise.scaled_linear_alphas_cumprod()


def gaussian_epsilon(mean, std, alphas_cumprod, x, t):
  """Exact E[eps | x_t] for N(mean, std^2 I) data, in x's dtype (affine in x):

  ``sqrt(1 - ab) (x - sqrt(ab) mean) / (ab std^2 + 1 - ab)`` with ``ab = alpha_bar_t``.
  """
  ab = noise.alpha_bar_at(jnp.asarray(alphas_cumprod, x.dtype), t).astype(x.dtype)
  return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mean) / (ab * std**2 + 1 - ab)


def gaussian_problem(num_noises: int = 12, dim: int = 6, seed: int = 0, *,
                     num_teacher_steps: int = 100, std: float = 0.3):
  """A Gaussian model and its teacher run, in float64 (call under ``jax.enable_x64(True)``).

  Returns:
    (denoise_fn, traj): the exact noise prediction as a `jax.tree_util.Partial` and a
    ``num_teacher_steps``-step DDIM `Trajectory` on ``num_noises`` float64 noises (dim,).
  """
  mean = jax.random.normal(jax.random.key(seed), (dim,), jnp.float64)
  den = jax.tree_util.Partial(gaussian_epsilon, mean, std, ALPHAS)
  x_T = jax.random.normal(jax.random.key(seed + 1), (num_noises, dim), jnp.float64)
  return den, trajectory_lib.collect_trajectory(den, x_T, ALPHAS, num_teacher_steps)


def mixture_problem(sample_shape=(8,), num_noises: int = 16, seed: int = 0, *,
                    std: float = 0.1, num_components: int = 6, num_teacher_steps: int = 100):
  """A sharp Gaussian mixture (exact eps) and its teacher run on fitting noises (cached).

  Returns:
    (denoise_fn, traj): float32 (float64 under ``jax.enable_x64``: cached per precision),
    noises from ``seed + 1``.
  """
  x64 = jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64
  return _mixture_problem(tuple(sample_shape), num_noises, seed, std, num_components,
                          num_teacher_steps, x64)


@functools.lru_cache(maxsize=None)
def _mixture_problem(sample_shape, num_noises, seed, std, num_components, num_teacher_steps,
                     x64):
  del x64  # the cache key: the arrays below take the precision in force
  mix = analytic.make_gaussian_mixture(jax.random.key(seed), num_components, sample_shape,
                                       std=std)
  den = analytic.mixture_denoiser(mix, ALPHAS)
  x_T = jax.random.normal(jax.random.key(seed + 1), (num_noises,) + tuple(sample_shape))
  return den, trajectory_lib.collect_trajectory(den, x_T, ALPHAS, num_teacher_steps)


def amplifying_epsilon(rotation, quiet_times, x, t):
  """``x / 2 + s(t) x N^T`` with ``s = 1e-4`` at ``quiet_times``, 1 elsewhere (x: (B, dim))."""
  quiet = jnp.any(jnp.asarray(t) == quiet_times)
  return 0.5 * x + jnp.where(quiet, 1e-4, 1.0) * x @ rotation.T


def amplifying_problem(num_steps: int = 3, num_noises: int = 32, dim: int = 8, seed: int = 0,
                       *, num_teacher_steps: int = 100):
  """A linear model on which the closed-loop least squares must amplify (float64: call under
  ``jax.enable_x64(True)``).

  ``eps(x, t) = x / 2 + s(t) x N^T`` with N a fixed antisymmetric (dim, dim) matrix and
  ``s = 1e-4`` at the returned path's own timesteps, 1 at every other teacher step: a sampler
  on that path sees N only through outputs scaled by 1e-4, so recovering the teacher's final
  state from its basis takes weights of 1e4 to 1e12 (measured at 3 steps), and the model
  being linear, such weights generalise exactly: the cross-validated ridge alone keeps them
  (`closed_loop_fit`'s amplification guard is what holds them).

  Returns:
    (denoise_fn, traj, path): the model (a `jax.tree_util.Partial`: N and the quiet times
    are traced leaves, not constants baked into a jit), its ``num_teacher_steps``-step DDIM `Trajectory` on
    ``num_noises`` float64 noises (dim,), and the (num_steps,) path of its quiet timesteps.
  """
  g = jax.random.normal(jax.random.key(seed), (dim, dim), jnp.float64)
  rotation = (g - g.T) / 4
  path = (np.arange(num_steps) * num_teacher_steps // num_steps).astype(np.int32)
  quiet_times = jnp.asarray(
      np.asarray(teacher_lib.ddim_teacher(ALPHAS, num_teacher_steps).timesteps)[path])
  den = jax.tree_util.Partial(amplifying_epsilon, rotation, quiet_times)
  x_T = jax.random.normal(jax.random.key(seed + 1), (num_noises, dim), jnp.float64)
  return den, trajectory_lib.collect_trajectory(den, x_T, ALPHAS, num_teacher_steps), path


def random_schedule(seed: int, num_steps: int, metadata=None, *,
                    float_timesteps: bool = False) -> schedule_lib.Schedule:
  """A random lower-triangular `Schedule` with weights over 600 decades (file tests)."""
  rng = np.random.default_rng(seed)
  n = num_steps
  weights = rng.standard_normal((n, n + 1)) * 10.0 ** rng.integers(-300, 300, (n, n + 1))
  weights[~schedule_lib.lower_triangular_mask(n)] = 0.0
  weights[-1, 0] = 5e-324  # a subnormal
  timesteps = np.sort(rng.choice(1000, n, replace=False))[::-1]
  if float_timesteps:
    timesteps = timesteps.astype(np.float32) + np.float32(0.25)
  return schedule_lib.make_schedule(timesteps, weights, metadata)


def random_trajectory(num_teacher_steps: int = 6, batch: int = 3, sample_shape=(2, 2),
                      seed: int = 0, dtype=np.float32) -> trajectory_lib.Trajectory:
  """A `Trajectory` of random outputs under the DDIM teacher of Stable Diffusion's schedule."""
  rng = np.random.default_rng(seed)
  teacher = teacher_lib.ddim_teacher(ALPHAS, num_teacher_steps)
  x_T = rng.standard_normal((batch,) + tuple(sample_shape)).astype(dtype)
  outputs = rng.standard_normal((num_teacher_steps, batch) + tuple(sample_shape)).astype(dtype)
  return trajectory_lib.Trajectory(x_T, outputs, teacher)
