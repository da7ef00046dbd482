"""What a schedule was fitted for, and the checks that warn when it is used for something else.

OLSS weights are specific to the model, resolution, guidance scale and prompt domain of the
teacher (paper Sec. 3.5; a recurring complaint about fitted samplers). A schedule fitted here
records those facts in its metadata, and `check_schedule_for` compares them with a use.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from olss_jax._src import schedule as schedule_lib
from olss_jax._src import validation
from olss_jax._src.stable_diffusion import model as model_lib


# One warning class for every mismatch check in the library (core and Stable Diffusion).
ScheduleMismatchWarning = validation.ScheduleMismatchWarning


def sd_metadata(sd: model_lib.StableDiffusion, *, guidance_scale: float, height: int,
                width: int) -> dict[str, Any]:
  """The facts about a Stable Diffusion run that a fitted schedule records.

  Returns:
    A JSON-serialisable dict: ``model`` (name), ``model_path``, ``model_dtype``,
    ``prediction_type``, ``resolution`` ([height, width] pixels), ``latent_shape``
    ([C, h, w]), ``guidance_scale``, ``steps_offset``, ``final_alpha_cumprod``.
  """
  shape = sd.latent_shape(1, height, width)
  return {
      "model": sd.name,
      "model_path": sd.info.path,
      "model_dtype": sd.info.dtype,
      "prediction_type": sd.prediction_type,
      "resolution": [int(height), int(width)],
      "latent_shape": list(shape[1:]),
      "guidance_scale": float(guidance_scale),
      "steps_offset": sd.info.noise.steps_offset,
      "final_alpha_cumprod": sd.info.noise.final_alpha_cumprod,
  }


def check_schedule_for(sd: model_lib.StableDiffusion, schedule: schedule_lib.Schedule, *,
                       guidance_scale: float, height: int, width: int,
                       stacklevel: int = 2) -> None:
  """Checks a schedule against a planned use; warns on soft mismatches, raises on impossible ones.

  Warns (`ScheduleMismatchWarning`) when the schedule's metadata names another model, guidance
  scale, prediction type or resolution than the use. Schedules without such metadata (e.g.
  a DDIM baseline) are not checked beyond their timesteps.

  Args:
    sd: the model to sample with.
    schedule: the `Schedule`.
    guidance_scale: the planned guidance scale.
    height, width: the planned resolution in pixels.
    stacklevel: passed to `warnings.warn`.

  Raises:
    TypeError: ``schedule`` is not a `Schedule`.
    ValueError: timesteps outside the model's training range, or a schedule fitted on latents
      with another number of channels.
  """
  if not isinstance(schedule, schedule_lib.Schedule):
    raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
  num_train = sd.alphas_cumprod.shape[0]
  timesteps = np.asarray(schedule.timesteps)
  if timesteps.size and (timesteps.min() < 0 or timesteps.max() >= num_train):
    raise ValueError(f"schedule: timesteps must lie in [0, {num_train}) for {sd.name!r}, got "
                     f"[{timesteps.min()}, {timesteps.max()}]")
  meta = schedule.metadata
  want_shape = list(sd.latent_shape(1, height, width)[1:])
  fitted_shape = meta.get("latent_shape", meta.get("sample_shape"))
  if fitted_shape is not None and len(fitted_shape) == 3 and fitted_shape[0] != want_shape[0]:
    raise ValueError(f"schedule: fitted on latents of shape {list(fitted_shape)}, but "
                     f"{sd.name!r} uses {want_shape[0]} latent channels")
  problems = []
  if "model" in meta and meta["model"] != sd.name:
    problems.append(f"model {meta['model']!r} (now {sd.name!r})")
  if "prediction_type" in meta and meta["prediction_type"] != sd.prediction_type:
    problems.append(f"prediction_type {meta['prediction_type']!r} (now {sd.prediction_type!r})")
  if "guidance_scale" in meta and not np.isclose(float(meta["guidance_scale"]),
                                                 float(guidance_scale), rtol=1e-6, atol=1e-9):
    problems.append(f"guidance_scale {meta['guidance_scale']} (now {float(guidance_scale)})")
  if "resolution" in meta and list(meta["resolution"]) != [height, width]:
    problems.append(f"resolution {list(meta['resolution'])} (now {[height, width]})")
  elif "resolution" not in meta and fitted_shape is not None and len(fitted_shape) == 3 \
      and list(fitted_shape) != want_shape:
    problems.append(f"latent shape {list(fitted_shape)} (now {want_shape})")
  if problems:
    warnings.warn("schedule was fitted for " + ", ".join(problems) + "; OLSS weights are "
                  "specific to what they were fitted on, so quality may drop: refit with "
                  "collect_sd_trajectory and fit_sd_schedule", ScheduleMismatchWarning,
                  stacklevel=stacklevel + 1)
