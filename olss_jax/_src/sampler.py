"""The one n-step sampler every schedule runs through (paper Eq. 12 at inference)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from olss_jax._src import schedule as schedule_lib
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation


def _run(denoise_fn, schedule, x_T, mesh, keep_states: bool):
  if isinstance(schedule, schedule_lib.Schedule):
    # Concrete schedules: lower-triangular, finite timesteps and weights; traced: shapes only.
    validation.check_schedule(schedule)
  else:
    raise TypeError(f"schedule: expected an olss_jax Schedule, got {type(schedule).__name__}")
  traced = any(isinstance(leaf, jax.core.Tracer)
               for leaf in jax.tree_util.tree_leaves((denoise_fn, schedule, x_T)))
  if not traced and mesh is None:  # eager calls share one compiled sampler per n and shapes
    return _run_jit(trajectory_lib.as_denoise_pytree(denoise_fn), schedule, x_T, keep_states)
  return _sample(denoise_fn, schedule, x_T, mesh, keep_states)


def _sample(denoise_fn, schedule, x_T, mesh, keep_states: bool):
  timesteps = jnp.asarray(schedule.timesteps)
  weights = jnp.asarray(schedule.weights)
  n = timesteps.shape[0]
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 1:
    raise ValueError(f"x_T: expected shape (B, ...), got {x_T.shape}")
  x_T = sharding_lib.shard_batch(x_T, sharding_lib.resolve_mesh(mesh, x_T.shape[0]))
  compute_dtype = jnp.promote_types(jnp.result_type(float), weights.dtype)
  compute_dtype = jnp.promote_types(compute_dtype, x_T.dtype)
  weights = weights.astype(compute_dtype)
  outputs = jnp.zeros((n,) + x_T.shape, x_T.dtype)
  states = jnp.zeros((n + 1,) + x_T.shape, x_T.dtype).at[0].set(x_T) if keep_states else None

  def body(i, carry):
    x, outputs, states = carry
    e = trajectory_lib.call_model(denoise_fn, x, timesteps[i])
    outputs = outputs.at[i].set(e)
    mixed = jnp.tensordot(weights[i, 1:], outputs.astype(compute_dtype), axes=1)
    x = (weights[i, 0] * x_T.astype(compute_dtype) + mixed).astype(x_T.dtype)
    if states is not None:
      states = states.at[i + 1].set(x)
    return x, outputs, states

  x, _, states = jax.lax.fori_loop(0, n, body, (x_T, outputs, states))
  return states if keep_states else x


_run_jit = jax.jit(lambda f, s, x, keep: _sample(f, s, x, None, keep), static_argnums=3)


def sample(denoise_fn: trajectory_lib.DenoiseFn, schedule: schedule_lib.Schedule,
           x_T: jax.Array, *, mesh=None) -> jax.Array:
  """Generates with a `Schedule`: n model calls in a `lax.fori_loop`.

  Step i calls ``e_i = denoise_fn(x_i, schedule.timesteps[i])`` and moves to
  ``x_{i+1} = W[i, 0] x_T + sum_{j <= i} W[i, j+1] e_j`` (paper Eq. 12), keeping the outputs
  in a preallocated (n, B, ...) buffer. The same function runs OLSS and every baseline.

  Jit it as ``jax.jit(sample)`` with ``denoise_fn`` a `jax.tree_util.Partial` (its parameters
  are then traced arguments), or ``jax.jit(sample, static_argnums=0)`` for a plain function.
  It compiles once per (n, shapes, dtypes) and serves any schedule of that n. It is
  `jax.vmap`-able over x_T and differentiable in the weights (and in float timesteps).

  Args:
    denoise_fn: ``(x_t (B, ...), t scalar) -> e (B, ...)``.
    schedule: n timesteps and (n, n + 1) weights.
    x_T: (B, ...) starting noises.
    mesh: shard the batch over devices (`sharding.resolve_mesh`): None splits it over all of
      ``jax.devices()`` when there are several and B divides evenly by their number; a
      `jax.sharding.Mesh` splits it over that mesh; False never shards. The result comes back
      batch-sharded. Multi-host: see `olss_jax._src.sharding`.

  Returns:
    (B, ...) the final sample, in x_T's dtype.
  """
  return _run(denoise_fn, schedule, x_T, mesh, False)


def sample_states(denoise_fn: trajectory_lib.DenoiseFn, schedule: schedule_lib.Schedule,
                  x_T: jax.Array, *, mesh=None) -> jax.Array:
  """`sample`, keeping every state: (n + 1, B, ...) with ``[0] == x_T`` and ``[n]`` the sample.

  The path the sampler takes (the paper's Figure 5); same arguments as `sample`.
  """
  return _run(denoise_fn, schedule, x_T, mesh, True)
