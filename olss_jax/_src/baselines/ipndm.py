"""Improved PNDM (iPNDM; Zhang & Chen 2023, DEIS paper Sec. 4): PLMS with lower-order warm-up.

diffusers' ``IPNDMScheduler`` update as a `Schedule` on a discrete VP model's timesteps.
"""
from __future__ import annotations

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import validation
from olss_jax._src.baselines import levels as levels_lib
from olss_jax._src.baselines import linear
from olss_jax._src.baselines import spacing as spacing_lib

# Adams-Bashforth weights of the last 1, 2, 3, 4 noise predictions (newest first).
_AB = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def _ipndm_program(alpha, sigma, timesteps) -> linear.Program:
  """diffusers' ``IPNDMScheduler.step`` loop over (n + 1,) VP levels (alpha^2 + sigma^2 = 1)."""

  def program(model, x_T):
    x, ets = x_T, []
    for i, t in enumerate(timesteps):
      ets.append(model(x, linear.call_time(t)))   # epsilon model: diffusers' sigma x + alpha v is eps itself
      coeffs = _AB[min(len(ets), 4) - 1]
      eps = coeffs[0] * ets[-1]
      for k in range(1, len(coeffs)):
        eps = eps + coeffs[k] * ets[-1 - k]
      pred = (x - sigma[i] * eps) / alpha[i]
      x = alpha[i + 1] * pred + sigma[i + 1] * eps
    return x

  return program


def ipndm_schedule(alphas_cumprod, num_steps: int | None = None, *,
                   timestep_spacing: str = "linspace", steps_offset: int = 0,
                   final_alpha_cumprod: float = 1.0, timesteps=None) -> schedule_lib.Schedule:
  """iPNDM (Zhang & Chen 2023): 4th-order Adams-Bashforth on epsilon with DDIM transfers.

  diffusers' ``IPNDMScheduler.step``: each model output (as an epsilon) joins a history;
  the step uses the Adams-Bashforth combination of the last 1, 2, 3, then 4 of them (lower
  order while warming up, no extra model calls) and moves with the DDIM transfer
  ``x' = alpha' (x - sigma eps) / alpha + sigma' eps``. diffusers' class carries its own
  continuous cosine schedule (and reads the model output as v); here the same update runs on a
  discrete VP model's noise levels ``alpha = sqrt(alpha_bar_t)``, ``sigma = sqrt(1 - alpha_bar_t)``
  at integer timesteps chosen like the other multistep schedulers. It equals diffusers'
  ``IPNDMScheduler(trained_betas=sigmas)`` stepping the same levels, with the epsilon model
  presented to it as a v-prediction (see tests). Epsilon models only.

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (None: ``len(timesteps)``).
    timestep_spacing: "linspace", "leading" or "trailing" (as `deis_schedule`).
    steps_offset: added to "leading" timesteps.
    final_alpha_cumprod: alpha_bar after the last step (1.0: sigma = 0, as diffusers).
    timesteps: explicit (n,) strictly decreasing training timesteps instead of a spacing
      (integers: the table; floats: `noise.alpha_bar_at`, float32 schedule timesteps).

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "ipndm"``.
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  num_steps = levels_lib.resolve_num_steps(num_steps, timesteps)
  if timesteps is None:
    ts = spacing_lib.multistep_timesteps(num_steps, alphas.shape[0], spacing=timestep_spacing,
                                         steps_offset=steps_offset)
  else:
    ts = validation.check_timesteps(timesteps, alphas.shape[0])
  alpha, sigma, _ = levels_lib.vp_levels(alphas, ts, final_alpha_cumprod)
  meta = {"method": "ipndm", "timestep_spacing": "custom" if timesteps is not None else timestep_spacing,
          "steps_offset": int(steps_offset), "final_alpha_cumprod": float(final_alpha_cumprod),
          "prediction_type": "epsilon", "custom_timesteps": timesteps is not None,
          "diffusers": "IPNDMScheduler"}
  if timesteps is not None:
    meta["timesteps"] = ts.tolist()
  return linear.schedule_from_program(_ipndm_program(alpha, sigma, ts), ts.shape[0], meta)
