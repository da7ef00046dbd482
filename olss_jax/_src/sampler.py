"""The one n-step sampler every schedule runs through (paper Eq. 12 at inference)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from olss_jax._src import schedule as schedule_lib
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation


def sample(denoise_fn: trajectory_lib.DenoiseFn, schedule: schedule_lib.Schedule,
           x_T: jax.Array, *, return_history: bool = False, mesh=None):
  """Generates with a `Schedule`: n model calls in a `lax.fori_loop`.

  Step i calls ``e_i = denoise_fn(x_i, schedule.timesteps[i])`` and moves to
  ``x_{i+1} = W[i, 0] x_T + sum_{j <= i} W[i, j+1] e_j`` (paper Eq. 12), keeping the outputs
  in a preallocated (n, B, ...) buffer. The same function runs OLSS and every baseline.

  Jit it as ``jax.jit(sample)`` with ``denoise_fn`` a `jax.tree_util.Partial` (its parameters
  are then traced arguments), or ``jax.jit(sample, static_argnums=0)`` for a plain function.
  It compiles once per (n, shapes, dtypes) and serves any schedule of that n. It is
  `jax.vmap`-able over x_T and differentiable in the weights.

  Args:
    denoise_fn: ``(x_t (B, ...), t int32 scalar) -> e (B, ...)``.
    schedule: n timesteps and (n, n + 1) weights.
    x_T: (B, ...) starting noises.
    return_history: also return the (n + 1, B, ...) states x_0..x_n visited.
    mesh: shard the batch over devices (`sharding.resolve_mesh`): None splits it over all of
      ``jax.devices()`` when there are several and B divides evenly by their number; a
      `jax.sharding.Mesh` splits it over that mesh; False never shards. The result (and
      history) come back batch-sharded. Multi-host: see `olss_jax._src.sharding`.

  Returns:
    (B, ...) the final sample, in x_T's dtype (and the states, if asked).
  """
  if isinstance(schedule, schedule_lib.Schedule):
    # Concrete schedules: lower-triangular, finite, integer timesteps; traced: shapes only.
    validation.check_schedule(schedule)
  timesteps = jnp.asarray(schedule.timesteps)
  weights = jnp.asarray(schedule.weights)
  n = timesteps.shape[0]
  if timesteps.ndim != 1 or weights.shape != (n, n + 1):
    raise ValueError(f"schedule: expected timesteps (n,) and weights (n, n + 1), got "
                     f"{timesteps.shape} and {weights.shape}")
  x_T = jnp.asarray(x_T)
  if x_T.ndim >= 1:
    x_T = sharding_lib.shard_batch(x_T, sharding_lib.resolve_mesh(mesh, x_T.shape[0]))
  compute_dtype = jnp.promote_types(jnp.result_type(float), weights.dtype)
  compute_dtype = jnp.promote_types(compute_dtype, x_T.dtype)
  weights = weights.astype(compute_dtype)
  outputs = jnp.zeros((n,) + x_T.shape, x_T.dtype)
  history = jnp.zeros((n + 1,) + x_T.shape, x_T.dtype).at[0].set(x_T) if return_history else None

  def body(i, carry):
    x, outputs, history = carry
    e = denoise_fn(x, timesteps[i]).astype(x_T.dtype)
    outputs = outputs.at[i].set(e)
    mixed = jnp.tensordot(weights[i, 1:], outputs.astype(compute_dtype), axes=1)
    x = (weights[i, 0] * x_T.astype(compute_dtype) + mixed).astype(x_T.dtype)
    if history is not None:
      history = history.at[i + 1].set(x)
    return x, outputs, history

  x, _, history = jax.lax.fori_loop(0, n, body, (x_T, outputs, history))
  return (x, history) if return_history else x
