"""The OLSS teacher on Stable Diffusion prompts, and the fit that records what it was fitted for.

Paper Sec. 4 settings are the defaults: a 1000-step DDIM teacher, guidance scale 7.0 and 32
fitting images. Memory: the teacher's model outputs are the data (the states are recomputed
from x_T and the outputs, see `olss_jax.Trajectory`); they are gathered on the host in
float32, (K, N, 4, 64, 64) at 512 px, about 2.1 GB for K = 1000 and N = 32. The device holds
the model plus ``steps_per_chunk`` steps of one chunk of ``images_per_chunk`` images.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from olss_jax._src import fit_olss as fit_olss_lib
from olss_jax._src import regression
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import stats
from olss_jax._src import store
from olss_jax._src import store_model
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src.stable_diffusion import denoiser as denoiser_lib
from olss_jax._src.stable_diffusion import generate as generate_lib
from olss_jax._src.stable_diffusion import model as model_lib
from olss_jax._src.stable_diffusion import provenance
from olss_jax._src.stable_diffusion import text as text_lib

DEFAULT_TEACHER_STEPS = 1000
DEFAULT_GUIDANCE_SCALE = 7.0
DEFAULT_NUM_FIT_IMAGES = 32


class SDTeacher(NamedTuple):
  """A Stable Diffusion teacher run and what it was run for.

  Attributes:
    trajectory: the `Trajectory` (x_T (N, C, h, w) float32, model_outputs (K, N, C, h, w)
      float32 on the host: the guided epsilon of every teacher step).
    info: JSON-serialisable facts (`sd_metadata` plus ``teacher_steps``, ``num_fit_images``,
      ``num_prompts``, ``prompts_sha256``, ``negative_prompts``) that `fit_sd_schedule`
      copies into the schedule's metadata.
  """

  trajectory: trajectory_lib.Trajectory
  info: dict[str, Any]


def _prompts_digest(prompts: list[str], negatives: list[str]) -> str:
  blob = json.dumps({"prompts": prompts, "negative_prompts": negatives}, ensure_ascii=True)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def collect_sd_trajectory(sd: model_lib.StableDiffusion, prompts, *, key=None, latents=None,
                          num_images: int | None = None,
                          num_teacher_steps: int = DEFAULT_TEACHER_STEPS,
                          guidance_scale: float = DEFAULT_GUIDANCE_SCALE, negative_prompts=None,
                          height: int | None = None, width: int | None = None,
                          images_per_chunk: int | None = None, steps_per_chunk: int | None = 50,
                          callback: Callable[[int, int], None] | None = None) -> SDTeacher:
  """Runs the complete generation process (paper Sec. 3.3) of Stable Diffusion on prompts.

  The teacher is deterministic DDIM over ``num_teacher_steps`` of the model's training
  timesteps with the scheduler config's ``steps_offset`` and final alpha
  (``set_alpha_to_one``), classifier-free guided (`sd_denoiser`), as
  `olss_jax.collect_trajectory`. Image i uses ``prompts[i % len(prompts)]``.

  Args:
    sd: the model.
    prompts: a str or a sequence of str (cycled over the images).
    key: PRNG key for the N starting latents; or pass ``latents``.
    latents: (N, C, h, w) starting latents.
    num_images: N; default ``latents.shape[0]``, else 32 (the paper's).
    num_teacher_steps: K (1000, every training timestep, in the paper).
    guidance_scale: g (7.0 in the paper's experiments).
    negative_prompts: None (empty prompt), a str, or one per prompt (cycled alike).
    height, width: pixels; default the UNet's configured resolution.
    images_per_chunk: images per teacher run (None: all N at once). Each chunk is collected
      separately and written into one preallocated host array.
    steps_per_chunk: teacher steps per jitted call (device memory holds one such chunk of
      outputs); None runs each image chunk as one scan.
    callback: ``callback(image_steps_done, image_steps_total)`` for progress, counted in
      image-steps (N * K in total).

  Returns:
    An `SDTeacher` (the `Trajectory` with host float32 outputs, and its info).
  """
  prompt_set = text_lib.prompt_list(prompts)
  negative_set = text_lib.prompt_list("" if negative_prompts is None else negative_prompts,
                                      name="negative_prompts", batch_size=len(prompt_set))
  if num_images is None:
    num_images = DEFAULT_NUM_FIT_IMAGES if latents is None else int(np.shape(latents)[0])
  if not isinstance(num_images, (int, np.integer)) or num_images < 1:
    raise ValueError(f"num_images: expected a positive int, got {num_images!r}")
  default_h, default_w = sd.default_resolution
  height = default_h if height is None else height
  width = default_w if width is None else width
  x_T = np.asarray(generate_lib.starting_latents(sd, num_images, key=key, latents=latents,
                                                 height=height, width=width))
  if images_per_chunk is None:
    images_per_chunk = num_images
  if not isinstance(images_per_chunk, (int, np.integer)) or images_per_chunk < 1:
    raise ValueError(f"images_per_chunk: expected a positive int or None, got {images_per_chunk!r}")
  image_prompts = [prompt_set[i % len(prompt_set)] for i in range(num_images)]
  image_negatives = [negative_set[i % len(negative_set)] for i in range(num_images)]
  noise = sd.info.noise
  outputs = None
  traj = None
  total = num_images * num_teacher_steps
  for start in range(0, num_images, images_per_chunk):
    stop = min(start + images_per_chunk, num_images)
    embeds, negative_embeds = text_lib.encode_prompts(sd, image_prompts[start:stop],
                                                      negative_prompts=image_negatives[start:stop])
    denoise = denoiser_lib.sd_denoiser(sd, embeds, guidance_scale=guidance_scale,
                                       negative_embeds=negative_embeds)
    progress = None
    if callback is not None:
      def progress(done, _, start=start, stop=stop):
        callback(start * num_teacher_steps + done * (stop - start), total)
    traj = trajectory_lib.collect_trajectory(
        denoise, x_T[start:stop], noise.alphas_cumprod, num_teacher_steps,
        steps_offset=noise.steps_offset, final_alpha_cumprod=noise.final_alpha_cumprod,
        steps_per_chunk=steps_per_chunk, callback=progress)
    if outputs is None:
      outputs = np.empty((traj.num_teacher_steps,) + x_T.shape, np.float32)
      timesteps, alphas = traj.timesteps, traj.alphas
    outputs[:, start:stop] = np.asarray(traj.model_outputs, np.float32)
    traj = None  # release the chunk's own output buffer before the next chunk
  trajectory = trajectory_lib.Trajectory(timesteps=timesteps, x_T=x_T, model_outputs=outputs,
                                         alphas=alphas)
  info = _teacher_info(sd, guidance_scale, height, width, num_teacher_steps, num_images,
                       prompt_set, negative_set, negative_prompts is not None)
  return SDTeacher(trajectory, info)


def _teacher_info(sd, guidance_scale, height, width, num_teacher_steps, num_images, prompt_set,
                  negative_set, has_negative: bool) -> dict:
  """What a teacher was collected for (recorded in the schedules fitted on it)."""
  info = provenance.sd_metadata(sd, guidance_scale=guidance_scale, height=height, width=width)
  info.update({
      "teacher_steps": int(num_teacher_steps),
      "num_fit_images": int(num_images),
      "num_prompts": len(prompt_set),
      "prompts_sha256": _prompts_digest(prompt_set, negative_set),
      "negative_prompts": has_negative,
  })
  return info


def _key_list(key) -> list[int]:
  """A PRNG key (typed or raw uint32) as a JSON list, to record it."""
  if jax.dtypes.issubdtype(jax.numpy.asarray(key).dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.asarray(key).ravel().tolist()


def collect_sd_to_directory(directory, sd: model_lib.StableDiffusion, prompts, *, key,
                            num_images: int = DEFAULT_NUM_FIT_IMAGES, images_per_chunk: int = 8,
                            num_teacher_steps: int = DEFAULT_TEACHER_STEPS,
                            guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                            negative_prompts=None, height: int | None = None,
                            width: int | None = None, steps_per_chunk: int | None = 50,
                            callback=None):
  """`collect_sd_trajectory` into a resumable on-disk store, one file per chunk of images.

  Uses `olss_jax.collect_to_directory`: an interrupted collection resumes where it stopped
  when the same call is run again (finished chunks are verified and skipped), and a call
  with another model, guidance scale, prompts or resolution is refused instead of mixing
  data. Chunk i holds images ``[i * images_per_chunk, ...)`` with prompts cycled as in
  `collect_sd_trajectory` and starting latents ``normal(fold_in(key, i))``. Host memory
  holds one chunk; read the result back with `load_sd_teacher`.

  Args:
    directory: the store (created if missing).
    sd, prompts, num_teacher_steps, guidance_scale, negative_prompts, height, width,
      steps_per_chunk: as in `collect_sd_trajectory`.
    key: PRNG key of the starting latents.
    num_images: N, the number of fitting images (32, the paper's).
    images_per_chunk: images per chunk file.
    callback: passed to `collect_to_directory` (receives `StoreProgress`).

  Returns:
    The `CollectInfo` of `collect_to_directory`.
  """
  prompt_set = text_lib.prompt_list(prompts)
  negative_set = text_lib.prompt_list("" if negative_prompts is None else negative_prompts,
                                      name="negative_prompts", batch_size=len(prompt_set))
  for label, value in (("num_images", num_images), ("images_per_chunk", images_per_chunk)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{label}: expected a positive int, got {value!r}")
  default_h, default_w = sd.default_resolution
  height = default_h if height is None else height
  width = default_w if width is None else width
  starts = list(range(0, num_images, images_per_chunk))

  def chunk_images(i):
    return range(starts[i], min(starts[i] + images_per_chunk, num_images))

  def noises(i):
    return generate_lib.starting_latents(sd, len(chunk_images(i)),
                                         key=jax.random.fold_in(key, i), height=height,
                                         width=width)

  def denoiser(i):
    images = chunk_images(i)
    embeds, negative_embeds = text_lib.encode_prompts(
        sd, [prompt_set[j % len(prompt_set)] for j in images],
        negative_prompts=[negative_set[j % len(negative_set)] for j in images])
    return denoiser_lib.sd_denoiser(sd, embeds, guidance_scale=guidance_scale,
                                    negative_embeds=negative_embeds)

  info = _teacher_info(sd, guidance_scale, height, width, num_teacher_steps, num_images,
                       prompt_set, negative_set, negative_prompts is not None)
  config = {"model": {"source": "stable_diffusion", "name": sd.name,
                      "guidance_scale": float(guidance_scale)},
            "latent_key": _key_list(key), "images_per_chunk": int(images_per_chunk),
            "num_images": int(num_images), "schedule_metadata": info}

  def chunk_metadata(i):
    images = chunk_images(i)
    return {"images": [images.start, images.stop],
            "prompts": [prompt_set[j % len(prompt_set)] for j in images],
            "negative_prompts": [negative_set[j % len(negative_set)] for j in images]}

  noise = sd.info.noise
  return store.collect_to_directory(
      directory, denoiser, noises, noise.alphas_cumprod, num_chunks=len(starts),
      num_teacher_steps=num_teacher_steps, steps_offset=noise.steps_offset,
      final_alpha_cumprod=noise.final_alpha_cumprod, steps_per_chunk=steps_per_chunk,
      config=config, callback=callback, chunk_metadata=chunk_metadata)


def load_sd_teacher(directory, *, allow_partial: bool = False) -> SDTeacher:
  """Reads a store written by `collect_sd_to_directory` back as an `SDTeacher`.

  Args:
    directory: the store.
    allow_partial: use only the finished chunks (``num_fit_images`` is then what was read).

  Returns:
    The `SDTeacher` (host float32 outputs, chunks concatenated along the batch axis).
  """
  manifest = store.read_manifest(directory)   # read once; the store's own readers take it
  if not store_model.is_sd_store(manifest):
    raise ValueError(f"directory: {directory!r} was not written by collect_sd_to_directory "
                     "(its config records no Stable Diffusion model)")
  trajectory = store.load_store(directory, allow_partial=allow_partial, manifest=manifest)
  info = store_model.schedule_metadata(directory, manifest=manifest)
  info["num_fit_images"] = trajectory.batch_size
  return SDTeacher(trajectory, info)


def fit_sd_schedule(teacher: SDTeacher, num_steps: int, *, method: str | None = None,
                    denoise_fn=None) -> schedule_lib.Schedule:
  """Fits an OLSS schedule on a Stable Diffusion teacher (`olss_jax.fit_olss`) and records its use.

  At Stable Diffusion's size the paper's methods search and fit on the trajectory's float64
  statistics (one Gram serves both: `trajectory_stats`).

  Args:
    teacher: from `collect_sd_trajectory` or `load_sd_teacher`.
    num_steps: n, the number of model calls of the fitted sampler.
    method: a name of `olss_jax.METHODS` (the closed-loop ones need ``denoise_fn``); None:
      `fit_olss`'s default (`fit_olss.resolve_method`): the paper's ``"olss"`` without
      ``denoise_fn``, ``"olss-ft"`` with it.
    denoise_fn: the guided model on the teacher's prompts (`sd_denoiser`), for the
      closed-loop methods.

  Returns:
    The fitted `Schedule`; its metadata holds the fit's entries and the teacher's info
    (model, resolution, guidance scale, prediction type, teacher steps, number of fitting
    images, ...). `generate` warns when it is used for something else.
  """
  if not isinstance(teacher, SDTeacher):
    raise TypeError(f"teacher: expected an SDTeacher from collect_sd_trajectory, got "
                    f"{type(teacher).__name__}")
  method = fit_olss_lib.resolve_method(method, has_model=denoise_fn is not None)
  data = teacher.trajectory
  if method in fit_olss_lib.PAPER_METHODS and regression.qr_flops(data) > regression.QR_FLOPS_LIMIT:
    data = stats.trajectory_stats(data)  # one Gram serves search and fit
  fitted = fit_olss_lib.fit_olss(data, num_steps, denoise_fn=denoise_fn, method=method)
  return fitted.with_metadata(**teacher.info, method=method)
