"""Prompts to CLIP text embeddings, as diffusers' Flax Stable Diffusion pipeline does it."""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from olss_jax._src.stable_diffusion import model as model_lib


def prompt_list(prompts, *, name: str = "prompts", batch_size: int | None = None) -> list[str]:
  """Normalises a prompt or a sequence of prompts into a list of str.

  Args:
    prompts: a str or a non-empty sequence of str.
    name: the argument's name, for errors.
    batch_size: if given, a single str is repeated to this length and a sequence must have it.

  Raises:
    TypeError / ValueError: not strings, empty, or the wrong length.
  """
  if isinstance(prompts, str):
    return [prompts] * (batch_size or 1)
  if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
    raise TypeError(f"{name}: expected a str or a sequence of str, got {type(prompts).__name__}")
  prompts = list(prompts)
  if not prompts:
    raise ValueError(f"{name}: expected at least one prompt, got an empty sequence")
  if batch_size is not None and len(prompts) != batch_size:
    raise ValueError(f"{name}: expected {batch_size} prompts (one per image), got {len(prompts)}")
  return prompts


def tokenize(sd: model_lib.StableDiffusion, prompts) -> np.ndarray:
  """CLIP token ids, padded to ``model_max_length`` and truncated (diffusers' ``prepare_inputs``).

  Args:
    sd: the model.
    prompts: a str or sequence of B str.

  Returns:
    (B, L) int32 token ids, L = ``sd.info.max_length`` (77).
  """
  prompts = prompt_list(prompts)
  ids = sd.tokenizer(prompts, padding="max_length", max_length=sd.info.max_length,
                     truncation=True, return_tensors="np").input_ids
  return np.asarray(ids, np.int32)


def embed_ids(sd: model_lib.StableDiffusion, ids) -> jax.Array:
  """CLIP text encoder's last hidden state (the UNet's cross-attention context); jittable.

  Args:
    sd: the model.
    ids: (B, L) int token ids from `tokenize`.

  Returns:
    (B, L, D) embeddings in the model's dtype.
  """
  return sd.text_encoder(ids, params=sd.params["text_encoder"])[0]


_embed_ids_jit = jax.jit(embed_ids)


def encode_prompts(sd: model_lib.StableDiffusion, prompts, *,
                   negative_prompts=None) -> tuple[jax.Array, jax.Array]:
  """Embeds prompts and their unconditional counterparts for classifier-free guidance.

  As diffusers' pipeline: without negative prompts the unconditional input is the empty
  string, padded to the same length. Runs the text encoder under `jax.jit` (compiled once
  per model and batch size).

  Args:
    sd: the model.
    prompts: a str or sequence of B str.
    negative_prompts: None, a str (used for every prompt) or B str.

  Returns:
    (prompt_embeds, negative_embeds), each (B, L, D).
  """
  prompts = prompt_list(prompts)
  negatives = prompt_list("" if negative_prompts is None else negative_prompts,
                          name="negative_prompts", batch_size=len(prompts))
  ids = tokenize(sd, prompts + negatives)  # one jitted encoder call for both halves
  embeds = _embed_ids_jit(sd, ids)
  return embeds[:len(prompts)], embeds[len(prompts):]
