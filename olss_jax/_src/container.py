"""The version-1 olss_jax container (olss_jax 0.1): read-only support, plus shared helpers.

Files are written as safetensors since format version 2 (`files.py`); this module keeps what
is needed to *read* version-1 files, which `files.py` dispatches to when a file starts with
`MAGIC`. It also holds what both formats' readers and writers share (`files.py` calls these,
it has no copies of its own): the dtype table and the metadata encoder (`store.py` uses them
too), an array's bytes in blocks (`array_blocks`), exact reads (`read_exact`,
`remaining_bytes`) and an array streamed into its final buffer while hashing (`read_array`).
NumPy and the standard library only (no JAX), so that a child process can load it by path.

Version-1 layout (all integers little-endian)::

  offset 0   8 bytes   magic b"\\x89OLSSJAX"
  offset 8   uint32    format version (1)
  offset 12  uint64    header length h (bytes, at most 16 MiB)
  offset 20  h bytes   header: UTF-8 JSON {"format", "kind", "arrays": [{"name", "dtype",
                       "shape"}, ...], "metadata": {...}}
  20 + h     32 bytes  SHA-256 of bytes [0, 20 + h): the header is verified before any
                       array is allocated
  ...        raw C-order little-endian array data, in header order, no padding
  end - 32   32 bytes  SHA-256 of every byte before it (the "trailer")

Reading streams every array into its final buffer while hashing. Every problem with the
bytes (truncation, bit flips, a wrong magic or version, a malformed header, trailing data)
raises `ValueError` naming the source; I/O failures stay `OSError`.

`write_container` (the version-1 writer) is kept only so that tests can produce version-1
files; nothing in the package writes them.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import struct
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

try:  # bfloat16 (a dependency of jax; optional here so this module stays light).
  import ml_dtypes
  _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
  _BFLOAT16 = None

MAGIC = b"\x89OLSSJAX"
VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
DIGEST_SIZE = 32
MAX_HEADER_BYTES = 16 * 2**20
MAX_NDIM = 16
MAX_ARRAY_BYTES = 2**50
_BLOCK = 8 * 2**20

DTYPES: dict[str, np.dtype] = {
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
if _BFLOAT16 is not None:
  DTYPES["bfloat16"] = _BFLOAT16


def dtype_name(dtype) -> str | None:
  """The numpy name ("float32", "bfloat16", ...) of a storable dtype, or None."""
  dtype = np.dtype(dtype)
  for name, stored in DTYPES.items():
    if dtype == stored or (dtype.byteorder == ">" and dtype.newbyteorder("<") == stored):
      return name
  return None


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode_metadata(metadata: Mapping[str, Any] | None, name: str = "metadata") -> dict:
  """Checks that metadata is a JSON-serialisable dict with str keys; returns its JSON image.

  Tuples become lists and numpy scalars Python numbers (what a load returns). NaN and
  infinities are refused (JSON has no spelling for them).

  Raises:
    TypeError: naming ``name``.
  """
  if metadata is None:
    return {}
  if not isinstance(metadata, Mapping):
    raise TypeError(f"{name}: expected a dict, got {type(metadata).__name__}")
  try:
    text = json.dumps(dict(metadata), allow_nan=False, default=_json_default)
  except (TypeError, ValueError, RecursionError) as e:
    raise TypeError(f"{name}: expected JSON-serialisable values (str keys, numbers, strings, "
                    f"lists, dicts; no NaN or infinity), got an error: {e}") from None
  return json.loads(text)


def array_blocks(arr: np.ndarray) -> Iterator[memoryview]:
  """The bytes of a C-contiguous array in blocks (of at most 8 MiB), without a copy."""
  if arr.size == 0:
    return
  view = memoryview(arr.reshape(-1).view(np.uint8))
  for start in range(0, view.nbytes, _BLOCK):
    yield view[start:start + _BLOCK]


def write_container(f: IO[bytes], kind: str, arrays: Sequence[tuple[str, Any]],
                    metadata: Mapping[str, Any] | None = None) -> str:
  """Streams a version-1 container to a binary file object (for tests of old files only).

  Args:
    f: writable binary file object (positioned where the container starts).
    kind: what the file holds, e.g. ``"olss_jax.schedule"``.
    arrays: (name, array-like) pairs, written in this order.
    metadata: JSON-serialisable dict.

  Returns:
    The hex SHA-256 trailer (of every byte before it).
  """
  entries, prepared = [], []
  for name, value in arrays:
    arr = np.asarray(value)
    stored = dtype_name(arr.dtype)
    if stored is None:
      raise TypeError(f"{name}: dtype {arr.dtype} cannot be stored; expected one of "
                      f"{sorted(DTYPES)}")
    target = DTYPES[stored]
    if arr.dtype != target:  # only a byte-order change: same kind and size.
      arr = arr.astype(target)
    arr = np.ascontiguousarray(arr)
    entries.append({"name": name, "dtype": stored, "shape": [int(d) for d in arr.shape]})
    prepared.append(arr)
  header = {"format": "olss_jax", "kind": kind, "arrays": entries,
            "metadata": encode_metadata(metadata)}
  header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
  if len(header_bytes) > MAX_HEADER_BYTES:
    raise ValueError(f"metadata: the header would be {len(header_bytes)} bytes, more than the "
                     f"{MAX_HEADER_BYTES} allowed")
  head = _PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes
  head += hashlib.sha256(head).digest()
  total = hashlib.sha256(head)
  f.write(head)
  for arr in prepared:
    for block in array_blocks(arr):
      total.update(block)
      f.write(block)
  digest = total.digest()
  f.write(digest)
  return digest.hex()


def read_exact(f: IO[bytes], size: int, source: str, what: str) -> bytes:
  """Exactly ``size`` bytes of ``f``; a shorter file raises `ValueError` naming ``what``."""
  data = bytearray()
  while len(data) < size:
    chunk = f.read(size - len(data))
    if not chunk:
      raise ValueError(f"{source}: truncated file: it ends inside the {what} "
                       f"({len(data)} of {size} bytes)")
    data += chunk
  return bytes(data)


def _bad(source: str, problem: str) -> ValueError:
  return ValueError(f"{source}: {problem}")


def _parse_header(raw: bytes, source: str, kind: str | None) -> dict:
  try:
    header = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, ValueError, RecursionError) as e:
    raise _bad(source, f"malformed header (not UTF-8 JSON): {e}") from None
  if not isinstance(header, dict) or header.get("format") != "olss_jax":
    raise _bad(source, "malformed header: not an olss_jax container header")
  if kind is not None and header.get("kind") != kind:
    raise _bad(source, f"holds {header.get('kind')!r:.100}, expected {kind!r}")
  if not isinstance(header.get("metadata"), dict):
    raise _bad(source, "malformed header: 'metadata' is not a dict")
  entries = header.get("arrays")
  if not isinstance(entries, list):
    raise _bad(source, "malformed header: 'arrays' is not a list")
  for entry in entries:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
      raise _bad(source, f"malformed header: bad array entry {entry!r:.200}")
    name = entry["name"]
    if not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES:
      raise _bad(source, f"array {name!r}: unsupported dtype {entry.get('dtype')!r:.100}; "
                 f"expected one of {sorted(DTYPES)}")
    shape = entry.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
        or not all(type(d) is int and 0 <= d < 2**62 for d in shape)):  # pylint: disable=unidiomatic-typecheck
      raise _bad(source, f"array {name!r}: bad shape {shape!r:.200}")
    nbytes = math.prod(shape) * DTYPES[entry["dtype"]].itemsize
    if nbytes > MAX_ARRAY_BYTES:
      raise _bad(source, f"array {name!r}: shape {shape} declares {nbytes} bytes, implausibly "
                 "many")
    entry["nbytes"] = nbytes
  return header


def _read_head(f: IO[bytes], source: str, kind: str | None,
               magic: bytes | None) -> tuple[dict, bytes]:
  if magic is None:
    magic = read_exact(f, len(MAGIC), source, "magic bytes")
  if magic != MAGIC:
    raise _bad(source, f"not an olss_jax file: magic bytes {magic!r}, expected {MAGIC!r}")
  rest = read_exact(f, _PREFIX.size - len(MAGIC), source, "version-1 prefix")
  _, version, header_len = _PREFIX.unpack(magic + rest)
  if version != VERSION:
    hint = ("written by a newer olss_jax; upgrade" if version > VERSION
            else "unknown version")
    raise _bad(source, f"unsupported container version {version} after the version-1 magic "
               f"bytes: {hint}")
  if not 0 < header_len <= MAX_HEADER_BYTES:
    raise _bad(source, f"corrupted: header length {header_len} outside (0, {MAX_HEADER_BYTES}]")
  raw = read_exact(f, header_len, source, "header")
  digest = read_exact(f, DIGEST_SIZE, source, "header checksum")
  head = magic + rest + raw
  if hashlib.sha256(head).digest() != digest:
    raise _bad(source, "corrupted: header checksum mismatch")
  return _parse_header(raw, source, kind), head + digest


def remaining_bytes(f: IO[bytes]) -> int | None:
  """Bytes from ``f``'s position to its end, or None when ``f`` cannot tell (not seekable)."""
  try:
    if not f.seekable():
      return None
    pos = f.tell()
    end = f.seek(0, io.SEEK_END)
    f.seek(pos)
    return end - pos
  except (OSError, AttributeError, ValueError):
    return None


def read_array(f: IO[bytes], shape: Sequence[int], dtype: np.dtype, source: str, what: str,
               hashes: Iterable[Any] = ()) -> np.ndarray:
  """Reads a C-order array's raw bytes from ``f`` straight into its final buffer.

  Args:
    f: readable binary file object at the array's first byte.
    shape, dtype: the array's (dtype as stored: little-endian).
    source: how to name the file in error messages; what: how to name the array
      (e.g. ``"tensor 'x_T'"``).
    hashes: hash objects updated with every byte read, in order.

  Returns:
    The array, native-endian.

  Raises:
    ValueError: the array cannot be allocated, or the file ends inside it.
  """
  try:
    arr = np.empty(shape, dtype)
  except (MemoryError, ValueError) as e:
    nbytes = math.prod(shape) * dtype.itemsize
    raise _bad(source, f"{what} of {nbytes} bytes cannot be allocated: {e}") from None
  hashes = tuple(hashes)
  readinto = getattr(f, "readinto", None)
  for block in array_blocks(arr):
    pos = 0
    while pos < block.nbytes:
      part = block[pos:]
      if readinto is not None:
        got = readinto(part) or 0
      else:
        chunk = f.read(part.nbytes)
        got = len(chunk)
        part[:got] = chunk
      if not got:
        raise _bad(source, f"truncated file: it ends inside {what}")
      pos += got
    for h in hashes:
      h.update(block)
  if not dtype.isnative and dtype.itemsize > 1:  # big-endian hosts
    arr = arr.astype(dtype.newbyteorder("="))
  return arr


def read_header(f: IO[bytes], source: str, kind: str | None = None, *,
                magic: bytes | None = None) -> dict:
  """Reads and verifies only the header: {"kind", "arrays", "metadata", ...}.

  Checks the magic, version and header checksum, not the array data.

  Args:
    f: readable binary file object at the container's start, or just after its 8 magic
      bytes when the caller has read them already (then pass them as ``magic``).
    source: how to name the file in error messages.
    kind: the expected kind, or None for any.
    magic: the 8 bytes already read from ``f``.
  """
  header, _ = _read_head(f, source, kind, magic)
  return header


def read_container(f: IO[bytes], source: str, kind: str, names: Sequence[str], *,
                   magic: bytes | None = None) -> tuple[dict[str, np.ndarray], dict, str]:
  """Reads and fully verifies a version-1 container.

  Args:
    f: readable binary file object at the container's start (or after ``magic``); the
      container must run to its end.
    source: how to name the file in error messages.
    kind: the expected kind.
    names: the expected array names, in order.
    magic: the 8 bytes already read from ``f``, if any.

  Returns:
    (arrays: name -> native-endian numpy array, metadata dict, hex SHA-256 trailer).

  Raises:
    ValueError: the bytes are not a valid, intact container of this kind.
  """
  header, head = _read_head(f, source, kind, magic)
  entries = header["arrays"]
  found = [e["name"] for e in entries]
  if found != list(names):
    raise _bad(source, f"expected arrays {list(names)}, found {found}")
  data_bytes = sum(e["nbytes"] for e in entries)
  remaining = remaining_bytes(f)
  if remaining is not None and remaining != data_bytes + DIGEST_SIZE:
    problem = "truncated file" if remaining < data_bytes + DIGEST_SIZE else "trailing bytes"
    raise _bad(source, f"{problem}: {remaining} bytes follow the header, expected "
               f"{data_bytes + DIGEST_SIZE}")
  total = hashlib.sha256(head)
  arrays = {}
  for entry in entries:
    arrays[entry["name"]] = read_array(f, entry["shape"], DTYPES[entry["dtype"]], source,
                                       f"array {entry['name']!r}", (total,))
  digest = read_exact(f, DIGEST_SIZE, source, "checksum trailer")
  if total.digest() != digest:
    raise _bad(source, "corrupted: data checksum mismatch")
  if remaining is None and f.read(1):
    raise _bad(source, "trailing bytes after the checksum trailer")
  return arrays, header["metadata"], digest.hex()
