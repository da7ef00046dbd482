"""olss_jax: Optimal Linear Subspace Search (Duan et al., CIKM 2023) in pure JAX.

The four verbs: `collect_trajectory` (the teacher), `search_path` (Algorithms 1-3),
`fit_weights` (Eq. 12 by least squares) and `sample` (the n-step sampler).
"""
from olss_jax._src.quiet import silence_flax_deprecations as _silence

_silence()

# --- core (schedule, teacher, sampler, DDIM) ---
from olss_jax._src.schedule import Schedule, make_schedule
from olss_jax._src.trajectory import Trajectory, collect_trajectory
from olss_jax._src.sampler import sample
from olss_jax._src.fit import fit_weights
from olss_jax._src.search import SearchInfo, path_errors, search_path, uniform_path
# --- scale: statistics, streaming, sharding (issue 6) ---
from olss_jax._src.stats import (
    TrajectoryStats,
    accumulate_stats,
    merge_stats,
    stats_from_chunks,
    stats_from_store,
    trajectory_stats,
)
from olss_jax._src.sharding import batch_mesh
# --- beyond the paper: closed-loop fit/search, end-to-end refinement (issue 8) ---
from olss_jax._src.closed_loop import ClosedLoopSearchInfo, closed_loop_fit, closed_loop_search
from olss_jax._src.refine import RefineInfo, refine
from olss_jax._src.fit_olss import fit_olss
from olss_jax._src.ddim import (
    ddim_schedule,
    ddim_timesteps,
    linear_alphas_cumprod,
    scaled_linear_alphas_cumprod,
)
# --- files, validation, resumable collection (reliability) ---
from olss_jax._src.io import (
    load_schedule,
    load_trajectory,
    read_metadata,
    save_schedule,
    save_trajectory,
)
from olss_jax._src.store import (
    CollectInfo,
    StoreProgress,
    collect_to_directory,
    load_store,
    read_manifest,
)
from olss_jax._src.validation import (
    check_finite,
    check_num_steps,
    check_path,
    check_schedule,
    check_schedule_compatible,
    check_trajectory,
    find_nonfinite,
)
# --- analytic models ---
from olss_jax._src.analytic import (
    GaussianMixture,
    gaussian,
    make_gaussian_mixture,
    mixture_denoiser,
    sample_data,
)

# --- the embedded digits model and its evaluation network (issue 4) ---
from olss_jax._src.digits.data import images_to_grid, images_to_uint8, load_digits_dataset
from olss_jax._src.digits.model import DigitsModel, load_digits_model
from olss_jax._src.digits.classifier import DigitsClassifier, load_digits_classifier
from olss_jax._src.frechet import frechet_distance

# --- classical baselines as schedules (paper Section 3.1, Eq. 8-9) ---
from olss_jax._src.baselines.registry import BASELINES, baseline_schedule, ddim_baseline_schedule
from olss_jax._src.baselines.euler import euler_schedule
from olss_jax._src.baselines.pndm import pndm_schedule
from olss_jax._src.baselines.deis import deis_schedule
from olss_jax._src.baselines.dpm_solver import dpm_solver_pp_schedule, dpm_solver_schedule
from olss_jax._src.baselines.unipc import unipc_schedule
from olss_jax._src.baselines.ipndm import ipndm_schedule

# --- Stable Diffusion (diffusers' Flax classes; imported on use) ---
from olss_jax._src.stable_diffusion.model import ModelInfo, StableDiffusion
from olss_jax._src.stable_diffusion.noise_config import NoiseConfig, read_noise_config
from olss_jax._src.stable_diffusion.loading import load_stable_diffusion
from olss_jax._src.stable_diffusion.text import encode_prompts, tokenize
from olss_jax._src.stable_diffusion.denoiser import prediction_to_epsilon, sd_denoiser
from olss_jax._src.stable_diffusion.generate import decode_latents, generate
from olss_jax._src.stable_diffusion.provenance import ScheduleMismatchWarning, check_schedule_for
from olss_jax._src.stable_diffusion.collect import (
    SDTeacher,
    collect_sd_to_directory,
    collect_sd_trajectory,
    fit_sd_schedule,
    load_sd_teacher,
)

# --- the workbench: embedded models, figures, tiny SD pipeline (issue 5; CLI in olss_jax.cli) ---
from olss_jax._src.embedded import embedded_model
from olss_jax._src.figures import (
    correlation_figure,
    correlation_matrix,
    error_vs_steps_figure,
    generation_paths_figure,
    image_grid_figure,
    save_image_grid,
    to_display_images,
    weights_figure,
)
from olss_jax._src.workbench import paper_figures
from olss_jax._src.tiny_pipeline import save_tiny_stable_diffusion

__all__ = [
    "TrajectoryStats",
    "accumulate_stats",
    "merge_stats",
    "stats_from_chunks",
    "stats_from_store",
    "trajectory_stats",
    "batch_mesh",
    "DigitsClassifier",
    "DigitsModel",
    "frechet_distance",
    "images_to_grid",
    "images_to_uint8",
    "load_digits_classifier",
    "load_digits_dataset",
    "load_digits_model",
    "embedded_model",
    "correlation_figure",
    "correlation_matrix",
    "error_vs_steps_figure",
    "generation_paths_figure",
    "image_grid_figure",
    "save_image_grid",
    "to_display_images",
    "weights_figure",
    "paper_figures",
    "save_tiny_stable_diffusion",
    "load_schedule",
    "load_trajectory",
    "read_metadata",
    "save_schedule",
    "save_trajectory",
    "CollectInfo",
    "StoreProgress",
    "collect_to_directory",
    "load_store",
    "read_manifest",
    "check_finite",
    "check_num_steps",
    "check_path",
    "check_schedule",
    "check_schedule_compatible",
    "check_trajectory",
    "find_nonfinite",
    "ModelInfo",
    "StableDiffusion",
    "NoiseConfig",
    "read_noise_config",
    "load_stable_diffusion",
    "encode_prompts",
    "tokenize",
    "prediction_to_epsilon",
    "sd_denoiser",
    "decode_latents",
    "generate",
    "ScheduleMismatchWarning",
    "check_schedule_for",
    "SDTeacher",
    "collect_sd_trajectory",
    "fit_sd_schedule",
    "collect_sd_to_directory",
    "load_sd_teacher",
    "SearchInfo",
    "fit_weights",
    "ClosedLoopSearchInfo",
    "closed_loop_fit",
    "closed_loop_search",
    "RefineInfo",
    "refine",
    "fit_olss",
    "path_errors",
    "search_path",
    "uniform_path",
    "BASELINES",
    "baseline_schedule",
    "ddim_baseline_schedule",
    "euler_schedule",
    "pndm_schedule",
    "deis_schedule",
    "dpm_solver_pp_schedule",
    "dpm_solver_schedule",
    "unipc_schedule",
    "ipndm_schedule",
    "GaussianMixture",
    "Schedule",
    "Trajectory",
    "collect_trajectory",
    "ddim_schedule",
    "ddim_timesteps",
    "gaussian",
    "linear_alphas_cumprod",
    "make_gaussian_mixture",
    "make_schedule",
    "mixture_denoiser",
    "sample",
    "sample_data",
    "scaled_linear_alphas_cumprod",
]

__version__ = "0.1.0"
