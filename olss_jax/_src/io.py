"""Saving and loading schedules and trajectories: versioned, checksummed, atomic, no pickle.

Both use the container of `container.py` (magic bytes, format version, JSON header with shapes,
dtypes and metadata, raw little-endian arrays, SHA-256 checksums). A file from a stranger is
safe to load: nothing is executed, every byte is verified, and anything wrong raises
`ValueError` naming the file and the problem. Saving to a path is atomic (`atomic.py`).
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import IO, Any, Iterator, Mapping

import numpy as np

from olss_jax._src import atomic
from olss_jax._src import container
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

SCHEDULE_KIND = "olss_jax.schedule"
TRAJECTORY_KIND = "olss_jax.trajectory"
_SCHEDULE_ARRAYS = ("timesteps", "weights")
_TRAJECTORY_ARRAYS = ("timesteps", "x_T", "model_outputs", "alphas")
_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")


def _describe(path_or_file) -> str:
  if isinstance(path_or_file, (str, os.PathLike)):
    return repr(os.fspath(path_or_file))
  name = getattr(path_or_file, "name", None)
  return repr(name) if isinstance(name, (str, bytes)) else f"<{type(path_or_file).__name__}>"


def _check_file_object(f, mode: str) -> None:
  if isinstance(f, io.TextIOBase):
    raise TypeError("path_or_file: expected a binary file object, got a text-mode file; open "
                    f"it with '{mode}b'")
  needed = "write" if mode == "w" else "read"
  if not callable(getattr(f, needed, None)):
    raise TypeError(f"path_or_file: expected a str or os.PathLike path or a binary file "
                    f"object with .{needed}(), got {type(f).__name__}")


@contextlib.contextmanager
def _writer(path_or_file) -> Iterator[IO[bytes]]:
  if isinstance(path_or_file, (str, os.PathLike)):
    with atomic.atomic_write(path_or_file) as f:
      yield f
  else:
    _check_file_object(path_or_file, "w")
    yield path_or_file


@contextlib.contextmanager
def _reader(path_or_file) -> Iterator[IO[bytes]]:
  if isinstance(path_or_file, (str, os.PathLike)):
    with open(path_or_file, "rb") as f:
      yield f
  else:
    _check_file_object(path_or_file, "r")
    yield path_or_file


def save_schedule(path_or_file, schedule: schedule_lib.Schedule) -> None:
  """Saves a `Schedule` (timesteps (n,) int32, weights (n, n + 1) float64, metadata).

  The schedule is validated first (`validation.check_schedule`: lower-triangular, finite).
  Writing to a path is atomic: the old file stays intact until the new one is complete.

  Args:
    path_or_file: a str / os.PathLike path, or a writable binary file object (written at its
      current position, not atomically).
    schedule: the schedule; its metadata must be JSON-serialisable (tuples load as lists).
  """
  validation.check_schedule(schedule)
  arrays = [("timesteps", np.asarray(schedule.timesteps).astype(np.int32)),
            ("weights", np.asarray(schedule.weights).astype(np.float64))]
  meta = container.encode_metadata(schedule.metadata, "schedule.metadata")
  with _writer(path_or_file) as f:
    container.write_container(f, SCHEDULE_KIND, arrays, meta)


def load_schedule(path_or_file) -> schedule_lib.Schedule:
  """Loads and verifies a schedule written by `save_schedule`.

  Args:
    path_or_file: a path or a readable binary file object positioned at the file's start
      (read to its end).

  Returns:
    The `Schedule`, bit-identical to the saved one (host numpy int32 / float64 leaves).

  Raises:
    ValueError: the file is truncated, corrupted (checksum), of another format version or
      kind, or holds an invalid schedule (shapes, dtypes, non-finite or non-lower-triangular
      weights). The message names the file.
    OSError: the file cannot be opened or read.
  """
  source = _describe(path_or_file)
  with _reader(path_or_file) as f:
    arrays, meta, _ = container.read_container(f, source, SCHEDULE_KIND, _SCHEDULE_ARRAYS)
  timesteps, weights = arrays["timesteps"], arrays["weights"]
  if timesteps.dtype != np.int32 or weights.dtype != np.float64:
    raise ValueError(f"{source}: expected int32 timesteps and float64 weights, found "
                     f"{timesteps.dtype} and {weights.dtype}")
  schedule = schedule_lib.Schedule(timesteps, weights, meta)
  try:
    validation.check_schedule(schedule)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{source}: invalid schedule: {e}") from None
  return schedule


def save_trajectory(path_or_file, traj: trajectory_lib.Trajectory, *,
                    metadata: Mapping[str, Any] | None = None) -> str:
  """Saves a `Trajectory` (a teacher run, paper Sec. 3.3) with optional metadata.

  Arrays: timesteps (K,) int32, x_T (B, ...), model_outputs (K, B, ...) in x_T's float dtype
  (float16, bfloat16, float32 or float64), alphas (K + 1,) float64. The trajectory is
  validated first, including finiteness (the error names the first step and sample with a
  NaN). Host arrays are streamed to the file without a copy; device arrays are copied to the
  host once. Writing to a path is atomic.

  Args:
    path_or_file: a path or a writable binary file object.
    traj: the trajectory.
    metadata: JSON-serialisable dict stored alongside (see `read_metadata`).

  Returns:
    The hex SHA-256 of the written file.
  """
  validation.check_trajectory(traj)
  x_T = np.asarray(traj.x_T)
  outputs = np.asarray(traj.model_outputs)
  if outputs.dtype != x_T.dtype:
    raise TypeError(f"traj.model_outputs: expected x_T's dtype {x_T.dtype}, got {outputs.dtype}")
  arrays = [("timesteps", np.asarray(traj.timesteps).astype(np.int32)), ("x_T", x_T),
            ("model_outputs", outputs), ("alphas", np.asarray(traj.alphas).astype(np.float64))]
  meta = container.encode_metadata(metadata)
  with _writer(path_or_file) as f:
    return container.write_container(f, TRAJECTORY_KIND, arrays, meta)


def _load_trajectory(path_or_file) -> tuple[trajectory_lib.Trajectory, dict, str]:
  source = _describe(path_or_file)
  with _reader(path_or_file) as f:
    arrays, meta, digest = container.read_container(f, source, TRAJECTORY_KIND,
                                                    _TRAJECTORY_ARRAYS)
  dtypes = {k: v.dtype.name for k, v in arrays.items()}
  if (dtypes["timesteps"] != "int32" or dtypes["alphas"] != "float64"
      or dtypes["x_T"] not in _FLOAT_NAMES or dtypes["model_outputs"] != dtypes["x_T"]):
    raise ValueError(f"{source}: expected int32 timesteps, float64 alphas and x_T and "
                     f"model_outputs of one float dtype, found {dtypes}")
  traj = trajectory_lib.Trajectory(timesteps=arrays["timesteps"], x_T=arrays["x_T"],
                                   model_outputs=arrays["model_outputs"],
                                   alphas=arrays["alphas"])
  try:
    validation.check_trajectory(traj)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{source}: invalid trajectory: {e}") from None
  return traj, meta, digest


def load_trajectory(path_or_file) -> trajectory_lib.Trajectory:
  """Loads and verifies a trajectory written by `save_trajectory`.

  Each array is read straight into its final buffer (no second copy) while its checksum is
  computed.

  Returns:
    The `Trajectory` (host numpy leaves), bit-identical to the saved one.

  Raises:
    ValueError: truncated, corrupted, wrong version or kind, or an invalid trajectory
      (shapes, dtypes, non-finite values, alphas). The message names the file.
    OSError: the file cannot be opened or read.
  """
  return _load_trajectory(path_or_file)[0]


def read_metadata(path_or_file) -> dict[str, Any]:
  """The metadata dict of a schedule or trajectory file, reading only its verified header.

  Also gives ``"_kind"`` (``"olss_jax.schedule"`` or ``"olss_jax.trajectory"``) and
  ``"_arrays"`` ({name: {"dtype", "shape"}}). The array data is not checked: use the loaders
  for that.
  """
  source = _describe(path_or_file)
  with _reader(path_or_file) as f:
    header = container.read_header(f, source)
  meta = dict(header["metadata"])
  meta["_kind"] = header.get("kind")
  meta["_arrays"] = {e["name"]: {"dtype": e["dtype"], "shape": e["shape"]}
                     for e in header["arrays"]}
  return meta
