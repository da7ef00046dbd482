"""Saving and loading schedules and trajectories: exact round trips, interop and clear errors."""
import hashlib
import io
import json
import os
import pickle
import struct
import tracemalloc
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy as stnp

import files_helpers
from olss_jax._src import container
from olss_jax._src import files
from olss_jax._src import noise
from olss_jax._src import sampler
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib

ALPHAS = np.asarray(noise.scaled_linear_alphas_cumprod(), np.float64)
FLOATS = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


# ----------------------------------------------------------------------------- helpers


def _random_schedule(seed, n, metadata=None, float_timesteps=False):
  rng = np.random.default_rng(seed)
  weights = rng.standard_normal((n, n + 1)) * 10.0 ** rng.integers(-300, 300, (n, n + 1))
  weights[~schedule_lib.lower_triangular_mask(n)] = 0.0
  weights[0, 0] = -0.0 if n > 1 else weights[0, 0]
  weights[-1, 0] = 5e-324  # a subnormal survives
  timesteps = np.sort(rng.choice(1000, n, replace=False))[::-1]
  if float_timesteps:
    timesteps = (timesteps + rng.random(n) * 0.9).astype(np.float32)
    timesteps[-1] = np.float32(1e-45)  # a float32 subnormal
  return schedule_lib.make_schedule(timesteps, weights, metadata)


def _teacher(k, ts_dtype=np.int32, config=None):
  return files_helpers.ddim_teacher(k, ts_dtype, config, offset=0.25)


def _with_odd_values(arr):
  """Puts -0.0 and the dtype's smallest subnormal into a float array."""
  arr = arr.copy()
  flat = arr.reshape(-1)
  flat[0] = -0.0
  if flat.size > 1:
    flat[1] = ml_dtypes.finfo(arr.dtype).smallest_subnormal
  return arr


def _trajectory(dtype=np.float32, k=6, b=3, shape=(2, 2), seed=0, ts_dtype=np.int32,
                config=None):
  rng = np.random.default_rng(seed)
  x_T = _with_odd_values(rng.standard_normal((b,) + shape).astype(dtype))
  outputs = _with_odd_values(rng.standard_normal((k, b) + shape).astype(dtype))
  return trajectory_lib.Trajectory(x_T, outputs, _teacher(k, ts_dtype, config))


def _bits(x):
  x = np.ascontiguousarray(np.asarray(x))
  return x.reshape(-1).view(np.uint8)


def _assert_same_array(got, want, what):
  got, want = np.asarray(got), np.asarray(want)
  assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype)
  np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=what)


def _assert_same_schedule(got, want):
  assert isinstance(got.timesteps, np.ndarray) and isinstance(got.weights, np.ndarray)
  _assert_same_array(got.timesteps, want.timesteps, "timesteps")
  _assert_same_array(got.weights, want.weights, "weights")


def _assert_same_trajectory(got, want):
  assert isinstance(got.x_T, np.ndarray) and isinstance(got.model_outputs, np.ndarray)
  _assert_same_array(got.x_T, want.x_T, "x_T")
  _assert_same_array(got.model_outputs, want.model_outputs, "model_outputs")
  assert isinstance(got.teacher.timesteps, np.ndarray)
  _assert_same_array(got.teacher.timesteps, want.teacher.timesteps, "teacher.timesteps")
  assert isinstance(got.teacher.levels, jax.Array)
  _assert_same_array(got.teacher.levels, want.teacher.levels, "teacher.levels")
  assert got.teacher.kind == want.teacher.kind and got.teacher.config == want.teacher.config


def _saved(save, obj, **kw):
  buf = io.BytesIO()
  save(buf, obj, **kw)
  return buf.getvalue()


def _schedule_bytes():
  return _saved(files.save_schedule, _random_schedule(7, 4, {"method": "olss"}))


def _trajectory_bytes(**kw):
  return _saved(files.save_trajectory, _trajectory(**kw), metadata={"chunk": 1})


def _split(data):
  """(parsed header, data bytes) of a version-2 file."""
  (n,) = struct.unpack("<Q", data[:8])
  return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, data, **dumps_kw):
  text = json.dumps(header, **dumps_kw).encode("utf-8")
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text + data



def _resigned(header, data, **dumps_kw):
  """The file with correct digests for ``header`` (whatever it says) and ``data``."""
  header["__metadata__"]["header_sha256"], header["__metadata__"]["sha256"] = (
      files_helpers.spec_digests(header, data))
  return _join(header, data, **dumps_kw)


def _edited(data, edit):
  header, payload = _split(data)
  edit(header)
  return _resigned(header, payload)


def _craft(kind, tensors, metadata=None, **extra):
  """A well-formed, correctly checksummed file holding whatever ``tensors`` are."""
  buf = io.BytesIO()
  files._write_file(buf, tensors, files._file_metadata(kind, metadata, "metadata", **extra))
  return buf.getvalue()


def _teacher_text(kind="ddim", config=None):
  return json.dumps({"kind": kind, "config": config or {}})


def _v1(kind, arrays, metadata=None):
  buf = io.BytesIO()
  digest = container.write_container(buf, kind, arrays, metadata)
  return buf.getvalue(), digest


def _v1_trajectory_arrays(traj):
  return [("timesteps", np.asarray(traj.timesteps)), ("x_T", traj.x_T),
          ("model_outputs", traj.model_outputs), ("alphas", np.asarray(traj.levels))]


class Stream(io.RawIOBase):
  """A non-seekable binary stream over bytes, read in small pieces."""

  def __init__(self, data, piece=7):
    self._data, self._pos, self._piece = data, 0, piece

  def readable(self):
    return True

  def readinto(self, b):
    n = min(len(b), self._piece, len(self._data) - self._pos)
    b[:n] = self._data[self._pos:self._pos + n]
    self._pos += n
    return n


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("n", [1, 2, 5, 20])
@pytest.mark.parametrize("float_timesteps", [False, True])
def test_schedule_round_trip_is_bit_exact_via_bytes_io(n, float_timesteps):
  meta = {"method": "olss", "guidance_scale": 7.5, "sample_shape": (4, 64, 64),
          "nested": {"prompts": ["a cat", "ünïcode ☃"], "seed": np.int64(3),
                     "scale": np.float32(0.5)}, "none": None}
  sched = _random_schedule(n, n, meta, float_timesteps)
  loaded = files.load_schedule(io.BytesIO(_saved(files.save_schedule, sched)))
  assert loaded.timesteps.dtype == (np.float32 if float_timesteps else np.int32)
  _assert_same_schedule(loaded, sched)
  expected = dict(meta, sample_shape=[4, 64, 64],
                  nested={"prompts": ["a cat", "ünïcode ☃"], "seed": 3, "scale": 0.5})
  assert loaded.metadata == expected


@pytest.mark.parametrize("as_pathlib", [False, True])
def test_schedule_round_trip_via_path_and_overwrite(tmp_path, as_pathlib):
  target = tmp_path / "s.safetensors"
  target = target if as_pathlib else str(target)
  first = _random_schedule(0, 5)
  second = _random_schedule(1, 7, {"method": "olss"})
  files.save_schedule(target, first)
  files.save_schedule(target, second)  # replaces atomically
  loaded = files.load_schedule(target)
  _assert_same_schedule(loaded, second)
  assert loaded.metadata == {"method": "olss"}
  assert sorted(os.listdir(tmp_path)) == ["s.safetensors"]  # no stray temporary files


def test_schedule_from_jax_arrays_and_open_file_objects(tmp_path):
  sched = _random_schedule(2, 4)
  weights32 = np.asarray(_teacher(4).path_weights(np.arange(4)), np.float32)
  as_jax = schedule_lib.Schedule(jnp.asarray(sched.timesteps), jnp.asarray(weights32))
  path = tmp_path / "s.safetensors"
  with open(path, "wb") as f:
    files.save_schedule(f, as_jax)
  with open(path, "rb") as f:
    loaded = files.load_schedule(f)
  _assert_same_array(loaded.weights, weights32.astype(np.float64), "weights")
  _assert_same_array(loaded.timesteps, sched.timesteps, "timesteps")


def test_saving_to_a_file_object_writes_at_its_position():
  buf = io.BytesIO()
  buf.write(b"prefix--")
  files.save_schedule(buf, _random_schedule(3, 3))
  start = buf.tell()
  digest = files.save_trajectory(buf, _trajectory())
  data = buf.getvalue()
  assert data[:8] == b"prefix--"
  assert digest == hashlib.sha256(data[start:]).hexdigest()
  _assert_same_schedule(files.load_schedule(io.BytesIO(data[8:start])), _random_schedule(3, 3))
  buf.seek(start)
  _assert_same_trajectory(files.load_trajectory(buf), _trajectory())


@pytest.mark.parametrize("jit", [False, True])
def test_loaded_schedule_samples_identically(jit):
  sched = _random_schedule(3, 5)
  sched = sched.replace(weights=np.asarray(_teacher(5).path_weights(np.arange(5))))
  loaded = files.load_schedule(io.BytesIO(_saved(files.save_schedule, sched)))

  def denoise(x, t):
    return 0.1 * x + 1e-3 * t

  x_T = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
  run = jax.jit(sampler.sample, static_argnums=0) if jit else sampler.sample
  np.testing.assert_array_equal(np.asarray(run(denoise, sched, x_T)),
                                np.asarray(run(denoise, loaded, x_T)))


@pytest.mark.parametrize("ts_dtype", [np.int32, np.float32])
@pytest.mark.parametrize("dtype", FLOATS)
def test_trajectory_round_trip_every_float_dtype(tmp_path, dtype, ts_dtype):
  traj = _trajectory(dtype, ts_dtype=ts_dtype, config={"num_train_timesteps": 1000, "note": [1]})
  path = tmp_path / "t.safetensors"
  digest = files.save_trajectory(path, traj, metadata={"chunk": 2, "shape": (2, 2)})
  _assert_same_trajectory(files.load_trajectory(path), traj)
  loaded, meta, read_digest = files.read_trajectory(path)
  _assert_same_trajectory(loaded, traj)
  assert meta == {"chunk": 2, "shape": [2, 2]}
  assert digest == read_digest == hashlib.sha256(path.read_bytes()).hexdigest()
  info = files.read_metadata(path)
  dtype_name = np.dtype(dtype).name
  assert info == {"chunk": 2, "shape": [2, 2], "_kind": files.TRAJECTORY_KIND,
                  "_format_version": files.FORMAT_VERSION,
                  "_teacher": {"kind": "ddim", "config": traj.teacher.config},
                  "_arrays": {"x_T": {"dtype": dtype_name, "shape": [3, 2, 2]},
                              "model_outputs": {"dtype": dtype_name, "shape": [6, 3, 2, 2]},
                              "teacher_timesteps": {"dtype": np.dtype(ts_dtype).name,
                                                    "shape": [6]},
                              "teacher_levels": {"dtype": "float64", "shape": [7]}}}


def test_trajectory_from_device_arrays_and_the_legacy_constructor_round_trips():
  timesteps = noise.ddim_timesteps(4)
  traj = trajectory_lib.Trajectory(
      timesteps=jnp.asarray(timesteps), x_T=jnp.ones((2, 3), jnp.bfloat16),
      model_outputs=jnp.full((4, 2, 3), -0.5, jnp.bfloat16),
      alphas=np.concatenate([ALPHAS[timesteps], [1.0]]))
  loaded = files.load_trajectory(io.BytesIO(_saved(files.save_trajectory, traj)))
  _assert_same_trajectory(loaded, trajectory_lib.Trajectory(
      np.asarray(traj.x_T), np.asarray(traj.model_outputs),
      teacher_lib.Teacher(timesteps, traj.levels, "ddim")))


def test_collected_trajectory_round_trip_keeps_states():
  teacher = teacher_lib.ddim_teacher(ALPHAS, 25)
  x_T = jax.random.normal(jax.random.PRNGKey(3), (2, 5))
  traj = trajectory_lib.collect_trajectory(lambda x, t: 0.3 * x + 1e-4 * t, x_T, teacher)
  loaded = files.load_trajectory(io.BytesIO(_saved(files.save_trajectory, traj)))
  assert loaded.teacher.config == teacher.config
  np.testing.assert_array_equal(np.asarray(loaded.states), np.asarray(traj.states))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_metadata_must_be_json_without_nan(bad):
  with pytest.raises(TypeError, match="^schedule.metadata: .*JSON"):
    files.save_schedule(io.BytesIO(), _random_schedule(0, 2, {"x": [1, {"y": bad}]}))
  with pytest.raises(TypeError, match="^metadata: .*JSON"):
    files.save_trajectory(io.BytesIO(), _trajectory(), metadata={"x": np.float32(bad)})
  with pytest.raises(TypeError, match="^metadata: "):
    files.save_trajectory(io.BytesIO(), _trajectory(), metadata={"f": object()})
  with pytest.raises(TypeError, match="^metadata: expected a dict"):
    files.save_trajectory(io.BytesIO(), _trajectory(), metadata=[("a", 1)])


def test_save_streams_without_copying_and_load_reads_in_place(tmp_path):
  traj = _trajectory(np.float32, k=8, b=64, shape=(64, 256))  # model_outputs: 32 MiB
  size = traj.model_outputs.nbytes

  class Sink:
    def write(self, data):
      return memoryview(data).nbytes

  tracemalloc.start()
  try:
    files.save_trajectory(Sink(), traj)
    _, save_peak = tracemalloc.get_traced_memory()
    files.save_trajectory(tmp_path / "t.safetensors", traj)
    tracemalloc.reset_peak()
    loaded = files.load_trajectory(tmp_path / "t.safetensors")
    _, load_peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  # A copy would be >= size; the finiteness check's boolean block is a quarter of it.
  assert save_peak < 0.3 * size, f"save allocated {save_peak} bytes for {size} of data"
  assert load_peak < 1.25 * (size + traj.x_T.nbytes), f"load peaked at {load_peak} bytes"
  _assert_same_trajectory(loaded, traj)


# ------------------------------------------------------------------------------ format


def test_files_are_safetensors_with_the_documented_header_and_digests():
  data = _trajectory_bytes(dtype=np.float16)
  (n,) = struct.unpack("<Q", data[:8])
  assert n % 8 == 0 and data[8:9] == b"{"
  header, payload = _split(data)
  meta = header["__metadata__"]
  assert set(meta) == {"format", "format_version", "kind", "metadata", "teacher",
                       "header_sha256", "sha256"}
  assert (meta["format"], meta["format_version"], meta["kind"]) == (
      "olss_jax", "2", files.TRAJECTORY_KIND)
  assert json.loads(meta["metadata"]) == {"chunk": 1}
  assert json.loads(meta["teacher"]) == {"kind": "ddim", "config": {}}
  assert (meta["header_sha256"], meta["sha256"]) == files_helpers.spec_digests(header, payload)
  offsets = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
  assert offsets[0][0] == 0 and offsets[-1][1] == len(payload)
  assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))
  for name, entry in header.items():  # every tensor is aligned to its item size
    if name != "__metadata__":
      itemsize = {"F64": 8, "F32": 4, "I32": 4, "F16": 2}[entry["dtype"]]
      assert (8 + n + entry["data_offsets"][0]) % itemsize == 0, name


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_safetensors_numpy_reads_our_files(tmp_path, dtype):
  sched = _random_schedule(4, 5, {"method": "olss"}, float_timesteps=True)
  traj = _trajectory(dtype)
  files.save_schedule(tmp_path / "s.safetensors", sched)
  files.save_trajectory(tmp_path / "t.safetensors", traj, metadata={"a": 1})
  got = stnp.load_file(tmp_path / "s.safetensors")
  assert sorted(got) == ["timesteps", "weights"]
  _assert_same_array(got["timesteps"], sched.timesteps, "timesteps")
  _assert_same_array(got["weights"], sched.weights, "weights")
  got = stnp.load_file(tmp_path / "t.safetensors")
  assert sorted(got) == ["model_outputs", "teacher_levels", "teacher_timesteps", "x_T"]
  _assert_same_array(got["x_T"], traj.x_T, "x_T")
  _assert_same_array(got["model_outputs"], traj.model_outputs, "model_outputs")
  _assert_same_array(got["teacher_timesteps"], traj.teacher.timesteps, "teacher_timesteps")
  _assert_same_array(got["teacher_levels"], traj.teacher.levels, "teacher_levels")
  with safetensors.safe_open(tmp_path / "t.safetensors", framework="np") as f:
    meta = f.metadata()
  assert meta["format"] == "olss_jax" and json.loads(meta["metadata"]) == {"a": 1}


def test_safetensors_reads_our_bfloat16_tensors():
  traj = _trajectory(ml_dtypes.bfloat16)
  tensors = dict(safetensors.deserialize(_saved(files.save_trajectory, traj)))
  for name, want in (("x_T", traj.x_T), ("model_outputs", traj.model_outputs)):
    assert tensors[name]["dtype"] == "BF16" and tensors[name]["shape"] == list(want.shape)
    got = np.frombuffer(bytes(tensors[name]["data"]), ml_dtypes.bfloat16).reshape(want.shape)
    _assert_same_array(got, want, name)


def _via_safetensors(tensors, metadata):
  """A file written by safetensors itself, with our metadata and correct digests."""
  draft = stnp.save(tensors, metadata=metadata)  # safetensors' own order and offsets
  header, payload = _split(draft)
  header_digest, digest = files_helpers.spec_digests(header, payload)
  final = stnp.save(tensors, metadata=dict(metadata, header_sha256=header_digest, sha256=digest))
  assert _split(final)[1] == payload
  return final


def test_files_written_by_safetensors_with_our_metadata_load():
  sched = _random_schedule(5, 4, {"method": "olss"})
  meta = {"format": "olss_jax", "format_version": "2", "kind": files.SCHEDULE_KIND,
          "metadata": json.dumps({"method": "olss"})}
  data = _via_safetensors({"timesteps": sched.timesteps, "weights": sched.weights}, meta)
  loaded = files.load_schedule(io.BytesIO(data))
  _assert_same_schedule(loaded, sched)
  assert loaded.metadata == {"method": "olss"}

  traj = _trajectory(np.float16, ts_dtype=np.float32, config={"steps_offset": 1})
  meta = {"format": "olss_jax", "format_version": "2", "kind": files.TRAJECTORY_KIND,
          "metadata": "{}", "teacher": _teacher_text("ddim", {"steps_offset": 1})}
  data = _via_safetensors({"x_T": traj.x_T, "model_outputs": traj.model_outputs,
                           "teacher_timesteps": traj.teacher.timesteps,
                           "teacher_levels": np.asarray(traj.teacher.levels)}, meta)
  loaded, loaded_meta, digest = files.read_trajectory(io.BytesIO(data))
  _assert_same_trajectory(loaded, traj)
  assert loaded_meta == {} and digest == hashlib.sha256(data).hexdigest()


def test_reformatted_headers_still_verify():
  data = _schedule_bytes()
  header, payload = _split(data)
  reordered = dict(reversed(list(header.items())))
  again = _join(reordered, payload, indent=2, sort_keys=True, ensure_ascii=False)
  assert again != data
  _assert_same_schedule(files.load_schedule(io.BytesIO(again)), _random_schedule(7, 4))


# ---------------------------------------------------------------------- version-1 files


def test_version_1_schedule_files_load():
  sched = _random_schedule(6, 5, {"method": "olss", "n": 5})
  data, _ = _v1(files.SCHEDULE_KIND, [("timesteps", sched.timesteps), ("weights", sched.weights)],
                sched.metadata)
  assert data[:8] == container.MAGIC
  loaded = files.load_schedule(io.BytesIO(data))
  _assert_same_schedule(loaded, sched)
  assert loaded.metadata == {"method": "olss", "n": 5}
  assert files.read_metadata(io.BytesIO(data)) == {
      "method": "olss", "n": 5, "_kind": files.SCHEDULE_KIND, "_format_version": 1,
      "_arrays": {"timesteps": {"dtype": "int32", "shape": [5]},
                  "weights": {"dtype": "float64", "shape": [5, 6]}}}
  _assert_same_schedule(files.load_schedule(Stream(data)), sched)


@pytest.mark.parametrize("dtype", FLOATS)
def test_version_1_trajectory_files_load_as_a_ddim_teacher(tmp_path, dtype):
  traj = _trajectory(dtype)
  data, trailer = _v1(files.TRAJECTORY_KIND, _v1_trajectory_arrays(traj), {"chunk_index": 3})
  path = tmp_path / "chunk-00003.olss"
  path.write_bytes(data)
  loaded, meta, digest = files.read_trajectory(path)
  _assert_same_trajectory(loaded, traj)
  assert loaded.teacher.kind == "ddim" and loaded.teacher.config == {}
  assert meta == {"chunk_index": 3}
  assert digest == trailer == data[-32:].hex()  # what olss_jax 0.1 stores recorded
  _assert_same_trajectory(files.load_trajectory(Stream(data)), traj)
  info = files.read_metadata(path)
  assert info["_format_version"] == 1 and info["_kind"] == files.TRAJECTORY_KIND
  assert info["_teacher"] == {"kind": "ddim", "config": {}}
  assert info["_arrays"]["teacher_levels"] == {"dtype": "float64", "shape": [7]}
  assert info["_arrays"]["model_outputs"] == {"dtype": np.dtype(dtype).name,
                                              "shape": [6, 3, 2, 2]}


def test_damaged_or_invalid_version_1_files_are_value_errors():
  traj = _trajectory()
  data, _ = _v1(files.TRAJECTORY_KIND, _v1_trajectory_arrays(traj))
  sched_data, _ = _v1(files.SCHEDULE_KIND, [("timesteps", np.array([5], np.int32)),
                                          ("weights", np.ones((1, 2)))])
  newer = data[:8] + struct.pack("<I", 2) + data[12:]
  cases = [
      (data[:-1], files.load_trajectory, "truncated"),
      (data[:40], files.read_metadata, "truncated"),
      (data[:-40] + bytes([data[-40] ^ 1]) + data[-39:], files.load_trajectory, "checksum"),
      (data[:30] + bytes([data[30] ^ 4]) + data[31:], files.read_metadata, "checksum"),
      (data + b"\0", files.load_trajectory, "trailing"),
      (data + b"\0", files.read_metadata, "trailing"),
      (newer, files.load_trajectory, "written by a newer olss_jax; upgrade"),
      (data, files.load_schedule, "expected 'olss_jax.schedule'"),
      (sched_data, files.load_trajectory, "expected 'olss_jax.trajectory'"),
      (_v1(files.TRAJECTORY_KIND, _v1_trajectory_arrays(traj)[:3])[0], files.load_trajectory,
       "expected arrays"),
      (_v1(files.TRAJECTORY_KIND, _v1_trajectory_arrays(traj)[:3]
           + [("alphas", np.asarray(traj.levels)[::-1].copy())])[0], files.load_trajectory,
       "non-decreasing"),
      (_v1(files.SCHEDULE_KIND, [("timesteps", np.array([5], np.int64)),
                               ("weights", np.ones((1, 2)))])[0], files.load_schedule, "int32"),
  ]
  for damaged, load, match in cases:
    with pytest.raises(ValueError, match=r"^<BytesIO>: .*" + match):
      load(io.BytesIO(damaged))


# ------------------------------------------------------------------------ read_metadata


class HeaderOnly(io.RawIOBase):
  """A seekable file that fails the test if more than ``limit`` bytes are read."""

  def __init__(self, data, limit):
    self._buf, self._limit = io.BytesIO(data), limit

  def readable(self):
    return True

  def seekable(self):
    return True

  def seek(self, pos, whence=0):
    return self._buf.seek(pos, whence)

  def tell(self):
    return self._buf.tell()

  def readinto(self, b):
    if self._buf.tell() + len(b) > self._limit:
      raise AssertionError(f"read past the header: {self._buf.tell()} + {len(b)} > {self._limit}")
    return self._buf.readinto(b)


def test_read_metadata_does_not_read_the_data():
  traj = _trajectory(np.float32, k=4, b=16, shape=(32, 32))
  data = _saved(files.save_trajectory, traj, metadata={"chunk_index": 7})
  (n,) = struct.unpack("<Q", data[:8])
  info = files.read_metadata(HeaderOnly(data, 8 + n))
  assert info["chunk_index"] == 7 and info["_arrays"]["x_T"]["shape"] == [16, 32, 32]
  with pytest.raises(AssertionError, match="read past the header"):
    files.load_trajectory(HeaderOnly(data, 8 + n))  # the guard itself works
  v1, _ = _v1(files.TRAJECTORY_KIND, _v1_trajectory_arrays(traj), {"chunk_index": 7})
  (h,) = struct.unpack("<Q", v1[12:20])
  assert files.read_metadata(HeaderOnly(v1, 20 + h + 32))["chunk_index"] == 7


def test_read_metadata_verifies_the_header_but_not_the_data():
  data = bytearray(_trajectory_bytes())
  (n,) = struct.unpack("<Q", data[:8])
  header_flip, data_flip = bytearray(data), bytearray(data)
  header_flip[8 + n // 2] ^= 0x08
  data_flip[-5] ^= 0x08
  with pytest.raises(ValueError, match="^<BytesIO>: "):
    files.read_metadata(io.BytesIO(bytes(header_flip)))
  assert files.read_metadata(io.BytesIO(bytes(data_flip))) == files.read_metadata(
      io.BytesIO(bytes(data)))
  with pytest.raises(ValueError, match="data checksum mismatch"):
    files.load_trajectory(io.BytesIO(bytes(data_flip)))


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 9, 60, 0.5, -9, -8, -1])
@pytest.mark.parametrize("which", ["schedule", "trajectory"])
def test_truncated_files_are_value_errors_naming_the_file(tmp_path, cut, which):
  data, load = ((_schedule_bytes(), files.load_schedule) if which == "schedule"
                else (_trajectory_bytes(), files.load_trajectory))
  cut = int(cut * len(data)) if isinstance(cut, float) else cut
  path = tmp_path / "cut.safetensors"
  path.write_bytes(data[:cut])
  for loader in (load, files.read_metadata):
    with pytest.raises(ValueError, match=r"^'.*cut\.safetensors': "):
      loader(path)
    with pytest.raises(ValueError, match=r"^'.*cut\.safetensors': "):
      with open(path, "rb") as f:
        loader(f)
  with pytest.raises(ValueError, match="^<BytesIO>: "):
    load(io.BytesIO(data[:cut]))
  with pytest.raises(ValueError, match="^<Stream>: "):
    load(Stream(data[:cut]))


@pytest.mark.parametrize("which", ["schedule", "trajectory"])
def test_a_bit_flip_in_any_byte_is_a_value_error(which):
  data, load, want = ((_schedule_bytes(), files.load_schedule, None) if which == "schedule"
                      else (_trajectory_bytes(dtype=np.float16), files.load_trajectory, None))
  del want
  for pos in range(len(data)):
    flipped = data[:pos] + bytes([data[pos] ^ (1 << (pos % 8))]) + data[pos + 1:]
    with pytest.raises(ValueError, match="^<BytesIO>: "):
      load(io.BytesIO(flipped))


@pytest.mark.parametrize("pos", [0, 3, 8, 20, 0.5, -1])
def test_inserted_and_trailing_bytes_are_value_errors(pos):
  data = _trajectory_bytes()
  pos = int(pos * len(data)) if isinstance(pos, float) else pos
  for extra in (b" ", b"\0", b"{}\n"):
    for mutated in (data[:pos] + extra + data[pos:], data + extra):
      with pytest.raises(ValueError, match="^<BytesIO>: "):
        files.load_trajectory(io.BytesIO(mutated))
      with pytest.raises(ValueError):
        files.load_trajectory(Stream(mutated))
  with pytest.raises(ValueError, match="trailing bytes"):
    files.load_trajectory(io.BytesIO(data + b"\0"))
  with pytest.raises(ValueError, match="trailing bytes"):
    files.load_trajectory(Stream(data + b"\0"))


def test_wrong_kind_is_a_value_error():
  sched, traj = _schedule_bytes(), _trajectory_bytes()
  with pytest.raises(ValueError, match="holds 'olss_jax.trajectory', expected 'olss_jax.schedule'"):
    files.load_schedule(io.BytesIO(traj))
  with pytest.raises(ValueError, match="holds 'olss_jax.schedule', expected 'olss_jax.trajectory'"):
    files.load_trajectory(io.BytesIO(sched))


@pytest.mark.parametrize("version, match", [
    ("3", "unsupported format version 3: written by a newer olss_jax; upgrade"),
    ("10", "unsupported format version 10: written by a newer olss_jax; upgrade"),
    ("1", "unsupported format version 1 in a safetensors file"),
    ("0", "unsupported format version 0"),
    ("2.0", "format_version '2.0'"),
    ("", "format_version ''"),
])
def test_unsupported_format_versions_are_value_errors(version, match):
  data = _edited(_schedule_bytes(),
                 lambda h: h["__metadata__"].update(format_version=version))
  for load in (files.load_schedule, files.read_metadata):
    with pytest.raises(ValueError, match=match):
      load(io.BytesIO(data))


def _zip_bytes():
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w") as z:
    z.writestr("weights.npy", b"\x93NUMPY")
  return buf.getvalue()


@pytest.mark.parametrize("data", [
    pickle.dumps({"timesteps": [1], "weights": [[1.0, 0.0]]}),
    b"",
    b"\x89OLS",
    b"hello, world",
    stnp.save({"timesteps": np.array([5], np.int32), "weights": np.ones((1, 2))}),
    stnp.save({"weights": np.ones((1, 2))}, metadata={"format": "pt"}),
], ids=["pickle", "empty", "short", "text", "plain_safetensors", "other_format"])
def test_files_that_are_not_olss_jax_files_are_value_errors(data):
  for load in (files.load_schedule, files.load_trajectory, files.read_metadata):
    with pytest.raises(ValueError, match="^<BytesIO>: .*not an olss_jax file"):
      load(io.BytesIO(data))


def test_zip_files_are_value_errors(tmp_path):
  path = tmp_path / "schedule.zip"
  path.write_bytes(_zip_bytes())
  with pytest.raises(ValueError, match=r"schedule\.zip'.*not an olss_jax file"):
    files.load_schedule(path)


def test_nothing_is_unpickled_on_load(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("pickle used")

  monkeypatch.setattr(pickle, "loads", refuse)
  monkeypatch.setattr(pickle, "load", refuse)
  monkeypatch.setattr(pickle, "Unpickler", refuse)
  _assert_same_trajectory(files.load_trajectory(io.BytesIO(_trajectory_bytes())), _trajectory())
  _assert_same_schedule(files.load_schedule(io.BytesIO(_schedule_bytes())), _random_schedule(7, 4))


def _tensor(name, **changes):
  def edit(header):
    header[name].update(changes)
  return edit


def _meta_edit(**changes):
  def edit(header):
    header["__metadata__"].update(changes)
  return edit


def _pop(*path):
  def edit(header):
    target = header
    for key in path[:-1]:
      target = target[key]
    del target[path[-1]]
  return edit


@pytest.mark.parametrize("edit, match", [
    (_tensor("weights", dtype="U8"), "unsupported dtype 'U8'"),
    (_tensor("weights", dtype=8), "unsupported dtype 8"),
    (_tensor("weights", shape=[4, -5]), "bad shape"),
    (_tensor("weights", shape=[4, 5.0]), "bad shape"),
    (_tensor("weights", shape=[4, True, 5]), "bad shape"),
    (_tensor("weights", shape="4x5"), "bad shape"),
    (_tensor("weights", shape=[1] * 40), "bad shape"),
    (_tensor("weights", shape=[4, 6]), "span 160 bytes, but shape"),
    (_tensor("weights", data_offsets=[0, 168]), "span 168 bytes"),
    (_tensor("weights", data_offsets=[8, 168]), "tile the data"),
    (_tensor("timesteps", data_offsets=[0, 16]), "overlaps"),
    (_tensor("timesteps", data_offsets=[168, 184]), "leaves a gap"),
    (_tensor("timesteps", data_offsets=[16, 0]), "bad data_offsets"),
    (_tensor("timesteps", data_offsets=[160]), "bad data_offsets"),
    (_tensor("timesteps", dtype="I64", data_offsets=[160, 192]), "expected dtype I32 or F32"),
    (_tensor("weights", dtype="F32", data_offsets=[0, 80]), "expected dtype F64"),
    (_tensor("timesteps", extra=1), "expected {'dtype', 'shape', 'data_offsets'}"),
    (_pop("timesteps", "shape"), "expected {'dtype', 'shape', 'data_offsets'}"),
    (_pop("timesteps"), "expected tensors"),
    (lambda h: h.update(alphas=h.pop("timesteps")), "expected tensors"),
    (lambda h: h.update(extra={"dtype": "F64", "shape": [0], "data_offsets": [176, 176]}),
     "expected tensors"),
    (lambda h: h.update(weights=[1, 2]), "tensor 'weights'"),
    (_meta_edit(kind="olss_jax.thing"), "unknown kind"),
    (_meta_edit(format_version=2), "values must be strings"),
    (_meta_edit(metadata="[1, 2]"), "expected a JSON object, got list"),
    (_meta_edit(metadata="{'a': 1}"), r"__metadata__\['metadata'\] is not JSON"),
    (_meta_edit(metadata='{"a": NaN}'), "is not JSON"),
    (_meta_edit(metadata='{"a": 1, "a": 2}'), "duplicate key"),
    (_pop("__metadata__", "metadata"), "has no 'metadata' entry"),
    (_pop("__metadata__", "format"), "not an olss_jax file"),
])
def test_checksummed_but_malformed_headers_are_value_errors(edit, match):
  data = _edited(_schedule_bytes(), edit)  # correct digests: only the content is wrong
  with pytest.raises(ValueError, match=r"^<BytesIO>: .*" + match):
    files.load_schedule(io.BytesIO(data))
  with pytest.raises(ValueError, match="^<BytesIO>: "):
    files.read_metadata(io.BytesIO(data))


@pytest.mark.parametrize("text, match", [
    (b'{"__metadata__": {}, "__metadata__": {}}', "duplicate key"),
    (b'{"__metadata__": {"format": "olss_jax"}, "a": NaN}', "not valid JSON"),
    (b'[1, 2, 3]', "not an olss_jax file"),
    (b'{"__metadata__": ["olss_jax"]}', "not an olss_jax file"),
    (b'{"__metadata__": {"format": "olss_jax"', "not UTF-8 JSON"),
    (b'{"__metadata__": {"format": "olss_jax"}}\xff', "not UTF-8 JSON"),
    (b'{"__metadata__": {"format": "olss_jax"}} x', "not UTF-8 JSON"),
    (b'{"__metadata__":{"format":"olss_jax","format_version":"2"}}', "not a hex SHA-256"),
])
def test_malformed_header_json_is_a_value_error(text, match):
  data = struct.pack("<Q", len(text)) + text
  with pytest.raises(ValueError, match=r"^<BytesIO>: .*" + match):
    files.load_schedule(io.BytesIO(data))


def test_implausibly_large_tensors_are_refused_before_allocating(monkeypatch):
  allocated = []
  real_empty = np.empty

  def tracking_empty(shape, dtype=float, *args, **kwargs):
    allocated.append(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return real_empty(shape, dtype, *args, **kwargs)

  monkeypatch.setattr(np, "empty", tracking_empty)
  big = 2**40  # elements: 8 TiB of float64
  declared = _edited(_schedule_bytes(),
                     _tensor("weights", shape=[big], data_offsets=[0, 8 * big]))
  with pytest.raises(ValueError, match="implausibly many"):
    files.load_schedule(Stream(declared))
  fits = _edited(_schedule_bytes(), lambda h: (
      h["weights"].update(shape=[2**27], data_offsets=[0, 2**30]),
      h["timesteps"].update(data_offsets=[2**30, 2**30 + 16])))
  with pytest.raises(ValueError, match="truncated file"):  # seekable: the size is checked
    files.load_schedule(io.BytesIO(fits))
  with pytest.raises(ValueError, match="^<BytesIO>: truncated file"):
    files.read_metadata(io.BytesIO(fits))
  huge_header = struct.pack("<Q", 2**40) + b"{}"
  with pytest.raises(ValueError, match="not an olss_jax file"):
    files.load_schedule(Stream(huge_header))
  assert all(n <= 2**20 for n in allocated), allocated


def test_checksum_mismatches_are_value_errors():
  data = _schedule_bytes()
  header, payload = _split(data)
  changed = bytearray(payload)
  changed[3] ^= 0x40
  with pytest.raises(ValueError, match="data checksum mismatch"):
    files.load_schedule(io.BytesIO(_join(header, bytes(changed))))  # header kept, data changed
  header["__metadata__"]["metadata"] = json.dumps({"method": "ddim"})
  with pytest.raises(ValueError, match="header checksum mismatch"):
    files.load_schedule(io.BytesIO(_join(header, payload)))
  with pytest.raises(ValueError, match="header checksum mismatch"):
    files.read_metadata(io.BytesIO(_join(header, payload)))
  header["__metadata__"]["sha256"] = "0" * 63
  with pytest.raises(ValueError, match="not a hex SHA-256"):
    files.load_schedule(io.BytesIO(_join(header, payload)))


@pytest.mark.parametrize("tensors, match", [
    ([("timesteps", np.array([999, 500], np.int32)), ("weights", np.zeros((2, 4)))],
     r"expected shape \(2, 3\)"),
    ([("timesteps", np.array([999, 500], np.int32)), ("weights", np.ones((2, 3)))],
     "above the diagonal"),
    ([("timesteps", np.array([999, 500], np.int32)),
      ("weights", np.array([[1.0, np.nan, 0.0], [1.0, 1.0, 1.0]]))], "non-finite"),
    ([("timesteps", np.array([999.0, np.inf], np.float32)),
      ("weights", np.ones((2, 3)) * [[1, 1, 0], [1, 1, 1]])], "timesteps: contains non-finite"),
    ([("timesteps", np.array([999], np.int64)), ("weights", np.ones((1, 2)))],
     "expected dtype I32 or F32, got I64"),
    ([("timesteps", np.array([999], np.float16)), ("weights", np.ones((1, 2)))],
     "expected dtype I32 or F32, got F16"),
    ([("timesteps", np.array([999], np.int32)), ("weights", np.ones((1, 2), np.float32))],
     "expected dtype F64, got F32"),
    ([("timesteps", np.array([-1], np.int32)), ("weights", np.ones((1, 2)))], "non-negative"),
    ([("timesteps", np.zeros((0,), np.int32)), ("weights", np.ones((0, 1)))], r"n >= 1"),
    ([("timesteps", np.array(5, np.int32)), ("weights", np.ones((1, 2)))], r"n >= 1"),
    ([("weights", np.ones((1, 2)))], "expected tensors"),
    ([("timesteps", np.array([5], np.int32)), ("weights", np.ones((1, 2))),
      ("alphas", np.ones(2))], "expected tensors"),
])
def test_well_formed_file_with_an_invalid_schedule_is_a_value_error(tensors, match):
  data = _craft(files.SCHEDULE_KIND, tensors)
  with pytest.raises(ValueError, match=r"^<BytesIO>: .*" + match):
    files.load_schedule(io.BytesIO(data))


def _trajectory_tensors(**changes):
  good = _trajectory(np.float32)
  tensors = {"x_T": good.x_T, "model_outputs": good.model_outputs,
             "teacher_timesteps": np.asarray(good.teacher.timesteps),
             "teacher_levels": np.asarray(good.teacher.levels)}
  tensors.update(changes)
  return [(k, v) for k, v in tensors.items() if v is not None]


def _nan_at(step, sample):
  outputs = _trajectory(np.float32).model_outputs.copy()
  outputs[step, sample, 1, 0] = np.nan
  outputs[step + 1:, :] = np.inf  # later steps too: the message names the first
  return outputs


LEVELS = np.asarray(_trajectory().teacher.levels)
TIMESTEPS = np.asarray(_trajectory().teacher.timesteps)


@pytest.mark.parametrize("changes, teacher, match", [
    ({}, _teacher_text("no_such_solver"), "unsupported teacher kind 'no_such_solver'"),
    ({}, json.dumps({"kind": "ddim", "config": []}), "malformed header: teacher"),
    ({}, json.dumps({"kind": "ddim", "config": {}, "eta": 0}), "malformed header: teacher"),
    ({}, "ddim", r"__metadata__\['teacher'\] is not JSON"),
    ({}, None, "has no 'teacher' entry"),
    ({"model_outputs": _trajectory(np.float32).model_outputs[:-1]}, _teacher_text(),
     r"model_outputs: expected shape \(6, 3, 2, 2\)"),
    ({"model_outputs": _nan_at(4, 1)}, _teacher_text(), "first at step 4, sample 1"),
    ({"x_T": np.full((3, 2, 2), np.inf, np.float32)}, _teacher_text(), "x_T: non-finite"),
    ({"x_T": np.zeros((0, 2, 2), np.float32),
      "model_outputs": np.zeros((6, 0, 2, 2), np.float32)}, _teacher_text(), "B >= 1"),
    ({"teacher_levels": LEVELS[::-1].copy()}, _teacher_text(), "non-decreasing"),
    ({"teacher_levels": LEVELS + 0.5}, _teacher_text(), r"in \(0, 1\]"),
    ({"teacher_levels": np.where(LEVELS == LEVELS[2], np.nan, LEVELS)}, _teacher_text(),
     r"in \(0, 1\]"),
    ({"teacher_levels": LEVELS[1:]}, _teacher_text(), r"levels: expected shape \(7,\)"),
    ({"teacher_levels": LEVELS.astype(np.float32)}, _teacher_text(), "expected dtype F64"),
    ({"teacher_timesteps": TIMESTEPS[::-1].copy()}, _teacher_text(), "strictly decreasing"),
    ({"teacher_timesteps": TIMESTEPS - 500}, _teacher_text(), "non-negative"),
    ({"teacher_timesteps": TIMESTEPS.astype(np.int64)}, _teacher_text(),
     "expected dtype I32 or F32, got I64"),
    ({"teacher_timesteps": np.where(TIMESTEPS == TIMESTEPS[1], np.nan, TIMESTEPS).astype(
        np.float32)}, _teacher_text(), "timesteps: contains non-finite"),
    ({"x_T": _trajectory(np.float32).x_T.astype(np.float64)}, _teacher_text(),
     "one float dtype"),
    ({"model_outputs": _trajectory(np.float32).model_outputs.astype(np.int32),
      "x_T": _trajectory(np.float32).x_T.astype(np.int32)}, _teacher_text(),
     "expected dtype F16 or BF16 or F32 or F64, got I32"),
    ({"teacher_levels": None}, _teacher_text(), "expected tensors"),
])
def test_well_formed_file_with_an_invalid_trajectory_is_a_value_error(changes, teacher, match):
  extra = {} if teacher is None else {"teacher": teacher}
  data = _craft(files.TRAJECTORY_KIND, _trajectory_tensors(**changes), **extra)
  with pytest.raises(ValueError, match=r"^<BytesIO>: .*" + match):
    files.load_trajectory(io.BytesIO(data))


def test_the_crafting_helpers_make_loadable_files():
  """The invalid-content tests above change one thing in files that otherwise load."""
  data = _craft(files.TRAJECTORY_KIND, _trajectory_tensors(), teacher=_teacher_text())
  _assert_same_trajectory(files.load_trajectory(io.BytesIO(data)), _trajectory(np.float32))
  data = _craft(files.SCHEDULE_KIND, [("timesteps", np.array([999, 500], np.int32)),
                                    ("weights", np.ones((2, 3)) * [[1, 1, 0], [1, 1, 1]])])
  files.load_schedule(io.BytesIO(data))
  _assert_same_schedule(files.load_schedule(io.BytesIO(_edited(_schedule_bytes(), lambda h: h))),
                        _random_schedule(7, 4))


# ------------------------------------------------------------------------------ saving


def test_saving_invalid_objects_fails_before_writing(tmp_path):
  target = tmp_path / "t.safetensors"
  good = _trajectory()
  outputs = good.model_outputs.copy()
  outputs[3, 2, 1, 0] = np.inf
  cases = [
      (lambda f: files.save_trajectory(f, good.replace(model_outputs=outputs)), ValueError,
       "step 3, sample 2"),
      (lambda f: files.save_trajectory(f, good, metadata={"f": object()}), TypeError,
       "^metadata: "),
      (lambda f: files.save_trajectory(f, good.replace(x_T=good.x_T.astype(np.float64))),
       TypeError, "traj.model_outputs: expected x_T's dtype float64"),
      (lambda f: files.save_trajectory(
          f, good.replace(teacher=_teacher(6, config={"o": object()}))),
       TypeError, "traj.teacher.config"),
      (lambda f: files.save_trajectory(f, good.replace(teacher=teacher_lib.Teacher(
          TIMESTEPS.astype(np.int64) + 2**33, good.levels))), ValueError,
       "traj.teacher.timesteps: expected values that int32 holds exactly"),
      (lambda f: files.save_trajectory(f, good.replace(teacher=teacher_lib.Teacher(
          TIMESTEPS + 0.1, good.levels))), ValueError, "float32 holds exactly"),
      (lambda f: files.save_trajectory(f, {"x_T": 1}), TypeError, "traj"),
      (lambda f: files.save_schedule(f, {"weights": 1}), TypeError, "Schedule"),
      (lambda f: files.save_schedule(f, schedule_lib.Schedule(np.array([3], np.int32),
                                                            np.array([[1.0, np.nan]]))),
       ValueError, "row 0, column 1"),
      (lambda f: files.save_schedule(f, schedule_lib.Schedule(np.array([3, 2], np.int32),
                                                            np.ones((2, 3)))),
       ValueError, "above the diagonal"),
  ]
  for save, error, match in cases:
    with pytest.raises(error, match=match):
      save(target)
    buf = io.BytesIO(b"keep")
    buf.seek(4)
    with pytest.raises(error, match=match):
      save(buf)
    assert buf.getvalue() == b"keep"
  assert os.listdir(tmp_path) == []
  upper = schedule_lib.Schedule(np.array([3], np.int32), np.array([[1.0, 2.0]]))
  files.save_schedule(target, upper)  # (1, 2) has no entries above the diagonal: valid
  assert os.listdir(tmp_path) == ["t.safetensors"]
  _assert_same_schedule(files.load_schedule(target), upper)


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / "s.safetensors"
  files.save_schedule(target, _random_schedule(0, 3))
  before = target.read_bytes()
  real_write_file = files._write_file

  def exploding(f, *args, **kwargs):
    f.write(b"\x10\0\0\0\0\0\0\0{partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(files, "_write_file", exploding)
  with pytest.raises(KeyboardInterrupt):
    files.save_schedule(target, _random_schedule(1, 3))
  assert target.read_bytes() == before
  assert os.listdir(tmp_path) == ["s.safetensors"]

  class Failing:
    def __init__(self, f):
      self.f, self.calls = f, 0

    def write(self, data):
      self.calls += 1
      if self.calls == 2:
        raise OSError("disk full")
      return self.f.write(data)

  def failing_midway(f, *args, **kwargs):
    return real_write_file(Failing(f), *args, **kwargs)

  monkeypatch.setattr(files, "_write_file", failing_midway)
  with pytest.raises(OSError, match="disk full"):
    files.save_trajectory(target, _trajectory())
  assert target.read_bytes() == before
  assert os.listdir(tmp_path) == ["s.safetensors"]


def test_bad_arguments_are_type_errors_and_missing_files_os_errors(tmp_path):
  for load in (files.load_schedule, files.load_trajectory, files.read_trajectory,
               files.read_metadata):
    with pytest.raises(FileNotFoundError):
      load(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError):
      load(tmp_path)
    with pytest.raises(TypeError, match="^path_or_file: "):
      load(42)
    with open(tmp_path / "text", "w", encoding="utf-8") as f:
      f.write("x")
    with open(tmp_path / "text", encoding="utf-8") as f:
      with pytest.raises(TypeError, match="^path_or_file: .*binary"):
        load(f)
  with pytest.raises(FileNotFoundError):
    files.save_schedule(tmp_path / "no" / "such" / "dir.safetensors", _random_schedule(0, 2))
  with open(tmp_path / "text", "w", encoding="utf-8") as f:
    with pytest.raises(TypeError, match="^path_or_file: .*binary"):
      files.save_schedule(f, _random_schedule(0, 2))
    with pytest.raises(TypeError, match="^path_or_file: .*binary"):
      files.save_trajectory(f, _trajectory())
  with pytest.raises(TypeError, match="^path_or_file: "):
    files.save_schedule(object(), _random_schedule(0, 2))


def test_saving_into_a_missing_folder_names_the_users_path(tmp_path):
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  schedule = oj.make_schedule([10], np.array([[1.0, 0.5]]))
  target = tmp_path / "no_such_dir" / "x.safetensors"
  with pytest.raises(FileNotFoundError) as info:
    oj.save_schedule(target, schedule)
  assert info.value.filename == str(target) and ".tmp-" not in str(info.value)
  assert "no_such_dir" in info.value.strerror
  assert not (tmp_path / "no_such_dir").exists()
