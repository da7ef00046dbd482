"""Multistep DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b) in diffusers' form.

diffusers' ``DPMSolverMultistepScheduler`` / ``FlaxDPMSolverMultistepScheduler`` with
``algorithm_type`` "dpmsolver" or "dpmsolver++", as `Schedule`s.
"""
from __future__ import annotations

import math

from olss_jax._src import schedule as schedule_lib
from olss_jax._src.baselines import levels as levels_lib
from olss_jax._src.baselines import linear


def _dpm_program(alpha, sigma, lam, timesteps, *, plus_plus: bool, solver_order: int,
                 solver_type: str, lower_order_final: bool, zero_final: bool,
                 convert: levels_lib.Conversion | None = None) -> linear.Program:
  """diffusers' ``DPMSolverMultistepScheduler.step`` loop over (n + 1,) levels.

  ``convert`` reads the model output (its kind's x_0 / eps); None: an epsilon model.
  """
  n = len(timesteps)
  if convert is None:
    convert = levels_lib.conversion("ddim", alpha, sigma)

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
      e = model(x, linear.call_time(t))
      m = convert.x0(x, e, i) if plus_plus else convert.eps(x, e, i)   # convert_model_output
      outputs.append(m)
      short = lower_order_final and n < 15
      final_low = i == n - 1 and (short or zero_final)
      second_low = i == n - 2 and short
      if levels_lib.zero_step(lam, i):   # a repeated final sigma: the identity
        pass
      elif solver_order == 1 or lower_order_nums < 1 or final_low:
        x = first_order(x, i, outputs[-1])
      elif solver_order == 2 or lower_order_nums < 2 or second_low:
        x = second_order(x, i, outputs[-1], outputs[-2])
      else:
        x = third_order(x, i, outputs[-1], outputs[-2], outputs[-3])
      lower_order_nums = min(lower_order_nums + 1, solver_order)
    return x

  return program


def _dpm_schedule(alphas_cumprod, num_steps, *, plus_plus, solver_order, solver_type,
                  lower_order_final, final_sigmas_type, timestep_spacing, steps_offset, method,
                  timesteps, use_karras_sigmas, use_lu_lambdas, use_flow_sigmas, flow_shift,
                  num_train_timesteps, prediction_type):
  if solver_order not in (1, 2, 3):
    raise ValueError(f"solver_order: expected 1, 2 or 3, got {solver_order!r}")
  if solver_type not in ("midpoint", "heun"):
    raise ValueError(f"solver_type: expected 'midpoint' or 'heun', got {solver_type!r}")
  if not plus_plus and prediction_type == "flow_prediction":
    raise ValueError("prediction_type: diffusers' DPM-Solver (algorithm_type='dpmsolver') does not "
                     "take 'flow_prediction'; use dpm_solver_pp_schedule")
  states = levels_lib.multistep_states(
      alphas_cumprod, num_steps, scheduler="dpm", timestep_spacing=timestep_spacing,
      steps_offset=steps_offset, final_sigmas_type=final_sigmas_type, timesteps=timesteps,
      use_karras_sigmas=use_karras_sigmas, use_lu_lambdas=use_lu_lambdas,
      use_flow_sigmas=use_flow_sigmas, flow_shift=flow_shift,
      num_train_timesteps=num_train_timesteps, prediction_type=prediction_type)
  program = _dpm_program(*states.levels, states.timesteps, plus_plus=plus_plus,
                         solver_order=solver_order, solver_type=solver_type,
                         lower_order_final=lower_order_final,
                         zero_final=final_sigmas_type == "zero", convert=states.convert)
  meta = {"method": method, "algorithm_type": "dpmsolver++" if plus_plus else "dpmsolver",
          "solver_order": int(solver_order), "solver_type": solver_type,
          "lower_order_final": bool(lower_order_final), "final_sigmas_type": final_sigmas_type,
          "timestep_spacing": "custom" if timesteps is not None else timestep_spacing,
          "steps_offset": int(steps_offset), **states.metadata,
          "diffusers": "DPMSolverMultistepScheduler"}
  return linear.schedule_from_program(program, states.timesteps.shape[0], meta)


def dpm_solver_pp_schedule(alphas_cumprod, num_steps: int | None = None, *, solver_order: int = 2,
                           solver_type: str = "midpoint", lower_order_final: bool = True,
                           final_sigmas_type: str = "zero", timestep_spacing: str = "linspace",
                           steps_offset: int = 0, timesteps=None, use_karras_sigmas: bool = False,
                           use_lu_lambdas: bool = False, use_flow_sigmas: bool = False,
                           flow_shift: float = 1.0, num_train_timesteps: int | None = None,
                           prediction_type: str = "epsilon") -> schedule_lib.Schedule:
  """Multistep DPM-Solver++ (Lu et al. 2022b, Algorithm 2: "2M") as a `Schedule` (Eq. 8-9).

  Matches diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
  thresholding=False)`` with the same keyword values (defaults are diffusers' own: order 2,
  midpoint, lower order on the final step(s), final sigma 0, "linspace" spacing, epsilon).
  The model output is turned into a data prediction ``x0 = cx x + ce e`` (linear in the state;
  epsilon: ``(x - sigma_t e) / alpha_t``) and the solver steps in ``lambda = log(alpha /
  sigma)``: ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0 - ...``, h = lambda_t -
  lambda_s. With ``final_sigmas_type="zero"`` the last step is always first order (it lands on
  x0); ``"sigma_min"`` (last state at ``alphas_cumprod[0]``) is what
  ``FlaxDPMSolverMultistepScheduler`` always does, with lower order at the end only for fewer
  than 15 steps. With Karras/Lu sigmas and "sigma_min" diffusers' last step is from sigma_min
  to sigma_min, the identity here (diffusers: the same for midpoint, NaN for "heun" or order 3
  with n >= 15).

  Args:
    alphas_cumprod: (T,) training alpha_bar (None allowed with ``use_flow_sigmas``).
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``).
    solver_order: 1, 2 or 3.
    solver_type: "midpoint" or "heun" (second-order update form).
    lower_order_final: lower the order on the last steps when n < 15.
    final_sigmas_type: "zero" or "sigma_min" ("zero" only with flow sigmas).
    timestep_spacing: "linspace", "leading" or "trailing".
    steps_offset: added to "leading" timesteps.
    timesteps: explicit (n,) strictly decreasing training timesteps in [0, T - 1] instead of a
      spacing (diffusers' ``set_timesteps(timesteps=...)``; ``num_steps`` may then be None).
      Integers are diffusers' semantics exactly (the table at each); non-integer floats, which
      diffusers would truncate to int64, are continuous times (`noise.alpha_bar_at`) and give
      float32 schedule timesteps.
    use_karras_sigmas: Karras et al. (2022) sigmas between the table's ends; the model is
      called at the rounded timesteps ``round(sigma_to_t(s))`` while the states keep the Karras
      levels (diffusers' float32 values).
    use_lu_lambdas: DPM-Solver's uniform-lambda (log-sigma) steps, timesteps rounded likewise.
    use_flow_sigmas: rectified-flow levels ``x = (1 - s) x_0 + s eps`` with diffusers' shifted
      flow sigmas (`noise.flow_multistep_sigmas`); the model (``prediction_type=
      "flow_prediction"``, the velocity) is called at ``int(T s)``, diffusers' truncating
      int64 cast, while the states keep s. ``alphas_cumprod`` may then be None.
    flow_shift: the flow sigmas' shift (SD3: 3).
    num_train_timesteps: T for flow sigmas (default ``len(alphas_cumprod)``, or 1000).
    prediction_type: the model's output: "epsilon", "v_prediction", "sample" (x_0) or
      "flow_prediction"; converted to x_0 / eps by its teacher `Kind`.

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] ==
    "dpm_solver_pp"``.
  """
  return _dpm_schedule(alphas_cumprod, num_steps, plus_plus=True, solver_order=solver_order,
                       solver_type=solver_type, lower_order_final=lower_order_final,
                       final_sigmas_type=final_sigmas_type, timestep_spacing=timestep_spacing,
                       steps_offset=steps_offset, method="dpm_solver_pp", timesteps=timesteps,
                       use_karras_sigmas=use_karras_sigmas, use_lu_lambdas=use_lu_lambdas,
                       use_flow_sigmas=use_flow_sigmas, flow_shift=flow_shift,
                       num_train_timesteps=num_train_timesteps, prediction_type=prediction_type)


def dpm_solver_schedule(alphas_cumprod, num_steps: int | None = None, *, solver_order: int = 2,
                        solver_type: str = "midpoint", lower_order_final: bool = True,
                        timestep_spacing: str = "linspace", steps_offset: int = 0,
                        timesteps=None, use_karras_sigmas: bool = False,
                        use_lu_lambdas: bool = False,
                        prediction_type: str = "epsilon") -> schedule_lib.Schedule:
  """Multistep DPM-Solver (Lu et al. 2022, noise-prediction form; "2M" at order 2) as a `Schedule`.

  Matches diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver",
  final_sigmas_type="sigma_min")`` (diffusers rejects ``final_sigmas_type="zero"`` for this
  algorithm, so the last state is at ``alphas_cumprod[0]``) and
  ``FlaxDPMSolverMultistepScheduler(algorithm_type="dpmsolver")``. The update is the
  exponential integrator of the noise prediction ``eps = dx x + de e`` (epsilon: e) in
  ``lambda = log(alpha / sigma)``: ``x_t = (alpha_t / alpha_s) x_s - sigma_t (e^h - 1) D0 - ...``.
  diffusers' noise form takes no flow models. With Karras/Lu sigmas the last step is from
  sigma_min to sigma_min (the identity; see `dpm_solver_pp_schedule`).

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``).
    solver_order: 1, 2 or 3 (diffusers' default 2).
    solver_type: "midpoint" or "heun".
    lower_order_final: lower the order on the last steps when n < 15.
    timestep_spacing: "linspace", "leading" or "trailing".
    steps_offset: added to "leading" timesteps.
    timesteps, use_karras_sigmas, use_lu_lambdas: as in `dpm_solver_pp_schedule`.
    prediction_type: "epsilon", "v_prediction" or "sample".

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] ==
    "dpm_solver"``.
  """
  return _dpm_schedule(alphas_cumprod, num_steps, plus_plus=False, solver_order=solver_order,
                       solver_type=solver_type, lower_order_final=lower_order_final,
                       final_sigmas_type="sigma_min", timestep_spacing=timestep_spacing,
                       steps_offset=steps_offset, method="dpm_solver", timesteps=timesteps,
                       use_karras_sigmas=use_karras_sigmas, use_lu_lambdas=use_lu_lambdas,
                       use_flow_sigmas=False, flow_shift=1.0, num_train_timesteps=None,
                       prediction_type=prediction_type)
