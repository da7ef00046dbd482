"""The input checks every verb runs (named errors), for use in your own code."""
from olss_jax._src.teacher import check_teacher
from olss_jax._src.validation import (
    ScheduleMismatchWarning,
    check_finite,
    check_num_steps,
    check_path,
    check_schedule,
    check_schedule_compatible,
    check_trajectory,
    find_nonfinite,
)

__all__ = ["ScheduleMismatchWarning", "check_finite", "check_num_steps", "check_path",
           "check_schedule", "check_schedule_compatible", "check_teacher", "check_trajectory",
           "find_nonfinite"]
