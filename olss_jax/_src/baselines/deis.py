"""Multistep DEIS (Zhang & Chen 2023, "log-rho" AB-DEIS) in diffusers' form.

diffusers' ``DEISMultistepScheduler`` as a `Schedule`.
"""
from __future__ import annotations

import math

from olss_jax._src import schedule as schedule_lib
from olss_jax._src.baselines import levels as levels_lib
from olss_jax._src.baselines import linear


def _ind2(t, b, c):
  """Integral of the 2-point Lagrange basis in log rho (diffusers' second-order ``ind_fn``)."""
  return t * (-math.log(c) + math.log(t) - 1) / (math.log(b) - math.log(c))


def _ind3(t, b, c, d):
  """Integral of the 3-point Lagrange basis in log rho (diffusers' third-order ``ind_fn``)."""
  lt, lc, ld = math.log(t), math.log(c), math.log(d)
  numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
  return numerator / ((math.log(b) - lc) * (math.log(b) - ld))


def _deis_program(alpha, sigma, lam, timesteps, *, solver_order: int,
                  lower_order_final: bool,
                  convert: levels_lib.Conversion | None = None) -> linear.Program:
  """diffusers' ``DEISMultistepScheduler.step`` loop over (n + 1,) levels.

  ``convert`` reads the model output (its kind's x_0); None: an epsilon model.
  """
  n = len(timesteps)
  rho = [float(s / a) for a, s in zip(alpha, sigma)]
  if convert is None:
    convert = levels_lib.conversion("ddim", alpha, sigma)

  def program(model, x_T):
    x, outputs, lower_order_nums = x_T, [], 0
    for i, t in enumerate(timesteps):
      e = model(x, linear.call_time(t))
      x0 = convert.x0(x, e, i)                          # convert_model_output, back to epsilon
      outputs.append((x - alpha[i] * x0) / sigma[i])
      short = lower_order_final and n < 15
      if levels_lib.zero_step(lam, i):                  # the repeated final sigma: the identity
        pass
      elif solver_order == 1 or lower_order_nums < 1 or (i == n - 1 and short):
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


def deis_schedule(alphas_cumprod, num_steps: int | None = None, *, solver_order: int = 2,
                  lower_order_final: bool = True, timestep_spacing: str = "linspace",
                  steps_offset: int = 0, timesteps=None, use_karras_sigmas: bool = False,
                  use_flow_sigmas: bool = False, flow_shift: float = 1.0,
                  num_train_timesteps: int | None = None,
                  prediction_type: str = "epsilon") -> schedule_lib.Schedule:
  """Multistep DEIS (Zhang & Chen 2023, AB-DEIS in log rho) as a `Schedule` (Eq. 8-9).

  Matches diffusers' ``DEISMultistepScheduler(algorithm_type="deis", solver_type="logrho",
  thresholding=False)`` with the same keyword values (defaults are diffusers' own: order 2,
  lower order on the final steps for n < 15, "linspace", epsilon). The model output becomes a
  data prediction ``x0 = cx x + ce e`` through its kind and then the noise prediction
  ``eps = (x - alpha x0) / sigma`` (diffusers' ``convert_model_output``); the exponential
  integrator in ``rho = sigma / alpha`` interpolates the past eps by a Lagrange polynomial in
  ``log rho``. As in diffusers, the last state is at ``alphas_cumprod[0]`` (not sigma = 0);
  with Karras or flow sigmas diffusers repeats the last model-call sigma as the final one, so
  the last step is the identity and the result is the state the model was last called at
  (for flow sigmas a visibly noisy sample, ``s = shift((1 - 1/T) / n)``).

  Args:
    alphas_cumprod: (T,) training alpha_bar (None allowed with ``use_flow_sigmas``).
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``).
    solver_order: 1, 2 or 3.
    lower_order_final: lower the order on the last steps when n < 15.
    timestep_spacing: "linspace", "leading" or "trailing".
    steps_offset: added to "leading" timesteps.
    timesteps: explicit (n,) strictly decreasing training timesteps (not in diffusers' DEIS;
      as `dpm_solver_pp_schedule`'s).
    use_karras_sigmas: Karras sigmas, the model called at the rounded timesteps.
    use_flow_sigmas: rectified-flow levels (DPM-Solver's flow sigmas), the model called at
      ``int(T s)``; needs ``prediction_type="flow_prediction"``.
    flow_shift: the flow sigmas' shift.
    num_train_timesteps: T for flow sigmas (default ``len(alphas_cumprod)``, or 1000).
    prediction_type: "epsilon", "v_prediction", "sample" or "flow_prediction".

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "deis"``.
  """
  if solver_order not in (1, 2, 3):
    raise ValueError(f"solver_order: expected 1, 2 or 3, got {solver_order!r}")
  states = levels_lib.multistep_states(
      alphas_cumprod, num_steps, scheduler="deis", timestep_spacing=timestep_spacing,
      steps_offset=steps_offset, final_sigmas_type="sigma_min", timesteps=timesteps,
      use_karras_sigmas=use_karras_sigmas, use_flow_sigmas=use_flow_sigmas,
      flow_shift=flow_shift, num_train_timesteps=num_train_timesteps,
      prediction_type=prediction_type)
  program = _deis_program(*states.levels, states.timesteps, solver_order=solver_order,
                          lower_order_final=lower_order_final, convert=states.convert)
  meta = {"method": "deis", "solver_order": int(solver_order), "lower_order_final": bool(lower_order_final),
          "final_sigmas_type": "sigma_min",
          "timestep_spacing": "custom" if timesteps is not None else timestep_spacing,
          "steps_offset": int(steps_offset), **states.metadata,
          "diffusers": "DEISMultistepScheduler"}
  return linear.schedule_from_program(program, states.timesteps.shape[0], meta)
