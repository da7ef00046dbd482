"""Align Your Steps (Sabour, Fidler & Kreis, ICML 2024): published optimised sampling schedules.

Sabour, Fidler, Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion Models",
arXiv:2404.14507. The authors publish 10-step schedules for popular models on the project's
quick-start page (https://research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html);
diffusers 0.39 ships the same numbers as ``diffusers.schedulers.AysSchedules``
(``"StableDiffusionTimesteps"``, ``"StableDiffusionXLTimesteps"``), meant for
``DPMSolverMultistepScheduler.set_timesteps(timesteps=...)``. They are copied below as facts.

For other step counts the same page gives ``loglinear_interp``: with the schedule's 11 noise
levels ``sigma_0 > ... > sigma_10`` (the 10 steps' sigmas followed by sigma_min, the sigma of
timestep 0), place them on the uniform grid ``linspace(0, 1, 11)``, interpolate ``log sigma``
linearly (``np.interp``) at ``linspace(0, 1, n + 1)`` and exponentiate. Here the 11 levels are
the model's table ``sqrt((1 - alpha_bar_t) / alpha_bar_t)`` at the published timesteps and at
t = 0 (for Stable Diffusion within 0.32% of the page's published 3-decimal sigmas, the
optimised levels the timesteps round; diffusers' ``"StableDiffusionSigmas"`` ends at 0
instead of sigma_min). The n + 1 interpolated sigmas are mapped back to training timesteps
with `noise.sigma_to_t` (diffusers' ``_sigma_to_t``) and rounded, as diffusers' Karras
schedules are; the last (sigma_min, timestep 0) is the final state, not a model call, exactly
like the published schedules.
"""
from __future__ import annotations

import numpy as np

from olss_jax._src import noise

# The published 10-step schedules (model-call timesteps of a 1000-step VP model); identical in
# diffusers 0.39's `AysSchedules` and on the AYS quick-start page.
AYS_TIMESTEPS: dict[str, tuple[int, ...]] = {
    "StableDiffusion": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24),
    "StableDiffusionXL": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13),
}


def loglinear_interp(levels, num_points: int) -> np.ndarray:
  """The AYS quick-start page's ``loglinear_interp``: resample decreasing levels log-linearly.

  ``levels`` (m,) decreasing are placed on ``linspace(0, 1, m)``; ``log`` of them is
  interpolated linearly at ``linspace(0, 1, num_points)``.

  Returns:
    (num_points,) float64 decreasing, from ``levels[0]`` to ``levels[-1]``.
  """
  levels = np.asarray(levels, np.float64)
  xs = np.linspace(0, 1, levels.shape[0])
  ys = np.log(levels[::-1])
  new_ys = np.interp(np.linspace(0, 1, num_points), xs, ys)
  return np.exp(new_ys)[::-1].copy()


def ays_timesteps(num_steps: int = 10, model: str = "StableDiffusion", *,
                  alphas_cumprod=None) -> np.ndarray:
  """Align Your Steps model-call timesteps for ``num_steps`` steps (Sabour et al. 2024).

  10 steps: the published schedule (`AYS_TIMESTEPS`). Other n: the authors' log-linear
  interpolation (module docstring): sigmas ``s_k`` of the published timesteps and of t = 0,
  ``log s`` resampled uniformly at n + 1 points, mapped back by ``t = round(sigma_to_t(s))``,
  the last (t = 0) dropped.

  Args:
    num_steps: n >= 1 model calls.
    model: ``"StableDiffusion"`` (SD 1.x / 2.x) or ``"StableDiffusionXL"``.
    alphas_cumprod: (T = 1000,) the model's alpha_bar, for the sigma <-> timestep maps; Stable
      Diffusion's scaled-linear schedule (also SDXL's) by default.

  Returns:
    (n,) int32 strictly decreasing timesteps, first 999; pass them as ``timesteps=`` to the
    multistep baselines (or to diffusers' ``set_timesteps``).

  Raises:
    ValueError: an unknown model, or n so large that rounding repeats a timestep.
  """
  if model not in AYS_TIMESTEPS:
    raise ValueError(f"model: expected one of {sorted(AYS_TIMESTEPS)}, got {model!r}")
  num_steps = noise.check_count(num_steps, "num_steps")
  published = np.asarray(AYS_TIMESTEPS[model], np.int32)
  if num_steps == published.shape[0]:
    return published.copy()
  alphas = noise.check_alphas_cumprod(noise.scaled_linear_alphas_cumprod()
                                      if alphas_cumprod is None else alphas_cumprod)
  if alphas.shape[0] != 1000:
    raise ValueError(f"alphas_cumprod: AYS schedules are for 1000 training timesteps, got "
                     f"{alphas.shape[0]}")
  table = noise.vp_sigmas(alphas)
  sigmas = loglinear_interp(table[np.append(published, 0)], num_steps + 1)
  timesteps = np.round(noise.sigma_to_t(sigmas, alphas))[:-1].astype(np.int32)
  if np.any(np.diff(timesteps) >= 0):
    raise ValueError(f"num_steps: {num_steps} AYS steps round to repeated timesteps "
                     f"{timesteps.tolist()}")
  return timesteps
