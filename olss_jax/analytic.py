"""Closed-form diffusion models: Gaussian-mixture data with exact model outputs (the tests' ground truth)."""
from olss_jax._src.analytic import (
    GaussianMixture,
    gaussian,
    make_gaussian_mixture,
    mixture_denoiser,
    flow_mixture_denoiser,
    mixture_noise_prediction,
    mixture_posterior,
    mixture_velocity,
    sample_data,
)

__all__ = ["GaussianMixture", "flow_mixture_denoiser", "gaussian", "make_gaussian_mixture",
           "mixture_denoiser", "mixture_noise_prediction", "mixture_posterior",
           "mixture_velocity", "sample_data"]
