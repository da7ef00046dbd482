"""A tiny random Flax Stable Diffusion written to disk, so SD workflows run anywhere.

Same directory layout and scheduler settings as Stable Diffusion 1.x (diffusers'
``save_pretrained``: unet/, vae/, text_encoder/, tokenizer/, scheduler/), but a UNet of one
32-channel level on 8 x 8 latents, a two-level VAE (16 x 16 pixel images), a two-layer CLIP
text encoder and a tokenizer over a 60-token vocabulary. Random weights: the images are
noise-like, but every code path (loading, prompts, guidance, teacher, fit, generate) is the
real one. Used by the ``stable_diffusion`` notebook and the CLI tests when no real weights
are given.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from olss_jax._src import quiet

SEQ_LEN = 16
_VOCAB = (["<|startoftext|>", "<|endoftext|>", "<unk>"] + list("abcdefghijklmnopqrstuvwxyz")
          + [c + "</w>" for c in "abcdefghijklmnopqrstuvwxyz"]
          + ["ca", "do", "th", "cat</w>", "dog</w>", "the</w>"])
_MERGES = ["#version: 0.2", "c a", "d o", "t h", "ca t</w>", "do g</w>", "th e</w>"]


def _random_params(shapes, seed: int):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax.traverse_util import flatten_dict, unflatten_dict  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flatten_dict(dict(shapes)).items():
    if path[-1] == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
    elif path[-1] == "bias":
      value = 0.1 * rng.standard_normal(leaf.shape)
    elif path[-1] == "kernel":
      value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    else:  # embeddings
      value = 0.5 * rng.standard_normal(leaf.shape)
    out[path] = jnp.asarray(value, leaf.dtype)
  return unflatten_dict(out)


def save_tiny_stable_diffusion(directory, *, seed: int = 0,
                               prediction_type: str = "epsilon") -> str:
  """Writes a tiny random Flax Stable Diffusion in diffusers' layout to ``directory``.

  Written by diffusers' own ``FlaxStableDiffusionPipeline.save_pretrained``. Load it with
  `olss_jax.stable_diffusion.load_stable_diffusion`: latents (B, 4, 8, 8), images
  (B, 16, 16, 3), prompts of at most 16 tokens, SD 1.x's noise schedule (scaled linear,
  ``steps_offset=1``, ``set_alpha_to_one=False``).

  Args:
    directory: where to write (created; must not hold another model).
    seed: seed of the random weights.
    prediction_type: the scheduler config's ``"epsilon"`` or ``"v_prediction"`` (the same
      weights read as another parametrisation, as Stable Diffusion 2.x at 768 px).

  Returns:
    The directory, as a str.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from diffusers.utils import logging as diffusers_logging  # pylint: disable=import-outside-toplevel
  with quiet.flax_imports():
    from diffusers import (FlaxAutoencoderKL, FlaxDDIMScheduler,  # pylint: disable=import-outside-toplevel
                           FlaxStableDiffusionPipeline, FlaxUNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTokenizer, FlaxCLIPTextModel  # pylint: disable=import-outside-toplevel
  directory = os.fspath(directory)
  if os.path.exists(os.path.join(directory, "model_index.json")):
    raise ValueError(f"directory: {directory!r} already holds a model")
  os.makedirs(directory, exist_ok=True)
  with tempfile.TemporaryDirectory() as vocab_dir:
    with open(os.path.join(vocab_dir, "vocab.json"), "w", encoding="utf-8") as f:
      json.dump({token: i for i, token in enumerate(_VOCAB)}, f)
    with open(os.path.join(vocab_dir, "merges.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join(_MERGES) + "\n")
    tokenizer = CLIPTokenizer(os.path.join(vocab_dir, "vocab.json"),
                              os.path.join(vocab_dir, "merges.txt"), model_max_length=SEQ_LEN)
    unet = FlaxUNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32,),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",), cross_attention_dim=32, attention_head_dim=8)
    vae = FlaxAutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
        latent_channels=4, sample_size=16)
    text_encoder = FlaxCLIPTextModel(
        CLIPTextConfig(vocab_size=len(_VOCAB), hidden_size=32, intermediate_size=37,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=SEQ_LEN, bos_token_id=0, eos_token_id=1,
                       pad_token_id=1), _do_init=False)
    scheduler = FlaxDDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1,
                                  prediction_type=prediction_type)
    key = jax.random.PRNGKey(seed)
    params = {
        "unet": _random_params(jax.eval_shape(unet.init_weights, key), seed + 1),
        "vae": _random_params(jax.eval_shape(vae.init_weights, key), seed + 2),
        "text_encoder": _random_params(
            jax.eval_shape(lambda k: text_encoder.init_weights(k, (1, SEQ_LEN)), key), seed + 3),
        "scheduler": scheduler.create_state(),
    }
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # no safety-checker notice: this model is noise
    try:
      pipeline = FlaxStableDiffusionPipeline(
          vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
          scheduler=scheduler, safety_checker=None, feature_extractor=None)
      pipeline.save_pretrained(directory, params=params)
    finally:
      diffusers_logging.set_verbosity(verbosity)
  return directory
