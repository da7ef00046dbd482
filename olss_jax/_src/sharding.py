"""Data parallelism over the batch of starting noises: one `Mesh`, one `NamedSharding`.

Every image of a teacher run (and of a sampler run) is independent, so the batch axis is the
only one to split. `collect_trajectory` and `sample` take ``mesh=``:

* ``None`` (default): when more than one device is visible (``jax.devices()``) and the batch
  divides evenly by their number, a 1-D mesh over all of them (axis name ``"batch"``);
  otherwise no sharding (everything on the default device, as before).
* a `jax.sharding.Mesh`: the batch is split over all of its axes (its size must divide B).
* ``False``: never shard.

Model parameters are left as they are (replicated by XLA when they are uncommitted host or
default-device arrays). Outputs come back batch-sharded: ``model_outputs`` of a
`Trajectory` is sharded on its axis 1, and `trajectory_stats` reduces such a trajectory
where it lives (per-device partial Grams, then a `psum`).

Many hosts: call ``jax.distributed.initialize()`` in every process first; ``jax.devices()``
then lists every host's devices and the default mesh spans all of them. Every process runs
the same program on the same global ``x_T`` (e.g. drawn from the same key; each keeps only
its own devices' shards), and the Gram of `trajectory_stats` comes back replicated to all.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def batch_mesh(devices=None) -> Mesh:
  """A 1-D `Mesh` named ``"batch"`` over ``devices`` (default: ``jax.devices()``, all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("devices: expected at least one device, got none")
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def resolve_mesh(mesh, batch_size: int, *, name: str = "mesh") -> Mesh | None:
  """The mesh to shard a batch of ``batch_size`` over, by the rule in the module docstring.

  Raises:
    TypeError: ``mesh`` is not None, False or a `Mesh`.
    ValueError: an explicit mesh's size does not divide ``batch_size``.
  """
  if mesh is None:
    devices = jax.devices()
    if len(devices) > 1 and batch_size % len(devices) == 0:
      return batch_mesh(devices)
    return None
  if mesh is False:
    return None
  if not isinstance(mesh, Mesh):
    raise TypeError(f"{name}: expected a jax.sharding.Mesh, None or False, got "
                    f"{type(mesh).__name__}")
  if batch_size % mesh.devices.size:
    raise ValueError(f"{name}: the batch of {batch_size} does not split evenly over the "
                     f"mesh's {mesh.devices.size} devices")
  return mesh


def batch_sharding(mesh: Mesh, ndim: int, axis: int = 0) -> NamedSharding:
  """`NamedSharding` splitting dimension ``axis`` of an ``ndim``-array over all mesh axes."""
  axes = tuple(mesh.axis_names)
  spec = [None] * ndim
  spec[axis] = axes if len(axes) > 1 else axes[0]
  return NamedSharding(mesh, PartitionSpec(*spec))


def shard_batch(x, mesh: Mesh | None, axis: int = 0):
  """Places ``x`` split along ``axis`` over ``mesh`` (a no-op when ``mesh`` is None).

  Concrete arrays are moved with `jax.device_put`; under `jax.jit` a sharding constraint is
  added instead.
  """
  if mesh is None:
    return x
  sharding = batch_sharding(mesh, x.ndim, axis)
  if isinstance(x, jax.core.Tracer):
    return jax.lax.with_sharding_constraint(x, sharding)
  return jax.device_put(x, sharding)
