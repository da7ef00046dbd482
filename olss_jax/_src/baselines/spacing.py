"""diffusers' timestep spacings and the VP noise levels the classical solvers step between.

All host-side float64 numpy. Timesteps are integers (our `denoise_fn` takes int32 training
timesteps), so only the spacings of diffusers that produce integers are offered.
"""
from __future__ import annotations

import numpy as np

from olss_jax._src import noise

SINGLE_STEP_SPACINGS = ("leading", "trailing")
MULTISTEP_SPACINGS = ("linspace", "leading", "trailing")


def _check_num_steps(num_steps, num_train_timesteps: int, name: str = "num_steps") -> None:
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool):
    raise TypeError(f"{name}: expected an int, got {type(num_steps).__name__}")
  if not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f"{name}: expected 1 <= {name} <= {num_train_timesteps}, got {num_steps}")


def _check_timesteps(timesteps: np.ndarray, num_train_timesteps: int, spacing: str,
                     steps_offset: int) -> np.ndarray:
  if timesteps[0] >= num_train_timesteps or timesteps[-1] < 0:
    raise ValueError(f"steps_offset: {steps_offset} with spacing {spacing!r} gives timesteps "
                     f"{timesteps[0]}..{timesteps[-1]}, outside [0, {num_train_timesteps})")
  if np.any(np.diff(timesteps) >= 0):
    raise ValueError(f"num_steps: spacing {spacing!r} gives repeated timesteps {timesteps.tolist()}")
  return timesteps.astype(np.int32)


def single_step_timesteps(num_steps: int, num_train_timesteps: int = 1000, *,
                          spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
  """Timesteps of diffusers' DDIM / PNDM / Euler schedulers (``set_timesteps``), in call order.

  ``"leading"``: ``(arange(n) * (T // n))[::-1] + steps_offset`` (Stable Diffusion's configs use
  ``steps_offset=1``). ``"trailing"``: ``round(arange(T, 0, -T / n)) - 1`` (starts at T - 1).

  Returns:
    (num_steps,) int32, strictly decreasing.
  """
  _check_num_steps(num_steps, num_train_timesteps)
  if spacing == "leading":
    ratio = num_train_timesteps // num_steps
    timesteps = (np.arange(num_steps) * ratio).round()[::-1] + steps_offset
  elif spacing == "trailing":
    timesteps = np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps).round() - 1
  else:
    raise ValueError(f"timestep_spacing: expected one of {SINGLE_STEP_SPACINGS}, got {spacing!r}")
  return _check_timesteps(np.asarray(timesteps), num_train_timesteps, spacing, steps_offset)


def multistep_timesteps(num_steps: int, num_train_timesteps: int = 1000, *,
                        spacing: str = "linspace", steps_offset: int = 0) -> np.ndarray:
  """Timesteps of diffusers' DPM-Solver / DEIS / UniPC multistep schedulers, in call order.

  ``"linspace"`` (their default): ``round(linspace(0, T - 1, n + 1))[::-1][:-1]``, so the first
  call is at T - 1. ``"leading"``: ``(arange(n + 1) * (T // (n + 1)))[::-1][:-1] + steps_offset``.
  ``"trailing"``: ``round(arange(T, 0, -T / n)) - 1``.

  Returns:
    (num_steps,) int32, strictly decreasing.
  """
  _check_num_steps(num_steps, num_train_timesteps)
  if spacing == "linspace":
    timesteps = np.linspace(0, num_train_timesteps - 1, num_steps + 1).round()[::-1][:-1]
  elif spacing == "leading":
    ratio = num_train_timesteps // (num_steps + 1)
    timesteps = (np.arange(num_steps + 1) * ratio).round()[::-1][:-1] + steps_offset
  elif spacing == "trailing":
    timesteps = np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps).round() - 1
  else:
    raise ValueError(f"timestep_spacing: expected one of {MULTISTEP_SPACINGS}, got {spacing!r}")
  return _check_timesteps(np.asarray(timesteps), num_train_timesteps, spacing, steps_offset)


def final_alpha(alphas_cumprod: np.ndarray, final_sigmas_type: str) -> float:
  """alpha_bar after the last step: ``"zero"`` -> 1.0 (sigma = 0), ``"sigma_min"`` -> alphas_cumprod[0]."""
  if final_sigmas_type == "zero":
    return 1.0
  if final_sigmas_type == "sigma_min":
    return float(alphas_cumprod[0])
  raise ValueError(f"final_sigmas_type: expected 'zero' or 'sigma_min', got {final_sigmas_type!r}")


def vp_levels(alphas_cumprod, timesteps, final_alpha_cumprod: float):
  """VP noise levels of every state of an n-step run (DPM-Solver's notation).

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    timesteps: (n,) the model-call timesteps (integers; `levels.vp_levels` also takes floats).
    final_alpha_cumprod: alpha_bar of the final state (1.0: sigma = 0).

  Returns:
    (alpha, sigma, lam), each (n + 1,) float64 (`alpha_sigma_lambda` of the states' alpha_bar).
  """
  return alpha_sigma_lambda(noise.state_alphas(alphas_cumprod, timesteps, final_alpha_cumprod))


def alpha_sigma_lambda(alpha_bars):
  """``alpha = sqrt(alpha_bar)``, ``sigma = sqrt(1 - alpha_bar)`` and the half log-SNR
  ``lam = log(alpha / sigma)`` (+inf where sigma = 0), each float64 of alpha_bars' shape."""
  ab = np.asarray(alpha_bars, np.float64)
  alpha = np.sqrt(ab)
  sigma = np.sqrt(1.0 - ab)
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigma)
  return alpha, sigma, lam
