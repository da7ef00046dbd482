"""PNDM's pseudo linear multistep method (Liu et al. 2022, "PLMS", Eq. 9-12) in diffusers' form.

diffusers' ``PNDMScheduler(skip_prk_steps=True)`` / ``FlaxPNDMScheduler``, as Stable Diffusion
uses it, as a `Schedule`.
"""
from __future__ import annotations

import numpy as np

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src.baselines import linear


def pndm_timesteps(num_inference_steps: int, num_train_timesteps: int = 1000, *,
                   steps_offset: int = 0) -> np.ndarray:
  """The model-call timesteps of PLMS-only PNDM (diffusers' ``plms_timesteps``).

  With N = num_inference_steps and ``ts = arange(N) * (T // N) + steps_offset`` ("leading"),
  the calls are ``ts[N-1], ts[N-2], ts[N-2], ts[N-3], ..., ts[0]``: the second timestep is
  visited twice (the start-up step), so N >= 2 makes N + 1 model calls; N = 1 makes one.

  Returns:
    (N + 1,) int32 (or (1,) for N = 1), non-increasing.
  """
  if not 1 <= num_inference_steps <= num_train_timesteps:
    raise ValueError(f"num_inference_steps: expected 1 <= N <= {num_train_timesteps}, got "
                     f"{num_inference_steps}")
  ratio = num_train_timesteps // num_inference_steps
  ts = np.arange(num_inference_steps) * ratio + steps_offset
  calls = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]
  if calls[0] >= num_train_timesteps:
    raise ValueError(f"steps_offset: {steps_offset} pushes the first timestep to {calls[0]}, past "
                     f"the {num_train_timesteps} training timesteps")
  return calls.astype(np.int32)


def _pndm_program(alphas: np.ndarray, num_inference_steps: int, steps_offset: int,
                  final_alpha_cumprod: float) -> linear.Program:
  """diffusers' ``PNDMScheduler.step_plms`` loop (``skip_prk_steps=True``), one model call each."""
  num_train = alphas.shape[0]
  ratio = num_train // num_inference_steps
  calls = pndm_timesteps(num_inference_steps, num_train, steps_offset=steps_offset)

  def transfer(x, t, t_prev, model_output):
    # PNDM Eq. 9 (`_get_prev_sample`): the DDIM step from t to t_prev with a given epsilon.
    a_t = float(alphas[t])
    a_prev = float(alphas[t_prev]) if t_prev >= 0 else float(final_alpha_cumprod)
    coeff_x = (a_prev / a_t) ** 0.5
    denom = a_t * (1.0 - a_prev) ** 0.5 + (a_t * (1.0 - a_t) * a_prev) ** 0.5
    return coeff_x * x - ((a_prev - a_t) / denom) * model_output

  def program(model, x_T):
    x, ets, cur_sample = x_T, [], None
    for counter, t_call in enumerate(calls):
      e = model(x, int(t_call))
      t, t_prev = int(t_call), int(t_call) - ratio
      if counter != 1:
        ets = ets[-3:] + [e]
      else:                       # the start-up step: redo the first step with averaged outputs
        t, t_prev = int(t_call) + ratio, int(t_call)
      if counter == 0:
        eps, cur_sample = e, x
      elif counter == 1:
        eps, x = (e + ets[-1]) / 2, cur_sample
      elif len(ets) == 2:
        eps = (3 * ets[-1] - ets[-2]) / 2
      elif len(ets) == 3:
        eps = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
      else:
        eps = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
      x = transfer(x, t, t_prev, eps)
    return x

  return program


def pndm_schedule(alphas_cumprod, num_steps: int, *, steps_offset: int = 0,
                  final_alpha_cumprod: float | None = None) -> schedule_lib.Schedule:
  """PNDM's pseudo linear multistep (Liu et al. 2022, PLMS with Eq. 9's transfer) as a `Schedule`.

  Matches diffusers' ``PNDMScheduler(skip_prk_steps=True, timestep_spacing="leading",
  prediction_type="epsilon")`` and ``FlaxPNDMScheduler(skip_prk_steps=True)``, Stable
  Diffusion's configuration. Model calls vs diffusers' ``num_inference_steps`` N: in PLMS-only
  mode diffusers calls the model N + 1 times (its second timestep twice: a Heun-like start-up
  that averages the first two outputs and redoes the first step), except N = 1 (one call).
  Here ``num_steps`` counts model calls, so it runs diffusers with
  ``N = num_steps - 1`` (recorded as ``metadata["num_inference_steps"]``); ``num_steps = 2`` has
  no diffusers counterpart and raises. After the start-up, steps use the Adams-Bashforth
  combinations of the last 2, 3 and then 4 outputs (PNDM Eq. 12).

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (1 or >= 3).
    steps_offset: diffusers' ``steps_offset`` (Stable Diffusion: 1).
    final_alpha_cumprod: alpha_bar after the last step; None means ``alphas_cumprod[0]``
      (diffusers' ``set_alpha_to_one=False``, the PNDM default and what the Flax scheduler
      always does); 1.0 is ``set_alpha_to_one=True`` (PyTorch scheduler only).

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "pndm"``.
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool):
    raise TypeError(f"num_steps: expected an int, got {type(num_steps).__name__}")
  if num_steps == 2 or num_steps < 1:
    raise ValueError("num_steps: PLMS-only PNDM makes 1 model call for num_inference_steps=1 and "
                     f"N + 1 calls for N >= 2, so num_steps must be 1 or >= 3; got {num_steps}")
  num_inference_steps = 1 if num_steps == 1 else num_steps - 1
  final = float(alphas[0]) if final_alpha_cumprod is None else float(final_alpha_cumprod)
  if not 0 < final <= 1:
    raise ValueError(f"final_alpha_cumprod: expected a value in (0, 1] or None, got {final_alpha_cumprod}")
  meta = {"method": "pndm", "num_inference_steps": num_inference_steps, "skip_prk_steps": True,
          "timestep_spacing": "leading", "steps_offset": int(steps_offset),
          "final_alpha_cumprod": final, "diffusers": "PNDMScheduler"}
  program = _pndm_program(alphas, num_inference_steps, int(steps_offset), final)
  return linear.schedule_from_program(program, num_steps, meta)
