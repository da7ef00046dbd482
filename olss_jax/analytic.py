"""Closed-form diffusion models: Gaussian-mixture data with exact model outputs (the tests' ground truth)."""
from olss_jax._src.analytic import (
    GaussianMixture,
    gaussian,
    make_gaussian_mixture,
    mixture_denoiser,
    mixture_noise_prediction,
    sample_data,
)

__all__ = ["GaussianMixture", "gaussian", "make_gaussian_mixture", "mixture_denoiser",
           "mixture_noise_prediction", "sample_data"]
