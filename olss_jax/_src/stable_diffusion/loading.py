"""Loads Stable Diffusion from a local directory with diffusers' and transformers' Flax classes.

Nothing is fetched from the network: every ``from_pretrained`` call gets
``local_files_only=True`` and the directory is checked for completeness first, so a missing
file is named in the error instead of surfacing as a hub lookup.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict

from olss_jax._src import quiet
from olss_jax._src.stable_diffusion import model as model_lib
from olss_jax._src.stable_diffusion import noise_config as noise_config_lib

# (relative path, what it is). Flax weights only: diffusers' Flax classes read these names.
REQUIRED_FILES = (
    ("unet/config.json", "UNet config"),
    ("unet/diffusion_flax_model.msgpack", "UNet Flax weights"),
    ("vae/config.json", "VAE config"),
    ("vae/diffusion_flax_model.msgpack", "VAE Flax weights"),
    ("text_encoder/config.json", "CLIP text encoder config"),
    ("text_encoder/flax_model.msgpack", "CLIP text encoder Flax weights"),
    ("tokenizer/vocab.json", "CLIP tokenizer vocabulary"),
    ("tokenizer/merges.txt", "CLIP tokenizer merges"),
    ("scheduler/scheduler_config.json", "scheduler config"),
)
_PYTORCH_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                    "model.safetensors", "pytorch_model.bin")
_DTYPES = ("float32", "bfloat16", "float16")


def check_model_directory(path: str | os.PathLike) -> str:
  """Checks that ``path`` holds a complete Flax Stable Diffusion (diffusers layout).

  Returns:
    The path as a str.

  Raises:
    FileNotFoundError: the directory does not exist, or files are missing; the message
      names the directory and every missing file (and says when PyTorch weights were found
      in place of Flax ones).
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"path: Stable Diffusion directory {path!r} does not exist or is "
                            "not a directory")
  missing = []
  for rel, what in REQUIRED_FILES:
    if not os.path.isfile(os.path.join(path, rel)):
      entry = f"{rel} ({what})"
      folder = os.path.join(path, os.path.dirname(rel))
      if rel.endswith(".msgpack") and any(os.path.isfile(os.path.join(folder, w))
                                          for w in _PYTORCH_WEIGHTS):
        entry += (" - only PyTorch weights found there; convert them once with the Flax "
                  "class's from_pretrained(..., from_pt=True) and save_pretrained")
      missing.append(entry)
  if missing:
    raise FileNotFoundError(f"path: {path!r} is not a complete Flax Stable Diffusion directory; "
                            f"missing: {'; '.join(missing)}")
  return path


def _check_complete(module, params, where: str) -> None:
  """Raises ValueError when loaded parameters lack keys the module needs."""
  expected = jax.eval_shape(module.init_weights, jax.random.PRNGKey(0))
  want = set(flatten_dict(dict(expected)).keys())
  have = set(flatten_dict(dict(params)).keys())
  missing = sorted("/".join(k) for k in want - have)
  if missing:
    raise ValueError(f"{where}: the weights file lacks {len(missing)} parameters the config "
                     f"needs, e.g. {missing[:3]}")


def load_stable_diffusion(path: str | os.PathLike, *, dtype=jnp.float32,
                          name: str | None = None) -> model_lib.StableDiffusion:
  """Loads a Flax Stable Diffusion from a local directory (diffusers' layout).

  Uses diffusers' `FlaxUNet2DConditionModel` and `FlaxAutoencoderKL`, transformers'
  `FlaxCLIPTextModel` and `CLIPTokenizer`, and reads ``scheduler/scheduler_config.json`` for
  the noise schedule, ``prediction_type``, ``steps_offset`` and ``set_alpha_to_one``. Flax
  weights (``*.msgpack``) are expected, as in the Flax branches of the Stable Diffusion
  repositories. Nothing is downloaded.

  Args:
    path: the directory (with ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
      ``scheduler/``).
    dtype: computation and parameter dtype: ``jnp.float32``, ``jnp.bfloat16`` or
      ``jnp.float16``. Latents and the sampler's arithmetic stay float32.
    name: the model's name in fitted schedules' metadata; default: the directory's name.

  Returns:
    A `StableDiffusion` whose ``params`` sit on the default device.

  Raises:
    FileNotFoundError: a missing directory or file (named in the message).
    ValueError: an unsupported scheduler config or incomplete weights.
    TypeError: an unsupported dtype.
  """
  # Imported here: importing diffusers / transformers costs seconds and prints deprecation
  # notices; users of the core verbs never pay for it.
  with quiet.flax_imports():  # diffusers logs its notice while importing the Flax classes
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel  # pylint: disable=import-outside-toplevel
    from transformers import CLIPTokenizer, FlaxCLIPTextModel  # pylint: disable=import-outside-toplevel

  try:
    dtype_name = jnp.dtype(dtype).name
  except TypeError:
    dtype_name = repr(dtype)
  if dtype_name not in _DTYPES:
    raise TypeError(f"dtype: expected one of {_DTYPES}, got {dtype_name}")
  dtype = jnp.dtype(dtype_name)
  path = check_model_directory(path)
  noise = noise_config_lib.read_noise_config(os.path.join(path, "scheduler",
                                                          "scheduler_config.json"))
  unet, unet_params = FlaxUNet2DConditionModel.from_pretrained(
      path, subfolder="unet", dtype=dtype, local_files_only=True)
  _check_complete(unet, unet_params, os.path.join(path, "unet"))
  vae, vae_params = FlaxAutoencoderKL.from_pretrained(
      path, subfolder="vae", dtype=dtype, local_files_only=True)
  _check_complete(vae, vae_params, os.path.join(path, "vae"))
  text_encoder, text_params = FlaxCLIPTextModel.from_pretrained(
      os.path.join(path, "text_encoder"), dtype=dtype, _do_init=False, local_files_only=True)
  tokenizer = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"),
                                            local_files_only=True)
  params = {"unet": unet_params, "vae": vae_params, "text_encoder": text_params}
  params = jax.device_put(model_lib.cast_params(params, dtype))
  if name is None:
    name = os.path.basename(os.path.normpath(os.path.abspath(path)))
  vae_config = vae.config
  info = model_lib.ModelInfo(
      name=str(name),
      path=os.path.abspath(path),
      noise=noise,
      dtype=dtype_name,
      latent_channels=int(unet.config.in_channels),
      vae_scale_factor=2 ** (len(vae_config.block_out_channels) - 1),
      sample_size=int(unet.config.sample_size),
      scaling_factor=float(getattr(vae_config, "scaling_factor", 0.18215)),
      max_length=int(tokenizer.model_max_length),
  )
  return model_lib.StableDiffusion(unet, vae, text_encoder, tokenizer, params, info)

