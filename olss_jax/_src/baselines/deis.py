"""Multistep DEIS (Zhang & Chen 2023, "log-rho" AB-DEIS) in diffusers' form.

diffusers' ``DEISMultistepScheduler`` as a `Schedule`.
"""
from __future__ import annotations

import math

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src.baselines import linear
from olss_jax._src.baselines import spacing as spacing_lib


def _ind2(t, b, c):
  """Integral of the 2-point Lagrange basis in log rho (diffusers' second-order ``ind_fn``)."""
  return t * (-math.log(c) + math.log(t) - 1) / (math.log(b) - math.log(c))


def _ind3(t, b, c, d):
  """Integral of the 3-point Lagrange basis in log rho (diffusers' third-order ``ind_fn``)."""
  lt, lc, ld = math.log(t), math.log(c), math.log(d)
  numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
  return numerator / ((math.log(b) - lc) * (math.log(b) - ld))


def _deis_program(alpha, sigma, lam, timesteps, *, solver_order: int,
                  lower_order_final: bool) -> linear.Program:
  """diffusers' ``DEISMultistepScheduler.step`` loop over (n + 1,) VP levels."""
  n = len(timesteps)
  rho = [float(s / a) for a, s in zip(alpha, sigma)]

  def program(model, x_T):
    x, outputs, lower_order_nums = x_T, [], 0
    for i, t in enumerate(timesteps):
      e = model(x, int(t))
      x0 = (x - sigma[i] * e) / alpha[i]                # convert_model_output, back to epsilon
      outputs.append((x - alpha[i] * x0) / sigma[i])
      short = lower_order_final and n < 15
      if solver_order == 1 or lower_order_nums < 1 or (i == n - 1 and short):
        h = lam[i + 1] - lam[i]
        x = (alpha[i + 1] / alpha[i]) * x - (sigma[i + 1] * math.expm1(h)) * outputs[-1]
      elif solver_order == 2 or lower_order_nums < 2 or (i == n - 2 and short):
        r_t, r0, r1 = rho[i + 1], rho[i], rho[i - 1]
        c1 = _ind2(r_t, r0, r1) - _ind2(r0, r0, r1)
        c2 = _ind2(r_t, r1, r0) - _ind2(r0, r1, r0)
        x = alpha[i + 1] * (x / alpha[i] + c1 * outputs[-1] + c2 * outputs[-2])
      else:
        r_t, r0, r1, r2 = rho[i + 1], rho[i], rho[i - 1], rho[i - 2]
        c1 = _ind3(r_t, r0, r1, r2) - _ind3(r0, r0, r1, r2)
        c2 = _ind3(r_t, r1, r2, r0) - _ind3(r0, r1, r2, r0)
        c3 = _ind3(r_t, r2, r0, r1) - _ind3(r0, r2, r0, r1)
        x = alpha[i + 1] * (x / alpha[i] + c1 * outputs[-1] + c2 * outputs[-2]
                            + c3 * outputs[-3])
      lower_order_nums = min(lower_order_nums + 1, solver_order)
    return x

  return program


def deis_schedule(alphas_cumprod, num_steps: int, *, solver_order: int = 2,
                  lower_order_final: bool = True, timestep_spacing: str = "linspace",
                  steps_offset: int = 0) -> schedule_lib.Schedule:
  """Multistep DEIS (Zhang & Chen 2023, AB-DEIS in log rho) as a `Schedule` (Eq. 8-9).

  Matches diffusers' ``DEISMultistepScheduler(algorithm_type="deis", solver_type="logrho",
  prediction_type="epsilon", thresholding=False)`` with the same keyword values (defaults are
  diffusers' own: order 2, lower order on the final steps for n < 15, "linspace"). The
  exponential integrator in ``rho = sigma / alpha`` interpolates the past noise predictions by a
  Lagrange polynomial in ``log rho``. As in diffusers, the last state is at
  ``alphas_cumprod[0]`` (not sigma = 0).

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``).
    solver_order: 1, 2 or 3.
    lower_order_final: lower the order on the last steps when n < 15.
    timestep_spacing: "linspace", "leading" or "trailing".
    steps_offset: added to "leading" timesteps.

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "deis"``.
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  if solver_order not in (1, 2, 3):
    raise ValueError(f"solver_order: expected 1, 2 or 3, got {solver_order!r}")
  timesteps, alpha, sigma, lam = spacing_lib.multistep_levels(
      alphas, num_steps, spacing=timestep_spacing, steps_offset=steps_offset,
      final_alpha_cumprod=float(alphas[0]))
  program = _deis_program(alpha, sigma, lam, timesteps, solver_order=solver_order,
                          lower_order_final=lower_order_final)
  meta = {"method": "deis", "solver_order": int(solver_order), "lower_order_final": bool(lower_order_final),
          "final_sigmas_type": "sigma_min", "timestep_spacing": timestep_spacing,
          "steps_offset": int(steps_offset), "diffusers": "DEISMultistepScheduler"}
  return linear.schedule_from_program(program, num_steps, meta)
