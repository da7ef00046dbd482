"""The teacher: the complete deterministic DDIM process, recorded (paper Sections 3.2-3.3)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import ddim
from olss_jax._src import sharding as sharding_lib

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trajectory:
  """A recorded teacher run on B starting noises (a pytree).

  Attributes:
    timesteps: (K,) int32, strictly decreasing: the teacher's model-call timesteps (host numpy).
    x_T: (B, ...) the starting noises.
    model_outputs: (K, B, ...) the noise predictions e_k = denoise_fn(states[k], timesteps[k]).
    alphas: (K + 1,) float64 (host numpy) alpha_bar of the teacher's states: ``alphas[k]`` at step k and
      ``alphas[K]`` the final alpha (1.0 by default).

  The teacher states are not stored: DDIM (eta = 0) makes every state a fixed linear
  combination of x_T and the earlier model outputs (paper Eq. 9), so `states` recomputes them
  and the fit and search use the exact float64 coefficients (`ddim.state_coefficients`).
  """

  timesteps: jax.Array
  x_T: jax.Array
  model_outputs: jax.Array
  alphas: jax.Array

  @property
  def num_teacher_steps(self) -> int:
    """K, the number of teacher model calls."""
    return int(np.shape(self.timesteps)[0])

  @property
  def batch_size(self) -> int:
    """B, the number of starting noises."""
    return int(np.shape(self.x_T)[0])

  @property
  def sample_shape(self) -> tuple[int, ...]:
    """The shape of one sample, x_T.shape[1:]."""
    return tuple(np.shape(self.x_T)[1:])

  def step_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (K,) float64: ``states[k + 1] = a[k] * states[k] + b[k] * e_k``."""
    return ddim.ddim_step_coefficients(np.asarray(self.alphas, np.float64))

  def state_coefficients(self) -> np.ndarray:
    """(K + 1, K + 1) float64 C with ``states[k] = C[k] @ [x_T, e_0, ..., e_{K-1}]``."""
    return ddim.state_coefficients(*self.step_coefficients())

  @property
  def states(self) -> jax.Array:
    """(K + 1, B, ...) teacher states: ``states[0] == x_T``, ``states[K]`` the final output.

    Recomputed by the teacher's own recurrence in the dtype of `model_outputs`, so
    ``states[k]`` is the input the model saw at step k.
    """
    a, b = self.step_coefficients()
    return _replay_states(self.x_T, self.model_outputs, a, b)


def _replay_states(x_T, model_outputs, a, b):
  dtype = jnp.result_type(x_T, model_outputs)
  a = jnp.asarray(a, dtype)
  b = jnp.asarray(b, dtype)

  def step(x, inputs):
    a_k, b_k, e_k = inputs
    x_next = (a_k * x + b_k * e_k).astype(dtype)
    return x_next, x_next

  x0 = jnp.asarray(x_T, dtype)
  _, rest = jax.lax.scan(step, x0, (a, b, jnp.asarray(model_outputs, dtype)))
  return jnp.concatenate([x0[None], rest], axis=0)


def as_denoise_pytree(denoise_fn: DenoiseFn):
  """Wraps a plain callable into a `jax.tree_util.Partial` so it can cross a jit boundary.

  A `Partial` (or any pytree with a ``__call__``) is returned unchanged, keeping its arrays
  (model parameters) as traced leaves rather than baked-in constants.
  """
  if not callable(denoise_fn):
    raise TypeError(f"denoise_fn: expected a callable (x_t, t) -> model output, got "
                    f"{type(denoise_fn).__name__}")
  leaves, _ = jax.tree_util.tree_flatten(denoise_fn)
  if isinstance(denoise_fn, jax.tree_util.Partial) or (leaves and leaves[0] is not denoise_fn):
    return denoise_fn
  return jax.tree_util.Partial(denoise_fn)


def _teacher_scan(denoise_fn, x, timesteps, a, b):
  dtype = x.dtype

  def step(x, inputs):
    t, a_k, b_k = inputs
    e = denoise_fn(x, t)
    if e.shape != x.shape:
      raise ValueError(f"denoise_fn: returned shape {e.shape}, expected the input's {x.shape}")
    e = e.astype(dtype)
    return (a_k.astype(dtype) * x + b_k.astype(dtype) * e).astype(dtype), e

  return jax.lax.scan(step, x, (timesteps, a, b))


_teacher_scan_jit = jax.jit(_teacher_scan)


def collect_trajectory(denoise_fn: DenoiseFn, x_T: jax.Array, alphas_cumprod,
                       num_teacher_steps: int = 1000, *, steps_offset: int = 0,
                       final_alpha_cumprod: float = 1.0, steps_per_chunk: int | None = None,
                       callback: Callable[[int, int], None] | None = None,
                       mesh=None) -> Trajectory:
  """Runs the complete generation process (DDIM, eta = 0; paper Eq. 1 with sigma_t = 0).

  The teacher calls the model at ``ddim_timesteps(num_teacher_steps, T, steps_offset)``: with
  the defaults (1000 of 1000 training steps) every timestep 999, ..., 0, as in the paper; and
  its last step lands on ``final_alpha_cumprod`` (1.0: the clean sample, diffusers'
  ``set_alpha_to_one=True``; pass ``alphas_cumprod[0]`` for ``set_alpha_to_one=False``). Each
  step is diffusers' ``FlaxDDIMScheduler.step`` with eta = 0 and no clipping.

  Args:
    denoise_fn: ``(x_t (B, ...), t int32 scalar) -> e (B, ...)``, the noise prediction. Pass a
      `jax.tree_util.Partial` so its parameters stay traced; plain callables are wrapped.
    x_T: (B, ...) starting noises.
    alphas_cumprod: (T,) the model's training alpha_bar.
    num_teacher_steps: K, the number of teacher model calls (1 <= K <= T).
    steps_offset: diffusers' ``steps_offset`` (1 for Stable Diffusion's own configs).
    final_alpha_cumprod: alpha_bar after the last step.
    steps_per_chunk: None runs the whole teacher as one `lax.scan` (usable under `jax.jit`);
      an int runs jitted chunks of that many steps and gathers outputs on the host, so device
      memory holds one chunk.
    callback: called as ``callback(steps_done, K)`` after each chunk (progress bars).
    mesh: shard the batch over devices (`sharding.resolve_mesh`): None splits it over all
      of ``jax.devices()`` when there are several and B divides evenly by their number; a
      `jax.sharding.Mesh` splits it over that mesh; False never shards. With a mesh, x_T and
      model_outputs come back batch-sharded (``steps_per_chunk`` mode gathers the outputs on
      the host instead, one process only). Multi-host: see `olss_jax._src.sharding`.

  Returns:
    A `Trajectory` with K = num_teacher_steps.
  """
  alphas_np = ddim.check_alphas_cumprod(alphas_cumprod)
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 1 or x_T.shape[0] < 1:
    raise ValueError(f"x_T: expected shape (B, ...) with B >= 1, got {x_T.shape}")
  if not jnp.issubdtype(x_T.dtype, jnp.floating):
    raise TypeError(f"x_T: expected a float dtype, got {x_T.dtype}")
  mesh = sharding_lib.resolve_mesh(mesh, x_T.shape[0])
  x_T = sharding_lib.shard_batch(x_T, mesh)
  denoise_fn = as_denoise_pytree(denoise_fn)
  timesteps = ddim.ddim_timesteps(num_teacher_steps, alphas_np.shape[0], steps_offset=steps_offset)
  alphas = ddim.state_alphas(alphas_np, timesteps, final_alpha_cumprod)
  a, b = ddim.ddim_step_coefficients(alphas)
  k_total = timesteps.shape[0]
  if steps_per_chunk is None:
    _, outputs = _teacher_scan(denoise_fn, x_T, jnp.asarray(timesteps), jnp.asarray(a),
                               jnp.asarray(b))
    outputs = sharding_lib.shard_batch(outputs, mesh, axis=1)
    if callback is not None:
      callback(k_total, k_total)
  else:
    if not isinstance(steps_per_chunk, (int, np.integer)) or steps_per_chunk < 1:
      raise ValueError(f"steps_per_chunk: expected a positive int or None, got {steps_per_chunk!r}")
    outputs = np.empty((k_total,) + x_T.shape, x_T.dtype)
    x = x_T
    for start in range(0, k_total, steps_per_chunk):
      stop = min(start + steps_per_chunk, k_total)
      x, chunk = _teacher_scan_jit(denoise_fn, x, jnp.asarray(timesteps[start:stop]),
                                   jnp.asarray(a[start:stop]), jnp.asarray(b[start:stop]))
      outputs[start:stop] = np.asarray(chunk)
      if callback is not None:
        callback(stop, k_total)
  return Trajectory(timesteps=timesteps, x_T=x_T, model_outputs=outputs, alphas=alphas)
