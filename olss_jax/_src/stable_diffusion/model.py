"""`StableDiffusion`: diffusers' Flax modules plus their parameters, as one pytree.

The parameters are the pytree's leaves and everything else (the Flax modules, the tokenizer,
the scheduler facts) is static auxiliary data compared by identity, so
``jax.jit(f)(sd, ...)`` traces the weights as arguments (never baked in as constants) and
compiles once per loaded model and shapes.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src.stable_diffusion import noise_config as noise_config_lib


class ModelInfo(NamedTuple):
  """Static facts about a loaded Stable Diffusion.

  Attributes:
    name: what the model is called in a schedule's metadata (default: the directory name).
    path: the directory it was loaded from ("" when built in memory).
    noise: the scheduler config facts (`NoiseConfig`: alphas_cumprod (T,) float64,
      prediction_type, steps_offset, final_alpha_cumprod, ...).
    dtype: computation and parameter dtype name (``"float32"``, ``"bfloat16"``, ...).
    latent_channels: the UNet's ``in_channels`` (4 for Stable Diffusion).
    vae_scale_factor: pixels per latent cell along each side (8 for Stable Diffusion).
    sample_size: the UNet's default latent side (64 for SD 1.x: 512 px).
    scaling_factor: the VAE's ``scaling_factor`` (0.18215 for SD 1.x / 2.x).
    max_length: the tokenizer's ``model_max_length`` (77).
  """

  name: str
  path: str
  noise: noise_config_lib.NoiseConfig
  dtype: str
  latent_channels: int
  vae_scale_factor: int
  sample_size: int
  scaling_factor: float
  max_length: int


class _Static:
  """The non-array part of a `StableDiffusion`; equal only to itself (jit cache key)."""

  __slots__ = ("unet", "vae", "text_encoder", "tokenizer", "info", "cache")

  def __init__(self, unet, vae, text_encoder, tokenizer, info: ModelInfo):
    self.unet = unet
    self.vae = vae
    self.text_encoder = text_encoder
    self.tokenizer = tokenizer
    self.info = info
    self.cache: dict[str, Any] = {}  # per-model functions, created once (stable jit keys)


@jax.tree_util.register_pytree_node_class
class StableDiffusion:
  """A Stable Diffusion model: modules, tokenizer, scheduler facts and parameters.

  Build it with `load_stable_diffusion`. Attributes ``unet`` (`FlaxUNet2DConditionModel`),
  ``vae`` (`FlaxAutoencoderKL`), ``text_encoder`` (`FlaxCLIPTextModel`), ``tokenizer``
  (`CLIPTokenizer`), ``info`` (`ModelInfo`) and ``params``
  (``{"unet": ..., "vae": ..., "text_encoder": ...}``, the only pytree leaves).
  """

  def __init__(self, unet, vae, text_encoder, tokenizer, params, info: ModelInfo):
    self._static = _Static(unet, vae, text_encoder, tokenizer, info)
    self.params = params

  @classmethod
  def _from_static(cls, static: _Static, params) -> "StableDiffusion":
    obj = object.__new__(cls)
    obj._static = static
    obj.params = params
    return obj

  def tree_flatten(self):
    return (self.params,), self._static

  @classmethod
  def tree_unflatten(cls, static, children):
    return cls._from_static(static, children[0])

  unet = property(lambda self: self._static.unet)
  vae = property(lambda self: self._static.vae)
  text_encoder = property(lambda self: self._static.text_encoder)
  tokenizer = property(lambda self: self._static.tokenizer)
  info = property(lambda self: self._static.info)

  @property
  def name(self) -> str:
    """The model's name as recorded in fitted schedules."""
    return self.info.name

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """(T,) float64 training alpha_bar."""
    return self.info.noise.alphas_cumprod

  @property
  def prediction_type(self) -> str:
    """``"epsilon"`` or ``"v_prediction"``."""
    return self.info.noise.prediction_type

  @property
  def default_resolution(self) -> tuple[int, int]:
    """(height, width) in pixels that the UNet was configured for (512 x 512 for SD 1.x)."""
    side = self.info.sample_size * self.info.vae_scale_factor
    return side, side

  def latent_shape(self, batch_size: int, height: int | None = None,
                   width: int | None = None) -> tuple[int, int, int, int]:
    """(B, C, height / f, width / f) latents for images of ``height x width`` pixels.

    Raises:
      ValueError: a side that is not a positive multiple of the VAE factor f.
    """
    default_h, default_w = self.default_resolution
    height = default_h if height is None else height
    width = default_w if width is None else width
    f = self.info.vae_scale_factor
    for label, side in (("height", height), ("width", width)):
      if not isinstance(side, (int, np.integer)) or side < f or side % f:
        raise ValueError(f"{label}: expected a positive multiple of the VAE factor {f}, got {side!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    return (int(batch_size), self.info.latent_channels, height // f, width // f)

  def with_params(self, params) -> "StableDiffusion":
    """The same model with other parameters (same static part: no recompilation)."""
    return self._from_static(self._static, params)

  def __repr__(self) -> str:
    return (f"StableDiffusion(name={self.name!r}, dtype={self.info.dtype}, "
            f"prediction_type={self.prediction_type!r}, resolution={self.default_resolution})")


def cast_params(params, dtype) -> Any:
  """Casts every floating leaf of ``params`` to ``dtype`` (integer leaves untouched)."""
  dtype = jnp.dtype(dtype)
  return jax.tree_util.tree_map(
      lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
