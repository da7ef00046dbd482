"""Prompts to images with any `Schedule`: text encoding, the n-step sampler, VAE decode."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from olss_jax._src import sampler
from olss_jax._src import schedule as schedule_lib
from olss_jax._src.stable_diffusion import denoiser as denoiser_lib
from olss_jax._src.stable_diffusion import model as model_lib
from olss_jax._src.stable_diffusion import provenance
from olss_jax._src.stable_diffusion import text as text_lib


def decode_latents(sd: model_lib.StableDiffusion, latents) -> jax.Array:
  """VAE decode to uint8 images, as diffusers' pipeline (``latents / scaling_factor``); jittable.

  Args:
    sd: the model.
    latents: (B, C, h, w) final latents.

  Returns:
    (B, h * f, w * f, 3) uint8 images (f the VAE factor): ``round(clip(x / 2 + 0.5, 0, 1) * 255)``.
  """
  latents = jnp.asarray(latents)
  images = sd.vae.apply({"params": sd.params["vae"]}, latents / sd.info.scaling_factor,
                        method=sd.vae.decode).sample
  images = jnp.clip(images.astype(jnp.float32) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
  return jnp.round(images * 255).astype(jnp.uint8)


def generate_from_ids(sd: model_lib.StableDiffusion, schedule: schedule_lib.Schedule, ids,
                      negative_ids, latents, guidance_scale) -> tuple[jax.Array, jax.Array]:
  """The jittable core of `generate`: text encoder, guided sampler (paper Eq. 12), VAE.

  Every argument is an array or a pytree of arrays, so ``jax.jit(generate_from_ids)``
  compiles once per model, step count and shapes and serves any schedule and guidance scale.

  Args:
    sd: the model.
    schedule: n timesteps and (n, n + 1) weights.
    ids, negative_ids: (B, L) int token ids (`tokenize`).
    latents: (B, C, h, w) float32 starting noise x_T.
    guidance_scale: scalar g.

  Returns:
    (images (B, H, W, 3) uint8, final latents (B, C, h, w) float32).
  """
  denoise = denoiser_lib.sd_denoiser(sd, text_lib.embed_ids(sd, ids),
                                     guidance_scale=guidance_scale,
                                     negative_embeds=text_lib.embed_ids(sd, negative_ids))
  final = sampler.sample(denoise, schedule, latents)
  return decode_latents(sd, final), final


_generate_jit = jax.jit(generate_from_ids)


def starting_latents(sd: model_lib.StableDiffusion, batch_size: int, *, key=None, latents=None,
                     height: int | None = None, width: int | None = None) -> jax.Array:
  """x_T: from ``latents`` (checked) or drawn from N(0, I) with ``key``; exactly one is given.

  Returns:
    (B, C, h, w) float32.

  Raises:
    ValueError: both or neither of key and latents, or latents of the wrong shape.
  """
  shape = sd.latent_shape(batch_size, height, width)
  if (key is None) == (latents is None):
    raise ValueError("key, latents: pass exactly one (a PRNG key to draw x_T, or the latents)")
  if latents is None:
    return jax.random.normal(key, shape, jnp.float32)
  latents = jnp.asarray(latents)
  if latents.shape != shape:
    raise ValueError(f"latents: expected shape {shape} (batch, latent channels, height / "
                     f"{sd.info.vae_scale_factor}, width / {sd.info.vae_scale_factor}), got "
                     f"{latents.shape}")
  if not jnp.issubdtype(latents.dtype, jnp.floating):
    raise TypeError(f"latents: expected a float dtype, got {latents.dtype}")
  return latents.astype(jnp.float32)


def generate(sd: model_lib.StableDiffusion, schedule: schedule_lib.Schedule, prompts, *,
             key=None, latents=None, guidance_scale: float = 7.0, negative_prompts=None,
             height: int | None = None, width: int | None = None,
             return_latents: bool = False):
  """Generates images from prompts with a fitted OLSS (or any) `Schedule` (paper Eq. 12).

  Tokenises on the host, then runs `generate_from_ids` under one `jax.jit`: CLIP text
  encoding, the n-step sampler (`olss_jax.sample`, a `lax.fori_loop`) with classifier-free
  guidance, VAE decode. Another schedule of the same step count, or another guidance scale,
  reuses the compiled function. Warns (`ScheduleMismatchWarning`) when the schedule was
  fitted for another model, guidance scale or resolution.

  Args:
    sd: the model (`load_stable_diffusion`).
    schedule: the `Schedule` (e.g. from `fit_sd_schedule`, or `olss_jax.baselines.ddim_schedule`).
    prompts: a str or a sequence of B str.
    key: PRNG key for x_T ~ N(0, I); or pass ``latents``.
    latents: (B, C, h, w) starting noise.
    guidance_scale: classifier-free guidance scale g.
    negative_prompts: None (empty prompt), a str, or B str.
    height, width: pixels; default the UNet's configured resolution.
    return_latents: also return the final latents.

  Returns:
    (B, H, W, 3) uint8 images; with ``return_latents``, ``(images, latents (B, C, h, w))``.
  """
  prompts = text_lib.prompt_list(prompts)
  negatives = text_lib.prompt_list("" if negative_prompts is None else negative_prompts,
                                   name="negative_prompts", batch_size=len(prompts))
  default_h, default_w = sd.default_resolution
  height = default_h if height is None else height
  width = default_w if width is None else width
  x_T = starting_latents(sd, len(prompts), key=key, latents=latents, height=height, width=width)
  provenance.check_schedule_for(sd, schedule, guidance_scale=guidance_scale, height=height,
                                width=width, stacklevel=2)
  images, final = _generate_jit(sd, schedule, text_lib.tokenize(sd, prompts),
                                text_lib.tokenize(sd, negatives), x_T,
                                jnp.asarray(guidance_scale, jnp.float32))
  return (images, final) if return_latents else images
