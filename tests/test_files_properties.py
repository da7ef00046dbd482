"""Property tests of the loaders: any bytes give a loaded object equal to what was saved, or
a `ValueError` naming the file; never another exception, never a wrong object.

Each property runs 500 generated cases (derandomized). Where a property has a "loads" branch,
its strategy is built so that a good fraction of cases take it (`hypothesis.event` reports
the split with ``--hypothesis-show-statistics``), and a fixed-sample test checks that share.
"""
import hashlib
import io
import json
import math
import random
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import files_helpers
from olss_jax._src import container
from olss_jax._src import files
from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib

CASES = settings(max_examples=500, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALPHAS = np.asarray(noise.scaled_linear_alphas_cumprod(), np.float64)
FLOATS = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
SOURCE = "<BytesIO>: "


# ----------------------------------------------------------------------------- helpers


def _bits(x):
  return np.ascontiguousarray(np.asarray(x)).reshape(-1).view(np.uint8)


def _same_array(got, want):
  got, want = np.asarray(got), np.asarray(want)
  return (got.dtype == want.dtype and got.shape == want.shape
          and np.array_equal(_bits(got), _bits(want)))


def _same_schedule(got, want):
  return (isinstance(got, schedule_lib.Schedule) and _same_array(got.timesteps, want.timesteps)
          and _same_array(got.weights, want.weights) and got.metadata == want.metadata)


def _same_trajectory(got, want):
  return (isinstance(got, trajectory_lib.Trajectory) and _same_array(got.x_T, want.x_T)
          and _same_array(got.model_outputs, want.model_outputs)
          and _same_array(got.teacher.timesteps, want.teacher.timesteps)
          and _same_array(got.teacher.levels, want.teacher.levels)
          and got.teacher.kind == want.teacher.kind
          and got.teacher.config == want.teacher.config)


def _outcome(load, data):
  """Runs a loader on bytes; returns the result or the ValueError. Anything else fails."""
  try:
    return load(io.BytesIO(data))
  except ValueError as e:
    assert str(e).startswith(SOURCE), f"the message does not name the file: {e}"
    return e


def _schedule(n, seed, float_timesteps=False, metadata=None):
  rng = np.random.default_rng(seed)
  weights = np.where(schedule_lib.lower_triangular_mask(n), rng.standard_normal((n, n + 1)), 0.0)
  timesteps = np.sort(rng.choice(1000, n, replace=False))[::-1]
  if float_timesteps:
    timesteps = timesteps + 0.5
  return schedule_lib.make_schedule(timesteps, weights,
                                    {"method": "olss", "n": n} if metadata is None else metadata)


def _teacher(k, ts_dtype=np.int32, config=None):
  return files_helpers.ddim_teacher(k, ts_dtype, config, offset=0.5)


def _trajectory(k, b, seed, dtype=np.float32, ts_dtype=np.int32):
  rng = np.random.default_rng(seed)
  return trajectory_lib.Trajectory(rng.standard_normal((b, 3)).astype(dtype),
                                   rng.standard_normal((k, b, 3)).astype(dtype),
                                   _teacher(k, ts_dtype))


def _bytes(save, obj, **kw):
  buf = io.BytesIO()
  save(buf, obj, **kw)
  return buf.getvalue()


def _v1_bytes(kind, arrays, metadata=None):
  buf = io.BytesIO()
  container.write_container(buf, kind, arrays, metadata)
  return buf.getvalue()


def _header_end(data):
  """Where the header ends: 8 + N (version 2) or after the header checksum (version 1)."""
  if data[:8] == container.MAGIC:
    return 20 + struct.unpack("<Q", data[12:20])[0] + 32
  return 8 + struct.unpack("<Q", data[:8])[0]



def _join(header, data, **dumps_kw):
  text = json.dumps(header, **dumps_kw).encode("utf-8")
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text + data


def _craft(tensors, entries):
  """A correctly checksummed file with these tensors and __metadata__ entries."""
  buf = io.BytesIO()
  files._write_file(buf, tensors, entries)
  return buf.getvalue()


def _entries(kind, metadata="{}", **extra):
  return {"format": "olss_jax", "format_version": "2", "kind": kind, "metadata": metadata,
          **extra}


_SCHED_A, _SCHED_B, _SCHED_C = _schedule(1, 1), _schedule(3, 3, True), _schedule(4, 4)
_TRAJ_A = _trajectory(1, 1, 1)
_TRAJ_B = _trajectory(3, 2, 3, ml_dtypes.bfloat16, np.float32)
_TRAJ_C = _trajectory(2, 2, 5, np.float16)
_V1_SCHED = _schedule(2, 2)
_V1_TRAJ = _trajectory(2, 1, 7, np.float64)
VALID_FILES = [  # (label, loader, bytes, the object it holds)
    ("schedule", files.load_schedule, _bytes(files.save_schedule, _SCHED_A), _SCHED_A),
    ("schedule", files.load_schedule, _bytes(files.save_schedule, _SCHED_B), _SCHED_B),
    ("schedule", files.load_schedule, _bytes(files.save_schedule, _SCHED_C), _SCHED_C),
    ("trajectory", files.load_trajectory, _bytes(files.save_trajectory, _TRAJ_A), _TRAJ_A),
    ("trajectory", files.load_trajectory, _bytes(files.save_trajectory, _TRAJ_B), _TRAJ_B),
    ("trajectory", files.load_trajectory, _bytes(files.save_trajectory, _TRAJ_C), _TRAJ_C),
    ("v1 schedule", files.load_schedule,
     _v1_bytes(files.SCHEDULE_KIND, [("timesteps", _V1_SCHED.timesteps),
                                   ("weights", _V1_SCHED.weights)], _V1_SCHED.metadata),
     _V1_SCHED),
    ("v1 trajectory", files.load_trajectory,
     _v1_bytes(files.TRAJECTORY_KIND, [("timesteps", _V1_TRAJ.teacher.timesteps),
                                     ("x_T", _V1_TRAJ.x_T),
                                     ("model_outputs", _V1_TRAJ.model_outputs),
                                     ("alphas", np.asarray(_V1_TRAJ.teacher.levels))]),
     _V1_TRAJ),
]
LOADERS = {"schedule": files.load_schedule, "trajectory": files.load_trajectory,
           "metadata": files.read_metadata}


def _same(got, want):
  if isinstance(want, schedule_lib.Schedule):
    return _same_schedule(got, want)
  return _same_trajectory(got, want)


def test_the_valid_files_load_to_the_saved_objects():
  """The mutation property below starts from these files: each loads to what was saved."""
  for label, load, data, want in VALID_FILES:
    assert _same(load(io.BytesIO(data)), want), label
    meta = files.read_metadata(io.BytesIO(data))
    assert meta["_format_version"] == (1 if label.startswith("v1") else 2), label


# ------------------------------------------------------------------------- random bytes

_OLSS_HEADER_START = b'{"__metadata__":{"format":"olss_jax","format_version":"2",'


@CASES
@given(data=st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: container.MAGIC + b),
    st.binary(max_size=300).map(lambda b: container.MAGIC + struct.pack("<IQ", 1, len(b)) + b),
    st.binary(max_size=300).map(lambda b: struct.pack("<Q", len(b)) + b),
    st.binary(min_size=1, max_size=300).map(lambda b: struct.pack("<Q", len(b) // 2) + b),
    st.binary(max_size=200).map(
        lambda b: struct.pack("<Q", len(_OLSS_HEADER_START) + len(b)) + _OLSS_HEADER_START + b)),
       which=st.sampled_from(sorted(LOADERS)))
def test_random_bytes_are_value_errors(data, which):
  assert isinstance(_outcome(LOADERS[which], data), ValueError)


# ------------------------------------------------------------- damage to valid files


@CASES
@given(index=st.integers(0, len(VALID_FILES) - 1),
       kind=st.sampled_from(["cut", "flip", "overwrite", "insert", "delete", "tail"]),
       where=st.floats(0, 1), bit=st.integers(0, 7), byte=st.integers(1, 255),
       extra=st.binary(min_size=1, max_size=8))
def test_truncations_bit_flips_and_insertions_of_valid_files_are_value_errors(
    index, kind, where, bit, byte, extra):
  label, load, data, _ = VALID_FILES[index]
  pos = min(int(where * len(data)), len(data) - 1)
  if kind == "cut":
    mutated = data[:pos]
  elif kind == "flip":
    mutated = data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:]
  elif kind == "overwrite":
    mutated = data[:pos] + bytes([data[pos] ^ byte]) + data[pos + 1:]
  elif kind == "insert":
    mutated = data[:pos] + extra + data[pos:]
  elif kind == "delete":
    mutated = data[:pos] + data[pos + 1:]
  else:
    mutated = data + extra
  assert mutated != data
  in_header = pos < _header_end(data)
  event(f"{label}, {kind} in the {'header' if in_header else 'data'}")
  assert isinstance(_outcome(load, mutated), ValueError), f"{kind} at {pos} was not detected"
  # read_metadata verifies the header and the file's size, not the data.
  meta = _outcome(files.read_metadata, mutated)
  if kind in ("flip", "overwrite") and not in_header:
    assert meta == files.read_metadata(io.BytesIO(data))
  else:
    assert isinstance(meta, ValueError), f"{kind} at {pos} passed read_metadata"


# -------------------------------------------------------- well-formed schedule files

CODES = ["F64", "F32", "F16", "BF16", "I32", "I64"]
CODE_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
               "BF16": ml_dtypes.bfloat16, "I32": np.int32, "I64": np.int64}
shapes = st.lists(st.integers(0, 4), max_size=3)


@st.composite
def random_tensors(draw, names):
  tensors = []
  for name in names:
    if draw(st.integers(0, 5)) == 0:
      continue  # a missing tensor
    dtype = np.dtype(CODE_DTYPES[draw(st.sampled_from(CODES))])
    shape = tuple(draw(shapes))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    pool = [0.0, 0.0, 1.0, -2.0, 999.0, 0.5] + ([np.nan, np.inf] if draw(st.booleans()) else [])
    arr = rng.choice(pool, size=shape)
    if draw(st.booleans()) and len(shape) == 2:
      rows, cols = np.indices(shape)
      arr = np.where(cols <= rows + 1, arr, 0.0)
    if draw(st.booleans()) and len(shape) == 1:
      arr = np.sort(arr)[::-1] if draw(st.booleans()) else np.sort(arr)
    if dtype.kind == "i":
      arr = np.nan_to_num(arr, nan=0, posinf=5, neginf=-5)
    tensors.append((name, arr.astype(dtype)))
  return tensors


@st.composite
def schedule_tensors(draw):
  """Valid schedule tensors with one random defect (or none), else random tensors."""
  if draw(st.integers(0, 3)) == 0:
    return draw(random_tensors(draw(st.sampled_from(
        [["timesteps", "weights"], ["weights", "timesteps", "alphas"], ["timesteps", "w"]]))))
  sched = _schedule(draw(st.integers(1, 4)), draw(st.integers(0, 2**16)), draw(st.booleans()))
  ts, w = np.asarray(sched.timesteps), np.asarray(sched.weights)
  defect = draw(st.sampled_from(["none"] * 6 + ["missing", "extra", "renamed",
                                 "ts_int64", "ts_float16", "ts_float64", "w_float32", "w_shape",
                                 "w_upper", "w_nan", "w_inf", "ts_negative", "ts_nan", "ts_2d",
                                 "ts_0d"]))
  if defect == "w_upper" and w.shape[0] > 1:
    w = w.copy()
    w[0, -1] = 1.0
  elif defect in ("w_nan", "w_inf"):
    w = np.where(w == w.max(), np.nan if defect == "w_nan" else -np.inf, w)
  elif defect == "ts_negative":
    ts = ts - 1000
  elif defect == "ts_nan":
    ts = np.where(ts == ts.min(), np.nan, ts).astype(np.float32)
  elif defect == "ts_int64":
    ts = ts.astype(np.int64)
  elif defect == "ts_float16":
    ts = ts.astype(np.float16)
  elif defect == "ts_float64":
    ts = ts.astype(np.float64)
  elif defect == "w_float32":
    w = w.astype(np.float32)
  elif defect == "w_shape":
    w = w[:, :-1]
  elif defect == "ts_2d":
    ts = ts[:, None]
  elif defect == "ts_0d":
    ts = ts[0]
  tensors = [("timesteps", ts), ("weights", w)]
  if defect == "missing":
    tensors = tensors[draw(st.integers(0, 1)):][:1]
  elif defect == "extra":
    tensors.append(("alphas", np.ones(3)))
  elif defect == "renamed":
    tensors[0] = ("timestep", ts)
  return tensors


def _schedule_oracle(tensors):
  d = dict(tensors)
  if sorted(d) != ["timesteps", "weights"]:
    return False
  ts, w = d["timesteps"], d["weights"]
  if ts.dtype not in (np.int32, np.float32) or w.dtype != np.float64:
    return False
  if ts.ndim != 1 or ts.shape[0] < 1:
    return False
  n = ts.shape[0]
  return (w.shape == (n, n + 1) and bool(np.all(np.isfinite(ts))) and bool(np.all(ts >= 0))
          and bool(np.all(np.isfinite(w)))
          and all(w[i, j] == 0 for i in range(n) for j in range(i + 2, n + 1)))


@CASES
@given(tensors=schedule_tensors(),
       meta=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3))
def test_well_formed_schedule_files_load_exactly_when_the_oracle_says_valid(tensors, meta):
  data = _craft(tensors, _entries(files.SCHEDULE_KIND, json.dumps(meta)))
  outcome = _outcome(files.load_schedule, data)
  valid = _schedule_oracle(tensors)
  event(f"valid: {valid}")
  assert isinstance(outcome, ValueError) != valid, (tensors, outcome)
  if valid:
    d = dict(tensors)
    assert _same_schedule(outcome, schedule_lib.Schedule(d["timesteps"], d["weights"], meta))


# ------------------------------------------------------ well-formed trajectory files

# Valid-but-defective trajectory files: mostly valid ("none", float timesteps, a config),
# the rest with exactly one defect.
VALID_STYLES = ["none"] * 12 + ["ts_float32"] * 3 + ["config"] * 3
DEFECTS = ["missing", "extra", "renamed", "x_dtype", "outputs_int", "ts_int64", "ts_float16",
           "levels_float32", "levels_down", "levels_big", "levels_zero", "levels_nan",
           "levels_len", "ts_up", "ts_negative", "ts_nan", "outputs_nan", "x_inf", "b0",
           "outputs_shape", "kind_unknown", "config_list", "teacher_extra", "teacher_text",
           "metadata_list", "metadata_missing", "teacher_missing"]
STYLES = VALID_STYLES + DEFECTS


def _trajectory_case(style, k, b, dtype, seed, where):
  """(tensors, __metadata__ entries) of a valid trajectory file with ``style`` applied."""
  rng = np.random.default_rng(seed)
  x_T = rng.standard_normal((b, 2)).astype(dtype)
  outputs = rng.standard_normal((k, b, 2)).astype(dtype)
  ts = noise.ddim_timesteps(k)
  levels = np.concatenate([ALPHAS[ts], [1.0]])
  teacher = {"kind": "ddim", "config": {}}
  metadata = {"chunk_index": seed % 7}
  step, sample = where % k, (where // k) % b
  with np.errstate(all="ignore"):
    if style == "ts_float32":
      ts = (ts + rng.random(k) * 0.5).astype(np.float32)
    elif style == "config":
      teacher["config"] = {"num_train_timesteps": 1000, "steps_offset": int(seed % 2)}
    elif style == "x_dtype":
      x_T = x_T.astype(np.float64 if np.dtype(dtype) != np.float64 else np.float32)
    elif style == "outputs_int":
      outputs, x_T = outputs.astype(np.int32), x_T.astype(np.int32)
    elif style == "ts_int64":
      ts = ts.astype(np.int64)
    elif style == "ts_float16":
      ts = ts.astype(np.float16)
    elif style == "levels_float32":
      levels = levels.astype(np.float32)
    elif style == "levels_down":
      levels = levels[::-1].copy()
    elif style == "levels_big":
      levels = levels + 0.5
    elif style == "levels_zero":
      levels = levels * 0.0
    elif style == "levels_nan":
      levels = levels.copy()
      levels[where % (k + 1)] = np.nan
    elif style == "levels_len":
      levels = levels[1:]
    elif style == "ts_up":
      ts = ts[::-1].copy()
    elif style == "ts_negative":
      ts = ts - 1000
    elif style == "ts_nan":
      ts = ts.astype(np.float32)
      ts[step] = np.nan
    elif style == "outputs_nan":
      outputs = outputs.copy()
      outputs[step, sample, where % 2] = np.nan
      outputs[step + 1:] = np.inf
    elif style == "x_inf":
      x_T = x_T.copy()
      x_T[sample, 0] = -np.inf
    elif style == "b0":
      x_T, outputs = x_T[:0], outputs[:, :0]
    elif style == "outputs_shape":
      outputs = outputs[:, :, :1] if where % 2 else np.concatenate([outputs] * 2)
    elif style == "kind_unknown":
      teacher["kind"] = "no_such_solver"
    elif style == "config_list":
      teacher["config"] = [1, 2]
    elif style == "teacher_extra":
      teacher["eta"] = 0.0
  tensors = {"x_T": x_T, "model_outputs": outputs, "teacher_timesteps": ts,
             "teacher_levels": levels}
  if style == "missing":
    del tensors[sorted(tensors)[where % 4]]
  elif style == "extra":
    tensors["alphas"] = levels
  elif style == "renamed":
    tensors["timesteps"] = tensors.pop("teacher_timesteps")
  entries = _entries(files.TRAJECTORY_KIND, json.dumps(metadata), teacher=json.dumps(teacher))
  if style == "teacher_text":
    entries["teacher"] = "ddim"
  elif style == "metadata_list":
    entries["metadata"] = "[1]"
  elif style == "metadata_missing":
    del entries["metadata"]
  elif style == "teacher_missing":
    del entries["teacher"]
  return list(tensors.items()), entries


def _finite(a):
  return bool(np.all(np.isfinite(a.astype(np.float64))))


def _trajectory_oracle(tensors, entries):
  """Whether a file with these tensors and entries holds a valid trajectory."""
  d = dict(tensors)
  if sorted(d) != ["model_outputs", "teacher_levels", "teacher_timesteps", "x_T"]:
    return False
  x_T, out, ts, lv = d["x_T"], d["model_outputs"], d["teacher_timesteps"], d["teacher_levels"]
  try:
    teacher, metadata = json.loads(entries["teacher"]), json.loads(entries["metadata"])
  except (KeyError, ValueError):
    return False
  if (not isinstance(metadata, dict) or not isinstance(teacher, dict)
      or sorted(teacher) != ["config", "kind"] or teacher["kind"] != "ddim"
      or not isinstance(teacher["config"], dict)):
    return False
  if (x_T.dtype.name not in ("float16", "bfloat16", "float32", "float64")
      or out.dtype != x_T.dtype or ts.dtype not in (np.int32, np.float32)
      or lv.dtype != np.float64):
    return False
  if ts.ndim != 1 or ts.shape[0] < 1 or x_T.ndim < 1 or x_T.shape[0] < 1:
    return False
  k = ts.shape[0]
  if out.shape != (k,) + x_T.shape or lv.shape != (k + 1,):
    return False
  return (_finite(ts) and bool(np.all(ts >= 0)) and bool(np.all(np.diff(ts) < 0))
          and _finite(lv) and bool(np.all((lv > 0) & (lv <= 1))) and bool(np.all(np.diff(lv) >= 0))
          and _finite(x_T) and _finite(out))


def _check_trajectory_case(style, k, b, dtype, seed, where):
  """Loads one case; checks it against the oracle; returns whether it loaded."""
  tensors, entries = _trajectory_case(style, k, b, dtype, seed, where)
  valid = _trajectory_oracle(tensors, entries)
  if style in VALID_STYLES:
    assert valid, f"the {style!r} case should be valid"
  outcome = _outcome(files.load_trajectory, _craft(tensors, entries))
  assert isinstance(outcome, ValueError) != valid, (style, k, b, dtype, outcome)
  if valid:
    d = dict(tensors)
    teacher = json.loads(entries["teacher"])
    want = trajectory_lib.Trajectory(d["x_T"], d["model_outputs"], teacher_lib.Teacher(
        d["teacher_timesteps"], teacher_lib.as_float64(d["teacher_levels"]), teacher["kind"],
        teacher["config"]))
    assert _same_trajectory(outcome, want)
    _, meta, digest = files.read_trajectory(io.BytesIO(_craft(tensors, entries)))
    assert meta == json.loads(entries["metadata"])
    assert digest == hashlib.sha256(_craft(tensors, entries)).hexdigest()
  elif style == "outputs_nan":
    assert f"first at step {where % k}, sample {(where // k) % b}" in str(outcome), outcome
  return valid


@CASES
@given(style=st.sampled_from(STYLES), k=st.integers(1, 4), b=st.integers(1, 3),
       dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2**16), where=st.integers(0, 99))
def test_trajectory_files_with_one_defect_load_valid_or_raise_value_error(style, k, b, dtype,
                                                                          seed, where):
  loaded = _check_trajectory_case(style, k, b, dtype, seed, where)
  event(f"loaded: {loaded}")


def test_the_trajectory_defect_strategy_yields_many_loadable_files():
  """A fixed sample drawn like the property's cases: a good share of them loads."""
  rng = random.Random(0)
  results = []
  for _ in range(300):
    style = rng.choice(STYLES)
    results.append((style, _check_trajectory_case(
        style, rng.randint(1, 4), rng.randint(1, 3), rng.choice(FLOATS), rng.randint(0, 2**16),
        rng.randint(0, 99))))
  loaded = sum(ok for _, ok in results)
  assert 0.3 * len(results) <= loaded <= 0.7 * len(results), loaded
  assert {style for style, _ in results} == set(STYLES)  # every defect was exercised


# ------------------------------------------------------ checksummed, malformed headers

_BASE = _bytes(files.save_schedule, _schedule(3, 11, metadata={"method": "olss"}))
_BASE_HEADER = json.loads(_BASE[8:_header_end(_BASE)])
_PAYLOAD = _BASE[_header_end(_BASE):]
_BASE_TABLE = {k: v for k, v in _BASE_HEADER.items() if k != "__metadata__"}
odd_json = st.sampled_from([None, True, 0, -1, 2**70, 1.5, -0.0, "", "x", [], {}, [1, "a"],
                            {"a": [1]}, [[2, 3]], {"shape": [1]}, [0, 24], [3], [3, 4],
                            "F64", "I32", "F32", "2", "olss_jax", files.SCHEDULE_KIND,
                            files.TRAJECTORY_KIND])
META_TEXTS = ['{}', '{"a": 1}', '[]', '', '{', '{"a": NaN}', '{"a": 1, "a": 2}', 'null', '"x"']
VALID_META_TEXTS = {'{}', '{"a": 1}'}


def _canon(x):
  return json.dumps(x, sort_keys=True)


def _header_oracle(header):
  """Whether the edited header (with correct digests) still describes the base schedule."""
  meta = header.get("__metadata__") if isinstance(header, dict) else None
  if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
    return False
  if (meta.get("format"), meta.get("format_version"), meta.get("kind")) != (
      "olss_jax", "2", files.SCHEDULE_KIND):
    return False
  if meta.get("metadata") not in VALID_META_TEXTS | {_BASE_HEADER["__metadata__"]["metadata"]}:
    return False
  return _canon({k: v for k, v in header.items() if k != "__metadata__"}) == _canon(_BASE_TABLE)


@st.composite
def edited_headers(draw):
  header = json.loads(json.dumps(_BASE_HEADER))
  meta = header["__metadata__"]
  edit = draw(st.sampled_from(["none", "none", "reformat", "extra_meta", "meta_field",
                               "meta_text", "drop_meta", "tensor_field", "tensor_key",
                               "rename", "drop_tensor", "add_tensor", "meta_not_dict"]))
  names = sorted(_BASE_TABLE)
  if edit == "extra_meta":
    meta[draw(st.sampled_from(["note", "author", "x"]))] = draw(st.text(max_size=5))
  elif edit == "meta_field":
    meta[draw(st.sampled_from(["format", "format_version", "kind", "metadata"]))] = draw(odd_json)
  elif edit == "meta_text":
    meta["metadata"] = draw(st.sampled_from(META_TEXTS))
  elif edit == "drop_meta":
    del meta[draw(st.sampled_from(["format", "format_version", "kind", "metadata"]))]
  elif edit == "tensor_field":
    entry = header[draw(st.sampled_from(names))]
    entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(
        odd_json | st.lists(st.integers(-1, 200) | st.sampled_from([2**40, 2**63]), max_size=4))
  elif edit == "tensor_key":
    entry = header[draw(st.sampled_from(names))]
    if draw(st.booleans()):
      del entry[draw(st.sampled_from(sorted(entry)))]
    else:
      entry[draw(st.sampled_from(["extra", "offsets", "Dtype"]))] = draw(odd_json)
  elif edit == "rename":
    old = draw(st.sampled_from(names))
    header[draw(st.sampled_from(["alphas", "Timesteps", "weights", "timesteps", "x_T"]))] = (
        header.pop(old))
  elif edit == "drop_tensor":
    del header[draw(st.sampled_from(names))]
  elif edit == "add_tensor":
    header[draw(st.sampled_from(["alphas", "extra"]))] = draw(odd_json | st.just(
        {"dtype": "F64", "shape": [0], "data_offsets": [0, 0]}))
  elif edit == "meta_not_dict":
    header["__metadata__"] = draw(odd_json)
  if isinstance(header.get("__metadata__"), dict):
    header["__metadata__"]["header_sha256"], header["__metadata__"]["sha256"] = (
        files_helpers.spec_digests(header, _PAYLOAD))
  dumps_kw = {}
  if edit == "reformat":
    dumps_kw = {"indent": draw(st.sampled_from([None, 0, 2])), "sort_keys": draw(st.booleans()),
                "ensure_ascii": draw(st.booleans())}
  return edit, header, _join(header, _PAYLOAD, **dumps_kw)


@CASES
@given(case=edited_headers())
def test_checksummed_but_malformed_headers_are_value_errors(case):
  edit, header, data = case
  outcome = _outcome(files.load_schedule, data)
  meta = _outcome(files.read_metadata, data)
  valid = _header_oracle(header)
  event(f"{edit}: {'loads' if valid else 'ValueError'}")
  if edit in ("none", "reformat", "extra_meta"):
    assert valid
  assert isinstance(outcome, ValueError) != valid, (header, outcome)
  if valid:
    want = _schedule(3, 11, metadata=json.loads(header["__metadata__"]["metadata"]))
    assert _same_schedule(outcome, want)
    assert not isinstance(meta, ValueError) and meta["_kind"] == files.SCHEDULE_KIND
  elif not isinstance(meta, ValueError):  # a readable header describing an invalid schedule
    assert meta["_kind"] == header["__metadata__"]["kind"]


# ----------------------------------------------------------------------- round trips

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=4)


def _random_finite(rng, dtype, shape):
  """Arbitrary finite bit patterns (subnormals, -0.0, extremes) of a float dtype."""
  dtype = np.dtype(dtype)
  bits = rng.integers(0, 2**(8 * dtype.itemsize), size=shape, dtype=np.uint64)
  arr = bits.astype(f"u{dtype.itemsize}").view(dtype)
  with np.errstate(invalid="ignore"):
    finite = np.isfinite(arr.astype(np.float64))
  return np.where(finite, arr, np.zeros_like(arr)).astype(dtype)


@CASES
@given(n=st.integers(1, 6), seed=st.integers(0, 2**32 - 1), float_timesteps=st.booleans(),
       meta=st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_schedule_save_load_round_trip_is_exact(n, seed, float_timesteps, meta):
  rng = np.random.default_rng(seed)
  weights = np.where(schedule_lib.lower_triangular_mask(n),
                     _random_finite(rng, np.float64, (n, n + 1)), 0.0)
  if float_timesteps:
    timesteps = np.abs(_random_finite(rng, np.float32, (n,)))
  else:
    timesteps = rng.integers(0, 2**31, n).astype(np.int32)
  sched = schedule_lib.Schedule(timesteps, weights, meta)
  data = _bytes(files.save_schedule, sched)
  loaded = files.load_schedule(io.BytesIO(data))
  assert _same_schedule(loaded, sched.replace(metadata=json.loads(json.dumps(meta))))
  assert files.read_metadata(io.BytesIO(data))["_arrays"]["weights"]["shape"] == [n, n + 1]


@CASES
@given(k=st.integers(1, 5), b=st.integers(1, 3), shape=st.lists(st.integers(0, 3), max_size=2),
       dtype=st.sampled_from(FLOATS), ts_dtype=st.sampled_from([np.int32, np.float32]),
       seed=st.integers(0, 2**32 - 1),
       meta=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_trajectory_save_load_round_trip_is_exact(k, b, shape, dtype, ts_dtype, seed, meta):
  rng = np.random.default_rng(seed)
  shape = tuple(shape)
  traj = trajectory_lib.Trajectory(_random_finite(rng, dtype, (b,) + shape),
                                   _random_finite(rng, dtype, (k, b) + shape),
                                   _teacher(k, ts_dtype, {"seed": seed}))
  data = _bytes(files.save_trajectory, traj, metadata=meta)
  loaded, loaded_meta, digest = files.read_trajectory(io.BytesIO(data))
  assert _same_trajectory(loaded, traj)
  assert loaded_meta == json.loads(json.dumps(meta))
  assert digest == hashlib.sha256(data).hexdigest()


def _has_nonfinite(value):
  if isinstance(value, float):
    return not math.isfinite(value)
  if isinstance(value, dict):
    return any(map(_has_nonfinite, value.values()))
  if isinstance(value, (list, tuple)):
    return any(map(_has_nonfinite, value))
  return False


json_with_nonfinite = st.recursive(
    st.none() | st.integers(-5, 5) | st.floats() | st.text(max_size=3)
    | st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=5)


@CASES
@given(meta=st.dictionaries(st.text(max_size=4), json_with_nonfinite, max_size=3),
       which=st.sampled_from(["schedule", "trajectory"]))
def test_metadata_with_nan_or_infinity_is_refused_and_the_rest_round_trips(meta, which):
  bad = _has_nonfinite(meta)
  event(f"non-finite: {bad}")
  buf = io.BytesIO()
  try:
    if which == "schedule":
      files.save_schedule(buf, _SCHED_A.replace(metadata=meta))
    else:
      files.save_trajectory(buf, _TRAJ_A, metadata=meta)
  except TypeError as e:
    assert bad, e
    assert str(e).startswith("schedule.metadata: " if which == "schedule" else "metadata: ")
    assert buf.getvalue() == b""
    return
  assert not bad
  expected = json.loads(json.dumps(meta))
  info = files.read_metadata(io.BytesIO(buf.getvalue()))
  assert {key: info[key] for key in expected} == expected
  loaded = (files.load_schedule if which == "schedule" else files.read_trajectory)(
      io.BytesIO(buf.getvalue()))
  assert (loaded.metadata if which == "schedule" else loaded[1]) == expected


@pytest.mark.parametrize("index", range(len(VALID_FILES)))
def test_valid_files_also_load_from_non_seekable_streams(index):
  label, load, data, want = VALID_FILES[index]

  class Stream(io.RawIOBase):
    def __init__(self):
      self.pos = 0

    def readable(self):
      return True

    def readinto(self, b):
      n = min(len(b), 5, len(data) - self.pos)
      b[:n] = data[self.pos:self.pos + n]
      self.pos += n
      return n

  assert _same(load(Stream()), want), label
