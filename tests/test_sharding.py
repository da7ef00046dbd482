"""olss_jax.to_numpy, olss_jax.stats.batch_mesh and ``mesh=`` (sharding.py), on one device.

``mesh=None`` shards only over several devices, ``False`` never shards, a `Mesh` splits the
batch over it (x_T and model_outputs come back batch-sharded). Here one CPU device: every
choice must run the same computation. The 8-device runs: tests/test_stats.py.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
# float32 teacher / sampler runs with mesh=None, False or a 1-device Mesh (measured: 0.0, the
# same program on the same device; the margin covers a different XLA fusion order).
ONE_DEVICE_ATOL_F32 = 1e-6
DEN = jax.tree_util.Partial(oj.testing.gaussian_epsilon, 0.5, 0.3, ALPHAS)
X_T = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def test_to_numpy_copies_jax_arrays_and_host_data_to_equal_numpy_arrays():
  host = np.arange(12, dtype=np.float32).reshape(3, 4)
  for x in (jnp.asarray(host), host, jnp.asarray(host)[1:]):
    out = oj.to_numpy(x)
    assert isinstance(out, np.ndarray), type(out)
    chex.assert_shape(out, x.shape)
    assert out.dtype == x.dtype, (out.dtype, x.dtype)
    np.testing.assert_array_equal(out, np.asarray(x))
  # anything np.asarray takes
  np.testing.assert_array_equal(oj.to_numpy([[1, 2], [3, 4]]), [[1, 2], [3, 4]])
  assert oj.to_numpy(jnp.int32(7)).shape == () and int(oj.to_numpy(jnp.int32(7))) == 7


def test_batch_mesh_is_one_batch_axis_over_every_device():
  mesh = oj.stats.batch_mesh()
  assert mesh.axis_names == ("batch",)
  assert list(mesh.devices.flat) == jax.devices()
  explicit = oj.stats.batch_mesh(jax.devices()[:1])
  assert explicit.axis_names == ("batch",) and list(explicit.devices.flat) == jax.devices()[:1]
  with pytest.raises(ValueError, match="^devices: expected at least one device"):
    oj.stats.batch_mesh([])


def test_collect_trajectory_gives_the_same_run_with_mesh_none_false_or_a_mesh():
  mesh = oj.stats.batch_mesh()
  runs = {m: oj.collect_trajectory(DEN, X_T, ALPHAS, 5, mesh=mesh if m == "mesh" else m)
          for m in (None, False, "mesh")}
  for name, traj in runs.items():
    chex.assert_shape(traj.model_outputs, (5,) + X_T.shape)
    chex.assert_type(traj.model_outputs, np.float32)
    chex.assert_trees_all_close(oj.to_numpy(traj.model_outputs),
                                oj.to_numpy(runs[False].model_outputs), atol=ONE_DEVICE_ATOL_F32)
    np.testing.assert_array_equal(oj.to_numpy(traj.x_T), X_T, err_msg=str(name))
  # one device: None and False do not shard; an explicit mesh splits the batch axis over it
  for m in (None, False):
    assert not isinstance(runs[m].model_outputs.sharding, NamedSharding), m
  outputs, x_T = runs["mesh"].model_outputs.sharding, runs["mesh"].x_T.sharding
  assert isinstance(outputs, NamedSharding) and outputs.mesh == mesh, outputs
  assert tuple(outputs.spec)[:2] == (None, "batch"), outputs.spec
  assert isinstance(x_T, NamedSharding) and tuple(x_T.spec)[0] == "batch", x_T.spec


def test_sample_gives_the_same_samples_with_mesh_none_false_or_a_mesh():
  schedule = oj.baseline_schedule("ddim", ALPHAS, 3)
  ref = oj.sample(DEN, schedule, X_T, mesh=False)
  chex.assert_shape(ref, X_T.shape)
  chex.assert_type(ref, np.float32)
  assert np.abs(oj.to_numpy(ref) - X_T).max() > 0.1      # it did sample
  for mesh in (None, oj.stats.batch_mesh()):
    chex.assert_trees_all_close(oj.to_numpy(oj.sample(DEN, schedule, X_T, mesh=mesh)),
                                oj.to_numpy(ref), atol=ONE_DEVICE_ATOL_F32)


def test_a_mesh_that_is_no_mesh_raises_type_error_naming_mesh():
  schedule = oj.baseline_schedule("ddim", ALPHAS, 3)
  for mesh in ("batch", True, jax.devices()):
    with pytest.raises(TypeError, match="^mesh: expected a jax.sharding.Mesh, None or False"):
      oj.collect_trajectory(DEN, X_T, ALPHAS, 5, mesh=mesh)
    with pytest.raises(TypeError, match="^mesh: expected a jax.sharding.Mesh, None or False"):
      oj.sample(DEN, schedule, X_T, mesh=mesh)
