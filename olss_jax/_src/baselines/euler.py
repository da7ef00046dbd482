"""Deterministic Euler in sigma space (Karras et al. 2022, Algorithm 2 with no churn).

diffusers' ``EulerDiscreteScheduler`` (and ``FlaxEulerDiscreteScheduler``) as a `Schedule`.
"""
from __future__ import annotations

import numpy as np

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src.baselines import linear
from olss_jax._src.baselines import spacing as spacing_lib


def _euler_program(sigmas: np.ndarray, timesteps: np.ndarray) -> linear.Program:
  """diffusers' Euler loop on (n + 1,) VE sigmas (last = 0), starting from a unit-variance x_T."""

  def program(model, x_T):
    # diffusers' latent X lives in VE scale: X = x / sqrt(alpha_bar) = x * sqrt(sigma^2 + 1).
    # Our sampler's x_T is the unit-variance VP input of the first call, so X_0 = x_T * scale_0
    # (diffusers' init_noise_sigma for "leading"; see `euler_schedule`).
    big_x = x_T * float(np.sqrt(sigmas[0]**2 + 1.0))
    for i, t in enumerate(timesteps):
      sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
      e = model(big_x / float(np.sqrt(sigma**2 + 1.0)), int(t))    # scale_model_input
      pred_original = big_x - sigma * e                            # epsilon prediction
      derivative = (big_x - pred_original) / sigma
      big_x = big_x + derivative * (sigma_next - sigma)
    return big_x                                                   # sigma_n = 0: VE == VP

  return program


def euler_schedule(alphas_cumprod, num_steps: int, *, timestep_spacing: str = "leading",
                   steps_offset: int = 0) -> schedule_lib.Schedule:
  """Deterministic Euler (Karras et al. 2022, Alg. 2, s_churn = 0) as a `Schedule` (Eq. 8-9).

  Matches diffusers' ``EulerDiscreteScheduler(prediction_type="epsilon",
  interpolation_type="linear", final_sigmas_type="zero")`` with the given ``timestep_spacing``
  and ``steps_offset`` (``FlaxEulerDiscreteScheduler`` with "leading" always uses
  ``steps_offset=1``). The update is ``X_{i+1} = X_i + (sigma_{i+1} - sigma_i) e_i`` on the VE
  latent ``X = x / sqrt(alpha_bar)`` with ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` at each
  integer timestep and a final sigma of 0; in exact arithmetic this is deterministic DDIM on the
  same timesteps.

  Conventions: `sample` starts from unit-variance x_T and the model sees VP-scaled inputs. The
  diffusers latent is ``X_0 = x_T * sqrt(sigma_0^2 + 1)`` and the model input
  ``X / sqrt(sigma^2 + 1)``, so every model input here equals diffusers' scaled model input.
  For "leading" diffusers' ``init_noise_sigma`` is exactly ``sqrt(sigma_max^2 + 1)``; for
  "trailing" diffusers uses ``init_noise_sigma = sigma_max`` instead, i.e. its first model input
  is ``sqrt(1 - alpha_bar_{T-1}) x_T`` (0.998 x_T for Stable Diffusion): we keep the
  unit-variance start. diffusers' default "linspace" spacing gives fractional timesteps, which
  an integer-timestep model cannot take, so it is not offered.

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``).
    timestep_spacing: "leading" (Stable Diffusion's) or "trailing".
    steps_offset: added to "leading" timesteps (Stable Diffusion: 1).

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "euler"``.
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  timesteps = spacing_lib.single_step_timesteps(num_steps, alphas.shape[0], spacing=timestep_spacing,
                                                steps_offset=steps_offset)
  ab = alphas[timesteps]
  sigmas = np.concatenate([np.sqrt((1.0 - ab) / ab), [0.0]])
  meta = {"method": "euler", "timestep_spacing": timestep_spacing, "steps_offset": int(steps_offset),
          "diffusers": "EulerDiscreteScheduler"}
  return linear.schedule_from_program(_euler_program(sigmas, timesteps), num_steps, meta)
