"""Improved PNDM (iPNDM; Zhang & Chen 2023, DEIS paper Sec. 4): PLMS with lower-order warm-up.

diffusers' ``IPNDMScheduler`` update as a `Schedule` on a discrete VP model's timesteps.
"""
from __future__ import annotations

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src.baselines import linear
from olss_jax._src.baselines import spacing as spacing_lib

# Adams-Bashforth weights of the last 1, 2, 3, 4 noise predictions (newest first).
_AB = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _ipndm_program(alpha, sigma, timesteps) -> linear.Program:
  """diffusers' ``IPNDMScheduler.step`` loop over (n + 1,) VP levels (alpha^2 + sigma^2 = 1)."""

  def program(model, x_T):
    x, ets = x_T, []
    for i, t in enumerate(timesteps):
      ets.append(model(x, int(t)))      # epsilon model: diffusers' sigma x + alpha v is eps itself
      coeffs = _AB[min(len(ets), 4) - 1]
      eps = coeffs[0] * ets[-1]
      for k in range(1, len(coeffs)):
        eps = eps + coeffs[k] * ets[-1 - k]
      pred = (x - sigma[i] * eps) / alpha[i]
      x = alpha[i + 1] * pred + sigma[i + 1] * eps
    return x

  return program


def ipndm_schedule(alphas_cumprod, num_steps: int, *, timestep_spacing: str = "linspace",
                   steps_offset: int = 0, final_alpha_cumprod: float = 1.0) -> schedule_lib.Schedule:
  """iPNDM (Zhang & Chen 2023): 4th-order Adams-Bashforth on epsilon with DDIM transfers.

  diffusers' ``IPNDMScheduler.step``: each model output (as an epsilon) joins a history;
  the step uses the Adams-Bashforth combination of the last 1, 2, 3, then 4 of them (lower
  order while warming up, no extra model calls) and moves with the DDIM transfer
  ``x' = alpha' (x - sigma eps) / alpha + sigma' eps``. diffusers' class carries its own
  continuous cosine schedule (and reads the model output as v); here the same update runs on a
  discrete VP model's noise levels ``alpha = sqrt(alpha_bar_t)``, ``sigma = sqrt(1 - alpha_bar_t)``
  at integer timesteps chosen like the other multistep schedulers. It equals diffusers'
  ``IPNDMScheduler(trained_betas=sigmas)`` stepping the same levels, with the epsilon model
  presented to it as a v-prediction (see tests).

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls.
    timestep_spacing: "linspace", "leading" or "trailing" (as `deis_schedule`).
    steps_offset: added to "leading" timesteps.
    final_alpha_cumprod: alpha_bar after the last step (1.0: sigma = 0, as diffusers).

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "ipndm"``.
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  timesteps, alpha, sigma, _ = spacing_lib.multistep_levels(
      alphas, num_steps, spacing=timestep_spacing, steps_offset=steps_offset,
      final_alpha_cumprod=final_alpha_cumprod)
  meta = {"method": "ipndm", "timestep_spacing": timestep_spacing, "steps_offset": int(steps_offset),
          "final_alpha_cumprod": float(final_alpha_cumprod), "diffusers": "IPNDMScheduler"}
  return linear.schedule_from_program(_ipndm_program(alpha, sigma, timesteps), num_steps, meta)
