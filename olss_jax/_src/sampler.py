"""The one n-step sampler every schedule runs through (paper Eq. 12 at inference)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import schedule as schedule_lib
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation


def _check_finite_x_T(x_T) -> None:
  """A NaN or infinity in a concrete x_T raises, naming the sample (host-side numpy).

  An x_T spanning other processes' devices (multi-host) cannot come to one host: each
  process checks its own shards (no collective, so this also works while the caller traces).
  """
  if not (isinstance(x_T, jax.Array) and not x_T.is_fully_addressable):
    validation.check_finite(np.asarray(x_T), "x_T", axis_names=("sample",))
    return
  for shard in x_T.addressable_shards:
    idx = validation.find_nonfinite(np.asarray(shard.data))
    if idx is not None:
      first = (shard.index[0].start or 0) + idx[0] if idx else 0
      raise ValueError(f"x_T: non-finite value (NaN or infinity) in sample {first} (on "
                       f"process {jax.process_index()})")


def _run(denoise_fn, schedule, x_T, mesh, keep_states: bool, teacher):
  if not isinstance(schedule, schedule_lib.Schedule):
    raise TypeError(f"schedule: expected an olss_jax Schedule, got {type(schedule).__name__}")
  x_shape = tuple(jnp.shape(x_T))
  if len(x_shape) < 1 or x_shape[0] < 1:
    raise ValueError(f"x_T: expected shape (B, ...) with B >= 1, got {x_shape}")
  x_dtype = jnp.result_type(x_T)
  if not jnp.issubdtype(x_dtype, jnp.floating):
    raise TypeError(f"x_T: expected a float dtype, got {x_dtype}")
  # Static facts (metadata, shapes, the teacher's kind): checked eagerly and at trace time.
  validation.check_schedule_model(schedule, x_shape, teacher=teacher)
  num_train = None if teacher is None else teacher.config.get("num_train_timesteps")
  if num_train is None:
    num_train = schedule.metadata.get(validation.META_NUM_TRAIN_TIMESTEPS)
  # Values: concrete schedules are checked here (lower-triangular, finite, timesteps in range);
  # traced ones get NaN samples in `_sample` instead.
  validation.check_schedule(schedule, num_train_timesteps=num_train,
                            kind=None if teacher is None else teacher.kind)
  if not isinstance(x_T, jax.core.Tracer):  # on the host: also inside a caller's trace
    _check_finite_x_T(x_T)
  kind = None if teacher is None else teacher.kind
  bound = None if teacher is None else teacher.config.get("num_train_timesteps")
  traced = any(isinstance(leaf, jax.core.Tracer)
               for leaf in jax.tree_util.tree_leaves((denoise_fn, schedule, x_T)))
  if not traced and mesh is None:  # eager calls share one compiled sampler per n and shapes
    return _run_jit(trajectory_lib.as_denoise_pytree(denoise_fn), schedule, x_T, keep_states,
                    bound, kind)
  return _sample(denoise_fn, schedule, x_T, mesh, keep_states, bound, kind)


def _sample(denoise_fn, schedule, x_T, mesh, keep_states: bool, num_train_timesteps=None,
            kind=None):
  timesteps = jnp.asarray(schedule.timesteps)
  weights = jnp.asarray(schedule.weights)
  n = timesteps.shape[0]
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 1:
    raise ValueError(f"x_T: expected shape (B, ...), got {x_T.shape}")
  x_T = sharding_lib.shard_batch(x_T, sharding_lib.resolve_mesh(mesh, x_T.shape[0]))
  compute_dtype = jnp.promote_types(jnp.result_type(float), weights.dtype)
  compute_dtype = jnp.promote_types(compute_dtype, x_T.dtype)
  # In float32 mode traced float64 weights (`fit_weights` under the caller's jit or grad) are
  # rounded to float32 here, once, like host float64 weights are on entry.
  compute_dtype = jax.dtypes.canonicalize_dtype(compute_dtype)
  weights = weights.astype(compute_dtype)
  # Under jit the values cannot raise: a schedule `check_schedule` would refuse gives NaN.
  valid = validation.schedule_is_valid(timesteps, weights,
                                       num_train_timesteps=num_train_timesteps, kind=kind)
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
  result = states if keep_states else x
  return jnp.where(valid, result, jnp.asarray(jnp.nan, result.dtype))


_run_jit = jax.jit(lambda f, s, x, keep, bound, kind: _sample(f, s, x, None, keep, bound, kind),
                   static_argnums=(3, 4, 5))


def sample(denoise_fn: trajectory_lib.DenoiseFn, schedule: schedule_lib.Schedule,
           x_T: jax.Array, *, mesh=None, teacher=None) -> jax.Array:
  """Generates with a `Schedule`: n model calls in a `lax.fori_loop`.

  Step i calls ``e_i = denoise_fn(x_i, schedule.timesteps[i])`` and moves to
  ``x_{i+1} = W[i, 0] x_T + sum_{j <= i} W[i, j+1] e_j`` (paper Eq. 12), keeping the outputs
  in a preallocated (n, B, ...) buffer. The same function runs OLSS and every baseline.

  Jit it as ``jax.jit(sample)`` with ``denoise_fn`` a `jax.tree_util.Partial` (its parameters
  are then traced arguments), or ``jax.jit(sample, static_argnums=0)`` for a plain function:
  `jax.jit` refuses a plain Python function as a traced argument ("Error interpreting
  argument ... at path denoise_fn") before this code runs; eager calls accept both.
  It compiles once per (n, shapes, dtypes) and serves any schedule of that n. It is
  `jax.vmap`-able over x_T and differentiable in the weights (and in float timesteps).

  What is checked: always (eagerly and at trace time, from static facts) x_T's shape and
  dtype, the schedule's shapes, and that it fits the model (`validation.check_schedule_model`:
  the sample shape it was fitted for; with ``teacher``, its teacher kind and
  ``num_train_timesteps``); eagerly also the values (`validation.check_schedule`: finite,
  zero above the diagonal, timesteps in [0, T) for the teacher's or the metadata's T; a
  finite x_T). Under `jax.jit` values cannot raise: a traced schedule with non-finite
  weights, non-zero entries above the diagonal or timesteps out of range (T from
  ``teacher``) gives an all-NaN result instead (`validation.schedule_is_valid`); NaN in x_T
  gives NaN samples. Checks that read the metadata see, under jit, the metadata of the
  schedule the sampler was first traced with (metadata is static and never retraces).

  Args:
    denoise_fn: ``(x_t (B, ...), t scalar) -> e (B, ...)``.
    schedule: n timesteps and (n, n + 1) weights.
    x_T: (B, ...) starting noises (float, finite).
    mesh: shard the batch over devices (`sharding.resolve_mesh`): None splits it over all of
      ``jax.devices()`` when there are several and B divides evenly by their number; a
      `jax.sharding.Mesh` splits it over that mesh; False never shards. The result comes back
      batch-sharded. Multi-host: see `olss_jax._src.sharding`.
    teacher: optional: the model's `Teacher` (e.g. ``oj.ddim_teacher(alphas_cumprod)``,
      ``oj.flow_teacher()``, ``model.teacher()``), so that a schedule of another kind (a VP
      schedule on a rectified flow, or the reverse), for another ``num_train_timesteps``, or
      with timesteps beyond the model's range is refused. Static under jit (kind and config).

  Returns:
    (B, ...) the final sample, in x_T's dtype.

  Raises:
    ValueError: a schedule that cannot drive this model (see above), or a non-finite x_T.
    TypeError: not a `Schedule`, an integer x_T, or a ``teacher`` that is not a `Teacher`.
  """
  return _run(denoise_fn, schedule, x_T, mesh, False, teacher)


def sample_states(denoise_fn: trajectory_lib.DenoiseFn, schedule: schedule_lib.Schedule,
                  x_T: jax.Array, *, mesh=None, teacher=None) -> jax.Array:
  """`sample`, keeping every state: (n + 1, B, ...) with ``[0] == x_T`` and ``[n]`` the sample.

  The path the sampler takes (the paper's Figure 5); same arguments and checks as `sample`.
  """
  return _run(denoise_fn, schedule, x_T, mesh, True, teacher)
