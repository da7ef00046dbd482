"""Resumable teacher collection into a directory of checksummed chunk files (paper Sec. 3.3).

The teacher (``collect_trajectory``) is the expensive part of OLSS: 1000 model calls per
starting noise. `collect_to_directory` splits the starting noises into chunks, collects each
chunk and saves it atomically as its own file, so an interrupted run (Ctrl-C, a crash, a lost
machine) resumes where it stopped: finished chunks are verified by checksum and skipped,
never recomputed. `load_store` concatenates the chunks along the batch axis.

Directory layout (store version 2; version 1 stores, with ``chunk-*.olss`` files, still load)::

  manifest.json              the collection's config (teacher, number of chunks, the model and
                             conditions it ran, the caller's own config) + the finished chunks
                             and their SHA-256
  chunk-00000.safetensors    one `save_trajectory` file per chunk (metadata: chunk index,
  ...                        config, the chunk's conditions: class labels or prompts)
  .lock                      held (flock) by the collecting process; one collector at a time
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np

from olss_jax._src import atomic
from olss_jax._src import container
from olss_jax._src import files as files_lib
from olss_jax._src import noise
from olss_jax._src import stats as stats_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation
from olss_jax._src.model import StoreProgress  # re-exported: the event lives in the bottom layer

try:
  import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; single collector assumed.
  fcntl = None

MANIFEST = "manifest.json"
STORE_FORMAT = "olss_jax.store"
STORE_VERSION = 2
READABLE_VERSIONS = (1, 2)
_LOCK = ".lock"


def chunk_file_name(chunk_index: int) -> str:
  """The file name of chunk ``chunk_index`` in a version 2 store: ``chunk-00000.safetensors``."""
  return f"chunk-{chunk_index:05d}.safetensors"


def chunk_path(directory: str, manifest: dict, chunk_index: int) -> str:
  """The file of a chunk: as the manifest records it (version 1: ``chunk-00000.olss``)."""
  record = manifest["chunks"].get(str(chunk_index)) or {}
  return os.path.join(directory, record.get("file") or chunk_file_name(chunk_index))


class CollectInfo(NamedTuple):
  """What `collect_to_directory` did.

  Attributes:
    directory: the store.
    num_chunks: the total number of chunks.
    collected: indices of the chunks computed by this call.
    skipped: indices of the chunks found finished (verified, not recomputed).
    recovered: indices whose file was corrupt, moved aside (``*.corrupt-<time>``) and
      recomputed.
  """

  directory: str
  num_chunks: int
  collected: tuple[int, ...]
  skipped: tuple[int, ...]
  recovered: tuple[int, ...]


def _read_manifest(directory: str) -> dict | None:
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    return None
  try:
    manifest = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise ValueError(f"{path!r}: corrupted manifest (not UTF-8 JSON): {e}") from None
  if (not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT
      or not isinstance(manifest.get("config"), dict)
      or not isinstance(manifest.get("chunks"), dict)):
    raise ValueError(f"{path!r}: not an olss_jax store manifest")
  if manifest.get("version") not in READABLE_VERSIONS:
    raise ValueError(f"{path!r}: unsupported store version {manifest.get('version')!r} (this "
                     f"olss_jax reads versions {READABLE_VERSIONS})")
  config, data = manifest["config"], manifest.get("data")
  ok = (all(type(config.get(k)) is int and config[k] >= 1  # pylint: disable=unidiomatic-typecheck
            for k in ("num_chunks", "num_teacher_steps"))
        and (data is None or (isinstance(data, dict) and data.get("dtype") in container.DTYPES
                              and isinstance(data.get("sample_shape"), list)
                              and all(type(d) is int and d >= 0 for d in data["sample_shape"])))
        and all(isinstance(r, dict) and isinstance(r.get("sha256"), str)
                and type(r.get("batch_size")) is int and r["batch_size"] >= 1
                and isinstance(r.get("file", ""), str) and os.sep not in r.get("file", "")
                and not r.get("file", "").startswith(".")
                for r in manifest["chunks"].values()))
  if not ok:
    raise ValueError(f"{path!r}: corrupted manifest (malformed config, data or chunk records)")
  try:
    [int(k) for k in manifest["chunks"]]
  except ValueError:
    raise ValueError(f"{path!r}: corrupted manifest (chunk keys are not indices)") from None
  return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
  """The manifest of a store: {"config", "data", "chunks": {str(index): {...}}, ...}.

  Cheap (one small JSON file); use it for progress reports. Raises ValueError if the
  directory holds no valid manifest.
  """
  directory = os.fspath(directory)
  manifest = _read_manifest(directory)
  if manifest is None:
    raise ValueError(f"directory: {directory!r} holds no {MANIFEST}; not an olss_jax store")
  return manifest


def _write_manifest(directory: str, manifest: dict) -> None:
  data = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
  atomic.atomic_write_bytes(os.path.join(directory, MANIFEST), data)


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
  if fcntl is None:  # pragma: no cover
    yield
    return
  fd = os.open(os.path.join(directory, _LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RuntimeError(f"directory: another process is collecting into {directory!r} "
                         "(its .lock is held); wait for it or use another directory") from None
    yield
  finally:
    os.close(fd)  # releases the lock


# The settings that size a collection rather than define its data (dotted config keys): a
# store collected with fewer images grows when only these differ (`collect_to_directory`).
SIZE_KEYS = ("num_chunks", "user.num_images", "user.schedule_metadata.num_fit_images")
_MISSING = object()


def _leaves(config, prefix: str = "") -> dict[str, Any]:
  """A nested config as {dotted key: leaf value}."""
  if isinstance(config, dict) and config:
    out = {}
    for k, v in config.items():
      out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  return {prefix: config}


def config_differences(found: dict, wanted: dict) -> list[tuple[str, Any, Any]]:
  """The leaves where two store configs differ: ``(dotted key, found, wanted)``.

  Digests (keys ending in ``sha256``) come last: they differ whenever a setting they hash
  does, which the other keys name better.
  """
  a, b = _leaves(found), _leaves(wanted)
  keys = [k for k in sorted(set(a) | set(b)) if a.get(k, _MISSING) != b.get(k, _MISSING)]
  keys.sort(key=lambda k: k.endswith("sha256"))
  return [(k, a.get(k), b.get(k)) for k in keys]


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


class ConfigMismatchError(ValueError):
  """A store collected with other settings than this call's (`collect_to_directory`).

  Attributes:
    directory: the store.
    differences: ``[(dotted config key, the store's value, this call's value), ...]``; the
      keys are the manifest's (``user.<key>`` for the caller's own ``config``).
  """

  def __init__(self, directory: str, differences: list[tuple[str, Any, Any]], why: str = ""):
    self.directory = directory
    self.differences = differences
    shown = [f"{k}={_short(found)} there, {_short(wanted)} here"
             for k, found, wanted in differences[:2]]
    more = f" (+{len(differences) - 2} more)" if len(differences) > 2 else ""
    super().__init__(f"directory: {directory!r} was collected with another configuration: "
                     f"{'; '.join(shown)}{more}; {why or 'refusing to mix data'} (use the same "
                     "settings, or a new directory)")


def _check_chunk(directory: str, index: int, manifest: dict, config: dict, noises,
                 teacher: teacher_lib.Teacher, verify: bool) -> str:
  """Verifies a finished chunk file; returns its digest. ValueError if it is corrupt."""
  path = os.path.join(directory, chunk_file_name(index))
  record = manifest["chunks"].get(str(index))
  if not verify and record is not None:
    meta = files_lib.read_metadata(path)  # header checksum only
    expected_size = os.path.getsize(path)
    if record.get("size") != expected_size:
      raise ValueError(f"{path!r}: size {expected_size} differs from the manifest's "
                       f"{record.get('size')}")
    traj_meta = meta
    digest = record["sha256"]
    stored_noise = None
  else:
    traj, traj_meta, digest = files_lib.read_trajectory(path)
    if record is not None and record.get("sha256") != digest:
      raise ValueError(f"{path!r}: checksum {digest} differs from the manifest's "
                       f"{record.get('sha256')}")
    if not teacher_lib.same_teacher(traj.teacher, teacher):
      raise _Mismatch(f"{path!r}: its teacher (timesteps, levels or kind) differs from this "
                      "call's")
    stored_noise = traj.x_T
  found = traj_meta.get("store_config")
  if not isinstance(found, dict) or any(k not in SIZE_KEYS for k, _, _ in
                                        config_differences(found, config)) or (
                                            traj_meta.get("chunk_index") != index):
    raise _Mismatch(f"{path!r}: was collected for another configuration or chunk index "
                    f"({traj_meta.get('chunk_index')!r}); refusing to mix data")
  if stored_noise is not None:
    wanted = np.asarray(noises)
    if stored_noise.shape != wanted.shape or stored_noise.dtype != wanted.dtype or not (
        np.array_equal(stored_noise, wanted)):
      raise _Mismatch(f"{path!r}: noises_for_chunk({index}) returned other starting noises "
                      f"(shape {wanted.shape}, {wanted.dtype}) than the finished chunk holds "
                      f"(shape {stored_noise.shape}, {stored_noise.dtype}); did the seed "
                      "change? Use a new directory")
  return digest


def teacher_record(teacher: teacher_lib.Teacher) -> dict:
  """What a manifest records of a teacher: kind, config and digests of its arrays."""
  def digest(x, dtype):
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x), dtype).tobytes()).hexdigest()
  ts = np.asarray(teacher.timesteps)
  return {"kind": teacher.kind, "config": teacher.config,
          "timesteps_sha256": digest(ts, ts.dtype.newbyteorder("<")),
          "levels_sha256": digest(teacher.levels, "<f8")}


class _Mismatch(ValueError):
  """A valid chunk that belongs to another collection: never overwritten."""


def _check_noises(x_T, index: int, data: dict | None):
  if not hasattr(x_T, "shape") or not hasattr(x_T, "dtype"):
    raise TypeError(f"noises_for_chunk({index}): expected an array (B, ...), got "
                    f"{type(x_T).__name__}")
  shape = tuple(x_T.shape)
  if len(shape) < 1 or shape[0] < 1:
    raise ValueError(f"noises_for_chunk({index}): expected shape (B, ...) with B >= 1, got "
                     f"{shape}")
  name = container.dtype_name(x_T.dtype)
  if name not in ("float16", "bfloat16", "float32", "float64"):
    raise TypeError(f"noises_for_chunk({index}): expected a float dtype, got {x_T.dtype}")
  if data is not None and (list(shape[1:]) != data["sample_shape"] or name != data["dtype"]):
    raise ValueError(f"noises_for_chunk({index}): sample shape {shape[1:]} and dtype {name} "
                     f"differ from the store's {tuple(data['sample_shape'])} and "
                     f"{data['dtype']}")
  return {"sample_shape": list(shape[1:]), "dtype": name}


def collect_to_directory(directory: str | os.PathLike,
                         denoise_fn_for_chunk: Callable[[int], trajectory_lib.DenoiseFn],
                         noises_for_chunk: Callable[[int], Any], teacher, *,
                         num_chunks: int, num_teacher_steps: int | None = None,
                         steps_offset: int = 0, final_alpha_cumprod: float = 1.0,
                         steps_per_chunk: int | None = None,
                         config: Mapping[str, Any] | None = None,
                         chunk_metadata: Callable[[int], Mapping[str, Any]] | None = None,
                         callback: Callable[[StoreProgress], None] | None = None,
                         verify: bool = True) -> CollectInfo:
  """Collects the teacher (paper Sec. 3.3) chunk by chunk into ``directory``, resumably.

  Chunk i runs ``collect_trajectory(denoise_fn_for_chunk(i), noises_for_chunk(i), teacher)``
  and is saved atomically as ``chunk-0000i.safetensors``; the manifest records it afterwards. Running
  the same call again after an interruption skips every finished chunk (verified by SHA-256,
  and its stored noises compared with ``noises_for_chunk(i)``) and never calls
  ``denoise_fn_for_chunk`` for it. A chunk file written just before a crash but not yet in
  the manifest is verified and adopted. A corrupt chunk file is moved aside
  (``*.corrupt-<unix time>``, with a warning) and recomputed.

  Args:
    directory: the store (created if missing).
    denoise_fn_for_chunk: ``chunk_index -> denoise_fn``. The model may differ per chunk, e.g.
      Stable Diffusion with each chunk's prompt embeddings; it is only called for chunks that
      are computed.
    noises_for_chunk: ``chunk_index -> x_T (B_i, ...)``, deterministic in the index (e.g.
      ``jax.random.normal(jax.random.fold_in(key, i), ...)``). B_i may vary; the sample shape
      and dtype must not.
    teacher: a `Teacher`, or the model's (T,) ``alphas_cumprod`` for the DDIM teacher (with
      ``num_teacher_steps``, ``steps_offset`` and ``final_alpha_cumprod``, as in
      `collect_trajectory`).
    num_chunks: how many chunks make the collection.
    num_teacher_steps, steps_offset, final_alpha_cumprod, steps_per_chunk: as in
      `collect_trajectory`.
    config: a JSON-serialisable description of everything else that defines the data (model
      name, guidance scale, prompt file hash, seed, ...). Recorded; a later call with another
      config raises `ConfigMismatchError` (one line naming the settings that differ) instead
      of mixing data. A call that differs only in size (``num_chunks`` and a larger
      ``config["num_images"]``, `SIZE_KEYS`) grows a finished store: its chunks are kept (a
      partial last chunk is collected again in full) and the new ones collected; it never
      shrinks.
    chunk_metadata: ``chunk_index -> dict`` stored in the chunk file (e.g. its prompts); see
      `read_metadata`.
    callback: progress hook called with a `StoreProgress` (skipped / step / done events).
    verify: re-hash finished chunks on resume (reads them fully). False trusts the manifest's
      record and the file size, checking only the header checksum.

  Returns:
    A `CollectInfo` (which chunks were collected, skipped, recovered).

  Raises:
    ConfigMismatchError: (a ValueError) the directory was collected with other settings.
    ValueError: a shape or noise mismatch with the existing directory, a corrupt
      manifest, or non-finite model outputs (naming the chunk, step and sample).
    RuntimeError: another process holds the directory's lock.

  Example (Stable Diffusion, one chunk of prompts per file; names are illustrative)::

    key = jax.random.PRNGKey(0)
    prompts = [all_prompts[i:i + 4] for i in range(0, len(all_prompts), 4)]
    info = oj.store.collect_to_directory(
        "teacher/", lambda i: make_guided_denoiser(prompts[i]),
        lambda i: jax.random.normal(jax.random.fold_in(key, i), (len(prompts[i]), 4, 64, 64)),
        alphas_cumprod, num_chunks=len(prompts), steps_offset=1, steps_per_chunk=50,
        config={"model_name": name, "guidance_scale": 7.5, "seed": 0},
        chunk_metadata=lambda i: {"prompts": prompts[i]},
        callback=lambda p: print(p.chunk_index, p.steps_done, p.status))
    traj = oj.store.load_store("teacher/")   # after an interruption: run the same call again
  """
  if not callable(denoise_fn_for_chunk) or not callable(noises_for_chunk):
    raise TypeError("denoise_fn_for_chunk and noises_for_chunk: expected callables of the "
                    f"chunk index, got {type(denoise_fn_for_chunk).__name__} and "
                    f"{type(noises_for_chunk).__name__}")
  num_chunks = validation.check_count(num_chunks, "num_chunks")
  teacher = trajectory_lib.resolve_teacher(teacher, num_teacher_steps, steps_offset=steps_offset,
                                           final_alpha_cumprod=final_alpha_cumprod)
  if noise.is_traced(teacher.levels):
    raise TypeError("teacher: expected concrete values (a store records them), got traced")
  store_config = container.encode_metadata({
      "teacher": teacher_record(teacher),
      "num_chunks": num_chunks,
      "num_teacher_steps": teacher.num_steps,
      "user": container.encode_metadata(config, "config"),
  }, "config")
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  collected, skipped, recovered = [], [], []
  with _locked(directory):
    atomic.remove_temp_files(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
      strays = [n for n in os.listdir(directory) if n.startswith("chunk-")
                and n.endswith((".olss", ".safetensors"))]
      if strays:
        raise ValueError(f"directory: {directory!r} holds chunk files ({strays[0]}, ...) but no "
                         f"{MANIFEST}; refusing to mix data, use an empty directory")
      manifest = {"format": STORE_FORMAT, "version": STORE_VERSION, "config": store_config,
                  "data": None, "chunks": {}}
      _write_manifest(directory, manifest)
    else:
      if manifest.get("version") != STORE_VERSION:
        raise ValueError(f"directory: {directory!r} is a version {manifest.get('version')} "
                         f"store; this olss_jax reads it (load_store) but collects only into "
                         f"version {STORE_VERSION} stores: use a new directory")
      differences = config_differences(manifest["config"], store_config)
      defining = [d for d in differences if d[0] not in SIZE_KEYS]
      if defining:
        raise ConfigMismatchError(directory, defining)
      if differences and "user.num_images" not in [d[0] for d in differences]:
        raise ConfigMismatchError(directory, differences, "a store grows only when its "
                                  "config records the new num_images")
      if differences:  # only the size: grow the store, never shrink it
        old_chunks = int(manifest["config"]["num_chunks"])
        if num_chunks < old_chunks:
          raise ConfigMismatchError(
              directory, differences, f"a store grows but never shrinks ({old_chunks} chunks "
              f"there, {num_chunks} asked); load_store it and take the images you need")
        manifest["config"] = store_config
        _write_manifest(directory, manifest)
    for index in range(num_chunks):
      path = os.path.join(directory, chunk_file_name(index))
      x_T = noises_for_chunk(index)
      data = _check_noises(x_T, index, manifest["data"])
      record = manifest["chunks"].get(str(index))
      if record is not None and record["batch_size"] != int(x_T.shape[0]):
        # The partial last chunk of a smaller collection this call grows: collect it in full.
        if os.path.exists(path):
          os.remove(path)
        manifest["chunks"].pop(str(index))
        _write_manifest(directory, manifest)
      if os.path.exists(path):
        try:
          digest = _check_chunk(directory, index, manifest, store_config, x_T, teacher, verify)
        except _Mismatch:
          raise
        except ValueError as e:
          aside = f"{path}.corrupt-{int(time.time())}"
          os.replace(path, aside)
          warnings.warn(f"chunk {index}: {e}; moved to {aside!r} and recomputing", stacklevel=2)
          manifest["chunks"].pop(str(index), None)
          recovered.append(index)
        else:
          if str(index) not in manifest["chunks"]:
            manifest["chunks"][str(index)] = {"file": chunk_file_name(index), "sha256": digest,
                                              "batch_size": int(x_T.shape[0]),
                                              "size": os.path.getsize(path)}
            manifest["data"] = manifest["data"] or data
            _write_manifest(directory, manifest)
          skipped.append(index)
          if callback is not None:
            callback(StoreProgress(index, num_chunks, teacher.num_steps, teacher.num_steps,
                                   "skipped"))
          continue
      denoise_fn = denoise_fn_for_chunk(index)
      step_hook = None
      if callback is not None:
        step_hook = lambda done, total, i=index: callback(  # noqa: E731
            StoreProgress(i, num_chunks, int(done), int(total), "step"))
      traj = trajectory_lib.collect_trajectory(denoise_fn, x_T, teacher,
                                               steps_per_chunk=steps_per_chunk,
                                               callback=step_hook)
      meta = container.encode_metadata(chunk_metadata(index) if chunk_metadata else None,
                                       f"chunk_metadata({index})")
      meta.update({"store_config": store_config, "chunk_index": index})
      try:
        validation.check_trajectory(traj)
      except ValueError as e:
        raise ValueError(f"chunk {index}: {e}; nothing was saved for this chunk") from None
      digest = files_lib.save_trajectory(path, traj, metadata=meta)
      manifest["chunks"][str(index)] = {"file": chunk_file_name(index), "sha256": digest,
                                        "batch_size": int(x_T.shape[0]),
                                        "size": os.path.getsize(path)}
      manifest["data"] = manifest["data"] or data
      _write_manifest(directory, manifest)
      if index not in recovered:
        collected.append(index)
      if callback is not None:
        callback(StoreProgress(index, num_chunks, teacher.num_steps, teacher.num_steps, "done"))
  return CollectInfo(directory, num_chunks, tuple(collected), tuple(skipped), tuple(recovered))


def load_store(directory: str | os.PathLike, *, allow_partial: bool = False,
               manifest: dict | None = None) -> trajectory_lib.Trajectory:
  """Loads a store as one `Trajectory`, chunks concatenated along the batch axis in order.

  Every chunk is fully verified (SHA-256 against its trailer and the manifest). Memory: the
  result plus one chunk (each chunk is read into a buffer and copied into its slice).

  Args:
    directory: a store written by `collect_to_directory`.
    allow_partial: load only the finished chunks instead of raising when some are missing.
    manifest: the store's manifest, when the caller has read it (`read_manifest`; a command
      reads it once and passes it on); default: read here.

  Returns:
    The `Trajectory`: x_T (sum B_i, ...), model_outputs (K, sum B_i, ...), host numpy.

  Raises:
    ValueError: no manifest, missing chunks (unless allow_partial), or a chunk that is
      corrupt or inconsistent with the manifest.
  """
  directory = os.fspath(directory)
  manifest = read_manifest(directory) if manifest is None else manifest
  num_chunks = manifest["config"].get("num_chunks")
  finished = sorted(int(k) for k in manifest["chunks"])
  missing = [i for i in range(num_chunks) if i not in finished]
  if missing and not allow_partial:
    raise ValueError(f"directory: {directory!r} is missing chunks {missing[:10]}"
                     f"{' ...' if len(missing) > 10 else ''} of {num_chunks}; resume "
                     "collect_to_directory, or pass allow_partial=True")
  if not finished:
    raise ValueError(f"directory: {directory!r} holds no finished chunks")
  data = manifest["data"]
  sizes = [int(manifest["chunks"][str(i)]["batch_size"]) for i in finished]
  total = sum(sizes)
  dtype = container.DTYPES[data["dtype"]]
  sample_shape = tuple(data["sample_shape"])
  k = int(manifest["config"]["num_teacher_steps"])
  x_T = np.empty((total,) + sample_shape, dtype)
  outputs = np.empty((k, total) + sample_shape, dtype)
  teacher = None
  start = 0
  for index, size in zip(finished, sizes):
    path = chunk_path(directory, manifest, index)
    traj, meta, digest = files_lib.read_trajectory(path)
    record = manifest["chunks"][str(index)]
    if digest != record.get("sha256") or meta.get("chunk_index") != index:
      raise ValueError(f"{path!r}: does not match the manifest's record of chunk {index}")
    if traj.x_T.shape != (size,) + sample_shape or traj.x_T.dtype != dtype:
      raise ValueError(f"{path!r}: x_T {traj.x_T.shape} {traj.x_T.dtype} differs from the "
                       f"manifest's ({size}, *{sample_shape}) {dtype}")
    if teacher is None:
      teacher = traj.teacher
    elif not teacher_lib.same_teacher(teacher, traj.teacher):
      raise ValueError(f"{path!r}: its teacher differs from chunk {finished[0]}'s")
    x_T[start:start + size] = traj.x_T
    outputs[:, start:start + size] = traj.model_outputs
    start += size
    del traj
  return trajectory_lib.Trajectory(x_T, outputs, teacher)


def stats_from_store(directory: str | os.PathLike) -> stats_lib.TrajectoryStats:
  """Statistics of a store (`stats.stats_from_chunks`), loading one verified chunk at a time.

  Memory is one chunk plus the (K + 1)^2 Gram, whatever the number of images in the store.
  Every chunk is checked against the manifest's SHA-256, as `load_store` does.
  """
  directory = os.fspath(directory)
  manifest = read_manifest(directory)
  finished = sorted(int(k) for k in manifest["chunks"])
  if not finished:
    raise ValueError(f"directory: {directory!r} holds no finished chunks")

  def chunks():
    for index in finished:
      path = chunk_path(directory, manifest, index)
      traj, meta, digest = files_lib.read_trajectory(path)
      if digest != manifest["chunks"][str(index)].get("sha256") or \
          meta.get("chunk_index") != index:
        raise ValueError(f"{path!r}: does not match the manifest's record of chunk {index}")
      yield traj

  return stats_lib.stats_from_chunks(chunks())
