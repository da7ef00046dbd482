"""The UNet with classifier-free guidance as an epsilon denoiser for the OLSS verbs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise
from olss_jax._src.stable_diffusion import model as model_lib
from olss_jax._src.stable_diffusion import noise_config as noise_config_lib
from olss_jax._src.stable_diffusion import text as text_lib


def prediction_to_epsilon(model_output, x_t, alpha_bar_t, prediction_type: str):
  """Converts a model output to the noise prediction epsilon.

  ``epsilon``: unchanged. ``v_prediction`` (Salimans & Ho 2022, v = sqrt(ab) eps - sqrt(1-ab) x0
  with x_t = sqrt(ab) x0 + sqrt(1-ab) eps): ``eps = sqrt(ab_t) v + sqrt(1 - ab_t) x_t``, the
  same conversion as diffusers' DDIM ``step``.

  Args:
    model_output: (B, ...) the UNet output.
    x_t: (B, ...) its input.
    alpha_bar_t: scalar alpha_bar at the input's timestep.
    prediction_type: ``"epsilon"`` or ``"v_prediction"``.

  Returns:
    (B, ...) epsilon, in the dtype of ``model_output`` and ``x_t`` promoted.
  """
  if prediction_type == "epsilon":
    return model_output
  if prediction_type == "v_prediction":
    return jnp.sqrt(alpha_bar_t) * model_output + jnp.sqrt(1.0 - alpha_bar_t) * x_t
  raise ValueError(f"prediction_type: expected one of {noise_config_lib.PREDICTION_TYPES}, got "
                   f"{prediction_type!r}")


def _make_guided_fn(unet, prediction_type: str):
  """The per-model guided-denoiser function (created once per model: a stable jit key)."""

  def guided_epsilon(unet_params, context, guidance_scale, sqrt_ab, sqrt_one_minus_ab, x, t):
    batch = x.shape[0]
    if 2 * batch != context.shape[0]:
      raise ValueError(f"x_t: batch {batch} does not match the {context.shape[0] // 2} prompt "
                       "embeddings of this denoiser")
    x32 = x.astype(jnp.float32)
    t = jnp.asarray(t)
    t = t.astype(jnp.int32 if jnp.issubdtype(t.dtype, jnp.integer) else jnp.float32)
    out = unet.apply({"params": unet_params}, jnp.concatenate([x32, x32]),
                     jnp.broadcast_to(t, (2 * batch,)), encoder_hidden_states=context).sample
    out = out.astype(jnp.float32)
    uncond, cond = out[:batch], out[batch:]
    guided = uncond + guidance_scale * (cond - uncond)
    if prediction_type == "v_prediction":
      if jnp.issubdtype(t.dtype, jnp.integer):
        s_ab, s_one = sqrt_ab[t], sqrt_one_minus_ab[t]
      else:  # continuous t: alpha_bar between the table's entries (`noise.alpha_bar_at`)
        ab = noise.alpha_bar_at(jnp.square(sqrt_ab), t)
        s_ab, s_one = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
      guided = s_ab * guided + s_one * x32
    return guided.astype(x.dtype)

  # Compiled once per shape when called eagerly (op by op, the UNet's hundreds of operations
  # would each be dispatched on their own); inlined under an outer jit, grad or vmap.
  return jax.jit(guided_epsilon)


def sd_denoiser(sd: model_lib.StableDiffusion, prompt_embeds, *, guidance_scale=7.0,
                negative_embeds=None) -> jax.tree_util.Partial:
  """Classifier-free guided noise prediction ``denoise_fn(x_t, t) -> eps`` for the OLSS verbs.

  ``eps = u + g * (c - u)`` with c and u the UNet's outputs on the prompt and negative (or
  empty) prompt embeddings, computed in one batched UNet call of 2B (Ho & Salimans 2021, as
  diffusers' pipeline), then converted to epsilon from the model's ``prediction_type``
  (`prediction_to_epsilon`), so the core verbs, which work in epsilon, need nothing else.

  Args:
    sd: the model.
    prompt_embeds: (B, L, D) from `encode_prompts`.
    guidance_scale: g (a float, or a traced scalar under jit); 7.0 as in the paper.
    negative_embeds: (B, L, D), or None for the empty prompt (diffusers' default).

  Returns:
    A `jax.tree_util.Partial` taking ``(x_t (B, C, h, w) float, t scalar)`` (an int
    training timestep or a continuous float one) and
    returning eps of x_t's shape and dtype. Its leaves are the UNet parameters, the
    embeddings, g and the alpha_bar tables, so under jit they are traced arguments, and two
    denoisers of the same model and shapes share one compiled sampler.
  """
  if not isinstance(sd, model_lib.StableDiffusion):
    raise TypeError(f"sd: expected a StableDiffusion, got {type(sd).__name__}")
  prompt_embeds = jnp.asarray(prompt_embeds)
  if prompt_embeds.ndim != 3:
    raise ValueError(f"prompt_embeds: expected shape (B, L, D), got {prompt_embeds.shape}")
  if negative_embeds is None:
    negative_embeds = text_lib._embed_ids_jit(  # pylint: disable=protected-access
        sd, text_lib.tokenize(sd, [""] * prompt_embeds.shape[0]))
  negative_embeds = jnp.asarray(negative_embeds)
  if negative_embeds.shape != prompt_embeds.shape:
    raise ValueError(f"negative_embeds: expected the shape of prompt_embeds "
                     f"{prompt_embeds.shape}, got {negative_embeds.shape}")
  if isinstance(guidance_scale, (int, float, np.number)) and not np.isfinite(guidance_scale):
    raise ValueError(f"guidance_scale: expected a finite number, got {guidance_scale}")
  cache = sd._static.cache  # pylint: disable=protected-access
  if "guided_epsilon" not in cache:
    cache["guided_epsilon"] = _make_guided_fn(sd.unet, sd.prediction_type)
    alphas = sd.alphas_cumprod
    cache["sqrt_tables"] = (np.sqrt(alphas).astype(np.float32),
                            np.sqrt(1.0 - alphas).astype(np.float32))
  context = jnp.concatenate([negative_embeds, prompt_embeds]).astype(jnp.dtype(sd.info.dtype))
  sqrt_ab, sqrt_one_minus_ab = cache["sqrt_tables"]
  return jax.tree_util.Partial(cache["guided_epsilon"], sd.params["unet"], context,
                               jnp.asarray(guidance_scale, jnp.float32), jnp.asarray(sqrt_ab),
                               jnp.asarray(sqrt_one_minus_ab))
