"""A Stable Diffusion scheduler config (``scheduler/scheduler_config.json``) read as facts.

Only the noise schedule and its conventions are taken from the config; the sampler is always
olss_jax's own. The config may belong to any diffusers scheduler class (Stable Diffusion ships
a PNDM config; the keys used here are shared by DDIM, PNDM, DPM-Solver, ...).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, NamedTuple

import numpy as np

from olss_jax._src import noise

PREDICTION_TYPES = ("epsilon", "v_prediction")


class NoiseConfig(NamedTuple):
  """The facts of a scheduler config that the OLSS verbs need.

  Attributes:
    alphas_cumprod: (T,) float64 training alpha_bar, computed in float64 from the betas.
    prediction_type: ``"epsilon"`` or ``"v_prediction"`` (what the UNet outputs).
    steps_offset: diffusers' ``steps_offset`` (1 for Stable Diffusion 1.x / 2.x).
    set_alpha_to_one: diffusers' ``set_alpha_to_one``.
    final_alpha_cumprod: alpha_bar after the last sampling step: 1.0 if ``set_alpha_to_one``
      else ``alphas_cumprod[0]`` (diffusers' DDIM convention).
    clip_sample: the config's ``clip_sample``; OLSS and its DDIM teacher never clip.
    timestep_spacing: the config's ``timestep_spacing`` (informational; ``"leading"`` is what
      `olss_jax.ddim_timesteps` produces).
  """

  alphas_cumprod: np.ndarray
  prediction_type: str
  steps_offset: int
  set_alpha_to_one: bool
  final_alpha_cumprod: float
  clip_sample: bool
  timestep_spacing: str


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
  """diffusers' ``squaredcos_cap_v2`` (Glide cosine) betas, in float64."""
  def alpha_bar(u):
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  steps = np.arange(num_train_timesteps)
  return np.array([min(1 - alpha_bar((i + 1) / num_train_timesteps)
                       / alpha_bar(i / num_train_timesteps), max_beta) for i in steps])


def noise_config_from_dict(config: Mapping[str, Any], *, source: str = "config") -> NoiseConfig:
  """Reads a diffusers scheduler config dict (diffusers' defaults for missing keys).

  Implements diffusers' beta schedules ``linear``, ``scaled_linear`` (Stable Diffusion),
  ``squaredcos_cap_v2`` and ``trained_betas``, in float64 (diffusers' Flax schedulers use
  float32; the two agree to float32 rounding).

  Args:
    config: the parsed ``scheduler_config.json``.
    source: where the config came from, for error messages.

  Returns:
    A `NoiseConfig`.

  Raises:
    ValueError: an unknown beta schedule or prediction type, or zero-terminal-SNR rescaling
      (alpha_bar = 0 at the last timestep has no epsilon parametrisation).
  """
  if not isinstance(config, Mapping):
    raise TypeError(f"{source}: expected a JSON object, got {type(config).__name__}")
  num_train = int(config.get("num_train_timesteps", 1000))
  trained = config.get("trained_betas")
  schedule = config.get("beta_schedule", "linear")
  beta_start = float(config.get("beta_start", 0.0001))
  beta_end = float(config.get("beta_end", 0.02))
  if trained is not None:
    betas = np.asarray(trained, np.float64)
  elif schedule == "linear":
    betas = np.linspace(beta_start, beta_end, num_train, dtype=np.float64)
  elif schedule == "scaled_linear":
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train, dtype=np.float64) ** 2
  elif schedule == "squaredcos_cap_v2":
    betas = _cosine_betas(num_train)
  else:
    raise ValueError(f"{source}: beta_schedule {schedule!r} is not supported; expected one of "
                     "'linear', 'scaled_linear', 'squaredcos_cap_v2' or trained_betas")
  if config.get("rescale_betas_zero_snr", False):
    raise ValueError(f"{source}: rescale_betas_zero_snr=True (alpha_bar = 0 at the last "
                     "timestep) is not supported: the epsilon parametrisation is singular there")
  alphas_cumprod = noise.check_alphas_cumprod(np.cumprod(1.0 - betas))
  prediction_type = config.get("prediction_type", "epsilon")
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"{source}: prediction_type {prediction_type!r} is not supported; "
                     f"expected one of {PREDICTION_TYPES}")
  set_alpha_to_one = bool(config.get("set_alpha_to_one", True))
  return NoiseConfig(
      alphas_cumprod=alphas_cumprod,
      prediction_type=prediction_type,
      steps_offset=int(config.get("steps_offset", 0)),
      set_alpha_to_one=set_alpha_to_one,
      final_alpha_cumprod=1.0 if set_alpha_to_one else float(alphas_cumprod[0]),
      clip_sample=bool(config.get("clip_sample", False)),
      timestep_spacing=str(config.get("timestep_spacing", "leading")),
  )


def read_noise_config(path: str | os.PathLike) -> NoiseConfig:
  """Reads ``scheduler_config.json`` at ``path`` (see `noise_config_from_dict`)."""
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  return noise_config_from_dict(config, source=path)
