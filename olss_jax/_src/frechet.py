"""The Frechet distance between two sets of features (the formula of FID, Heusel et al. 2017)."""
from __future__ import annotations

import numpy as np


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric PSD square root by eigen-decomposition (negative round-off eigenvalues -> 0)."""
  w, v = np.linalg.eigh((a + a.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
  """Tr sqrt(Sa Sb) for symmetric PSD Sa, Sb, in float64.

  Sa Sb is not symmetric, but it is similar to the symmetric PSD matrix
  ``M = sqrt(Sa) Sb sqrt(Sa)``, so the eigenvalues of sqrt(Sa Sb) are the square roots of M's
  and ``Tr sqrt(Sa Sb) = sum sqrt(eig(M))``. `eigh` of a symmetric matrix is stable where a
  general `sqrtm` of Sa Sb can turn complex from round-off.
  """
  root_a = _sqrt_psd(sigma_a)
  m = root_a @ sigma_b @ root_a
  w = np.linalg.eigvalsh((m + m.T) / 2.0)
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(features_a, features_b) -> float:
  """Frechet distance between Gaussians fitted to two feature sets (FID's formula).

  ``d^2 = ||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 sqrt(Sa Sb))`` with the sample means and the
  unbiased (N - 1) sample covariances, all in float64.

  Args:
    features_a: (N, F) features of the first set (N >= 2, F >= 1).
    features_b: (M, F) features of the second set (M >= 2).

  Returns:
    The squared Frechet distance as a Python float (>= 0 up to round-off), as FID reports it.
  """
  a = np.asarray(features_a, np.float64)
  b = np.asarray(features_b, np.float64)
  for name, f in (("features_a", a), ("features_b", b)):
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
      raise ValueError(f"{name}: expected shape (N, F) with N >= 2 and F >= 1, got {f.shape}")
    if not np.all(np.isfinite(f)):
      raise ValueError(f"{name}: contains non-finite values")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"features_b: expected {a.shape[1]} features like features_a, got "
                     f"{b.shape[1]}")
  mu_a, mu_b = a.mean(0), b.mean(0)
  sigma_a = np.atleast_2d(np.cov(a, rowvar=False))
  sigma_b = np.atleast_2d(np.cov(b, rowvar=False))
  diff = mu_a - mu_b
  return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b)
               - 2.0 * trace_sqrt_product(sigma_a, sigma_b))
