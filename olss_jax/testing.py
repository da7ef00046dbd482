"""Fixtures for tests of olss_jax and of code built on it: closed-form models and synthetic teachers."""
from olss_jax._src.testing import (
    amplifying_problem,
    gaussian_epsilon,
    gaussian_problem,
    mixture_problem,
    random_schedule,
    random_trajectory,
)
from olss_jax._src.synthetic import synthetic_trajectory
from olss_jax._src.tiny_pipeline import save_tiny_stable_diffusion

__all__ = ["amplifying_problem", "gaussian_epsilon", "gaussian_problem", "mixture_problem",
           "random_schedule", "random_trajectory", "save_tiny_stable_diffusion",
           "synthetic_trajectory"]
