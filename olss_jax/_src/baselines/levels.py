"""The noise levels of a classical sampler's states, and the model output read through a `Kind`.

Host-side float64 numpy. A run of n model calls visits n + 1 states; state i (the input of
model call i; state n is the final sample) is ``x_i = alpha_i x_0 + sigma_i eps`` with
half log-SNR ``lambda_i = log(alpha_i / sigma_i)``. diffusers' multistep schedulers
(``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler``, ``DEISMultistepScheduler``)
choose those levels in one of these ways, all reproduced by `multistep_states`:

* a timestep spacing (``"linspace"``, ``"leading"``, ``"trailing"``) or explicit integer
  ``timesteps``: the VP table at each timestep, ``alpha = sqrt(alpha_bar_t)``,
  ``sigma = sqrt(1 - alpha_bar_t)`` (float64, as olss_jax always computed them);
* ``use_karras_sigmas``: Karras et al. (2022) Eq. 5 between the table's largest and smallest
  ``s = sqrt((1 - alpha_bar) / alpha_bar)``, ``alpha = 1 / sqrt(1 + s^2)``, ``sigma = s alpha``;
  the model is called at ``round(sigma_to_t(s))`` (diffusers rounds; the state keeps the
  Karras ``s``);
* ``use_lu_lambdas`` (DPM-Solver only): ``log s`` uniform between the same ends (Lu et al.
  2022's uniform-lambda steps), timesteps rounded likewise;
* ``use_flow_sigmas``: rectified-flow levels ``alpha = 1 - s``, ``sigma = s`` with diffusers'
  shifted flow sigmas, the model called at ``int(T s)`` (diffusers casts these timesteps to
  int64, truncating); with explicit ``timesteps`` (beyond diffusers, e.g. a flow teacher's
  steps for the learned-timestep peers) the model is called at each t and ``s = t / T``.

diffusers stores every sigma in float32; the Karras, Lu and flow levels here are those float32
values (as `teacher.karras_teacher` and `teacher.flow_teacher` do), since near ``s = 1`` the
float32 rounding of s moves a flow state's ``alpha = 1 - s`` by percents. Explicit
non-integer timesteps (which diffusers' multistep schedulers would truncate to int64) are
continuous times here: the table read by `noise.alpha_bar_at`, the inverse of
`noise.sigma_to_t`.

The model output e at state i becomes a data prediction ``x_0 = cx_i x + ce_i e`` or a noise
prediction ``eps = dx_i x + de_i e`` through the teacher `Kind` of the model (its
``prediction_type``), exactly as diffusers' ``convert_model_output`` does.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import validation
from olss_jax._src.baselines import spacing as spacing_lib

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
_FLOW_SHIFT_CLAMP = 1e-6   # UniPC's `sigmas[0] -= eps` when its first flow sigma is 1


def resolve_kind(prediction_type: str, use_flow_sigmas: bool = False) -> teacher_lib.Kind:
  """The teacher `Kind` of a diffusers ``prediction_type`` (VP, or the flow with flow sigmas).

  Args:
    prediction_type: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` (VP models) or
      ``"flow_prediction"`` (rectified-flow velocity ``v = eps - x_0``).
    use_flow_sigmas: whether the sampler steps on flow levels (``alpha = 1 - s``).

  Returns:
    ``KINDS["ddim" | "ddim_v" | "ddim_x0" | "flow"]``.

  Raises:
    ValueError: an unknown prediction type, or flow prediction without flow sigmas (or the
      other way round: diffusers would read a VP parametrisation on flow levels, which no
      teacher kind describes).
  """
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"prediction_type: expected one of {PREDICTION_TYPES}, got {prediction_type!r}")
  if use_flow_sigmas:
    if prediction_type != "flow_prediction":
      raise ValueError("prediction_type: use_flow_sigmas=True steps a rectified flow, whose model "
                       f"predicts 'flow_prediction'; got {prediction_type!r}")
    return teacher_lib.KINDS["flow"]
  if prediction_type == "flow_prediction":
    raise ValueError("use_flow_sigmas: prediction_type='flow_prediction' needs use_flow_sigmas=True "
                     "(flow levels alpha = 1 - s, sigma = s)")
  return teacher_lib.KINDS[teacher_lib.VP_PREDICTIONS[prediction_type]]


@dataclasses.dataclass(frozen=True)
class Conversion:
  """The model output at state i as x_0 and eps predictions (linear in the state and output).

  Attributes:
    kind: the model's teacher `Kind`.
    alpha, sigma: (n,) float64 levels of the n model-call states.
    x0_coefficients: ((n,), (n,)) ``(cx, ce)``: ``x_0 = cx_i x + ce_i e``.
    eps_coefficients: ((n,), (n,)) ``(dx, de)``: ``eps = dx_i x + de_i e``.
  """
  kind: teacher_lib.Kind
  alpha: np.ndarray
  sigma: np.ndarray
  x0_coefficients: tuple[np.ndarray, np.ndarray]
  eps_coefficients: tuple[np.ndarray, np.ndarray]

  @property
  def prediction_type(self) -> str:
    """diffusers' name of what the model predicts."""
    return self.kind.prediction

  def x0(self, x, e, i: int):
    """Data prediction at state i. Epsilon: ``(x - sigma_i e) / alpha_i`` (olss_jax's form, bit for bit)."""
    if self.kind.prediction == "epsilon":
      return (x - self.sigma[i] * e) / self.alpha[i]
    cx, ce = self.x0_coefficients
    return float(cx[i]) * x + float(ce[i]) * e

  def eps(self, x, e, i: int):
    """Noise prediction at state i. Epsilon: e itself."""
    if self.kind.prediction == "epsilon":
      return e
    dx, de = self.eps_coefficients
    return float(dx[i]) * x + float(de[i]) * e


def conversion(kind: teacher_lib.Kind | str, alpha, sigma) -> Conversion:
  """The `Conversion` of ``kind`` at the model-call levels ``(alpha, sigma)`` (each (n,)).

  The coefficients are the kind's own (`Kind.to_x0_fn`, `Kind.to_eps_fn`, the functions
  behind `Kind.x0_coefficients`) applied to these alpha and sigma, so that no level is
  rebuilt from alpha_bar (which would cancel digits at low noise).
  """
  kind = teacher_lib.KINDS[kind] if isinstance(kind, str) else kind
  alpha = np.asarray(alpha, np.float64)
  sigma = np.asarray(sigma, np.float64)
  with jax.enable_x64(True):
    a, s = jnp.asarray(alpha), jnp.asarray(sigma)
    cx, ce = (np.broadcast_to(np.asarray(c, np.float64), alpha.shape) for c in kind.to_x0_fn(a, s))
    dx, de = (np.broadcast_to(np.asarray(c, np.float64), alpha.shape) for c in kind.to_eps_fn(a, s))
  return Conversion(kind, alpha, sigma, (cx, ce), (dx, de))


def resolve_num_steps(num_steps, timesteps) -> int | None:
  """``num_steps`` when only it is given, ``len(timesteps)`` when they are; both must agree."""
  if timesteps is None:
    if num_steps is None:
      raise ValueError("num_steps: pass num_steps or timesteps")
    return num_steps
  n = int(np.shape(timesteps)[0]) if np.ndim(timesteps) == 1 else None
  if num_steps is not None and n is not None and num_steps != n:
    raise ValueError(f"num_steps: {num_steps} disagrees with the {n} given timesteps")
  return n


def table_alpha_bars(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
  """alpha_bar at integer (table entries) or float (`noise.alpha_bar_at`) timesteps, float64."""
  if np.issubdtype(timesteps.dtype, np.integer):
    return alphas_cumprod[timesteps]
  with jax.enable_x64(True):
    return np.asarray(noise.alpha_bar_at(jnp.asarray(alphas_cumprod, jnp.float64),
                                         jnp.asarray(timesteps, jnp.float64)), np.float64)


def vp_levels(alphas_cumprod: np.ndarray, timesteps: np.ndarray, final_alpha_cumprod: float):
  """(alpha, sigma, lam), each (n + 1,): the VP table at the timesteps, then the final alpha_bar.

  Integer timesteps give `spacing.vp_levels` (bit for bit); float ones read the table with
  `noise.alpha_bar_at`, then the same `spacing.alpha_sigma_lambda`.
  """
  if np.issubdtype(timesteps.dtype, np.integer):
    return spacing_lib.vp_levels(alphas_cumprod, timesteps, final_alpha_cumprod)
  if not 0 < final_alpha_cumprod <= 1:
    raise ValueError(f"final_alpha_cumprod: expected a value in (0, 1], got {final_alpha_cumprod}")
  ab = np.concatenate([table_alpha_bars(alphas_cumprod, timesteps), [float(final_alpha_cumprod)]])
  return spacing_lib.alpha_sigma_lambda(ab)


def ve_levels(sigmas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(alpha, sigma, lam) of VP states given by Karras sigmas (diffusers' ``_sigma_to_alpha_sigma_t``).

  ``alpha = 1 / sqrt(s^2 + 1)``, ``sigma = s alpha``, ``lam = log alpha - log sigma`` (+inf at
  s = 0).
  """
  s = np.asarray(sigmas, np.float64)
  alpha = 1.0 / np.sqrt(s**2 + 1.0)
  sigma = s * alpha
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigma)
  return alpha, sigma, lam


def flow_levels(sigmas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(alpha, sigma, lam) of rectified-flow states ``x = (1 - s) x_0 + s eps`` (+inf lam at s = 0)."""
  s = np.asarray(sigmas, np.float64)
  alpha, sigma = 1.0 - s, s
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigma)
  return alpha, sigma, lam


def lu_sigmas(alphas_cumprod: np.ndarray, num_steps: int) -> np.ndarray:
  """diffusers' ``use_lu_lambdas``: n sigmas with ``log s`` uniform from the table's max to min.

  ``log s_i = l_max + i / (n - 1) (l_min - l_max)`` (``_convert_to_lu`` with rho = 1), i.e.
  DPM-Solver's uniform half log-SNR steps, ``lambda = -log s``.
  """
  log_sigmas = np.log(noise.vp_sigmas(alphas_cumprod))
  lam_max, lam_min = float(log_sigmas[-1]), float(log_sigmas[0])
  ramp = np.linspace(0, 1, num_steps)
  return np.exp(lam_max + ramp * (lam_min - lam_max))


def unipc_flow_sigmas(num_steps: int, *, shift: float, num_train_timesteps: int) -> np.ndarray:
  """``UniPCMultistepScheduler(use_flow_sigmas=True)``'s n flow sigmas (float64, before its float32 cast).

  ``s = shift(linspace(1, 1 / T, n + 1)[:-1])`` (not the DPM-Solver/DEIS ones,
  `noise.flow_multistep_sigmas`, which are ``1 / T`` lower), with the first lowered by 1e-6
  when it is 1 (diffusers' guard against ``log(1 - s) = -inf``).
  """
  num_steps = noise.check_count(num_steps, "num_steps")
  if not np.isfinite(shift) or shift <= 0:
    raise ValueError(f"flow_shift: expected a finite value > 0, got {shift}")
  sigmas = np.linspace(1, 1 / num_train_timesteps, num_steps + 1)[:-1]
  sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
  if np.fabs(sigmas[0] - 1) < _FLOW_SHIFT_CLAMP:
    sigmas[0] -= _FLOW_SHIFT_CLAMP
  return sigmas


@dataclasses.dataclass(frozen=True)
class States:
  """The model-call times and the levels of every state of an n-step run.

  Attributes:
    timesteps: (n,) model-call times: int32 training timesteps, or float32 continuous ones.
    alpha, sigma, lam: (n + 1,) float64 levels (last: the final state).
    convert: the model output at the n call states as x_0 / eps (`Conversion`).
    metadata: the level choice, for the schedule's metadata.
  """
  timesteps: np.ndarray
  alpha: np.ndarray
  sigma: np.ndarray
  lam: np.ndarray
  convert: Conversion
  metadata: dict[str, Any]

  @property
  def levels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha, sigma, lam)."""
    return self.alpha, self.sigma, self.lam


def multistep_states(alphas_cumprod, num_steps: int | None, *, scheduler: str,
                     timestep_spacing: str = "linspace", steps_offset: int = 0,
                     final_sigmas_type: str = "zero", timesteps=None,
                     use_karras_sigmas: bool = False, use_lu_lambdas: bool = False,
                     use_flow_sigmas: bool = False, flow_shift: float = 1.0,
                     num_train_timesteps: int | None = None,
                     prediction_type: str = "epsilon") -> States:
  """The states of diffusers' multistep ``scheduler`` after ``set_timesteps`` (see the module doc).

  Args:
    alphas_cumprod: (T,) training alpha_bar; may be None with ``use_flow_sigmas``.
    num_steps: n model calls (None: ``len(timesteps)``).
    scheduler: ``"dpm"``, ``"unipc"`` or ``"deis"``: where diffusers' classes differ (the final
      level, the flow sigmas).
    timestep_spacing, steps_offset: the spacing when no sigma spacing or timesteps are given.
    final_sigmas_type: ``"zero"`` or ``"sigma_min"`` (DEIS always ends at sigma_min: the
      table's for a spacing, else its last sigma repeated).
    timesteps: explicit (n,) timesteps instead of a spacing.
    use_karras_sigmas, use_lu_lambdas, use_flow_sigmas: diffusers' sigma spacings.
    flow_shift: the flow sigmas' time shift.
    num_train_timesteps: T; defaults to ``len(alphas_cumprod)`` (1000 without a table).
    prediction_type: what the model predicts.

  Returns:
    `States`. With a sigma spacing and ``final_sigmas_type="sigma_min"`` (always for DEIS) the
    final level repeats the last model-call level, as in diffusers (whose float32 sigma_min of
    the table equals it): the last step has zero length and is the identity.
  """
  sigma_spacing = validation.check_sigma_options(use_karras_sigmas=use_karras_sigmas,
                                                 use_lu_lambdas=use_lu_lambdas,
                                                 use_flow_sigmas=use_flow_sigmas,
                                                 timesteps=timesteps)
  kind = resolve_kind(prediction_type, use_flow_sigmas)
  if final_sigmas_type not in FINAL_SIGMAS_TYPES:
    raise ValueError(f"final_sigmas_type: expected 'zero' or 'sigma_min', got {final_sigmas_type!r}")
  if alphas_cumprod is None:
    if sigma_spacing != "flow":
      raise ValueError("alphas_cumprod: required unless use_flow_sigmas=True")
    alphas = None
    num_train = 1000 if num_train_timesteps is None else num_train_timesteps
  else:
    alphas = noise.check_alphas_cumprod(alphas_cumprod)
    num_train = alphas.shape[0] if num_train_timesteps is None else num_train_timesteps
    if num_train != alphas.shape[0] and sigma_spacing != "flow":
      raise ValueError(f"num_train_timesteps: {num_train} disagrees with the {alphas.shape[0]} "
                       "entries of alphas_cumprod")
  num_train = noise.check_count(num_train, "num_train_timesteps", minimum=2)
  num_steps = resolve_num_steps(num_steps, timesteps)
  meta: dict[str, Any] = {"prediction_type": kind.prediction, "sigma_spacing": sigma_spacing,
                          "custom_timesteps": timesteps is not None}
  repeat_last = final_sigmas_type == "sigma_min" or scheduler == "deis"
  if sigma_spacing is None:
    if timesteps is None:
      ts = spacing_lib.multistep_timesteps(num_steps, num_train, spacing=timestep_spacing,
                                           steps_offset=steps_offset)
    else:
      ts = validation.check_timesteps(timesteps, num_train)
      meta["timesteps"] = ts.tolist()
    final = float(alphas[0]) if scheduler == "deis" else spacing_lib.final_alpha(alphas, final_sigmas_type)
    alpha, sigma, lam = vp_levels(alphas, ts, final)
  elif sigma_spacing in ("karras", "lu"):
    spacing_lib._check_num_steps(num_steps, num_train)
    table = noise.vp_sigmas(alphas)
    if sigma_spacing == "karras":
      s = noise.karras_sigmas(float(table[0]), float(table[-1]), num_steps)
    else:
      s = lu_sigmas(alphas, num_steps)
    ts = np.round(noise.sigma_to_t(s, alphas)).astype(np.int32)
    s = s.astype(np.float32).astype(np.float64)   # diffusers' stored sigmas
    s = np.append(s, s[-1] if repeat_last else 0.0)
    alpha, sigma, lam = ve_levels(s)
  else:
    if repeat_last and scheduler == "dpm":
      raise ValueError("final_sigmas_type: with use_flow_sigmas diffusers' DPMSolverMultistepScheduler "
                       "ends 'sigma_min' at the VP beta table's sigma_min, which a flow model does not "
                       "have; use 'zero'")
    num_steps = noise.check_count(num_steps, "num_steps")
    if timesteps is not None:
      # Beyond diffusers (whose flow schedulers take no timesteps=): the model is called at the
      # given times t exactly (float32) and the states sit at s = t / T, e.g. a flow teacher's
      # own steps; s = 1 is lowered by 1e-6 (UniPC's guard against log(1 - s) = -inf).
      ts = validation.check_timesteps(timesteps, num_train,
                                      maximum=float(num_train)).astype(np.float32)
      s = ts.astype(np.float64) / num_train
      if np.fabs(s[0] - 1) < _FLOW_SHIFT_CLAMP:
        s[0] -= _FLOW_SHIFT_CLAMP
      meta["timesteps"] = ts.tolist()
    else:
      if scheduler == "unipc":
        s = unipc_flow_sigmas(num_steps, shift=flow_shift, num_train_timesteps=num_train)
      else:
        s = noise.flow_multistep_sigmas(num_steps, shift=flow_shift,
                                        num_train_timesteps=num_train)
      ts = (s * num_train).astype(np.int64).astype(np.int32)   # diffusers' int64 cast (truncation)
      s = s.astype(np.float32).astype(np.float64)
    s = np.append(s, s[-1] if repeat_last else 0.0)
    alpha, sigma, lam = flow_levels(s)
    meta.update(flow_shift=float(flow_shift), num_train_timesteps=int(num_train))
  n = ts.shape[0]
  return States(ts, alpha, sigma, lam, conversion(kind, alpha[:n], sigma[:n]), meta)


def zero_step(lam, i: int) -> bool:
  """True when step i has zero length (``lam[i + 1] == lam[i]``): the step is the identity.

  diffusers' multistep schedulers make such a step on a repeated final sigma (DEIS always with
  a sigma spacing; any with ``final_sigmas_type="sigma_min"`` and Karras/Lu/flow sigmas); their
  own formulas give the state back unchanged there, or NaN where they divide by h = 0
  (DPM-Solver's "heun" and third-order forms, UniPC's higher orders); the identity is the limit.
  """
  return bool(lam[i + 1] == lam[i])
