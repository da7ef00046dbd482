"""The models the workbench (CLI, notebooks) runs on without any download.

``"digits"`` is the trained class-conditional digits UNet shipped in ``olss_jax/assets``;
``"analytic"`` is a sharp Gaussian mixture whose noise prediction is exact. ``"default"``
is the digits model when its weights are installed and the mixture otherwise.
"""
from __future__ import annotations

import functools

import numpy as np

from olss_jax._src import compare

EMBEDDED_MODELS = ("default", "digits", "analytic")


@functools.lru_cache(maxsize=None)
def digits_available() -> bool:
  """True when the shipped digits model loads (its weights are in ``olss_jax/assets``)."""
  try:
    from olss_jax._src.digits import model as digits_model  # pylint: disable=import-outside-toplevel
    digits_model.load_digits_model()
  except Exception:  # noqa: BLE001  - missing asset, or the module not landed yet
    return False
  return True


def balanced_labels(seed: int, num: int, num_classes: int = 10) -> np.ndarray:
  """(num,) int32 class labels, every class equally often (up to one), shuffled by ``seed``."""
  labels = np.arange(num) % num_classes
  return np.random.default_rng(seed).permutation(labels).astype(np.int32)


def _digits_model(guidance_scale: float | None) -> compare.ComparisonModel:
  from olss_jax._src.digits import model as digits_model  # pylint: disable=import-outside-toplevel
  model = digits_model.load_digits_model()
  g = model.default_guidance_scale if guidance_scale is None else float(guidance_scale)
  return compare.ComparisonModel(
      name="digits-unet", alphas_cumprod=model.alphas_cumprod,
      sample_shape=tuple(model.sample_shape),
      denoiser=lambda labels: model.denoiser(np.asarray(labels, np.int32), guidance_scale=g),
      draw_conditions=lambda seed, n: balanced_labels(seed, n), guidance_scale=g)


def embedded_model(name: str = "default", *,
                   guidance_scale: float | None = None) -> compare.ComparisonModel:
  """An embedded model as a `ComparisonModel` (alphas_cumprod (T,), sample_shape, denoiser).

  Args:
    name: ``"default"`` (digits if installed, else analytic), ``"digits"`` or ``"analytic"``.
    guidance_scale: classifier-free guidance of the digits model (its default when None);
      the analytic model has no guidance and rejects a value.

  Returns:
    The `ComparisonModel`; ``denoiser(conditions)`` gives ``denoise_fn(x_t (B, ...), t)``.

  Raises:
    ValueError: an unknown name, digits asked for but not installed, or guidance for the
      analytic model.
  """
  if name not in EMBEDDED_MODELS:
    raise ValueError(f"model: expected one of {EMBEDDED_MODELS} or a Stable Diffusion "
                     f"directory, got {name!r}")
  if name == "default":
    name = "digits" if digits_available() else "analytic"
  if name == "digits":
    if not digits_available():
      raise ValueError("model: the digits model's weights are not installed "
                       "(olss_jax/assets/digits_unet.msgpack); use --model analytic")
    return _digits_model(guidance_scale)
  if guidance_scale is not None:
    raise ValueError("guidance_scale: the analytic model has no classifier-free guidance")
  return compare.analytic_comparison_model()
