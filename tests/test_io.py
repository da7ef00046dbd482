"""Saving and loading schedules and trajectories: exact round trips and clear errors."""
import io
import os
import pathlib
import pickle
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import olss_jax as oj
from olss_jax._src import container
from olss_jax._src import io as oio
from olss_jax._src import schedule as schedule_lib

ALPHAS = oj.scaled_linear_alphas_cumprod()
# Tolerance of the sampler on a loaded vs the original schedule: the bytes are identical,
# so the outputs must be too.
ATOL = {jnp.float32: 0.0}


def _random_schedule(seed, n, metadata=None):
  rng = np.random.default_rng(seed)
  weights = rng.standard_normal((n, n + 1)) * 10.0 ** rng.integers(-300, 300, (n, n + 1))
  weights[~schedule_lib.lower_triangular_mask(n)] = 0.0
  weights[0, 0] = -0.0 if n > 1 else weights[0, 0]
  weights[-1, 0] = 5e-324  # a subnormal survives
  timesteps = np.sort(rng.choice(1000, n, replace=False))[::-1]
  return oj.make_schedule(timesteps, weights, metadata)


def _bits(x):
  x = np.asarray(x)
  return x.view(np.uint8)


def _saved(save, obj, **kw):
  buf = io.BytesIO()
  save(buf, obj, **kw)
  return buf.getvalue()


@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_schedule_round_trip_is_bit_exact_via_bytes_io(n):
  meta = {"method": "olss", "guidance_scale": 7.5, "sample_shape": (4, 64, 64),
          "nested": {"prompts": ["a cat", "ünïcode ☃"], "seed": np.int64(3)}, "none": None}
  sched = _random_schedule(n, n, meta)
  loaded = oio.load_schedule(io.BytesIO(_saved(oio.save_schedule, sched)))
  assert loaded.timesteps.dtype == np.int32 and loaded.weights.dtype == np.float64
  np.testing.assert_array_equal(_bits(loaded.timesteps), _bits(sched.timesteps))
  np.testing.assert_array_equal(_bits(loaded.weights), _bits(sched.weights))
  expected = dict(meta, sample_shape=[4, 64, 64],
                  nested={"prompts": ["a cat", "ünïcode ☃"], "seed": 3})
  assert loaded.metadata == expected


@pytest.mark.parametrize("as_pathlib", [False, True])
def test_schedule_round_trip_via_path_and_overwrite(tmp_path, as_pathlib):
  target = tmp_path / "s.olss"
  target = target if as_pathlib else str(target)
  first = oj.ddim_schedule(ALPHAS, oj.ddim_timesteps(5))
  second = _random_schedule(1, 7, {"method": "olss"})
  oio.save_schedule(target, first)
  oio.save_schedule(target, second)  # replaces atomically
  loaded = oio.load_schedule(target)
  np.testing.assert_array_equal(loaded.weights, second.weights)
  np.testing.assert_array_equal(loaded.timesteps, second.timesteps)
  assert loaded.metadata == {"method": "olss"}
  assert sorted(os.listdir(tmp_path)) == ["s.olss"]  # no stray temporary files


def test_schedule_from_jax_arrays_and_open_file_objects(tmp_path):
  sched = oj.ddim_schedule(ALPHAS, oj.ddim_timesteps(4))
  as_jax = schedule_lib.Schedule(jnp.asarray(sched.timesteps), jnp.asarray(sched.weights,
                                                                           jnp.float32))
  path = tmp_path / "s.olss"
  with open(path, "wb") as f:
    oio.save_schedule(f, as_jax)
  with open(path, "rb") as f:
    loaded = oio.load_schedule(f)
  np.testing.assert_array_equal(loaded.weights,
                                np.asarray(sched.weights, np.float32).astype(np.float64))


@pytest.mark.parametrize("jit", [False, True])
def test_loaded_schedule_samples_identically(jit):
  mix = oj.make_gaussian_mixture(jax.random.PRNGKey(0), 4, (6,))
  denoise = oj.mixture_denoiser(mix, ALPHAS)
  sched = _random_schedule(3, 5)
  sched = sched.replace(weights=oj.ddim_schedule(ALPHAS, sched.timesteps).weights)
  loaded = oio.load_schedule(io.BytesIO(_saved(oio.save_schedule, sched)))
  x_T = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
  run = jax.jit(oj.sample) if jit else oj.sample
  a, b = run(denoise, sched, x_T), run(denoise, loaded, x_T)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=ATOL[jnp.float32])


def _trajectory(dtype, k=6, b=3, shape=(2, 2), seed=0):
  rng = np.random.default_rng(seed)
  timesteps = oj.ddim_timesteps(k)
  alphas = np.concatenate([ALPHAS[timesteps], [1.0]])
  x_T = rng.standard_normal((b,) + shape).astype(dtype)
  outputs = rng.standard_normal((k, b) + shape).astype(dtype)
  return oj.Trajectory(timesteps=timesteps, x_T=x_T, model_outputs=outputs, alphas=alphas)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_trajectory_round_trip_every_float_dtype(tmp_path, dtype):
  traj = _trajectory(dtype)
  digest = oio.save_trajectory(tmp_path / "t.olss", traj, metadata={"chunk": 2})
  loaded = oio.load_trajectory(tmp_path / "t.olss")
  for field in ("timesteps", "x_T", "model_outputs", "alphas"):
    got, want = getattr(loaded, field), np.asarray(getattr(traj, field))
    assert got.dtype == want.dtype, field
    np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=field)
  meta = oio.read_metadata(tmp_path / "t.olss")
  assert meta["chunk"] == 2 and meta["_kind"] == oio.TRAJECTORY_KIND
  assert meta["_arrays"]["model_outputs"]["shape"] == [6, 3, 2, 2]
  assert digest == (tmp_path / "t.olss").read_bytes()[-32:].hex()


def test_collected_trajectory_round_trip_keeps_states():
  mix = oj.make_gaussian_mixture(jax.random.PRNGKey(2), 3, (5,))
  x_T = jax.random.normal(jax.random.PRNGKey(3), (2, 5))
  traj = oj.collect_trajectory(oj.mixture_denoiser(mix, ALPHAS), x_T, ALPHAS, 25)
  loaded = oio.load_trajectory(io.BytesIO(_saved(oio.save_trajectory, traj)))
  np.testing.assert_array_equal(np.asarray(loaded.states), np.asarray(traj.states))


# ----------------------------------------------------------------------------- errors


def _schedule_bytes():
  return _saved(oio.save_schedule, _random_schedule(7, 4, {"method": "olss"}))


@pytest.mark.parametrize("cut", [0, 1, 7, 19, 20, 50, -33, -32, -1])
def test_truncated_schedule_file_is_a_value_error(tmp_path, cut):
  data = _schedule_bytes()
  path = tmp_path / "cut.olss"
  path.write_bytes(data[:cut])
  with pytest.raises(ValueError, match="cut.olss"):
    oio.load_schedule(path)
  with pytest.raises(ValueError):
    oio.load_schedule(io.BytesIO(data[:cut]))


@pytest.mark.parametrize("position", [0, 9, 15, 25, 0.5, -40, -1])
def test_bit_flip_anywhere_is_a_value_error(position):
  data = bytearray(_schedule_bytes())
  pos = int(position * len(data)) if isinstance(position, float) else position
  data[pos] ^= 0x10
  with pytest.raises(ValueError, match="magic|version|header|checksum|corrupted"):
    oio.load_schedule(io.BytesIO(bytes(data)))


def test_wrong_version_magic_kind_trailing_and_pickle():
  data = _schedule_bytes()
  newer = data[:8] + struct.pack("<I", container.VERSION + 1) + data[12:]
  with pytest.raises(ValueError, match="version 2"):
    oio.load_schedule(io.BytesIO(newer))
  with pytest.raises(ValueError, match="magic"):
    oio.load_schedule(io.BytesIO(b"PK\x03\x04" + data[4:]))
  with pytest.raises(ValueError, match="trailing"):
    oio.load_schedule(io.BytesIO(data + b"\0"))
  traj_bytes = _saved(oio.save_trajectory, _trajectory(np.float32))
  with pytest.raises(ValueError, match="expected 'olss_jax.schedule'"):
    oio.load_schedule(io.BytesIO(traj_bytes))
  with pytest.raises(ValueError, match="expected 'olss_jax.trajectory'"):
    oio.load_trajectory(io.BytesIO(data))
  payload = pickle.dumps({"timesteps": [1], "weights": [[1.0, 0.0]]})
  with pytest.raises(ValueError, match="not an olss_jax file"):
    oio.load_schedule(io.BytesIO(payload))


def _container(kind, arrays, metadata=None):
  buf = io.BytesIO()
  container.write_container(buf, kind, arrays, metadata)
  return buf.getvalue()


@pytest.mark.parametrize("arrays, match", [
    ([("timesteps", np.array([999, 500], np.int32)), ("weights", np.zeros((2, 4)))],
     r"expected shape \(2, 3\)"),
    ([("timesteps", np.array([999, 500], np.int32)), ("weights", np.ones((2, 3)))],
     "above the diagonal"),
    ([("timesteps", np.array([999, 500], np.int32)),
      ("weights", np.array([[1.0, np.nan, 0.0], [1.0, 1.0, 1.0]]))], "non-finite"),
    ([("timesteps", np.array([999], np.int64)), ("weights", np.ones((1, 2)))], "int32"),
    ([("timesteps", np.array([999], np.int32)), ("weights", np.ones((1, 2), np.float32))],
     "float64"),
    ([("timesteps", np.array([-1], np.int32)), ("weights", np.ones((1, 2)))], "non-negative"),
    ([("timesteps", np.zeros((0,), np.int32)), ("weights", np.ones((0, 1)))], r"n >= 1"),
    ([("weights", np.ones((1, 2))), ("timesteps", np.array([5], np.int32))], "expected arrays"),
])
def test_well_formed_file_with_an_invalid_schedule_is_a_value_error(arrays, match):
  data = _container(oio.SCHEDULE_KIND, arrays)
  with pytest.raises(ValueError, match=match):
    oio.load_schedule(io.BytesIO(data))


def test_invalid_trajectory_files_are_value_errors():
  good = _trajectory(np.float32)
  base = dict(timesteps=good.timesteps, x_T=good.x_T, model_outputs=good.model_outputs,
              alphas=good.alphas)
  bad_cases = {
      "model_outputs": (dict(base, model_outputs=good.model_outputs[:-1]), "model_outputs"),
      "nan": (dict(base, model_outputs=np.where(np.arange(6)[:, None, None, None] == 4, np.nan,
                                                good.model_outputs).astype(np.float32)),
              "first at step 4, sample 0"),
      "alphas": (dict(base, alphas=good.alphas[::-1].copy()), "non-decreasing"),
      "dtype": (dict(base, x_T=good.x_T.astype(np.float64)), "one float dtype"),
      "order": (dict(base, timesteps=good.timesteps[::-1].copy()), "strictly decreasing"),
  }
  for label, (arrays, match) in bad_cases.items():
    data = _container(oio.TRAJECTORY_KIND, list(arrays.items()))
    with pytest.raises(ValueError, match=match):
      oio.load_trajectory(io.BytesIO(data))
    assert label


def test_saving_invalid_objects_fails_before_writing(tmp_path):
  target = tmp_path / "t.olss"
  bad = _trajectory(np.float32)
  outputs = bad.model_outputs.copy()
  outputs[3, 2, 1, 0] = np.inf
  with pytest.raises(ValueError, match="step 3, sample 2"):
    oio.save_trajectory(target, oj.Trajectory(bad.timesteps, bad.x_T, outputs, bad.alphas))
  with pytest.raises(TypeError, match="JSON"):
    oio.save_trajectory(target, bad, metadata={"f": object()})
  with pytest.raises(TypeError, match="Schedule"):
    oio.save_schedule(target, {"weights": 1})
  upper = schedule_lib.Schedule(np.array([3], np.int32), np.array([[1.0, 2.0]]))
  oio.save_schedule(target, upper)  # (1, 2) has no entries above the diagonal: valid
  nonfinite = schedule_lib.Schedule(np.array([3], np.int32), np.array([[1.0, np.nan]]))
  with pytest.raises(ValueError, match="row 0, column 1"):
    oio.save_schedule(target, nonfinite)
  assert os.listdir(tmp_path) == ["t.olss"]
  np.testing.assert_array_equal(oio.load_schedule(target).weights, [[1.0, 2.0]])


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
  target = tmp_path / "s.olss"
  oio.save_schedule(target, _random_schedule(0, 3))
  before = target.read_bytes()

  def exploding(f, *args, **kwargs):
    f.write(b"\x89OLSSJAX partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(container, "write_container", exploding)
  with pytest.raises(KeyboardInterrupt):
    oio.save_schedule(target, _random_schedule(1, 3))
  assert target.read_bytes() == before
  assert os.listdir(tmp_path) == ["s.olss"]


def test_bad_arguments_are_type_errors_and_missing_files_os_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    oio.load_schedule(tmp_path / "missing.olss")
  with pytest.raises(TypeError, match="path_or_file"):
    oio.load_schedule(42)
  with open(tmp_path / "text", "w", encoding="utf-8") as f:
    with pytest.raises(TypeError, match="binary"):
      oio.save_schedule(f, _random_schedule(0, 2))
  assert isinstance(pathlib.Path(tmp_path), os.PathLike)
