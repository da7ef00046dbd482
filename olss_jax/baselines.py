"""Every classical scheduler as a `Schedule` for the one `olss_jax.sample` (paper Sec. 3.1, Eq. 8-9).

Each is read off its own update code (`schedule_from_program`) and checked against diffusers'
own scheduler loop in the tests. `alpha_bar_at`: a (T,) alpha_bar table read at integer or
continuous timesteps (how the VP schedules here read float timesteps).
"""
from olss_jax._src.baselines.ays import AYS_TIMESTEPS, ays_timesteps
from olss_jax._src.baselines.deis import deis_schedule
from olss_jax._src.baselines.dpm_solver import dpm_solver_pp_schedule, dpm_solver_schedule
from olss_jax._src.baselines.euler import euler_schedule, flow_euler_schedule
from olss_jax._src.baselines.ipndm import ipndm_schedule
from olss_jax._src.baselines.linear import schedule_from_program
from olss_jax._src.baselines.pndm import pndm_schedule
from olss_jax._src.baselines.registry import (
    BASELINES,
    ays_dpm_solver_pp_schedule,
    baseline_names,
    baseline_schedule,
    ddim_baseline_schedule,
    ddim_schedule,
)
from olss_jax._src.baselines.unipc import unipc_schedule
from olss_jax._src.noise import alpha_bar_at, ddim_timesteps

__all__ = ["AYS_TIMESTEPS", "BASELINES", "alpha_bar_at", "ays_dpm_solver_pp_schedule",
           "ays_timesteps", "baseline_names", "baseline_schedule", "flow_euler_schedule",
           "ddim_baseline_schedule", "ddim_schedule",
           "ddim_timesteps", "deis_schedule", "dpm_solver_pp_schedule", "dpm_solver_schedule",
           "euler_schedule", "ipndm_schedule", "pndm_schedule", "schedule_from_program",
           "unipc_schedule"]
