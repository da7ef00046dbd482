"""Deterministic Euler in sigma space (Karras et al. 2022, Algorithm 2 with no churn).

diffusers' ``EulerDiscreteScheduler`` (and ``FlaxEulerDiscreteScheduler``) as a `Schedule`.
"""
from __future__ import annotations

import numpy as np

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import validation
from olss_jax._src.baselines import levels as levels_lib
from olss_jax._src.baselines import linear
from olss_jax._src.baselines import spacing as spacing_lib


def _euler_program(sigmas: np.ndarray, timesteps: np.ndarray,
                   convert: levels_lib.Conversion | None = None) -> linear.Program:
  """diffusers' Euler loop on (n + 1,) VE sigmas (last = 0), starting from a unit-variance x_T.

  ``convert`` reads the model output at the VP-scaled model input (its kind's x_0, on the VP
  levels ``alpha = 1 / sqrt(1 + s^2)``, ``sigma = s alpha``); None: an epsilon model.
  """

  def program(model, x_T):
    # diffusers' latent X lives in VE scale: X = x / sqrt(alpha_bar) = x * sqrt(sigma^2 + 1).
    # Our sampler's x_T is the unit-variance VP input of the first call, so X_0 = x_T * scale_0
    # (diffusers' init_noise_sigma for "leading"; see `euler_schedule`).
    big_x = x_T * float(np.sqrt(sigmas[0]**2 + 1.0))
    for i, t in enumerate(timesteps):
      sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
      model_input = big_x / float(np.sqrt(sigma**2 + 1.0))          # scale_model_input
      e = model(model_input, linear.call_time(t))
      if convert is None:
        pred_original = big_x - sigma * e                          # epsilon prediction
      else:                                                        # x_0 is scale-free
        pred_original = convert.x0(model_input, e, i)
      derivative = (big_x - pred_original) / sigma
      big_x = big_x + derivative * (sigma_next - sigma)
    return big_x                                                   # sigma_n = 0: VE == VP

  return program


def euler_schedule(alphas_cumprod, num_steps: int | None = None, *,
                   timestep_spacing: str = "leading", steps_offset: int = 0, timesteps=None,
                   use_karras_sigmas: bool = False,
                   prediction_type: str = "epsilon") -> schedule_lib.Schedule:
  """Deterministic Euler (Karras et al. 2022, Alg. 2, s_churn = 0) as a `Schedule` (Eq. 8-9).

  Matches diffusers' ``EulerDiscreteScheduler(interpolation_type="linear",
  final_sigmas_type="zero")`` with the given ``timestep_spacing``, ``steps_offset``,
  ``use_karras_sigmas`` and ``prediction_type`` (``FlaxEulerDiscreteScheduler`` with
  "leading" always uses ``steps_offset=1``). The update is ``X_{i+1} = X_i + (sigma_{i+1} -
  sigma_i) (X_i - x0_i) / sigma_i`` on the VE latent ``X = x / sqrt(alpha_bar)`` with
  ``sigma = sqrt((1 - alpha_bar) / alpha_bar)`` and a final sigma of 0, where the data
  prediction ``x0_i`` is the model output read through its kind (epsilon:
  ``X_i - sigma_i e_i``, so the step is ``(sigma_{i+1} - sigma_i) e_i``); in exact arithmetic
  this is deterministic DDIM on the same levels.

  Levels: a spacing gives the table at integer timesteps. ``timesteps=`` (diffusers'
  ``set_timesteps(timesteps=...)``) casts them to float32 like diffusers and reads sigma by
  ``np.interp`` (linear in sigma, diffusers' ``interpolation_type="linear"``; equal to the
  table at integer timesteps), the model being called at those float32 times for float input.
  ``use_karras_sigmas`` spaces n Karras sigmas between the sigmas of the spacing's first and
  last timesteps (diffusers' behaviour: with "leading" that is not the table's whole range;
  "linspace", allowed here only with Karras sigmas, gives the whole range) and calls the model
  at the continuous float32 timesteps ``sigma_to_t(sigma)`` (not rounded), keeping diffusers'
  float32 sigmas: the `teacher.karras_teacher` steps.

  Conventions: `sample` starts from unit-variance x_T and the model sees VP-scaled inputs. The
  diffusers latent is ``X_0 = x_T * sqrt(sigma_0^2 + 1)`` and the model input
  ``X / sqrt(sigma^2 + 1)``, so every model input here equals diffusers' scaled model input.
  For "leading" diffusers' ``init_noise_sigma`` is exactly ``sqrt(sigma_max^2 + 1)``; for
  "trailing" and "linspace" diffusers uses ``init_noise_sigma = sigma_max`` instead, i.e. its
  first model input is ``sqrt(1 - alpha_bar_{T-1}) x_T`` (0.998 x_T for Stable Diffusion): we
  keep the unit-variance start. Without Karras sigmas diffusers' default "linspace" spacing
  gives fractional timesteps on a linear-in-sigma reading of the table, so it is not offered
  as a spacing (pass ``timesteps=np.linspace(T - 1, 0, n)`` for exactly that).

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (= diffusers' ``num_inference_steps``; None with
      ``timesteps``).
    timestep_spacing: "leading" (Stable Diffusion's) or "trailing"; also "linspace" with
      ``use_karras_sigmas``.
    steps_offset: added to "leading" timesteps (Stable Diffusion: 1).
    timesteps: explicit (n,) strictly decreasing training timesteps in [0, T - 1] (int or
      float) instead of a spacing.
    use_karras_sigmas: Karras sigmas (not with ``timesteps``, as in diffusers).
    prediction_type: "epsilon", "v_prediction" or "sample".

  Returns:
    A `Schedule` with (n,) timesteps (int32 for integer ones, float32 for Karras or float
    ``timesteps``) and (n, n + 1) weights; ``metadata["method"] == "euler"``.
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  num_train = alphas.shape[0]
  kind = levels_lib.resolve_kind(prediction_type)
  sigma_spacing = validation.check_sigma_options(use_karras_sigmas=use_karras_sigmas,
                                                 use_lu_lambdas=False, use_flow_sigmas=False,
                                                 timesteps=timesteps)
  num_steps = levels_lib.resolve_num_steps(num_steps, timesteps)
  table = noise.vp_sigmas(alphas)
  if timesteps is not None:
    timesteps = validation.check_timesteps(timesteps, num_train)
    sigmas = np.interp(timesteps.astype(np.float32), np.arange(num_train), table)
  elif sigma_spacing == "karras":
    if timestep_spacing == "linspace":
      spaced = np.linspace(0, num_train - 1, noise.check_count(num_steps, "num_steps",
                                                               maximum=num_train),
                           dtype=np.float32)[::-1]
    else:
      spaced = spacing_lib.single_step_timesteps(num_steps, num_train, spacing=timestep_spacing,
                                                 steps_offset=steps_offset)
    ends = np.interp(spaced.astype(np.float32), np.arange(num_train), table)
    sigmas = noise.karras_sigmas(float(ends[-1]), float(ends[0]), num_steps)
    timesteps = noise.sigma_to_t(sigmas, alphas).astype(np.float32)
    sigmas = sigmas.astype(np.float32).astype(np.float64)    # diffusers' stored sigmas
  else:
    timesteps = spacing_lib.single_step_timesteps(num_steps, num_train, spacing=timestep_spacing,
                                                  steps_offset=steps_offset)
    ab = alphas[timesteps]
    sigmas = np.sqrt((1.0 - ab) / ab)
  convert = None
  if kind.prediction != "epsilon":
    alpha, sigma, _ = levels_lib.ve_levels(sigmas)
    convert = levels_lib.conversion(kind, alpha, sigma)
  sigmas = np.concatenate([sigmas, [0.0]])
  meta = {"method": "euler", "timestep_spacing": timestep_spacing, "steps_offset": int(steps_offset),
          "prediction_type": kind.prediction, "sigma_spacing": sigma_spacing,
          "custom_timesteps": timesteps is not None and sigma_spacing is None,
          "diffusers": "EulerDiscreteScheduler"}
  if meta["custom_timesteps"]:
    meta["timestep_spacing"] = "custom"
    meta["timesteps"] = timesteps.tolist()
  program = _euler_program(sigmas, timesteps, convert)
  return linear.schedule_from_program(program, timesteps.shape[0], meta)


def flow_euler_schedule(num_steps: int | None = None, *, shift: float = 1.0,
                        num_train_timesteps: int = 1000, timesteps=None) -> schedule_lib.Schedule:
  """Euler on a rectified flow: diffusers' ``FlowMatchEulerDiscreteScheduler`` as a `Schedule`.

  States ``x_s = (1 - s) x_0 + s eps``; the model predicts the velocity ``v = eps - x_0`` and
  is called as ``denoise_fn(x_s, t)`` at float32 ``t = T s``; each step is
  ``x_{s'} = x_s + (s' - s) v`` and the last lands on s = 0. The sigmas are diffusers'
  float32 ones bit for bit (`noise.flow_euler_sigmas`: ``shift(linspace)`` between the shifted
  training sigmas' ends), so this is `teacher.flow_teacher` with ``num_teacher_steps = n``.
  With ``timesteps=`` (diffusers' ``set_timesteps(timesteps=...)``) the model is called at
  those float32 times while the levels are ``shift(t / T)`` in float32: diffusers applies the
  shift to custom timesteps too (so with ``shift != 1`` the model is not called at ``T s``).

  Args:
    num_steps: n, the number of model calls (None: ``len(timesteps)``).
    shift: the scheduler's time shift (1: none; SD3 uses 3).
    num_train_timesteps: T, the model's time scale.
    timesteps: explicit (n,) strictly decreasing times in [0, T] (float32), instead of the
      default (which starts at ``T shift(1) = T``).

  Returns:
    A `Schedule` with (n,) float32 timesteps and (n, n + 1) weights over [x_T, v_0, ...];
    ``metadata["method"] == "flow_euler"``.
  """
  num_train = noise.check_count(num_train_timesteps, "num_train_timesteps", minimum=2)
  num_steps = levels_lib.resolve_num_steps(num_steps, timesteps)
  if timesteps is None:
    ts, sigmas = noise.flow_euler_sigmas(num_steps, shift=shift, num_train_timesteps=num_train)
  else:
    if not np.isfinite(shift) or shift <= 0:
      raise ValueError(f"shift: expected a finite value > 0, got {shift}")
    ts = validation.check_timesteps(timesteps, num_train, maximum=num_train).astype(np.float32)
    s = ts / np.float32(num_train)                               # float32 arithmetic, as diffusers
    s = (np.float32(shift) * s / (np.float32(1) + np.float32(shift - 1) * s)).astype(np.float32)
    sigmas = np.append(s, np.float32(0.0))
  sigmas = np.asarray(sigmas, np.float64)

  def program(model, x_T):
    x = x_T
    for i, t in enumerate(ts):
      x = x + (sigmas[i + 1] - sigmas[i]) * model(x, linear.call_time(t))
    return x

  meta = {"method": "flow_euler", "shift": float(shift), "num_train_timesteps": num_train,
          "prediction_type": "flow_prediction", "custom_timesteps": timesteps is not None,
          "diffusers": "FlowMatchEulerDiscreteScheduler"}
  if timesteps is not None:
    meta["timesteps"] = ts.tolist()
  return linear.schedule_from_program(program, ts.shape[0], meta)
