"""The frozen evaluation networks: small CNN classifiers of 8x8 digits and of 28x28 MNIST.

Its penultimate activations (`FEATURE_DIM` after a ReLU) are the features of the Frechet
distance (our stand-in for FID, whose Inception weights cannot be downloaded here) and its
predictions give the class accuracy of conditional samples.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from olss_jax._src.digits import model as model_lib

FEATURE_DIM = 64
CLASSIFIER_FILE = "digits_classifier.msgpack"
MNIST_CLASSIFIER_FILE = "mnist_classifier.msgpack"


class ClassifierNet(nn.Module):
  """conv3x3(32) - ReLU - conv3x3(64) - ReLU - avgpool 2 (x num_pools) - dense(FEATURE_DIM) -
  ReLU - dense(10).

  Input (N, 1, H, W) in [-1, 1] (8x8 digits: one pooling; 28x28 MNIST: two); returns
  (logits (N, 10), features (N, FEATURE_DIM)).
  """

  features_dim: int = FEATURE_DIM
  num_classes: int = 10
  num_pools: int = 1

  @nn.compact
  def __call__(self, x):
    h = jnp.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC
    h = nn.relu(nn.Conv(32, (3, 3), padding="SAME")(h))
    h = nn.relu(nn.Conv(64, (3, 3), padding="SAME")(h))
    for _ in range(self.num_pools):
      h = nn.avg_pool(h, (2, 2), strides=(2, 2))
    h = h.reshape(h.shape[0], -1)
    feats = nn.relu(nn.Dense(self.features_dim)(h))
    return nn.Dense(self.num_classes)(feats), feats


@functools.partial(jax.jit, static_argnums=0)
def _forward(net: ClassifierNet, params, images):
  return net.apply({"params": params}, images)


@dataclasses.dataclass(frozen=True)
class DigitsClassifier:
  """The trained digits classifier (frozen).

  Attributes:
    params: the flax parameters of `ClassifierNet`.
    config: the training JSON (architecture, recipe, held-out accuracy).
  """

  params: Any
  config: Mapping[str, Any]

  @property
  def net(self) -> ClassifierNet:
    return ClassifierNet(features_dim=int(self.config.get("feature_dim", FEATURE_DIM)),
                         num_pools=int(self.config.get("num_pools", 1)))

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """(C, H, W) of the images it classifies: (1, 8, 8) digits or (1, 28, 28) MNIST."""
    return tuple(self.config.get("input_shape", model_lib.SAMPLE_SHAPE))

  def _run(self, images, batch_size: int = 4096):
    x = jnp.asarray(images, jnp.float32)
    if x.ndim != 4 or x.shape[1:] != self.input_shape:
      raise ValueError(f"images: expected shape (N, {', '.join(map(str, self.input_shape))}) "
                       f"in [-1, 1], got {x.shape}")
    outs = [_forward(self.net, self.params, x[i:i + batch_size])
            for i in range(0, x.shape[0], batch_size)]
    return (jnp.concatenate([o[0] for o in outs]), jnp.concatenate([o[1] for o in outs]))

  def logits(self, images) -> jax.Array:
    """(N, *input_shape) images in [-1, 1] -> (N, 10) float32 class logits."""
    return self._run(images)[0]

  def features(self, images) -> jax.Array:
    """(N, *input_shape) images in [-1, 1] -> (N, FEATURE_DIM) penultimate (post-ReLU)
    features."""
    return self._run(images)[1]

  def predict(self, images) -> jax.Array:
    """(N, *input_shape) images in [-1, 1] -> (N,) int32 predicted digit."""
    return jnp.argmax(self.logits(images), axis=-1).astype(jnp.int32)


def load_digits_classifier(path: str | os.PathLike | None = None) -> DigitsClassifier:
  """Loads the shipped classifier (``olss_jax/assets/digits_classifier.msgpack`` + ``.json``).

  Args:
    path: None for the packaged file, or a ``.msgpack`` path with its ``.json`` beside it.
  """
  blob, config = model_lib._read(CLASSIFIER_FILE, path)  # pylint: disable=protected-access
  return DigitsClassifier(params=model_lib.restore_params(blob), config=config)


def load_mnist_classifier(path: str | os.PathLike | None = None) -> DigitsClassifier:
  """Loads the shipped MNIST classifier (``olss_jax/assets/mnist_classifier.msgpack`` + ``.json``;
  trained on the same 4,000-image split as the MNIST diffusion model).

  Args:
    path: None for the packaged file, or a ``.msgpack`` path with its ``.json`` beside it.
  """
  blob, config = model_lib._read(MNIST_CLASSIFIER_FILE, path)  # pylint: disable=protected-access
  return DigitsClassifier(params=model_lib.restore_params(blob), config=config)
