"""Synthetic teacher trajectories with a real teacher's correlations (for benchmarks and tests).

A real teacher's outputs vary smoothly along the trajectory: neighbouring e's correlate above
0.99 (paper Figure 2). Here image b's output at step k is

    e_k[b] = s(tau_k) x_T[b] + sum_j f_j(tau_k) F_j[b] + sigma N_k[b],     tau_k = t_k / T,

with smooth s and f_j, fixed random fields F_j per image and small independent noise N_k. Each
image is generated from its own seed, so any chunking of the images gives the same data.
"""
from __future__ import annotations

import numpy as np

from olss_jax._src import noise as noise_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib


def synthetic_trajectory(image_indices, sample_shape=(4, 8, 8), num_teacher_steps: int = 100,
                         *, num_fields: int = 4, noise: float = 0.02, seed: int = 0,
                         noise_pool: int | None = None,
                         num_train_timesteps: int = 1000) -> trajectory_lib.Trajectory:
  """A `Trajectory` of smooth, strongly correlated synthetic outputs (float32, host numpy).

  Args:
    image_indices: int (the first that many images) or a sequence of image indices.
    sample_shape: shape of one sample (Stable Diffusion's latents: (4, 64, 64)).
    num_teacher_steps: K.
    num_fields: J, the fixed random fields mixed along the trajectory.
    noise: sigma, the independent per-step noise.
    seed: base seed; image b uses ``default_rng([seed, b])``.
    noise_pool: None draws fresh noise N_k per step; an int P draws each N_k from P fields of
      the image (cheap generation for memory benchmarks; less realistic).
    num_train_timesteps: T of the scaled-linear (Stable Diffusion) noise schedule.

  Returns:
    Trajectory with x_T (B, *sample_shape) and model_outputs (K, B, *sample_shape) float32.
  """
  if isinstance(image_indices, (int, np.integer)):
    image_indices = range(int(image_indices))
  image_indices = list(image_indices)
  teacher = teacher_lib.ddim_teacher(noise_lib.scaled_linear_alphas_cumprod(num_train_timesteps),
                                     num_teacher_steps)
  timesteps = np.asarray(teacher.timesteps)
  alphas = np.asarray(teacher.levels)
  tau = np.asarray(timesteps, np.float64) / num_train_timesteps                   # (K,)
  k = tau.shape[0]
  coef_rng = np.random.default_rng([seed, 1 << 30])
  freq = coef_rng.uniform(0.5, 2.0, num_fields)
  phase = coef_rng.uniform(0, 2 * np.pi, num_fields)
  amp = coef_rng.uniform(0.2, 0.6, num_fields)
  s = np.sqrt(np.clip(1.0 - np.asarray(alphas[:k]), 0.0, 1.0))                    # (K,)
  # sqrt(tau): the fields change fastest near the end of sampling, as in a real teacher
  f = amp[None] * np.sin(np.pi * freq[None] * np.sqrt(tau)[:, None] + phase[None])  # (K, J)
  d = int(np.prod(sample_shape))
  x_T = np.empty((len(image_indices), d), np.float32)
  outputs = np.empty((k, len(image_indices), d), np.float32)
  for i, b in enumerate(image_indices):
    rng = np.random.default_rng([seed, int(b)])
    x = rng.standard_normal(d, dtype=np.float32)
    fields = rng.standard_normal((num_fields, d), dtype=np.float32)
    mix = (s[:, None] * x[None] + f.astype(np.float32) @ fields).astype(np.float32)
    if noise_pool is None:
      mix += np.float32(noise) * rng.standard_normal((k, d), dtype=np.float32)
    else:
      pool = np.float32(noise) * rng.standard_normal((noise_pool, d), dtype=np.float32)
      mix += pool[rng.integers(0, noise_pool, k)]
    x_T[i] = x
    outputs[:, i] = mix
  return trajectory_lib.Trajectory(
      x_T.reshape((len(image_indices),) + tuple(sample_shape)),
      outputs.reshape((k, len(image_indices)) + tuple(sample_shape)), teacher)
