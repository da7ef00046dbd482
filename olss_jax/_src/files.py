"""The schedule and trajectory file formats: saved and loaded as checksummed safetensors files.

Files are safetensors files (format version 2), readable by every safetensors library; no
pickle, nothing is executed on load. Layout::

  offset 0      uint64 LE   N, the header length in bytes
  offset 8      N bytes     UTF-8 JSON header, padded with spaces to a multiple of 8:
                            {"__metadata__": {str: str, ...},
                             tensor name: {"dtype": code, "shape": [d, ...],
                                           "data_offsets": [begin, end]}, ...}
  offset 8 + N  the tensors' raw little-endian C-order bytes: a tensor occupies
                [8 + N + begin, 8 + N + end); the tensors tile the data without gaps or
                overlaps and end exactly at the end of the file

Tensors (safetensors dtype codes; written in order of decreasing item size, then name, so
that each is aligned to its item size):

* schedule: ``timesteps`` (n,) I32 or F32; ``weights`` (n, n + 1) F64.
* trajectory: ``x_T`` (B, ...) and ``model_outputs`` (K, B, ...) of one dtype among F16,
  BF16, F32, F64; ``teacher_timesteps`` (K,) I32 or F32; ``teacher_levels`` (K + 1,) F64.

``__metadata__`` (every value a string):

* ``"format": "olss_jax"``, ``"format_version": "2"``,
  ``"kind": "olss_jax.schedule"`` or ``"olss_jax.trajectory"``;
* ``"metadata"``: the user's metadata dict as JSON text;
* ``"teacher"`` (trajectories): JSON text ``{"kind": str, "config": {...}}``;
* ``"header_sha256"`` and ``"sha256"``: the digests below, 64 lowercase hex digits each.

Other ``__metadata__`` entries are allowed (covered by the digests) and ignored.

Digests. Let ``canon(x)`` be ``json.dumps(x, sort_keys=True, separators=(",", ":"),
ensure_ascii=True)`` encoded as ASCII (a header holds only strings, integers, lists and
objects, so this is a canonical form); ``H0`` the parsed header with ``"sha256"`` and
``"header_sha256"`` removed from its ``__metadata__``, and ``H1`` with only
``"header_sha256"`` removed. Then::

  sha256        = SHA-256(SHA-256(canon(H0)) + data)  # tensor table, other metadata, data
  header_sha256 = SHA-256(canon(H1))                  # every header entry but itself

where ``data`` is the bytes from offset 8 + N to the end and ``+`` concatenates bytes (the
inner digest is its 32 raw bytes). ``sha256`` covers the whole file's content; ``header_sha256``
covers the whole header, ``sha256`` included, so that `read_metadata` verifies every header
entry without reading the data. The loaders verify both. The digests cover content, not
formatting: a header re-serialised by another safetensors writer (key order, spacing) still
verifies, while any change to what the header says or to a data byte is detected. Our writer
emits compact ASCII JSON whose only escapes are ``\\"`` and ``\\\\``, so every byte of a file it
wrote matters: any truncation, insertion or bit flip is detected.

Version-1 files (olss_jax 0.1's container, starting with ``b"\\x89OLSSJAX"``;
`container.py`) still load through the same functions. The byte-level helpers both formats
share (exact reads, an array streamed into its buffer while hashing, the dtype table, the
metadata encoder) are `container.py`'s.

Every problem with the bytes raises `ValueError` whose message starts with the file (its
path's repr, the file object's name, or ``<BytesIO>``); I/O failures stay `OSError`.
Writing to a path is atomic (`atomic.py`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import struct
from typing import IO, Any, Iterator, Mapping, Sequence

import numpy as np

from olss_jax._src import atomic
from olss_jax._src import container
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

SCHEDULE_KIND = "olss_jax.schedule"
TRAJECTORY_KIND = "olss_jax.trajectory"
FORMAT_VERSION = 2
FORMAT = "olss_jax"

MAX_HEADER_BYTES = 16 * 2**20
MAX_NDIM = 32
MAX_DATA_BYTES = 2**42  # 4 TiB: declared sizes beyond this are refused before allocating
_LENGTH = struct.Struct("<Q")
_DIGEST_KEYS = ("header_sha256", "sha256")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION_TEXT = re.compile(r"[0-9]{1,9}")

# safetensors dtype code <-> the stored numpy dtype (little-endian).
_CODE_OF_NAME = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
                 "int64": "I64", "int32": "I32"}
_CODES = {code: container.DTYPES[name] for name, code in _CODE_OF_NAME.items()
          if name in container.DTYPES}
_NAME_OF_CODE = {code: name for name, code in _CODE_OF_NAME.items()}
_FLOAT_CODES = ("F16", "BF16", "F32", "F64")
_TIME_CODES = ("I32", "F32")
# kind -> tensor name -> allowed dtype codes (in the order read_metadata reports them).
_TENSORS = {
    SCHEDULE_KIND: {"timesteps": _TIME_CODES, "weights": ("F64",)},
    TRAJECTORY_KIND: {"x_T": _FLOAT_CODES, "model_outputs": _FLOAT_CODES,
                      "teacher_timesteps": _TIME_CODES, "teacher_levels": ("F64",)},
}
# Version-1 array names -> version-2 tensor names (read_metadata reports the latter).
_V1_SCHEDULE_ARRAYS = ("timesteps", "weights")
_V1_TRAJECTORY_ARRAYS = ("timesteps", "x_T", "model_outputs", "alphas")
_V1_NAMES = {SCHEDULE_KIND: {"timesteps": "timesteps", "weights": "weights"},
             TRAJECTORY_KIND: {"timesteps": "teacher_timesteps", "x_T": "x_T",
                               "model_outputs": "model_outputs", "alphas": "teacher_levels"}}
_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")


# ------------------------------------------------------------------------- file handling


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


def _bad(source: str, problem: str) -> ValueError:
  return ValueError(f"{source}: {problem}")


# ------------------------------------------------------------------------------ writing


def _canon(value) -> bytes:
  return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                    allow_nan=False).encode("ascii")


def _digest_inputs(header: Mapping[str, Any]) -> tuple[bytes, bytes]:
  """(SHA-256(canon(H0)), canon(H1)) of the module docstring's digest definitions."""
  meta = dict(header["__metadata__"])
  meta.pop("header_sha256", None)
  h1 = _canon(dict(header, __metadata__=meta))
  meta.pop("sha256", None)
  return hashlib.sha256(_canon(dict(header, __metadata__=meta))).digest(), h1


def _json_text(value: Any) -> str:
  return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _prepare(name: str, value) -> tuple[str, str, np.ndarray]:
  arr = np.asarray(value)
  numpy_name = container.dtype_name(arr.dtype)
  if numpy_name not in _CODE_OF_NAME:
    raise TypeError(f"{name}: expected one of {sorted(_CODE_OF_NAME)}, got dtype {arr.dtype}")
  target = container.DTYPES[numpy_name]
  if arr.dtype != target:  # only a byte-order change: same kind and size
    arr = arr.astype(target)
  if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
    arr = arr.copy(order="C")
  return name, _CODE_OF_NAME[numpy_name], arr


def _write_all(f: IO[bytes], data) -> None:
  view = memoryview(data)
  while view.nbytes:
    written = f.write(view)
    if written is None:  # a file object that does not report: assume all of it
      return
    if written <= 0:
      raise OSError(f"path_or_file: write() accepted {written} of {view.nbytes} bytes")
    view = view[written:]


def _write_file(f: IO[bytes], tensors: Sequence[tuple[str, Any]],
                metadata: Mapping[str, str]) -> str:
  """Streams a safetensors file with our two digests added to ``metadata``.

  The arrays are hashed in a first pass and written in a second, both straight from their
  buffers (contiguous little-endian arrays are never copied). Nothing is written before the
  header is complete, so an error here leaves ``f`` untouched.

  Args:
    f: writable binary file object (written at its position).
    tensors: (name, array) pairs; dtypes among `_CODES`.
    metadata: the ``__metadata__`` entries other than the digests (str -> str).

  Returns:
    The hex SHA-256 of every byte written.
  """
  names = [name for name, _ in tensors]
  if len(set(names)) != len(names) or "__metadata__" in names:
    raise ValueError(f"tensors: expected distinct names other than '__metadata__', got {names}")
  prepared = sorted((_prepare(name, value) for name, value in tensors),
                    key=lambda t: (-t[2].dtype.itemsize, t[0]))
  meta = dict(metadata)
  header: dict[str, Any] = {"__metadata__": meta}
  offset = 0
  for name, code, arr in prepared:
    header[name] = {"dtype": code, "shape": [int(d) for d in arr.shape],
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
  def header_text() -> bytes:
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return text + b" " * (-len(text) % 8)

  meta.update(sha256="0" * 64, header_sha256="0" * 64)  # the length is known before hashing
  if len(header_text()) > MAX_HEADER_BYTES:
    raise ValueError(f"metadata: the header would be {len(header_text())} bytes, more than "
                     f"the {MAX_HEADER_BYTES} allowed")
  content = hashlib.sha256(_digest_inputs(header)[0])
  for _, _, arr in prepared:
    for block in container.array_blocks(arr):
      content.update(block)
  meta["sha256"] = content.hexdigest()
  meta["header_sha256"] = hashlib.sha256(_digest_inputs(header)[1]).hexdigest()
  text = header_text()
  head = _LENGTH.pack(len(text)) + text
  whole = hashlib.sha256(head)
  _write_all(f, head)
  for _, _, arr in prepared:
    for block in container.array_blocks(arr):
      whole.update(block)
      _write_all(f, block)
  return whole.hexdigest()


def _file_metadata(kind: str, metadata: Mapping[str, Any] | None, name: str,
                   **extra: str) -> dict[str, str]:
  return {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind,
          "metadata": _json_text(container.encode_metadata(metadata, name)), **extra}


def _stored_timesteps(timesteps, name: str) -> np.ndarray:
  """Timesteps as stored: int32 (integers) or float32 (floats), refused if not exact."""
  ts = np.asarray(timesteps)
  target = schedule_lib.timestep_dtype(ts.dtype)
  if np.issubdtype(ts.dtype, np.integer):
    exact = ts.size == 0 or (int(ts.min()) >= -2**31 and int(ts.max()) < 2**31)
  else:
    with np.errstate(over="ignore"):
      exact = bool(np.array_equal(ts.astype(target).astype(ts.dtype), ts))
  if not exact:
    raise ValueError(f"{name}: expected values that {target} holds exactly (files store "
                     f"int32 or float32 timesteps), got {ts.dtype} values that it does not")
  return ts.astype(target)


def save_schedule(path_or_file, schedule: schedule_lib.Schedule) -> None:
  """Saves a `Schedule`: timesteps (n,) int32 or float32, weights (n, n + 1) float64.

  The schedule is validated first (`validation.check_schedule`: shapes, finite, zero above
  the diagonal) and its metadata encoded, before anything is written. Writing to a path is
  atomic: the old file stays intact until the new one is complete.

  Args:
    path_or_file: a str / os.PathLike path, or a writable binary file object (written at its
      current position, not atomically).
    schedule: the schedule. Integer timesteps are stored as int32 and float ones as float32
      (values those cannot hold exactly are refused); weights as float64 (exactly, from any
      float dtype). Its metadata must be JSON-serialisable (tuples load as lists).

  Raises:
    TypeError: not a Schedule, metadata not JSON (naming ``schedule.metadata``), or a
      text-mode file (naming ``path_or_file``).
    ValueError: an invalid schedule.
  """
  validation.check_schedule(schedule)
  tensors = [("timesteps", _stored_timesteps(schedule.timesteps, "schedule.timesteps")),
             ("weights", np.asarray(schedule.weights).astype(np.float64, copy=False))]
  meta = _file_metadata(SCHEDULE_KIND, schedule.metadata, "schedule.metadata")
  with _writer(path_or_file) as f:
    _write_file(f, tensors, meta)


def save_trajectory(path_or_file, traj: trajectory_lib.Trajectory, *,
                    metadata: Mapping[str, Any] | None = None) -> str:
  """Saves a `Trajectory` (a teacher run, paper Sec. 3.3) with optional metadata.

  Tensors: x_T (B, ...) and model_outputs (K, B, ...) in one float dtype (float16, bfloat16,
  float32 or float64); the teacher's timesteps (K,) int32 or float32 and levels (K + 1,)
  float64; its kind and config go in the header. The trajectory is validated first
  (`validation.check_trajectory`, including finiteness: the error names the first step and
  sample with a NaN). Host arrays are streamed to the file without a copy; device arrays
  are copied to the host once. Writing to a path is atomic.

  Args:
    path_or_file: a path or a writable binary file object (written at its position).
    traj: the trajectory.
    metadata: JSON-serialisable dict stored alongside (see `read_metadata`).

  Returns:
    The hex SHA-256 of the written file's bytes (what `read_trajectory` returns).
  """
  validation.check_trajectory(traj)
  x_T = np.asarray(traj.x_T)
  outputs = np.asarray(traj.model_outputs)
  if container.dtype_name(x_T.dtype) not in _FLOAT_NAMES:
    raise TypeError(f"traj.x_T: expected one of {list(_FLOAT_NAMES)}, got {x_T.dtype}")
  if outputs.dtype != x_T.dtype:
    raise TypeError(f"traj.model_outputs: expected x_T's dtype {x_T.dtype}, got {outputs.dtype}")
  teacher = traj.teacher
  teacher_text = _json_text({"kind": teacher.kind, "config": container.encode_metadata(
      teacher.config, "traj.teacher.config")})
  tensors = [("x_T", x_T), ("model_outputs", outputs),
             ("teacher_timesteps", _stored_timesteps(teacher.timesteps,
                                                     "traj.teacher.timesteps")),
             ("teacher_levels", np.asarray(teacher.levels).astype(np.float64, copy=False))]
  meta = _file_metadata(TRAJECTORY_KIND, metadata, "metadata", teacher=teacher_text)
  with _writer(path_or_file) as f:
    return _write_file(f, tensors, meta)


# ------------------------------------------------------------------------------ reading


@dataclasses.dataclass
class _Tensor:
  name: str
  code: str
  shape: tuple[int, ...]
  begin: int
  end: int


@dataclasses.dataclass
class _Header:
  """A verified version-2 header."""
  kind: str
  metadata: dict[str, Any]           # the user's
  teacher: dict[str, Any] | None     # {"kind", "config"} of trajectories
  tensors: list[_Tensor]             # in data order
  head: bytes                        # the first 8 + N bytes of the file
  content_prefix: bytes              # SHA-256(canon(H0)): what the data's digest starts with
  sha256: str                        # the stored content digest
  remaining: int | None              # bytes from the file's start to its end, if known

  def arrays(self) -> dict[str, dict[str, Any]]:
    by_name = {t.name: t for t in self.tensors}
    return {name: {"dtype": _NAME_OF_CODE[by_name[name].code], "shape": list(by_name[name].shape)}
            for name in _TENSORS[self.kind]}


def _sniff(f: IO[bytes], source: str) -> bytes:
  """The first 8 bytes: a version-2 header length or the version-1 magic."""
  first = b""
  while len(first) < 8:
    chunk = f.read(8 - len(first))
    if not chunk:
      raise _bad(source, f"not an olss_jax file (or a truncated one): {len(first)} bytes, "
                 "fewer than the 8-byte header length")
    first += chunk
  return first


def _reject_constant(name: str):
  raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs):
  out = {}
  for key, value in pairs:
    if key in out:
      raise ValueError(f"duplicate key {key!r:.100}")
    out[key] = value
  return out


def _loads(text: str):
  """Strict JSON: no NaN / Infinity, no duplicate keys."""
  return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _json_entry(meta: dict, key: str, source: str) -> dict:
  if key not in meta:
    raise _bad(source, f"malformed header: __metadata__ has no {key!r} entry")
  try:
    value = _loads(meta[key])
  except (ValueError, RecursionError) as e:
    raise _bad(source, f"malformed header: __metadata__[{key!r}] is not JSON: {e}") from None
  if not isinstance(value, dict):
    raise _bad(source, f"malformed header: __metadata__[{key!r}]: expected a JSON object, got "
               f"{type(value).__name__}")
  return value


def _is_int(value) -> bool:
  return type(value) is int  # pylint: disable=unidiomatic-typecheck  (bool is not a size)


def _parse_tensor(name: str, entry, source: str) -> _Tensor:
  if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
    raise _bad(source, f"malformed header: tensor {name!r:.100}: expected "
               f"{{'dtype', 'shape', 'data_offsets'}}, got {entry!r:.200}")
  code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
  if not isinstance(code, str) or code not in _CODES:
    raise _bad(source, f"tensor {name!r:.100}: unsupported dtype {code!r:.50}; expected one "
               f"of {sorted(_CODES)}")
  if (not isinstance(shape, list) or len(shape) > MAX_NDIM
      or not all(_is_int(d) and d >= 0 for d in shape)):
    raise _bad(source, f"tensor {name!r:.100}: bad shape {shape!r:.200}; expected at most "
               f"{MAX_NDIM} non-negative integers")
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets))
      or not 0 <= offsets[0] <= offsets[1]):
    raise _bad(source, f"tensor {name!r:.100}: bad data_offsets {offsets!r:.200}; expected "
               "[begin, end] with 0 <= begin <= end")
  nbytes = math.prod(shape) * _CODES[code].itemsize
  if nbytes > MAX_DATA_BYTES:
    raise _bad(source, f"tensor {name!r:.100}: shape {shape} of {code} declares {nbytes} "
               f"bytes, implausibly many (more than {MAX_DATA_BYTES})")
  if offsets[1] - offsets[0] != nbytes:
    raise _bad(source, f"tensor {name!r:.100}: data_offsets {offsets} span "
               f"{offsets[1] - offsets[0]} bytes, but shape {shape} of {code} needs {nbytes}")
  return _Tensor(name, code, tuple(shape), offsets[0], offsets[1])


def _check_tensors(tensors: list[_Tensor], kind: str, source: str) -> int:
  """Checks the tensor set, dtypes and tiling; returns the data size in bytes."""
  expected = _TENSORS[kind]
  found = {t.name: t for t in tensors}
  if set(found) != set(expected):
    raise _bad(source, f"expected tensors {sorted(expected)} in a {kind} file, found "
               f"{sorted(found)!r:.300}")
  for name, codes in expected.items():
    if found[name].code not in codes:
      raise _bad(source, f"tensor {name!r}: expected dtype {' or '.join(codes)}, got "
                 f"{found[name].code}")
  if kind == TRAJECTORY_KIND and found["x_T"].code != found["model_outputs"].code:
    raise _bad(source, f"expected x_T and model_outputs of one float dtype, found "
               f"{found['x_T'].code} and {found['model_outputs'].code}")
  tensors.sort(key=lambda t: (t.begin, t.end))
  end = 0
  for t in tensors:
    if t.begin != end:
      problem = "overlaps the previous tensor" if t.begin < end else "leaves a gap before it"
      raise _bad(source, f"tensor {t.name!r}: data_offsets [{t.begin}, {t.end}] {problem} "
                 f"(expected it to begin at {end}; tensors must tile the data)")
    end = t.end
  if end > MAX_DATA_BYTES:
    raise _bad(source, f"the tensors declare {end} bytes, implausibly many")
  return end


def _read_header(f: IO[bytes], source: str, first: bytes, remaining: int | None,
                 kind: str | None) -> tuple[_Header, int]:
  """Reads and verifies a version-2 header (after its first 8 bytes, ``first``).

  Returns:
    (the header, the size of the data in bytes).
  """
  (length,) = _LENGTH.unpack(first)
  if not 2 <= length <= MAX_HEADER_BYTES:
    raise _bad(source, f"not an olss_jax file (or a corrupted one): header length {length} "
               f"outside [2, {MAX_HEADER_BYTES}]")
  if remaining is not None and 8 + length > remaining:
    raise _bad(source, f"truncated file (or not an olss_jax file): header length {length}, "
               f"but only {remaining - 8} bytes follow")
  raw = container.read_exact(f, length, source, "header")
  try:
    header = _loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, ValueError, RecursionError) as e:
    raise _bad(source, f"malformed header (not UTF-8 JSON), or not an olss_jax file: "
               f"{e}") from None
  meta = header.get("__metadata__") if isinstance(header, dict) else None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise _bad(source, "not an olss_jax file: no olss_jax metadata (a safetensors file "
               "needs __metadata__ {\"format\": \"olss_jax\", ...})")
  not_str = sorted(k for k, v in meta.items() if not isinstance(v, str))
  if not_str:
    raise _bad(source, f"malformed header: __metadata__ values must be strings, got others "
               f"for {not_str!r:.200}")
  version = meta.get("format_version")
  if version is None or not _VERSION_TEXT.fullmatch(version):
    raise _bad(source, f"malformed header: format_version {version!r:.50}; expected a "
               "decimal integer")
  if int(version) > FORMAT_VERSION:
    raise _bad(source, f"unsupported format version {int(version)}: written by a newer "
               f"olss_jax; upgrade (this one reads versions 1 and {FORMAT_VERSION})")
  if int(version) != FORMAT_VERSION:
    raise _bad(source, f"unsupported format version {int(version)} in a safetensors file "
               f"(this olss_jax reads version {FORMAT_VERSION} safetensors files and version-1 "
               "containers)")
  for key in _DIGEST_KEYS:
    if not _HEX64.fullmatch(meta.get(key, "")):
      raise _bad(source, f"malformed header: __metadata__[{key!r}] is not a hex SHA-256")
  content_prefix, header_text = _digest_inputs(header)
  if hashlib.sha256(header_text).hexdigest() != meta["header_sha256"]:
    raise _bad(source, "corrupted: header checksum mismatch")
  found_kind = meta.get("kind")
  if found_kind not in _TENSORS:
    raise _bad(source, f"malformed header: unknown kind {found_kind!r:.100}; expected one of "
               f"{sorted(_TENSORS)}")
  if kind is not None and found_kind != kind:
    raise _bad(source, f"holds {found_kind!r}, expected {kind!r}")
  tensors = [_parse_tensor(name, entry, source) for name, entry in header.items()
             if name != "__metadata__"]
  data_bytes = _check_tensors(tensors, found_kind, source)
  if remaining is not None and remaining != 8 + length + data_bytes:
    problem = "truncated file" if remaining < 8 + length + data_bytes else "trailing bytes"
    raise _bad(source, f"{problem}: {remaining - 8 - length} bytes follow the header, the "
               f"tensors need {data_bytes}")
  user = _json_entry(meta, "metadata", source)
  teacher = None
  if found_kind == TRAJECTORY_KIND:
    teacher = _json_entry(meta, "teacher", source)
    if (set(teacher) != {"kind", "config"} or not isinstance(teacher["kind"], str)
        or not isinstance(teacher["config"], dict)):
      raise _bad(source, f"malformed header: teacher {teacher!r:.200}; expected "
                 "{\"kind\": str, \"config\": {...}}")
  parsed = _Header(found_kind, user, teacher, tensors, first + raw, content_prefix,
                   meta["sha256"], remaining)
  return parsed, data_bytes


def _read_data(f: IO[bytes], source: str, header: _Header) -> tuple[dict[str, np.ndarray], str]:
  """Reads every tensor into its final buffer while hashing; returns (arrays, file SHA-256)."""
  content = hashlib.sha256(header.content_prefix)
  whole = hashlib.sha256(header.head)
  arrays = {}
  for t in header.tensors:
    arrays[t.name] = container.read_array(f, t.shape, _CODES[t.code], source,
                                          f"tensor {t.name!r}", (content, whole))
  if header.remaining is None and f.read(1):
    raise _bad(source, "trailing bytes after the last tensor")
  if content.hexdigest() != header.sha256:
    raise _bad(source, "corrupted: data checksum mismatch")
  return arrays, whole.hexdigest()


def _load(path_or_file, kind: str):
  """(arrays, version-2 header or None for version 1, user metadata, digest, source)."""
  source = _describe(path_or_file)
  with _reader(path_or_file) as f:
    remaining = container.remaining_bytes(f)
    first = _sniff(f, source)
    if first == container.MAGIC:
      names = _V1_SCHEDULE_ARRAYS if kind == SCHEDULE_KIND else _V1_TRAJECTORY_ARRAYS
      arrays, meta, digest = container.read_container(f, source, kind, names, magic=first)
      return arrays, None, meta, digest, source
    header, _ = _read_header(f, source, first, remaining, kind)
    arrays, digest = _read_data(f, source, header)
    return arrays, header, header.metadata, digest, source


def load_schedule(path_or_file) -> schedule_lib.Schedule:
  """Loads and verifies a schedule written by `save_schedule` (or by olss_jax 0.1).

  Args:
    path_or_file: a path or a readable binary file object positioned at the file's start
      (read to its end).

  Returns:
    The `Schedule`, bit-identical to the saved one: host numpy timesteps (n,) int32 or
    float32 and weights (n, n + 1) float64, and its metadata.

  Raises:
    ValueError: the bytes are not an intact olss_jax schedule file: truncated, corrupted
      (checksums), of another format version or kind, or holding an invalid schedule
      (shapes, dtypes, non-finite or non-lower-triangular weights). The message names the
      file.
    OSError: the file cannot be opened or read.
  """
  arrays, header, meta, _, source = _load(path_or_file, SCHEDULE_KIND)
  timesteps, weights = arrays["timesteps"], arrays["weights"]
  if header is None and (timesteps.dtype != np.int32 or weights.dtype != np.float64):
    raise _bad(source, f"expected int32 timesteps and float64 weights, found "
               f"{timesteps.dtype} and {weights.dtype}")
  schedule = schedule_lib.Schedule(timesteps, weights, meta)
  try:
    validation.check_schedule(schedule)
  except (TypeError, ValueError) as e:
    raise _bad(source, f"invalid schedule: {e}") from None
  return schedule


def read_trajectory(path_or_file) -> tuple[trajectory_lib.Trajectory, dict[str, Any], str]:
  """Loads and verifies a trajectory file; also gives its metadata and digest.

  Each tensor is read straight into its final buffer (no second copy) while the checksums
  are computed.

  Args:
    path_or_file: a path or a readable binary file object at the file's start.

  Returns:
    (trajectory, metadata, digest): the `Trajectory` as `load_trajectory` returns it; the
    user's metadata dict (as saved); the hex SHA-256 of the whole file's bytes, as
    `save_trajectory` returned it. For a version-1 file the digest is its trailer (the
    SHA-256 of the bytes before it), which is what olss_jax 0.1's `save_trajectory`
    returned and its stores recorded.

  Raises:
    ValueError: see `load_trajectory`.
    OSError: the file cannot be opened or read.
  """
  arrays, header, meta, digest, source = _load(path_or_file, TRAJECTORY_KIND)
  if header is None:  # version 1: the DDIM teacher's timesteps and alphas
    dtypes = {k: v.dtype.name for k, v in arrays.items()}
    if (dtypes["timesteps"] != "int32" or dtypes["alphas"] != "float64"
        or dtypes["x_T"] not in _FLOAT_NAMES or dtypes["model_outputs"] != dtypes["x_T"]):
      raise _bad(source, f"expected int32 timesteps, float64 alphas and x_T and "
                 f"model_outputs of one float dtype, found {dtypes}")
    kind, config = "ddim", {}
    timesteps, levels = arrays["timesteps"], arrays["alphas"]
  else:
    kind, config = header.teacher["kind"], header.teacher["config"]
    if kind not in teacher_lib.KINDS:
      raise _bad(source, f"unsupported teacher kind {kind!r:.100} (this olss_jax knows "
                 f"{sorted(teacher_lib.KINDS)}); written by a newer olss_jax? upgrade")
    timesteps, levels = arrays["teacher_timesteps"], arrays["teacher_levels"]
  try:
    teacher = teacher_lib.Teacher(timesteps, teacher_lib.as_float64(levels), kind, config)
    traj = trajectory_lib.Trajectory(arrays["x_T"], arrays["model_outputs"], teacher)
    validation.check_trajectory(traj)
  except (TypeError, ValueError) as e:
    raise _bad(source, f"invalid trajectory: {e}") from None
  return traj, meta, digest


def load_trajectory(path_or_file) -> trajectory_lib.Trajectory:
  """Loads and verifies a trajectory written by `save_trajectory` (or by olss_jax 0.1).

  Args:
    path_or_file: a path or a readable binary file object at the file's start.

  Returns:
    The `Trajectory`, bit-identical to the saved one: host numpy x_T (B, ...) and
    model_outputs (K, B, ...) of one float dtype; a `Teacher` with numpy timesteps (K,)
    int32 or float32, float64 jax levels (K + 1,), its kind and config. Version-1 files give
    a ``"ddim"`` teacher (empty config).

  Raises:
    ValueError: truncated, corrupted, wrong version or kind, or an invalid trajectory
      (shapes, dtypes, non-finite values naming the first step and sample, levels, an
      unknown teacher kind). The message names the file.
    OSError: the file cannot be opened or read.
  """
  return read_trajectory(path_or_file)[0]


def read_metadata(path_or_file) -> dict[str, Any]:
  """The metadata of a schedule or trajectory file, reading and verifying only its header.

  The data is not read (nor checked: use the loaders for that); a seekable file's size is
  checked against the header.

  Args:
    path_or_file: a path or a readable binary file object at the file's start.

  Returns:
    The user's metadata dict plus ``"_kind"`` (`SCHEDULE_KIND` or `TRAJECTORY_KIND`),
    ``"_format_version"`` (1 or 2), ``"_arrays"`` ({tensor name: {"dtype": numpy dtype
    name, "shape": list}}, with the version-2 names also for version-1 files) and, for
    trajectories, ``"_teacher"`` ({"kind", "config"}).

  Raises:
    ValueError: the header is not an intact olss_jax header (naming the file).
    OSError: the file cannot be opened or read.
  """
  source = _describe(path_or_file)
  with _reader(path_or_file) as f:
    remaining = container.remaining_bytes(f)
    first = _sniff(f, source)
    if first == container.MAGIC:
      v1 = container.read_header(f, source, magic=first)
      after = container.remaining_bytes(f) if remaining is not None else None
      need = sum(e["nbytes"] for e in v1["arrays"]) + container.DIGEST_SIZE
      if after is not None and after != need:
        problem = "truncated file" if after < need else "trailing bytes"
        raise _bad(source, f"{problem}: {after} bytes follow the header, expected {need}")
      kind = v1.get("kind")
      if kind not in _V1_NAMES:
        raise _bad(source, f"malformed header: unknown kind {kind!r:.100}")
      meta = dict(v1["metadata"])
      names = _V1_NAMES[kind]
      meta["_arrays"] = {names.get(e["name"], e["name"]): {"dtype": e["dtype"],
                                                           "shape": e["shape"]}
                         for e in v1["arrays"]}
      meta.update(_kind=kind, _format_version=container.VERSION)
      if kind == TRAJECTORY_KIND:
        meta["_teacher"] = {"kind": "ddim", "config": {}}
      return meta
    header, _ = _read_header(f, source, first, remaining, None)
  meta = dict(header.metadata)
  meta.update(_kind=header.kind, _format_version=FORMAT_VERSION, _arrays=header.arrays())
  if header.teacher is not None:
    meta["_teacher"] = header.teacher
  return meta
