"""The model a store's teacher ran, rebuilt for closed-loop fits: one store layout for every model.

Every store (`store.collect_to_directory`) written by olss_jax's collectors records the model
in its manifest (``config["user"]["model"]``) and each chunk's conditions in the chunk's
metadata, whoever wrote it (`shipped_models.collect_embedded_to_directory`,
`stable_diffusion.collect_sd_to_directory`, or ``olss-jax collect``, which calls them):

* ``{"source": "embedded", "name": "digits" | "analytic", "guidance_scale": g, ...}`` with
  per-chunk ``conditions`` (class labels) for the digits model;
* ``{"source": "stable_diffusion", "name": model name, "guidance_scale": g, ...}`` with
  per-chunk ``prompts`` and ``negative_prompts``.

`store_denoiser` turns that back into the ``denoise_fn`` of all the store's noises, in order.
"""
from __future__ import annotations

import os

import numpy as np

from olss_jax._src import files as files_lib
from olss_jax._src import shipped_models
from olss_jax._src import store
from olss_jax._src.stable_diffusion import denoiser as sd_denoiser_lib
from olss_jax._src.stable_diffusion import model as sd_model
from olss_jax._src.stable_diffusion import text


def model_record(directory, *, manifest: dict | None = None) -> dict:
  """The manifest's record of the model the teacher ran.

  ``manifest``, here and in the functions below: the store's manifest when the caller has
  read it (`store.read_manifest`; a command reads it once and passes it on); default: read.

  Raises:
    ValueError: the store records no model (written by hand, or by olss_jax 0.1).
  """
  directory = os.fspath(directory)
  manifest = store.read_manifest(directory) if manifest is None else manifest
  user = manifest["config"].get("user") or {}
  record = user.get("model")
  if not isinstance(record, dict) or record.get("source") not in ("embedded", "stable_diffusion"):
    raise ValueError(f"directory: {directory!r} does not record the model its teacher ran "
                     "(written by collect_to_directory with a config of your own, or by olss_jax "
                     "0.1); fit it with a paper method, or recollect it with olss-jax collect")
  return record


def is_sd_store(manifest: dict) -> bool:
  """The manifest of a Stable Diffusion store: its model record says so, or it is a store of
  olss_jax 0.1's Stable Diffusion collector (``config["user"]`` names the model and the
  resolution, and is itself what a schedule records)."""
  user = manifest["config"].get("user") or {}
  record = user.get("model")
  return ((isinstance(record, dict) and record.get("source") == "stable_diffusion")
          or _is_sd_store_01(user))


def _is_sd_store_01(user: dict) -> bool:
  return isinstance(user.get("model"), str) and "resolution" in user


def schedule_metadata(directory, *, manifest: dict | None = None) -> dict:
  """What a schedule fitted on this store records (``config["user"]["schedule_metadata"]``;
  for a Stable Diffusion store of olss_jax 0.1, its whole ``config["user"]``)."""
  manifest = store.read_manifest(os.fspath(directory)) if manifest is None else manifest
  user = manifest["config"].get("user") or {}
  if "schedule_metadata" not in user and _is_sd_store_01(user):
    return dict(user)
  return dict(user.get("schedule_metadata") or {})


def chunk_metadata(directory, *, manifest: dict | None = None) -> list[dict]:
  """Every chunk's metadata, in chunk order (header reads only)."""
  directory = os.fspath(directory)
  manifest = store.read_manifest(directory) if manifest is None else manifest
  return [files_lib.read_metadata(store.chunk_path(directory, manifest, i))
          for i in range(int(manifest["config"]["num_chunks"]))]


def store_denoiser(directory, *, sd=None, manifest: dict | None = None):
  """The ``denoise_fn`` the store's teacher ran, for all its noises in store order.

  Args:
    directory: a store written by olss_jax's collectors (every chunk finished).
    sd: for a Stable Diffusion store, the loaded `StableDiffusion` (the same model: its name
      must match the record); embedded models are rebuilt by name.
    manifest: the store's manifest, if read already (`model_record`).

  Returns:
    ``denoise_fn(x (N, ...), t) -> e`` conditioned on the store's labels or prompts.

  Raises:
    ValueError: no model record, unfinished chunks, or ``sd`` missing or another model.
  """
  directory = os.fspath(directory)
  manifest = store.read_manifest(directory) if manifest is None else manifest
  record = model_record(directory, manifest=manifest)
  missing = [i for i in range(int(manifest["config"]["num_chunks"]))
             if str(i) not in manifest["chunks"]]
  if missing:
    raise ValueError(f"directory: {directory!r} is missing chunks {missing[:10]}; resume the "
                     "collection first")
  chunks = chunk_metadata(directory, manifest=manifest)
  if record["source"] == "stable_diffusion":
    if not isinstance(sd, sd_model.StableDiffusion):
      raise ValueError(f"sd: the store holds Stable Diffusion ({record.get('name')!r}) "
                       "trajectories; pass the loaded model (olss-jax: --model DIR)")
    if sd.name != record.get("name"):
      raise ValueError(f"sd: the store was collected with model {record.get('name')!r}, got "
                       f"{sd.name!r}")
    prompts = [p for c in chunks for p in c["prompts"]]
    negatives = [p for c in chunks for p in (c.get("negative_prompts") or [""] * len(c["prompts"]))]
    embeds, negative = text.encode_prompts(sd, prompts, negative_prompts=negatives)
    return sd_denoiser_lib.sd_denoiser(sd, embeds, guidance_scale=float(record["guidance_scale"]),
                                       negative_embeds=negative)
  if sd is not None:
    raise ValueError(f"sd: the store holds the embedded model {record.get('name')!r}; a "
                     "Stable Diffusion model cannot replace it")
  model = shipped_models.embedded_model(record["name"], guidance_scale=record.get("guidance_scale"))
  conditions = None
  if "conditions" in chunks[0]:
    conditions = np.concatenate([np.asarray(c["conditions"], np.int32) for c in chunks])
  return model.denoiser(conditions)
