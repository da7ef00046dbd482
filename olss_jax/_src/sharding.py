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
The fits and searches read a batch-sharded trajectory where it lives: row-wise work (teacher
states, the closed loop's bases, model calls) stays on each device's rows, and only small
reductions cross devices and processes (`psum` of Grams, norms and ``A^T v`` products, an
`all_gather` of per-device triangular factors, TSQR); every process then holds the same
replicated schedule. A batch-sharded result (samples, `ClosedLoopFitInfo.states`) stays a
global `jax.Array`; `to_numpy` gathers it to the host of every process.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
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


def array_partition(x, axis: int = 0):
  """``(mesh, axes)`` of a concrete `jax.Array` split along ``axis`` only, over 2+ devices.

  ``axes`` is the mesh axis name (or tuple of names) of that dimension in the array's
  `NamedSharding`. None for host arrays, traced values, other shardings, single devices.
  """
  if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
    return None
  spec_of = x.sharding
  if not isinstance(spec_of, NamedSharding) or len(spec_of.device_set) < 2:
    return None
  spec = tuple(spec_of.spec) + (None,) * (x.ndim - len(spec_of.spec))
  if spec[axis] is None or any(p is not None for i, p in enumerate(spec) if i != axis):
    return None
  axes = spec[axis]
  return spec_of.mesh, tuple(axes) if isinstance(axes, list) else axes


def trajectory_partition(traj):
  """``(mesh, axes)`` of a concrete trajectory whose model_outputs are split on the batch axis.

  The static description the fits pass into their jitted code (`shard_rows`); None when the
  trajectory is not batch-sharded over several devices (or is traced: under the caller's
  `jax.jit` XLA places the work from the arguments' shardings).
  """
  return array_partition(getattr(traj, "model_outputs", None), 1)


def is_global(x) -> bool:
  """True for a concrete `jax.Array` with shards on other processes' devices (multi-host)."""
  return (isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
          and not x.is_fully_addressable)


def to_numpy(x) -> np.ndarray:
  """The whole of ``x`` as a host numpy array, in every process (multi-host included).

  A batch-sharded result of `sample` or `collect_trajectory` after
  ``jax.distributed.initialize()`` spans devices of several processes, and ``np.asarray``
  refuses it ("spans non-addressable devices"); this gathers it with
  `jax.experimental.multihost_utils.process_allgather` (a collective: call it in every
  process). Local arrays (one process) are simply copied to the host.

  Args:
    x: a `jax.Array` (any sharding) or anything ``np.asarray`` takes.

  Returns:
    numpy array of ``x``'s global shape and dtype.
  """
  if is_global(x):
    if x.is_fully_replicated:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def constrain(x, part, axis: int = 0):
  """``x`` (traced, global view) pinned to be split along ``axis`` by ``part`` (None: as is)."""
  if part is None:
    return x
  mesh, axes = part
  spec = [None] * x.ndim
  spec[axis] = axes
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def _spec(axes, axis):
  return PartitionSpec() if axis is None else PartitionSpec(*([None] * axis + [axes]))


def shard_rows(fn, part, in_axes, out_axes):
  """``fn`` run per device on its own rows (`jax.shard_map` over ``part``'s mesh).

  Args:
    fn: ``fn(*local_args)``; it sees each device's slice of the split arguments and must make
      replicated outputs the same on every device (a `psum` / `all_gather` over
      ``part[1]``, the axis names passed as its last argument ``axes``).
    part: ``(mesh, axes)`` (`trajectory_partition`).
    in_axes: per positional argument, the dimension split over the batch axes (None:
      replicated).
    out_axes: per output (a tuple for several), the split dimension or None (replicated).

  Returns:
    A function of the global arrays, usable inside `jax.jit`.
  """
  mesh, axes = part
  in_specs = tuple(_spec(axes, a) for a in in_axes)
  out_specs = (tuple(_spec(axes, a) for a in out_axes) if isinstance(out_axes, tuple)
               else _spec(axes, out_axes))
  return jax.shard_map(lambda *args: fn(*args, axes), mesh=mesh, in_specs=in_specs,
                       out_specs=out_specs, check_vma=False)
