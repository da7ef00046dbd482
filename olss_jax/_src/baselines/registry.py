"""Every classical baseline by name, each returning a `Schedule` for the one `sample`."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src.baselines import spacing as spacing_lib
from olss_jax._src.baselines.deis import deis_schedule
from olss_jax._src.baselines.dpm_solver import dpm_solver_pp_schedule, dpm_solver_schedule
from olss_jax._src.baselines.euler import euler_schedule
from olss_jax._src.baselines.ipndm import ipndm_schedule
from olss_jax._src.baselines.pndm import pndm_schedule
from olss_jax._src.baselines.unipc import unipc_schedule


def ddim_schedule(alphas_cumprod, timesteps, *, final_alpha_cumprod: float = 1.0,
                  metadata: Mapping[str, Any] | None = None) -> schedule_lib.Schedule:
  """Deterministic DDIM on the given timesteps as a `Schedule` (paper Eq. 2 unrolled, Eq. 9).

  Step i goes from the state at ``timesteps[i]`` to the state at ``timesteps[i + 1]`` (the
  last step to ``final_alpha_cumprod``): the DDIM teacher's own update (`Teacher.step`) on
  these states, exactly diffusers' ``FlaxDDIMScheduler`` with eta = 0 when the timesteps are
  its own (`ddim_timesteps`).

  Args:
    alphas_cumprod: (T,) the model's training noise schedule.
    timesteps: (n,) strictly decreasing training timesteps.
    final_alpha_cumprod: alpha_bar after the last step.
    metadata: extra metadata entries.

  Returns:
    A `Schedule` with (n, n + 1) weights over [x_T, e_0..e_{n-1}].
  """
  timesteps = np.asarray(timesteps)
  if timesteps.ndim != 1 or timesteps.shape[0] < 1:
    raise ValueError(f"timesteps: expected shape (n,) with n >= 1, got {timesteps.shape}")
  if np.any(np.diff(timesteps) >= 0):
    raise ValueError("timesteps: must be strictly decreasing")
  levels = noise.state_alphas(alphas_cumprod, timesteps, final_alpha_cumprod)
  teacher = teacher_lib.Teacher(timesteps.astype(np.int32), teacher_lib.as_float64(levels), "ddim")
  weights = np.asarray(teacher.path_weights(np.arange(timesteps.shape[0])))
  meta = {"method": "ddim", "final_alpha_cumprod": float(final_alpha_cumprod)}
  meta.update(metadata or {})
  return schedule_lib.make_schedule(timesteps, weights, meta)


def ddim_baseline_schedule(alphas_cumprod, num_steps: int, *, timestep_spacing: str = "leading",
                           steps_offset: int = 0,
                           final_alpha_cumprod: float = 1.0) -> schedule_lib.Schedule:
  """Deterministic DDIM (Song et al. 2021; paper Eq. 2) on diffusers' timesteps, via `ddim_schedule`.

  diffusers' ``DDIMScheduler`` / ``FlaxDDIMScheduler`` with ``eta=0``, no clipping,
  ``set_alpha_to_one=True`` (``final_alpha_cumprod=1.0``; pass ``alphas_cumprod[0]`` for
  False). diffusers steps from t to ``t - T // n``; that is the next timestep for "leading"
  and, when n divides T, for "trailing" (other n with "trailing" raise).

  Args:
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls.
    timestep_spacing: "leading" or "trailing".
    steps_offset: added to "leading" timesteps.
    final_alpha_cumprod: alpha_bar after the last step.

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights; ``metadata["method"] == "ddim"``.
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  num_train = alphas.shape[0]
  timesteps = spacing_lib.single_step_timesteps(num_steps, num_train, spacing=timestep_spacing,
                                                steps_offset=steps_offset)
  if timestep_spacing == "trailing" and num_train % num_steps:
    raise ValueError(f"num_steps: diffusers' DDIM with 'trailing' steps by T // n, which skips "
                     f"timesteps unless n divides T={num_train}; got {num_steps}")
  return ddim_schedule(alphas, timesteps, final_alpha_cumprod=final_alpha_cumprod,
                       metadata={"timestep_spacing": timestep_spacing,
                                      "steps_offset": int(steps_offset),
                                      "diffusers": "DDIMScheduler"})


BASELINES: dict[str, Callable[..., schedule_lib.Schedule]] = {
    "ddim": ddim_baseline_schedule,
    "euler": euler_schedule,
    "pndm": pndm_schedule,
    "deis": deis_schedule,
    "dpm_solver": dpm_solver_schedule,
    "dpm_solver_pp": dpm_solver_pp_schedule,
    "unipc": unipc_schedule,
    "ipndm": ipndm_schedule,
}


def baseline_schedule(name: str, alphas_cumprod, num_steps: int, **kwargs) -> schedule_lib.Schedule:
  """The classical scheduler ``name`` with ``num_steps`` model calls, as a `Schedule` (Eq. 8-9).

  Args:
    name: a key of `BASELINES`: "ddim", "euler", "pndm", "deis", "dpm_solver",
      "dpm_solver_pp", "unipc" or "ipndm".
    alphas_cumprod: (T,) training alpha_bar.
    num_steps: n, the number of model calls (PNDM: 1 or >= 3).
    **kwargs: the scheduler's keyword-only options.

  Returns:
    A `Schedule` with (n,) timesteps and (n, n + 1) weights.
  """
  if name not in BASELINES:
    raise ValueError(f"name: expected one of {sorted(BASELINES)}, got {name!r}")
  return BASELINES[name](alphas_cumprod, num_steps, **kwargs)
