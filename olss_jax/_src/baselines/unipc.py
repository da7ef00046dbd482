"""UniPC (Zhao et al. 2023): multistep UniP predictor with the UniC corrector, B(h) variants.

diffusers' ``UniPCMultistepScheduler`` as a `Schedule`.
"""
from __future__ import annotations

import math

import numpy as np

from olss_jax._src import schedule as schedule_lib
from olss_jax._src.baselines import levels as levels_lib
from olss_jax._src.baselines import linear


def _bh_coefficients(hh: float, rks: list[float], order: int, solver_type: str):
  """UniPC's (R, b) system and B(h) (paper Algorithm 2/3; diffusers' bh update).

  Returns:
    (R (order, order), b (order,), h_phi_1, B_h): ``R[i] = rks ** i``.
  """
  h_phi_1 = math.expm1(hh)
  h_phi_k = h_phi_1 / hh - 1.0
  b_h = hh if solver_type == "bh1" else math.expm1(hh)
  rks = np.asarray(rks + [1.0], np.float64)
  rows, b, factorial = [], [], 1
  for i in range(1, order + 1):
    rows.append(rks ** (i - 1))
    b.append(h_phi_k * factorial / b_h)
    factorial *= i + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  return np.stack(rows), np.asarray(b), h_phi_1, b_h


def _unipc_program(alpha, sigma, lam, timesteps, *, solver_order: int, solver_type: str,
                   predict_x0: bool, lower_order_final: bool,
                   disable_corrector: tuple[int, ...],
                   convert: levels_lib.Conversion | None = None) -> linear.Program:
  """diffusers' ``UniPCMultistepScheduler.step`` loop over (n + 1,) levels.

  ``convert`` reads the model output (its kind's x_0 / eps); None: an epsilon model.
  """
  n = len(timesteps)
  if convert is None:
    convert = levels_lib.conversion("ddim", alpha, sigma)

  def combine(x, m0, s, t, h, d1s, rhos, extra):
    # x_t = (ratio) x - scale * h_phi_1 * m0 - scale * B_h * (sum_k rhos_k D1_k + extra)
    hh = -h if predict_x0 else h
    _, _, h_phi_1, b_h = _bh_coefficients(hh, [], 1, solver_type)
    if predict_x0:
      out = (sigma[t] / sigma[s]) * x - (alpha[t] * h_phi_1) * m0
      scale = alpha[t] * b_h
    else:
      out = (alpha[t] / alpha[s]) * x - (sigma[t] * h_phi_1) * m0
      scale = sigma[t] * b_h
    for rho, d1 in zip(rhos, d1s):
      out = out - (scale * float(rho)) * d1
    for rho, d in extra:
      out = out - (scale * float(rho)) * d
    return out

  def predictor(x, i, outputs, order):
    # UniP-p from state i to i + 1 (multistep_uni_p_bh_update).
    if levels_lib.zero_step(lam, i):    # the repeated final sigma: the identity
      return x
    h = lam[i + 1] - lam[i]
    m0 = outputs[-1]
    rks, d1s = [], []
    for k in range(1, order):
      rk = (lam[i - k] - lam[i]) / h
      rks.append(rk)
      d1s.append((outputs[-(k + 1)] - m0) / rk)
    hh = -h if predict_x0 else h
    r, b, _, _ = _bh_coefficients(hh, rks, order, solver_type)
    if order == 1:
      rhos = []
    elif order == 2:
      rhos = [0.5]
    else:
      rhos = list(np.linalg.solve(r[:-1, :-1], b[:-1]))
    return combine(x, m0, i, i + 1, h, d1s, rhos, [])

  def corrector(model_t, last_sample, i, outputs, order):
    # UniC-p: recompute the step from state i - 1 to i using the new output (uni_c_bh_update).
    h = lam[i] - lam[i - 1]
    m0 = outputs[-1]
    rks, d1s = [], []
    for k in range(1, order):
      rk = (lam[i - (k + 1)] - lam[i - 1]) / h
      rks.append(rk)
      d1s.append((outputs[-(k + 1)] - m0) / rk)
    hh = -h if predict_x0 else h
    r, b, _, _ = _bh_coefficients(hh, rks, order, solver_type)
    rhos = [0.5] if order == 1 else list(np.linalg.solve(r, b))
    return combine(last_sample, m0, i - 1, i, h, d1s, rhos[:-1], [(rhos[-1], model_t - m0)])

  def program(model, x_T):
    x, outputs, last_sample, this_order, lower_order_nums = x_T, [], None, 0, 0
    for i, t in enumerate(timesteps):
      e = model(x, linear.call_time(t))
      # convert_model_output, with the uncorrected x
      m = convert.x0(x, e, i) if predict_x0 else convert.eps(x, e, i)
      if i > 0 and (i - 1) not in disable_corrector and last_sample is not None:
        x = corrector(m, last_sample, i, outputs, this_order)
      outputs.append(m)
      order = min(solver_order, n - i) if lower_order_final else solver_order
      this_order = min(order, lower_order_nums + 1)
      last_sample = x
      x = predictor(x, i, outputs, this_order)
      lower_order_nums = min(lower_order_nums + 1, solver_order)
    return x

  return program


def unipc_schedule(alphas_cumprod, num_steps: int | None = None, *, solver_order: int = 2,
                   solver_type: str = "bh2", predict_x0: bool = True,
                   lower_order_final: bool = True, disable_corrector=(),
                   final_sigmas_type: str = "zero", timestep_spacing: str = "linspace",
                   steps_offset: int = 0, timesteps=None, use_karras_sigmas: bool = False,
                   use_flow_sigmas: bool = False, flow_shift: float = 1.0,
                   num_train_timesteps: int | None = None,
                   prediction_type: str = "epsilon") -> schedule_lib.Schedule:
  """UniPC (Zhao et al. 2023, UniP-p predictor + UniC-p corrector, Algorithms 2-3) as a `Schedule`.

  Matches diffusers' ``UniPCMultistepScheduler(thresholding=False)`` with the same keyword
  values; the defaults are diffusers' own (order 2, "bh2", data prediction, lower order on the
  final steps, no corrector disabled, final sigma 0, "linspace", epsilon). The model output is
  read as ``x0 = cx x + ce e`` (or ``eps = dx x + de e`` with ``predict_x0=False``) through its
  kind. After each model call (except the first) the corrector rebuilds the state the model
  was just evaluated at, using that very output; the next predictor starts from the corrected
  state, while the model's output stays the one computed at the uncorrected state. All of it
  is linear in x_T and the outputs, and there are exactly n model calls (the final state is
  not corrected, as in diffusers). One difference: with ``solver_type="bh1"`` and
  ``final_sigmas_type="zero"`` diffusers 0.39 returns NaN (its last step multiplies
  ``B(h) = h = -inf`` by a zero residual); here the empty residual is skipped, giving the
  finite limit. With Karras or flow sigmas and ``"sigma_min"`` diffusers repeats the last
  sigma: the last step is the identity.

  Args:
    alphas_cumprod: (T,) training alpha_bar (None allowed with ``use_flow_sigmas``).
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``).
    solver_order: the predictor order p (>= 1).
    solver_type: "bh1" or "bh2" (the B(h) choice).
    predict_x0: use the data-prediction (True) or noise-prediction form.
    lower_order_final: order ``min(p, n - i)`` at step i.
    disable_corrector: step indices whose following correction is skipped.
    final_sigmas_type: "zero" or "sigma_min".
    timestep_spacing: "linspace", "leading" or "trailing".
    steps_offset: added to "leading" timesteps.
    timesteps: explicit (n,) strictly decreasing training timesteps (diffusers' UniPC has no
      ``timesteps=``; the same levels as `dpm_solver_pp_schedule`'s).
    use_karras_sigmas: Karras sigmas, the model called at the rounded timesteps.
    use_flow_sigmas: UniPC's own rectified-flow sigmas ``shift(linspace(1, 1/T, n + 1)[:-1])``
      (the first lowered by 1e-6), the model called at ``int(T s)``; needs
      ``prediction_type="flow_prediction"`` and ``predict_x0=True``.
    flow_shift: the flow sigmas' shift.
    num_train_timesteps: T for flow sigmas (default ``len(alphas_cumprod)``, or 1000).
    prediction_type: "epsilon", "v_prediction", "sample" or "flow_prediction".

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "unipc"``.
  """
  if not isinstance(solver_order, (int, np.integer)) or solver_order < 1:
    raise ValueError(f"solver_order: expected an int >= 1, got {solver_order!r}")
  if solver_type not in ("bh1", "bh2"):
    raise ValueError(f"solver_type: expected 'bh1' or 'bh2', got {solver_type!r}")
  if not predict_x0 and prediction_type == "flow_prediction":
    raise ValueError("predict_x0: diffusers' UniPC noise-prediction form (predict_x0=False) does "
                     "not take 'flow_prediction'")
  states = levels_lib.multistep_states(
      alphas_cumprod, num_steps, scheduler="unipc", timestep_spacing=timestep_spacing,
      steps_offset=steps_offset, final_sigmas_type=final_sigmas_type, timesteps=timesteps,
      use_karras_sigmas=use_karras_sigmas, use_flow_sigmas=use_flow_sigmas,
      flow_shift=flow_shift, num_train_timesteps=num_train_timesteps,
      prediction_type=prediction_type)
  disabled = tuple(int(k) for k in disable_corrector)
  program = _unipc_program(*states.levels, states.timesteps, solver_order=int(solver_order),
                           solver_type=solver_type, predict_x0=bool(predict_x0),
                           lower_order_final=bool(lower_order_final), disable_corrector=disabled,
                           convert=states.convert)
  meta = {"method": "unipc", "solver_order": int(solver_order), "solver_type": solver_type,
          "predict_x0": bool(predict_x0), "lower_order_final": bool(lower_order_final),
          "disable_corrector": list(disabled), "final_sigmas_type": final_sigmas_type,
          "timestep_spacing": "custom" if timesteps is not None else timestep_spacing,
          "steps_offset": int(steps_offset), **states.metadata,
          "diffusers": "UniPCMultistepScheduler"}
  return linear.schedule_from_program(program, states.timesteps.shape[0], meta)
