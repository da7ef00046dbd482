"""The registry of the shipped models: those the workbench (CLI, notebooks) runs without a download.

``"digits"`` is the trained class-conditional digits UNet shipped in ``olss_jax/assets``
(epsilon prediction, DDIM teacher) and ``"digits-flow"`` the same architecture trained as a
rectified flow (velocity prediction, flow-Euler teacher); ``"mnist"`` is the class-conditional
epsilon UNet on 28x28 MNIST digits (DDIM teacher); ``"analytic"`` is a sharp Gaussian
mixture whose noise prediction is exact, ``"analytic-flow"`` the same mixture as an exact
rectified flow and ``"analytic-latent"`` a mixture at Stable Diffusion's latent size
(4x64x64). ``"default"`` is the digits model when its weights are installed and the mixture
otherwise.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import analytic
from olss_jax._src import model as model_lib
from olss_jax._src import noise
from olss_jax._src import store
from olss_jax._src.digits import model as digits_model

EMBEDDED_MODELS = ("default", "digits", "digits-flow", "mnist", "analytic", "analytic-flow",
                   "analytic-latent")
# embedded name -> (the digits-family loader's objective, the images it was trained on)
_IMAGE_MODELS = {"digits": ("epsilon", "digits"), "digits-flow": ("flow", "digits"),
                 "mnist": ("epsilon", "mnist")}


@functools.lru_cache(maxsize=None)
def digits_available() -> bool:
  """True when the shipped digits model loads (its weights are in ``olss_jax/assets``)."""
  try:
    digits_model.load_digits_model()
  except Exception:  # noqa: BLE001  - missing asset
    return False
  return True


def balanced_labels(seed: int, num: int, num_classes: int = 10) -> np.ndarray:
  """(num,) int32 class labels, every class equally often (up to one), shuffled by ``seed``."""
  labels = np.arange(num) % num_classes
  return np.random.default_rng(seed).permutation(labels).astype(np.int32)


@functools.lru_cache(maxsize=None)
def mnist_available() -> bool:
  """True when the shipped MNIST model loads (``olss_jax/assets/mnist_unet.msgpack``)."""
  try:
    digits_model.load_mnist_model()
  except Exception:  # noqa: BLE001  - missing asset
    return False
  return True


def image_dataset(name: str) -> str | None:
  """The real images an embedded model was trained on (``"digits"``, ``"mnist"``), or None."""
  return _IMAGE_MODELS.get(name, (None, None))[1]


def _digits_model(guidance_scale: float | None, objective: str = "epsilon",
                  dataset: str = "digits") -> model_lib.ComparisonModel:
  model = (digits_model.load_mnist_model() if dataset == "mnist"
           else digits_model.load_digits_model(objective=objective))
  g = model.default_guidance_scale if guidance_scale is None else float(guidance_scale)
  flow = objective == "flow"
  return model_lib.ComparisonModel(
      name="mnist-unet" if dataset == "mnist" else "digits-flow-unet" if flow else "digits-unet",
      alphas_cumprod=None if flow else model.alphas_cumprod,
      sample_shape=tuple(model.sample_shape),
      denoiser=lambda labels: model.denoiser(np.asarray(labels, np.int32), guidance_scale=g),
      draw_conditions=lambda seed, n: balanced_labels(seed, n), guidance_scale=g,
      teacher=model.teacher if flow else None)


def embedded_model(name: str = "default", *,
                   guidance_scale: float | None = None) -> model_lib.ComparisonModel:
  """An embedded model as a `ComparisonModel` (its teacher, sample_shape, denoiser).

  Args:
    name: one of `EMBEDDED_MODELS`: ``"default"`` (digits if installed, else analytic),
      ``"digits"``, ``"digits-flow"``, ``"mnist"``, ``"analytic"``, ``"analytic-flow"`` or
      ``"analytic-latent"``.
    guidance_scale: classifier-free guidance of the digits models (their default when None);
      the analytic models have no guidance and reject a value.

  Returns:
    The `ComparisonModel`; ``denoiser(conditions)`` gives ``denoise_fn(x_t (B, ...), t)``.

  Raises:
    ValueError: an unknown name, digits asked for but not installed, or guidance for an
      analytic model.
  """
  if name not in EMBEDDED_MODELS:
    raise ValueError(f"model: expected one of {EMBEDDED_MODELS} or a Stable Diffusion "
                     f"directory, got {name!r}")
  if name == "default":
    name = "digits" if digits_available() else "analytic"
  if name in ("digits", "digits-flow"):
    if not digits_available():
      raise ValueError("model: the digits model's weights are not installed "
                       "(olss_jax/assets/digits_unet.msgpack); use --model analytic")
    return _digits_model(guidance_scale, "flow" if name == "digits-flow" else "epsilon")
  if name == "mnist":
    if not mnist_available():
      raise ValueError("model: the MNIST model's weights are not installed "
                       "(olss_jax/assets/mnist_unet.msgpack); retrain with python -m "
                       "olss_jax.train_digits --dataset mnist")
    return _digits_model(guidance_scale, "epsilon", "mnist")
  if guidance_scale is not None:
    raise ValueError("guidance_scale: the analytic models have no classifier-free guidance")
  if name == "analytic-flow":
    return analytic.analytic_comparison_model(flow=True)
  if name == "analytic-latent":
    return analytic.analytic_comparison_model(sample_shape=(4, 64, 64))
  return analytic.analytic_comparison_model()


def resolved_name(model: model_lib.ComparisonModel) -> str:
  """The `EMBEDDED_MODELS` name that rebuilds ``model`` (never ``"default"``)."""
  for name in EMBEDDED_MODELS[1:]:
    if name.startswith("digits") and not digits_available():
      continue
    if name == "mnist" and (not mnist_available() or not model.name.startswith("mnist")):
      continue
    if model.name == embedded_model(name).name:
      return name
  raise ValueError(f"model: {model.name!r} is not an embedded model")


def model_record(model: model_lib.ComparisonModel, name: str) -> dict:
  """What a store records to rebuild an embedded model: its name and guidance scale."""
  return {"source": "embedded", "name": name, "model_name": model.name,
          "guidance_scale": model.guidance_scale}


def schedule_metadata(model: model_lib.ComparisonModel) -> dict:
  """The facts a schedule fitted on this model records (checked by `check_schedule_compatible`)."""
  teacher = model.make_teacher(2)
  num_train = (int(np.shape(model.alphas_cumprod)[0]) if model.alphas_cumprod is not None
               else int(teacher.config.get("num_train_timesteps", 1000)))
  meta = {"model_name": model.name, "sample_shape": list(model.sample_shape),
          "num_train_timesteps": num_train}
  if model.guidance_scale is not None:
    meta["guidance_scale"] = float(model.guidance_scale)
  return meta


def collect_embedded_to_directory(directory, name: str = "default", *, num_images: int = 32,
                                  images_per_chunk: int = 8, seed: int = 1,
                                  guidance_scale: float | None = None,
                                  num_teacher_steps: int = 1000,
                                  steps_per_chunk: int | None = 50, callback=None):
  """The 1000-step teacher of an embedded model (DDIM, or flow Euler) into a resumable store.

  Chunk i holds images ``[i * images_per_chunk, ...)``: starting noises
  ``normal(fold_in(key(seed), i))`` and, for the digits model, class labels drawn per chunk
  (recorded in the chunk's metadata as ``conditions``). The manifest records the model
  (``config["model"]``) so that `store_denoiser` can rebuild it for closed-loop fits.

  Args:
    directory: the store (created if missing; rerun the same call to resume).
    name: a name of `EMBEDDED_MODELS` (`embedded_model`).
    num_images: N fitting noises.
    images_per_chunk: noises per chunk file.
    seed: seed of the noises and labels.
    guidance_scale: the digits model's classifier-free guidance (its default if None).
    num_teacher_steps: K teacher steps.
    steps_per_chunk: teacher steps per jitted call (progress granularity).
    callback: `StoreProgress` hook.

  Returns:
    The `store.CollectInfo`.
  """
  num_images = noise.check_count(num_images, "num_images")
  images_per_chunk = noise.check_count(images_per_chunk, "images_per_chunk")
  model = embedded_model(name, guidance_scale=guidance_scale)
  resolved = resolved_name(model)
  num_chunks = -(-num_images // images_per_chunk)
  sizes = [min(images_per_chunk, num_images - i * images_per_chunk) for i in range(num_chunks)]
  key = jax.random.key(seed)

  def conditions_for(i):
    return model.draw_conditions(seed * 100_003 + i, sizes[i])

  def noises_for(i):
    return jax.random.normal(jax.random.fold_in(key, i), (sizes[i],) + tuple(model.sample_shape),
                             jnp.float32)

  def meta_for(i):
    conditions = conditions_for(i)
    return {} if conditions is None else {"conditions": np.asarray(conditions).tolist()}

  config = {"model": model_record(model, resolved), "seed": int(seed),
            "images_per_chunk": images_per_chunk, "num_images": num_images,
            "schedule_metadata": schedule_metadata(model)}
  return store.collect_to_directory(
      directory, lambda i: model.denoiser(conditions_for(i)), noises_for,
      model.make_teacher(num_teacher_steps), num_chunks=num_chunks,
      steps_per_chunk=steps_per_chunk, config=config, chunk_metadata=meta_for,
      callback=callback)
