"""The input checks every verb runs (named errors), for use in your own code."""
from olss_jax._src.validation import (
    FewFitNoisesWarning,
    ScheduleMismatchWarning,
    check_count,
    check_finite,
    check_num_steps,
    check_path,
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

__all__ = ["FewFitNoisesWarning", "ScheduleMismatchWarning", "check_count", "check_finite",
           "check_num_steps", "check_path", "check_schedule", "check_schedule_compatible",
           "check_schedule_model", "check_teacher", "check_trajectory", "find_nonfinite",
           "path_is_valid", "schedule_is_valid", "schedule_kind"]
