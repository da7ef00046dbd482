"""Multistep DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b) in diffusers' form.

diffusers' ``DPMSolverMultistepScheduler`` / ``FlaxDPMSolverMultistepScheduler`` with
``algorithm_type`` "dpmsolver" or "dpmsolver++", as `Schedule`s.
"""
from __future__ import annotations

import math

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src.baselines import linear
from olss_jax._src.baselines import spacing as spacing_lib


def _dpm_program(alpha, sigma, lam, timesteps, *, plus_plus: bool, solver_order: int,
                 solver_type: str, lower_order_final: bool, zero_final: bool) -> linear.Program:
  """diffusers' ``DPMSolverMultistepScheduler.step`` loop over (n + 1,) VP levels."""
  n = len(timesteps)

  def first_order(x, i, m0):
    h = lam[i + 1] - lam[i]
    if plus_plus:   # DPM-Solver++ Eq. 8 / DDIM in data prediction form
      return (sigma[i + 1] / sigma[i]) * x - (alpha[i + 1] * math.expm1(-h)) * m0
    return (alpha[i + 1] / alpha[i]) * x - (sigma[i + 1] * math.expm1(h)) * m0

  def second_order(x, i, m0, m1):
    h, h_0 = lam[i + 1] - lam[i], lam[i] - lam[i - 1]
    r0 = h_0 / h
    d0, d1 = m0, (1.0 / r0) * (m0 - m1)
    a_t, s_t = alpha[i + 1], sigma[i + 1]
    if plus_plus:   # DPM-Solver++(2M), Algorithm 2
      base = (s_t / sigma[i]) * x - (a_t * (math.exp(-h) - 1.0)) * d0
      if solver_type == "midpoint":
        return base - (0.5 * (a_t * (math.exp(-h) - 1.0))) * d1
      return base + (a_t * ((math.exp(-h) - 1.0) / h + 1.0)) * d1
    base = (a_t / alpha[i]) * x - (s_t * (math.exp(h) - 1.0)) * d0
    if solver_type == "midpoint":
      return base - (0.5 * (s_t * (math.exp(h) - 1.0))) * d1
    return base - (s_t * ((math.exp(h) - 1.0) / h - 1.0)) * d1

  def third_order(x, i, m0, m1, m2):
    h, h_0, h_1 = lam[i + 1] - lam[i], lam[i] - lam[i - 1], lam[i - 1] - lam[i - 2]
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    a_t, s_t = alpha[i + 1], sigma[i + 1]
    if plus_plus:
      return ((s_t / sigma[i]) * x - (a_t * (math.exp(-h) - 1.0)) * m0
              + (a_t * ((math.exp(-h) - 1.0) / h + 1.0)) * d1
              - (a_t * ((math.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2)
    return ((a_t / alpha[i]) * x - (s_t * (math.exp(h) - 1.0)) * m0
            - (s_t * ((math.exp(h) - 1.0) / h - 1.0)) * d1
            - (s_t * ((math.exp(h) - 1.0 - h) / h**2 - 0.5)) * d2)

  def program(model, x_T):
    x, outputs, lower_order_nums = x_T, [], 0
    for i, t in enumerate(timesteps):
      e = model(x, int(t))
      m = (x - sigma[i] * e) / alpha[i] if plus_plus else e     # convert_model_output
      outputs.append(m)
      short = lower_order_final and n < 15
      final_low = i == n - 1 and (short or zero_final)
      second_low = i == n - 2 and short
      if solver_order == 1 or lower_order_nums < 1 or final_low:
        x = first_order(x, i, outputs[-1])
      elif solver_order == 2 or lower_order_nums < 2 or second_low:
        x = second_order(x, i, outputs[-1], outputs[-2])
      else:
        x = third_order(x, i, outputs[-1], outputs[-2], outputs[-3])
      lower_order_nums = min(lower_order_nums + 1, solver_order)
    return x

  return program


def _dpm_schedule(alphas_cumprod, num_steps, *, plus_plus, solver_order, solver_type,
                  lower_order_final, final_sigmas_type, timestep_spacing, steps_offset, method):
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  if solver_order not in (1, 2, 3):
    raise ValueError(f"solver_order: expected 1, 2 or 3, got {solver_order!r}")
  if solver_type not in ("midpoint", "heun"):
    raise ValueError(f"solver_type: expected 'midpoint' or 'heun', got {solver_type!r}")
  timesteps, alpha, sigma, lam = spacing_lib.multistep_levels(
      alphas, num_steps, spacing=timestep_spacing, steps_offset=steps_offset,
      final_alpha_cumprod=spacing_lib.final_alpha(alphas, final_sigmas_type))
  program = _dpm_program(alpha, sigma, lam, timesteps, plus_plus=plus_plus,
                         solver_order=solver_order, solver_type=solver_type,
                         lower_order_final=lower_order_final,
                         zero_final=final_sigmas_type == "zero")
  meta = {"method": method, "algorithm_type": "dpmsolver++" if plus_plus else "dpmsolver",
          "solver_order": int(solver_order), "solver_type": solver_type,
          "lower_order_final": bool(lower_order_final), "final_sigmas_type": final_sigmas_type,
          "timestep_spacing": timestep_spacing, "steps_offset": int(steps_offset),
          "diffusers": "DPMSolverMultistepScheduler"}
  return linear.schedule_from_program(program, num_steps, meta)


def dpm_solver_pp_schedule(alphas_cumprod, num_steps: int, *, solver_order: int = 2,
                           solver_type: str = "midpoint", lower_order_final: bool = True,
                           final_sigmas_type: str = "zero", timestep_spacing: str = "linspace",
                           steps_offset: int = 0) -> schedule_lib.Schedule:
  """Multistep DPM-Solver++ (Lu et al. 2022b, Algorithm 2: "2M") as a `Schedule` (Eq. 8-9).

  Matches diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
  prediction_type="epsilon", thresholding=False)`` with the same keyword values (defaults are
  diffusers' own: order 2, midpoint, lower order on the final step(s), final sigma 0,
  "linspace" spacing). The model's epsilon is turned into a data prediction
  ``x0 = (x - sigma_t e) / alpha_t`` (linear in the state) and the solver steps in
  ``lambda = log(alpha / sigma)``. With ``final_sigmas_type="zero"`` the last step is always
  first order (it lands on x0); ``"sigma_min"`` (last state at ``alphas_cumprod[0]``) is what
  ``FlaxDPMSolverMultistepScheduler`` always does, with lower order at the end only for fewer
  than 15 steps.

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``).
    solver_order: 1, 2 or 3.
    solver_type: "midpoint" or "heun" (second-order update form).
    lower_order_final: lower the order on the last steps when n < 15.
    final_sigmas_type: "zero" or "sigma_min".
    timestep_spacing: "linspace", "leading" or "trailing".
    steps_offset: added to "leading" timesteps.

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] ==
    "dpm_solver_pp"``.
  """
  return _dpm_schedule(alphas_cumprod, num_steps, plus_plus=True, solver_order=solver_order,
                       solver_type=solver_type, lower_order_final=lower_order_final,
                       final_sigmas_type=final_sigmas_type, timestep_spacing=timestep_spacing,
                       steps_offset=steps_offset, method="dpm_solver_pp")


def dpm_solver_schedule(alphas_cumprod, num_steps: int, *, solver_order: int = 2,
                        solver_type: str = "midpoint", lower_order_final: bool = True,
                        timestep_spacing: str = "linspace",
                        steps_offset: int = 0) -> schedule_lib.Schedule:
  """Multistep DPM-Solver (Lu et al. 2022, noise-prediction form; "2M" at order 2) as a `Schedule`.

  Matches diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver",
  final_sigmas_type="sigma_min", prediction_type="epsilon")`` (diffusers rejects
  ``final_sigmas_type="zero"`` for this algorithm, so the last state is at
  ``alphas_cumprod[0]``) and ``FlaxDPMSolverMultistepScheduler(algorithm_type="dpmsolver")``.
  The update is the exponential integrator of the noise prediction in
  ``lambda = log(alpha / sigma)``: ``x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) D0 - ...``.

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``).
    solver_order: 1, 2 or 3 (diffusers' default 2).
    solver_type: "midpoint" or "heun".
    lower_order_final: lower the order on the last steps when n < 15.
    timestep_spacing: "linspace", "leading" or "trailing".
    steps_offset: added to "leading" timesteps.

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] ==
    "dpm_solver"``.
  """
  return _dpm_schedule(alphas_cumprod, num_steps, plus_plus=False, solver_order=solver_order,
                       solver_type=solver_type, lower_order_final=lower_order_final,
                       final_sigmas_type="sigma_min", timestep_spacing=timestep_spacing,
                       steps_offset=steps_offset, method="dpm_solver")
