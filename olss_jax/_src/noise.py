"""Noise schedules of VP diffusion models, and the time convention of `denoise_fn(x, t)`.

Host-side float64 numpy for the schedules (they are configuration, computed once); the one
traced function here, `alpha_bar_at`, reads a schedule at integer or continuous timesteps.
"""
from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> np.ndarray:
  """Stable Diffusion's noise schedule ("scaled_linear" betas), as in diffusers.

  ``beta_t = (sqrt(beta_start) + t / (T - 1) (sqrt(beta_end) - sqrt(beta_start)))^2`` and
  ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``.

  Returns:
    (num_train_timesteps,) float64 cumulative products of (1 - beta_t).
  """
  betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
  return np.cumprod(1.0 - betas)


def linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                          beta_end: float = 0.02) -> np.ndarray:
  """DDPM's linear beta schedule (Ho et al. 2020). Returns (T,) float64 alpha_bar."""
  betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
  return np.cumprod(1.0 - betas)


def is_traced(x) -> bool:
  """True for a value being traced by `jax.jit` / `vmap` / `grad` (no concrete values)."""
  return isinstance(x, jax.core.Tracer)


def to_host(tree):
  """Concrete jax arrays of ``tree`` as host numpy arrays (tracers and other leaves unchanged).

  The verbs compute on the device in float64 (`jax.enable_x64`, scoped); their small results
  (paths, weights, diagnostics) come back to eager callers as numpy, which keeps float64
  usable without enabling x64 globally (JAX truncates float64 jax arrays in non-x64 code).
  An array that spans other processes' devices (multi-host, `jax.distributed`) comes back
  as numpy only when it is replicated (the small results are); a batch-sharded one (e.g.
  `ClosedLoopFitInfo.states`) stays a global `jax.Array` (`olss_jax.to_numpy` gathers it).
  """
  def leaf(x):
    if not isinstance(x, jax.Array) or is_traced(x):
      return x
    if not x.is_fully_addressable and not x.is_fully_replicated:
      return x
    return np.asarray(x)
  return jax.tree_util.tree_map(leaf, tree)


def check_alphas_cumprod(alphas_cumprod, *, name: str = "alphas_cumprod"):
  """Validates a (T,) alpha_bar table: finite, in (0, 1], non-increasing in t.

  Concrete input is checked fully and returned as a float64 numpy copy. A traced array (the
  table passed through `jax.jit`) gets the checks possible at trace time (shape, dtype) and
  is returned as it is.
  """
  if is_traced(alphas_cumprod):
    if alphas_cumprod.ndim != 1 or alphas_cumprod.shape[0] < 2:
      raise ValueError(f"{name}: expected shape (T,) with T >= 2, got {alphas_cumprod.shape}")
    if not jnp.issubdtype(alphas_cumprod.dtype, jnp.floating):
      raise TypeError(f"{name}: expected a float dtype, got {alphas_cumprod.dtype}")
    return alphas_cumprod
  arr = np.asarray(alphas_cumprod)
  if arr.ndim != 1 or arr.shape[0] < 2:
    raise ValueError(f"{name}: expected shape (T,) with T >= 2, got {arr.shape}")
  if not np.issubdtype(arr.dtype, np.floating):
    raise TypeError(f"{name}: expected a float dtype, got {arr.dtype}")
  arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > 1):
    raise ValueError(f"{name}: every entry must be finite and in (0, 1]")
  if np.any(np.diff(arr) > 0):
    raise ValueError(f"{name}: must be non-increasing in t (more noise at larger t)")
  return arr


def check_count(value, name: str, *, minimum: int | None = 1,
                maximum: int | None = None) -> int:
  """An int argument with ``minimum <= value <= maximum`` (None: no bound); returns a Python int.

  Accepts what `operator.index` accepts (an int, a numpy integer, a 0-d integer array), never
  a bool or a float. olss_jax's one integer checker, public as `validation.check_count` (the
  command line's options use it too); it lives here, at the bottom of the package, because
  the noise schedules and teachers below `validation` need it.
  """
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r:.50}")
  try:
    value = operator.index(value)
  except TypeError:
    raise TypeError(f"{name}: expected an int, got {type(value).__name__} "
                    f"{value!r:.50}") from None
  if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
    bound = (f"{minimum} <= " if minimum is not None else "") + name + (
        f" <= {maximum}" if maximum is not None else "")
    raise ValueError(f"{name}: expected {bound}, got {value}")
  return value


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000, *,
                   steps_offset: int = 0) -> np.ndarray:
  """diffusers' DDIM timesteps ("leading" spacing), in call order.

  ``ratio = num_train_timesteps // num_steps``; timesteps are
  ``(arange(num_steps) * ratio)[::-1] + steps_offset``. With 1000 of 1000 steps and offset 0
  this is 999, 998, ..., 0: the paper's complete generation process.

  Returns:
    (num_steps,) int32, strictly decreasing.
  """
  num_steps = check_count(num_steps, "num_steps", maximum=num_train_timesteps)
  ratio = num_train_timesteps // num_steps
  timesteps = (np.arange(num_steps) * ratio)[::-1] + steps_offset
  if timesteps[0] >= num_train_timesteps or timesteps[-1] < 0:
    raise ValueError(f"steps_offset: {steps_offset} pushes the timesteps to "
                     f"[{timesteps[-1]}, {timesteps[0]}], outside the {num_train_timesteps} "
                     "training timesteps")
  return timesteps.astype(np.int32)


def alpha_bar_at(alphas_cumprod, t):
  """alpha_bar at a training timestep t, integer or continuous (traceable).

  Integer t indexes the table. A float t in [0, T - 1] interpolates ``log sigma`` linearly
  between the neighbouring integer timesteps, ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``:
  the inverse of diffusers' ``_sigma_to_t``, so continuous timesteps mean what they mean to
  diffusers' Karras-sigma schedulers, and integer-valued floats give the table's values.

  Args:
    alphas_cumprod: (T,) alpha_bar (float64 under `jax.enable_x64`).
    t: scalar or array of timesteps (integer or float dtype).

  Returns:
    alpha_bar in the table's dtype (promoted with t's for float t), t's shape.
  """
  table = jnp.asarray(alphas_cumprod)
  t = jnp.asarray(t)
  if jnp.issubdtype(t.dtype, jnp.integer):
    return table[t]
  dtype = jnp.promote_types(table.dtype, t.dtype)
  table = table.astype(dtype)
  log_sigma = 0.5 * (jnp.log1p(-table) - jnp.log(table))
  last = table.shape[0] - 1
  t = jnp.clip(t.astype(dtype), 0, last)
  low = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, last - 1)
  w = t - low
  ls = (1 - w) * log_sigma[low] + w * log_sigma[low + 1]
  # Exactly the table at integer t (w == 0 or 1), else 1 / (1 + sigma^2); the derivative in t
  # is the interpolation's everywhere (`smooth - stop_gradient(smooth)` is exactly 0).
  smooth = jax.nn.sigmoid(-2.0 * ls)
  exact = jnp.where(w == 0, table[low], table[low + 1]) + (smooth - jax.lax.stop_gradient(smooth))
  return jnp.where((w == 0) | (w == 1), exact, smooth)


def state_alphas(alphas_cumprod, timesteps, final_alpha_cumprod: float = 1.0) -> np.ndarray:
  """alpha_bar of every state of a DDIM-like run: at each timestep, then the final alpha.

  Returns:
    (n + 1,) float64. Entry i is alpha_bar at the state where the model is called at step i;
    entry n is ``final_alpha_cumprod`` (diffusers: 1.0 with ``set_alpha_to_one``, else
    ``alphas_cumprod[0]``).
  """
  alphas = check_alphas_cumprod(alphas_cumprod)
  timesteps = np.asarray(timesteps)
  if np.any(timesteps < 0) or np.any(timesteps >= alphas.shape[0]):
    raise ValueError(f"timesteps: must lie in [0, {alphas.shape[0]}), got "
                     f"[{timesteps.min()}, {timesteps.max()}]")
  if not 0 < final_alpha_cumprod <= 1:
    raise ValueError(f"final_alpha_cumprod: expected a value in (0, 1], got {final_alpha_cumprod}")
  return np.concatenate([alphas[timesteps], [float(final_alpha_cumprod)]])


def vp_sigmas(alphas_cumprod) -> np.ndarray:
  """Karras' sigmas of a VP table: ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``, (T,) float64."""
  ab = np.asarray(alphas_cumprod, np.float64)
  return np.sqrt((1.0 - ab) / ab)


def sigma_to_t(sigmas, alphas_cumprod) -> np.ndarray:
  """Continuous training timesteps of VP sigmas: diffusers' ``_sigma_to_t``, float64 numpy.

  ``log sigma`` interpolated linearly between the table's neighbouring integer timesteps (the
  inverse of `alpha_bar_at` on float t); sigmas outside the table clip to its ends.

  Args:
    sigmas: (m,) sigmas (``sqrt((1 - alpha_bar) / alpha_bar)``).
    alphas_cumprod: (T,) the model's training alpha_bar.

  Returns:
    (m,) float64 timesteps in [0, T - 1].
  """
  log_sigmas = np.log(vp_sigmas(alphas_cumprod))
  log_sigma = np.log(np.maximum(np.asarray(sigmas, np.float64), 1e-10))
  dists = log_sigma - log_sigmas[:, None]
  low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
  high = low + 1
  w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
  return ((1 - w) * low + w * high).reshape(np.shape(sigmas))


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int,
                  rho: float = 7.0) -> np.ndarray:
  """Karras et al. (2022) Eq. 5: ``(s_max^(1/rho) + i / (n - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho``.

  Returns:
    (num_steps,) float64 sigmas from sigma_max down to sigma_min (diffusers'
    ``_convert_to_karras``).
  """
  ramp = np.linspace(0, 1, num_steps)
  lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
  return (hi + ramp * (lo - hi)) ** rho


def flow_shift(sigmas, shift: float):
  """The time shift of flow-matching schedulers: ``shift s / (1 + (shift - 1) s)``."""
  sigmas = np.asarray(sigmas, np.float64)
  return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_euler_sigmas(num_steps: int, *, shift: float = 1.0,
                      num_train_timesteps: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)``.

  The training sigmas are ``shift(linspace(1, T, T)[::-1] / T)``; the inference ones are
  ``linspace`` between the largest and the smallest of them, shifted again (as diffusers
  does), then 0.

  Returns:
    (timesteps (n,) float32 = T sigma, sigmas (n + 1,) float32 ending at 0), diffusers'
    values bit for bit.
  """
  num_steps = check_count(num_steps, "num_steps")
  if not np.isfinite(shift) or shift <= 0:
    raise ValueError(f"shift: expected a finite value > 0, got {shift}")
  train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1]
  train = (train / num_train_timesteps).astype(np.float32)   # torch float32 in diffusers
  train = (shift * train / (1 + (shift - 1) * train)).astype(np.float32)
  sigma_max, sigma_min = float(train[0]), float(train[-1])
  ts = np.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps)
  sigmas = flow_shift(ts / num_train_timesteps, shift).astype(np.float32)
  timesteps = (sigmas * np.float32(num_train_timesteps)).astype(np.float32)
  return timesteps, np.append(sigmas, np.float32(0.0))


def flow_multistep_sigmas(num_steps: int, *, shift: float = 1.0,
                          num_train_timesteps: int = 1000) -> np.ndarray:
  """The flow sigmas of diffusers' multistep schedulers with ``use_flow_sigmas=True``.

  ``alphas = linspace(1, 1 / T, n + 1)``, ``sigmas = shift(1 - alphas)`` reversed, the last
  (0) dropped: (n,) float64 from high to low noise (diffusers then casts to float32 and
  appends the final sigma).
  """
  num_steps = check_count(num_steps, "num_steps")
  if not np.isfinite(shift) or shift <= 0:
    raise ValueError(f"flow_shift: expected a finite value > 0, got {shift}")
  alphas = np.linspace(1, 1 / num_train_timesteps, num_steps + 1)
  return np.flip(flow_shift(1.0 - alphas, shift))[:-1].copy()
