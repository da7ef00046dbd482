"""The model calls of the closed-loop fit and search: in the caller's precision, within a cap.

`closed_loop_fit` and `closed_loop_search` both call the model on the states their own sampler
predicts, from inside a float64 scope: `caller_x64` reads the precision the caller enabled
(before that scope opens), `call_model` traces the model in it (float64 only where the caller
enabled it), and `CACHE_BYTES` caps what either keeps between calls (the fit's teacher
targets between candidate paths, the search's model outputs by path prefix).
"""
from __future__ import annotations

import jax

from olss_jax._src import trajectory as trajectory_lib

# What a closed-loop fit or search keeps between model calls: at most this many bytes.
CACHE_BYTES = 256 * 2**20


def caller_x64() -> bool:
  """Whether the caller enabled float64 (read outside any `jax.enable_x64` scope of ours)."""
  return bool(jax.config.jax_enable_x64)


def call_model(denoise_fn, x, t, x64: bool):
  """The model at x (in x's dtype), traced in the caller's precision ``x64``."""
  with jax.enable_x64(x64):
    return trajectory_lib.call_model(denoise_fn, x, t)
