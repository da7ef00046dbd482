"""Noise schedules and deterministic DDIM (paper Eq. 2) as linear recurrences.

Everything here is host-side float64 numpy: it computes the scalar coefficients that the
teacher, the DDIM baseline and the state reconstruction share, so they agree to the bit.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from olss_jax._src import schedule as schedule_lib


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> np.ndarray:
  """Stable Diffusion's noise schedule ("scaled_linear" betas), as in diffusers.

  Returns:
    (num_train_timesteps,) float64 cumulative products of (1 - beta_t).
  """
  betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
  return np.cumprod(1.0 - betas)


def linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                          beta_end: float = 0.02) -> np.ndarray:
  """DDPM's linear beta schedule. Returns (num_train_timesteps,) float64 alphas_cumprod."""
  betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
  return np.cumprod(1.0 - betas)


def check_alphas_cumprod(alphas_cumprod) -> np.ndarray:
  """Validates alphas_cumprod: 1-D, finite, in (0, 1], non-increasing. Returns float64 copy."""
  arr = np.asarray(alphas_cumprod)
  if arr.ndim != 1 or arr.shape[0] < 2:
    raise ValueError(f"alphas_cumprod: expected shape (T,) with T >= 2, got {arr.shape}")
  if not np.issubdtype(arr.dtype, np.floating):
    raise TypeError(f"alphas_cumprod: expected a float dtype, got {arr.dtype}")
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > 1):
    raise ValueError("alphas_cumprod: every entry must be finite and in (0, 1]")
  if np.any(np.diff(arr) > 0):
    raise ValueError("alphas_cumprod: must be non-increasing in t (more noise at larger t)")
  return arr


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, *,
                   steps_offset: int = 0) -> np.ndarray:
  """diffusers' DDIM timesteps ("leading" spacing), in call order.

  ``ratio = num_train_timesteps // num_steps``; timesteps are
  ``(arange(num_steps) * ratio)[::-1] + steps_offset``. With 1000 of 1000 steps and offset 0
  this is 999, 998, ..., 0: the paper's complete generation process.

  Returns:
    (num_steps,) int32, strictly decreasing.
  """
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool):
    raise TypeError(f"num_steps: expected an int, got {type(num_steps).__name__}")
  if not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f"num_steps: expected 1 <= num_steps <= {num_train_timesteps}, got {num_steps}")
  ratio = num_train_timesteps // num_steps
  timesteps = (np.arange(num_steps) * ratio)[::-1] + steps_offset
  if timesteps[0] >= num_train_timesteps:
    raise ValueError(f"steps_offset: {steps_offset} pushes the first timestep to {timesteps[0]}, "
                     f"past the {num_train_timesteps} training timesteps")
  return timesteps.astype(np.int32)


def state_alphas(alphas_cumprod, timesteps, final_alpha_cumprod: float = 1.0) -> np.ndarray:
  """alpha_bar of every state of a DDIM run: at each timestep, then the final alpha.

  Returns:
    (n + 1,) float64. Entry i is alpha_bar at the state where the model is called at step i;
    entry n is ``final_alpha_cumprod`` (diffusers: 1.0 with ``set_alpha_to_one``, else
    ``alphas_cumprod[0]``).
  """
  alphas = check_alphas_cumprod(alphas_cumprod)
  timesteps = np.asarray(timesteps)
  if np.any(timesteps < 0) or np.any(timesteps >= alphas.shape[0]):
    raise ValueError(f"timesteps: must lie in [0, {alphas.shape[0]}), got "
                     f"[{timesteps.min()}, {timesteps.max()}]")
  if not 0 < final_alpha_cumprod <= 1:
    raise ValueError(f"final_alpha_cumprod: expected a value in (0, 1], got {final_alpha_cumprod}")
  return np.concatenate([alphas[timesteps], [float(final_alpha_cumprod)]])


def ddim_step_coefficients(alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic DDIM (paper Eq. 2, eta = 0) as ``x_{i+1} = a_i x_i + b_i e_i``.

  Args:
    alphas: (n + 1,) alpha_bar of consecutive states (see `state_alphas`).

  Returns:
    (a, b), each (n,) float64, with a_i = sqrt(ab_{i+1} / ab_i) and
    b_i = sqrt(1 - ab_{i+1}) - sqrt(ab_{i+1}) * sqrt(1 - ab_i) / sqrt(ab_i).
  """
  alphas = np.asarray(alphas, np.float64)
  cur, nxt = alphas[:-1], alphas[1:]
  a = np.sqrt(nxt / cur)
  b = np.sqrt(1.0 - nxt) - np.sqrt(nxt) * np.sqrt(1.0 - cur) / np.sqrt(cur)
  return a, b


def state_coefficients(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Coefficients of every state of the recurrence ``x_{i+1} = a_i x_i + b_i e_i``.

  Returns:
    (n + 1, n + 1) float64 C, lower-triangular in the sense that row k uses columns 0..k:
    ``x_k = C[k, 0] * x_T + sum_j C[k, j + 1] * e_j``. Row 0 is x_T itself. These are the
    paper's Eq. 9 expansion coefficients of the DDIM process.
  """
  n = a.shape[0]
  coeffs = np.zeros((n + 1, n + 1), np.float64)
  coeffs[0, 0] = 1.0
  for i in range(n):
    coeffs[i + 1] = a[i] * coeffs[i]
    coeffs[i + 1, i + 1] += b[i]
  return coeffs


def ddim_schedule(alphas_cumprod, timesteps, *, final_alpha_cumprod: float = 1.0,
                  metadata: Mapping[str, Any] | None = None) -> schedule_lib.Schedule:
  """Deterministic DDIM on the given timesteps as a `Schedule` (paper Eq. 2 unrolled, Eq. 9).

  Step i goes from the state at ``timesteps[i]`` to the state at ``timesteps[i + 1]`` (the last
  step to ``final_alpha_cumprod``), exactly diffusers' ``FlaxDDIMScheduler`` with eta = 0 when
  the timesteps are its own (`ddim_timesteps`).

  Args:
    alphas_cumprod: (T,) the model's training noise schedule.
    timesteps: (n,) strictly decreasing training timesteps.
    final_alpha_cumprod: alpha_bar after the last step.
    metadata: extra metadata entries.

  Returns:
    A `Schedule` with (n, n + 1) weights over [x_T, e_0..e_{n-1}].
  """
  timesteps = np.asarray(timesteps)
  if timesteps.ndim != 1 or timesteps.shape[0] < 1:
    raise ValueError(f"timesteps: expected shape (n,) with n >= 1, got {timesteps.shape}")
  if np.any(np.diff(timesteps) >= 0):
    raise ValueError("timesteps: must be strictly decreasing")
  a, b = ddim_step_coefficients(state_alphas(alphas_cumprod, timesteps, final_alpha_cumprod))
  weights = state_coefficients(a, b)[1:]
  meta = {"method": "ddim", "final_alpha_cumprod": float(final_alpha_cumprod)}
  meta.update(metadata or {})
  return schedule_lib.make_schedule(timesteps, weights, meta)
