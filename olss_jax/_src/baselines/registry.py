"""Every classical baseline by name, each returning a `Schedule` for the one `sample`.

`baseline_schedule` takes either a VP model's ``alphas_cumprod`` table (an epsilon model) or a
`Teacher`, whose kind picks the prediction type (VP epsilon / v / x_0) or the rectified flow
(with ``num_train_timesteps`` and ``shift`` from ``teacher.config``); `baseline_names` lists
what each kind offers.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import validation
from olss_jax._src.baselines import levels as levels_lib
from olss_jax._src.baselines import spacing as spacing_lib
from olss_jax._src.baselines.ays import ays_timesteps
from olss_jax._src.baselines.deis import deis_schedule
from olss_jax._src.baselines.dpm_solver import dpm_solver_pp_schedule, dpm_solver_schedule
from olss_jax._src.baselines.euler import euler_schedule, flow_euler_schedule
from olss_jax._src.baselines.ipndm import ipndm_schedule
from olss_jax._src.baselines.pndm import pndm_schedule
from olss_jax._src.baselines.unipc import unipc_schedule


def ddim_schedule(alphas_cumprod, timesteps, *, final_alpha_cumprod: float = 1.0,
                  metadata: Mapping[str, Any] | None = None,
                  prediction_type: str = "epsilon") -> schedule_lib.Schedule:
  """Deterministic DDIM on the given timesteps as a `Schedule` (paper Eq. 2 unrolled, Eq. 9).

  Step i goes from the state at ``timesteps[i]`` to the state at ``timesteps[i + 1]`` (the
  last step to ``final_alpha_cumprod``): the teacher kind's own update (`Teacher.step`,
  ``x' = alpha' x0 + sigma' eps`` with x0 and eps read off the output as the model's
  ``prediction_type`` says) on these states, exactly diffusers' ``DDIMScheduler`` /
  ``FlaxDDIMScheduler`` with eta = 0 when the timesteps are its own (`ddim_timesteps`).

  Args:
    alphas_cumprod: (T,) the model's training noise schedule.
    timesteps: (n,) strictly decreasing training timesteps: integers index the table, floats
      (stored float32) read it by `noise.alpha_bar_at`.
    final_alpha_cumprod: alpha_bar after the last step.
    metadata: extra metadata entries.
    prediction_type: "epsilon", "v_prediction" or "sample".

  Returns:
    A `Schedule` with (n, n + 1) weights over [x_T, e_0..e_{n-1}].
  """
  kind = levels_lib.resolve_kind(prediction_type)
  timesteps = np.asarray(timesteps)
  if np.issubdtype(timesteps.dtype, np.floating):
    alphas = noise.check_alphas_cumprod(alphas_cumprod)
    timesteps = validation.check_timesteps(timesteps, alphas.shape[0])
    if not 0 < final_alpha_cumprod <= 1:
      raise ValueError(f"final_alpha_cumprod: expected a value in (0, 1], got {final_alpha_cumprod}")
    levels = np.append(levels_lib.table_alpha_bars(alphas, timesteps), float(final_alpha_cumprod))
  else:
    if timesteps.ndim != 1 or timesteps.shape[0] < 1:
      raise ValueError(f"timesteps: expected shape (n,) with n >= 1, got {timesteps.shape}")
    if np.any(np.diff(timesteps) >= 0):
      raise ValueError("timesteps: must be strictly decreasing")
    levels = noise.state_alphas(alphas_cumprod, timesteps, final_alpha_cumprod)
    timesteps = timesteps.astype(np.int32)
  teacher = teacher_lib.Teacher(timesteps, teacher_lib.as_float64(levels), kind.name)
  weights = np.asarray(teacher.path_weights(np.arange(timesteps.shape[0])))
  meta = {"method": "ddim", "final_alpha_cumprod": float(final_alpha_cumprod),
          "prediction_type": kind.prediction}
  meta.update(metadata or {})
  return schedule_lib.make_schedule(timesteps, weights, meta)


def ddim_baseline_schedule(alphas_cumprod, num_steps: int | None = None, *,
                           timestep_spacing: str = "leading", steps_offset: int = 0,
                           final_alpha_cumprod: float = 1.0, timesteps=None,
                           prediction_type: str = "epsilon") -> schedule_lib.Schedule:
  """Deterministic DDIM (Song et al. 2021; paper Eq. 2) on diffusers' timesteps, via `ddim_schedule`.

  diffusers' ``DDIMScheduler`` / ``FlaxDDIMScheduler`` with ``eta=0``, no clipping,
  ``set_alpha_to_one=True`` (``final_alpha_cumprod=1.0``; pass ``alphas_cumprod[0]`` for
  False) and the given ``prediction_type``. diffusers steps from t to ``t - T // n``; that is
  the next timestep for "leading" and, when n divides T, for "trailing" (other n with
  "trailing" raise). diffusers' DDIM takes no custom timesteps; ``timesteps=`` here steps from
  each given timestep to the next (diffusers' own when they are evenly spaced by T // n).

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (None with ``timesteps``).
    timestep_spacing: "leading" or "trailing".
    steps_offset: added to "leading" timesteps.
    final_alpha_cumprod: alpha_bar after the last step.
    timesteps: explicit (n,) strictly decreasing training timesteps (int or float) instead of
      a spacing.
    prediction_type: "epsilon", "v_prediction" or "sample".

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "ddim"``.
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  num_train = alphas.shape[0]
  num_steps = levels_lib.resolve_num_steps(num_steps, timesteps)
  if timesteps is not None:
    timesteps = validation.check_timesteps(timesteps, num_train)
    return ddim_schedule(alphas, timesteps, final_alpha_cumprod=final_alpha_cumprod,
                         prediction_type=prediction_type,
                         metadata={"timestep_spacing": "custom", "custom_timesteps": True,
                                   "timesteps": timesteps.tolist(), "steps_offset": 0,
                                   "diffusers": "DDIMScheduler"})
  timesteps = spacing_lib.single_step_timesteps(num_steps, num_train, spacing=timestep_spacing,
                                                steps_offset=steps_offset)
  if timestep_spacing == "trailing" and num_train % num_steps:
    raise ValueError(f"num_steps: diffusers' DDIM with 'trailing' steps by T // n, which skips "
                     f"timesteps unless n divides T={num_train}; got {num_steps}")
  return ddim_schedule(alphas, timesteps, final_alpha_cumprod=final_alpha_cumprod,
                       prediction_type=prediction_type,
                       metadata={"timestep_spacing": timestep_spacing,
                                 "steps_offset": int(steps_offset),
                                 "diffusers": "DDIMScheduler"})


def ays_dpm_solver_pp_schedule(alphas_cumprod, num_steps: int, *, model: str = "StableDiffusion",
                               **kwargs) -> schedule_lib.Schedule:
  """DPM-Solver++ on Align Your Steps timesteps (Sabour et al. 2024): the AYS recipe in diffusers.

  ``dpm_solver_pp_schedule(alphas_cumprod, timesteps=ays_timesteps(n, model), **kwargs)``:
  the published 10-step schedule, or its log-linear interpolation for other n
  (`ays_timesteps`), as diffusers' ``DPMSolverMultistepScheduler.set_timesteps(timesteps=
  AysSchedules[...])`` runs it (with diffusers' default, final sigma 0).

  Args:
    alphas_cumprod: (1000,) training alpha_bar (Stable Diffusion's for the published schedules).
    num_steps: n model calls.
    model: "StableDiffusion" or "StableDiffusionXL" (which published schedule).
    **kwargs: `dpm_solver_pp_schedule` options (not ``timesteps`` or a sigma spacing).

  Returns:
    A `Schedule` with (n,) int32 timesteps; ``metadata["method"] == "ays_dpm_solver_pp"``.
  """
  timesteps = ays_timesteps(num_steps, model, alphas_cumprod=alphas_cumprod)
  schedule = dpm_solver_pp_schedule(alphas_cumprod, timesteps=timesteps, **kwargs)
  return schedule.with_metadata(method="ays_dpm_solver_pp", ays_model=model,
                                timestep_spacing="ays")


BASELINES: dict[str, Callable[..., schedule_lib.Schedule]] = {
    "ddim": ddim_baseline_schedule,
    "euler": euler_schedule,
    "pndm": pndm_schedule,
    "deis": deis_schedule,
    "dpm_solver": dpm_solver_schedule,
    "dpm_solver_pp": dpm_solver_pp_schedule,
    "unipc": unipc_schedule,
    "ipndm": ipndm_schedule,
    "ays_dpm_solver_pp": ays_dpm_solver_pp_schedule,
}
_VP_ANY_PREDICTION = ("ddim", "euler", "deis", "dpm_solver", "dpm_solver_pp", "unipc",
                      "ays_dpm_solver_pp")
# The baselines each teacher kind (`teacher.KINDS`) can run: what diffusers 0.39 offers for that
# prediction type (PNDM and iPNDM: epsilon only) and, for the flow, with flow sigmas
# ("euler" is then FlowMatchEulerDiscreteScheduler).
KIND_BASELINES: dict[str, tuple[str, ...]] = {
    "ddim": tuple(BASELINES),
    "ddim_v": _VP_ANY_PREDICTION,
    "ddim_x0": _VP_ANY_PREDICTION,
    "flow": ("euler", "deis", "dpm_solver_pp", "unipc"),
}


def baseline_names(kind: str = "ddim") -> tuple[str, ...]:
  """The baseline names `baseline_schedule` accepts for a model of teacher kind ``kind``.

  Args:
    kind: a key of `teacher.KINDS`: "ddim" (VP epsilon, also what an ``alphas_cumprod`` table
      means), "ddim_v", "ddim_x0" or "flow".

  Returns:
    The names, in `BASELINES` order.
  """
  if kind not in KIND_BASELINES:
    raise ValueError(f"kind: expected one of {sorted(KIND_BASELINES)}, got {kind!r}")
  return KIND_BASELINES[kind]


def _teacher_table(teacher: teacher_lib.Teacher, alphas_cumprod) -> np.ndarray:
  """The alphas_cumprod table of a VP teacher's model: given, or read off a full teacher."""
  num_train = teacher.config.get("num_train_timesteps")
  ts = np.asarray(teacher.timesteps)
  levels = np.asarray(teacher.levels, np.float64)
  if alphas_cumprod is not None:
    alphas = noise.check_alphas_cumprod(alphas_cumprod)
    if num_train is not None and alphas.shape[0] != num_train:
      raise ValueError(f"alphas_cumprod: {alphas.shape[0]} entries, but the teacher's model has "
                       f"num_train_timesteps={num_train}")
    if np.issubdtype(ts.dtype, np.integer) and not np.allclose(alphas[ts], levels[:-1],
                                                               rtol=1e-10, atol=0):
      raise ValueError("alphas_cumprod: disagrees with the teacher's levels at its timesteps")
    return alphas
  if (num_train is not None and np.issubdtype(ts.dtype, np.integer) and ts.shape[0] == num_train
      and np.array_equal(ts, np.arange(num_train)[::-1])):
    return levels[:-1][::-1].copy()      # every training timestep, 999..0: the table itself
  raise ValueError("model: this VP Teacher does not visit every training timestep, so it does not "
                   "carry the model's alphas_cumprod; pass alphas_cumprod=")


def _set_option(kwargs: dict, key: str, value, why: str) -> None:
  if key in kwargs and kwargs[key] != value:
    raise ValueError(f"{key}: {why} needs {key}={value!r}, got {kwargs[key]!r}")
  kwargs[key] = value


def baseline_schedule(name: str, model, num_steps: int | None = None,
                      **kwargs) -> schedule_lib.Schedule:
  """The classical scheduler ``name`` with ``num_steps`` model calls, as a `Schedule` (Eq. 8-9).

  Args:
    name: a key of `BASELINES` available for the model's kind (`baseline_names`).
    model: a VP model's (T,) training ``alphas_cumprod`` (an epsilon model: ``BASELINES[name]
      (alphas_cumprod, num_steps, **kwargs)``), or a `Teacher` of the model. A teacher's kind
      sets ``prediction_type`` (VP kinds; pass the table as ``alphas_cumprod=`` unless the
      teacher visits every training timestep, like the paper's 1000-step DDIM teacher), or
      makes it a rectified flow: "euler" is then `flow_euler_schedule` and the multistep ones
      run on flow sigmas (``use_flow_sigmas=True``, ``prediction_type="flow_prediction"``,
      ``flow_shift`` = the teacher's ``shift``), with ``num_train_timesteps`` from its config.
      On a flow teacher explicit ``timesteps=`` are where the model is called (states at
      ``s = t / T``, no further shift), so the teacher's own steps can be passed as they are.
    num_steps: n, the number of model calls (PNDM: 1 or >= 3); None with ``timesteps=``.
    **kwargs: the scheduler's keyword-only options.

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights.

  Raises:
    ValueError: an unknown name, or one the model's kind does not offer (the message lists
      `baseline_names(kind)`).
  """
  if not isinstance(model, teacher_lib.Teacher):
    if name not in BASELINES:
      raise ValueError(f"name: expected one of {sorted(BASELINES)}, got {name!r}")
    return BASELINES[name](model, num_steps, **kwargs)
  kind = teacher_lib.KINDS[model.kind]
  available = baseline_names(model.kind)
  if name not in available:
    raise ValueError(f"name: {name!r} is not available for a {model.kind!r} teacher "
                     f"({kind.process}, {kind.prediction}); available: {list(available)}")
  config = model.config
  if kind.process == "flow":
    num_train = int(config.get("num_train_timesteps", 1000))
    shift = float(config.get("shift", 1.0))
    if name == "euler":
      # Given timesteps are model-call times (e.g. the teacher's own, already shifted): no
      # second shift unless asked for (diffusers' set_timesteps(timesteps=) would shift them).
      kwargs.setdefault("shift", 1.0 if kwargs.get("timesteps") is not None else shift)
      return flow_euler_schedule(num_steps, num_train_timesteps=num_train, **kwargs)
    why = "a flow teacher"
    _set_option(kwargs, "use_flow_sigmas", True, why)
    _set_option(kwargs, "prediction_type", "flow_prediction", why)
    _set_option(kwargs, "num_train_timesteps", num_train, why)
    kwargs.setdefault("flow_shift", shift)
    return BASELINES[name](kwargs.pop("alphas_cumprod", None), num_steps, **kwargs)
  alphas = _teacher_table(model, kwargs.pop("alphas_cumprod", None))
  if name not in ("pndm", "ipndm"):
    _set_option(kwargs, "prediction_type", kind.prediction, f"a {model.kind!r} teacher")
  return BASELINES[name](alphas, num_steps, **kwargs)
