"""scikit-learn's handwritten digits in the model's layout: (N, 1, 8, 8) float32 in [-1, 1].

The 1,797 images (8x8, grey levels 0..16) ship inside scikit-learn, so nothing is downloaded.
One fixed, seeded, class-stratified split is shared by the diffusion model, the classifier and
every evaluation: 1,437 train images and 360 test images (20 %, 36 per class).
"""
from __future__ import annotations

import functools

import numpy as np

SPLIT_SEED = 0
TEST_PER_CLASS = 36
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
_SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # noqa: PLC0415  (keeps import of olss_jax light)

  bunch = load_digits()
  images = np.asarray(bunch.images, np.float32)  # (1797, 8, 8), values 0..16
  labels = np.asarray(bunch.target, np.int32)
  test = stratified_test_mask(labels, TEST_PER_CLASS, SPLIT_SEED)
  x = (images / 8.0 - 1.0)[:, None]  # 0..16 -> [-1, 1]
  return x, labels, test


def stratified_test_mask(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """(N,) bool: ``per_class`` images of each of the 10 classes drawn for the test split by
  ``np.random.RandomState(seed)`` (the fixed split of every shipped data set)."""
  rng = np.random.RandomState(seed)
  test = np.zeros(labels.shape[0], bool)
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == c)
    test[rng.choice(idx, per_class, replace=False)] = True
  return test


def load_digits_dataset(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
  """Real digit images in the model's resolution and value range, with their labels.

  Args:
    split: "train" (1,437 images: what the diffusion model and the classifier were trained on),
      "test" (360 held-out images, 36 per class) or "all" (1,797).

  Returns:
    (images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int32 in 0..9), as host numpy, in
    scikit-learn's order.
  """
  if split not in _SPLITS:
    raise ValueError(f"split: expected one of {_SPLITS}, got {split!r}")
  x, labels, test = _load_all()
  keep = {"train": ~test, "test": test, "all": np.ones_like(test)}[split]
  return x[keep].copy(), labels[keep].copy()


def images_to_uint8(images, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Model-range images to displayable 8-bit grey levels.

  Args:
    images: (..., 1, H, W) or (..., H, W) float images in `value_range` (values outside are
      clipped).
    value_range: the (low, high) mapped to (0, 255).

  Returns:
    (..., H, W) uint8 host numpy (a leading channel axis of size 1 is dropped).
  """
  x = np.asarray(images, np.float64)
  lo, hi = value_range
  if not hi > lo:
    raise ValueError(f"value_range: expected low < high, got {value_range}")
  if x.ndim >= 3 and x.shape[-3] == 1:
    x = x[..., 0, :, :]
  x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
  return np.round(x * 255.0).astype(np.uint8)


def images_to_grid(images, *, ncols: int, pad: int = 1, value_range=(-1.0, 1.0)) -> np.ndarray:
  """Tiles images into one uint8 grid (row-major), for figures.

  Args:
    images: (N, 1, H, W) or (N, H, W) float images.
    ncols: images per row.
    pad: pixels of black between tiles.
    value_range: passed to `images_to_uint8`.

  Returns:
    (rows * (H + pad) + pad, ncols * (W + pad) + pad) uint8.
  """
  tiles = images_to_uint8(images, value_range=value_range)
  if tiles.ndim != 3:
    raise ValueError(f"images: expected (N, 1, H, W) or (N, H, W), got shape {np.shape(images)}")
  if ncols < 1:
    raise ValueError(f"ncols: expected >= 1, got {ncols}")
  n, h, w = tiles.shape
  rows = -(-n // ncols)
  grid = np.zeros((rows * (h + pad) + pad, ncols * (w + pad) + pad), np.uint8)
  for k in range(n):
    r, c = divmod(k, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = tiles[k]
  return grid
