"""Stable Diffusion on diffusers' Flax classes: prompts in, OLSS images out, under jax.jit.

``noise_config_from_dict``: a `NoiseConfig` from a diffusers scheduler config dict (the parsed
``scheduler_config.json``; `read_noise_config` reads the file). ``sd_metadata``: the facts a
schedule fitted on your own Stable Diffusion runs should record (``schedule.with_metadata``) so
that `generate` / `check_schedule_for` can warn when it is used elsewhere.
"""
from olss_jax._src.stable_diffusion.collect import (
    SDTeacher,
    collect_sd_to_directory,
    collect_sd_trajectory,
    fit_sd_schedule,
    load_sd_teacher,
)
from olss_jax._src.stable_diffusion.denoiser import prediction_to_epsilon, sd_denoiser
from olss_jax._src.stable_diffusion.generate import decode_latents, generate
from olss_jax._src.stable_diffusion.loading import load_stable_diffusion
from olss_jax._src.stable_diffusion.model import ModelInfo, StableDiffusion
from olss_jax._src.stable_diffusion.noise_config import (
    NoiseConfig,
    noise_config_from_dict,
    read_noise_config,
)
from olss_jax._src.stable_diffusion.provenance import check_schedule_for, sd_metadata
from olss_jax._src.stable_diffusion.text import encode_prompts, tokenize
from olss_jax._src.tiny_pipeline import save_tiny_stable_diffusion

__all__ = ["ModelInfo", "NoiseConfig", "SDTeacher", "StableDiffusion", "check_schedule_for",
           "collect_sd_to_directory", "collect_sd_trajectory", "decode_latents",
           "encode_prompts", "fit_sd_schedule", "generate", "load_sd_teacher",
           "load_stable_diffusion", "noise_config_from_dict", "prediction_to_epsilon",
           "read_noise_config", "save_tiny_stable_diffusion", "sd_denoiser", "sd_metadata",
           "tokenize"]
