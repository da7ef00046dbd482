"""Shared by the baseline tests: the error measure and the exact mixture model they compare on."""
import jax
import numpy as np

import olss_jax as oj

MIXTURE_SEED, NOISE_SEED = 0, 1


def max_rel_err(ours, ref) -> float:
  """Max |ours - reference| / max |reference| on the final sample."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def mixture_denoiser_float64(alphas, *shape_args):
  """The exact mixture model; under `jax.enable_x64` it computes in float64."""
  mixture = oj.analytic.make_gaussian_mixture(jax.random.PRNGKey(MIXTURE_SEED), *shape_args)
  return oj.analytic.mixture_denoiser(mixture, alphas)
