"""The input checks every verb runs (named errors), for use in your own code.

`check_alphas_cumprod`: a (T,) alpha_bar table checked (finite, in (0, 1], non-increasing).
`check_choice`, `check_count`, `check_positive`: one option among names, an integer, a finite
number > 0. `check_flow_teacher`: a rectified-flow teacher (DS-Solver's requirement).
``RECOMMENDED_FIT_NOISES``: the fewest fitting noises `olss_jax.fit_olss` takes without a
`FewFitNoisesWarning`. ``TRAJECTORY_SCAN_EVENT``: the `jax.monitoring` event recorded once
per finiteness scan of a trajectory's model outputs (count them with
`jax.monitoring.register_event_listener`; a public verb or `fit_olss` scans once).
"""
from olss_jax._src.fit_olss import RECOMMENDED_FIT_NOISES
from olss_jax._src.validation import (
    TRAJECTORY_SCAN_EVENT,
    FewFitNoisesWarning,
    ScheduleMismatchWarning,
    check_alphas_cumprod,
    check_choice,
    check_count,
    check_finite,
    check_flow_teacher,
    check_num_steps,
    check_path,
    check_positive,
    check_schedule,
    check_schedule_compatible,
    check_schedule_model,
    check_teacher,
    check_trajectory,
    find_nonfinite,
    path_is_valid,
    schedule_is_valid,
    schedule_kind,
)

__all__ = ["FewFitNoisesWarning", "RECOMMENDED_FIT_NOISES", "ScheduleMismatchWarning",
           "TRAJECTORY_SCAN_EVENT",
           "check_alphas_cumprod", "check_choice", "check_count", "check_finite",
           "check_flow_teacher", "check_num_steps", "check_path", "check_positive",
           "check_schedule", "check_schedule_compatible", "check_schedule_model",
           "check_teacher", "check_trajectory", "find_nonfinite", "path_is_valid",
           "schedule_is_valid", "schedule_kind"]
