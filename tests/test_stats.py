"""olss_jax.stats: the float64 Gram answers the fit and the search as the direct tall least squares.

The search's own projections through the Gram: tests/test_search.py; when a trajectory's
factor comes from its Gram rather than a QR: tests/test_regression.py.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import least_squares_helpers
import olss_jax as oj
from olss_jax import stats as stats_lib
from olss_jax import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Gram-based step errors vs the direct float64 tall least squares (issue 6's requirement).
ERROR_RTOL_F64 = 1e-6
# Gram sums of the same float32 data in a different order: float64 rounding only.
GRAM_RTOL_F64 = 1e-12
WEIGHT_ATOL_F64 = 1e-6
# float32 model runs on 8 devices vs 1: same ops, possibly different reduction order.
SHARD_ATOL_F32 = 1e-5
# The guarded closed-loop fit, per-device factors against one device (float64; measured 9e-13).
GUARDED_WEIGHTS_RTOL_F64 = 1e-8
# 8 devices vs 1 on the same float32 trajectory: the model's float32 outputs on the fitted
# states differ in rounding (measured 1e-7 of the largest weight)
CV_WEIGHTS_RTOL_F32 = 1e-5


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      "search_benchmark", os.path.join(ROOT, "olss_jax", "benchmarks", "search_benchmark.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def correlated():
  """Strongly correlated outputs (cond(A) ~ 5e4): the hard case for a Gram."""
  return least_squares_helpers.correlated_problem()



def test_neighbouring_outputs_correlate_like_a_teacher(correlated):
  traj, a, _ = correlated
  e = a[:, 1:]
  corr = [np.corrcoef(e[:, i], e[:, i + 1])[0, 1] for i in range(e.shape[1] - 1)]
  # all but the last few steps (where the synthetic fields move fastest) correlate > 0.99
  assert np.mean(np.asarray(corr) > 0.99) >= 0.95 and min(corr) > 0.95
  assert np.linalg.cond(a) > 1e4  # genuinely ill-conditioned, not a soft test


@pytest.mark.parametrize("num_steps", [3, 6])
def test_search_on_stats_equals_direct_search(correlated, num_steps):
  traj, a, states = correlated
  bench = _load_benchmark()
  want_path, want_errors, _ = bench.reference_search(
      lambda prefix, target: least_squares_helpers.direct_error(a, states, prefix, target)[0],
      traj.num_teacher_steps, num_steps)
  st = stats_lib.trajectory_stats(traj)
  path, info = oj.search_path(st, num_steps)
  np.testing.assert_array_equal(path, want_path)
  chex.assert_trees_all_close(info.step_errors, want_errors, rtol=ERROR_RTOL_F64)
  np.testing.assert_array_equal(oj.search_path(traj, num_steps)[0], path)
  chex.assert_trees_all_close(oj.path_errors(st, path), want_errors, rtol=ERROR_RTOL_F64)


def test_fit_on_stats_equals_direct_least_squares(correlated):
  traj, a, states = correlated
  path = np.array([0, 7, 30, 61, 100], np.int32)
  schedule, info = oj.fit_weights(stats_lib.trajectory_stats(traj), path)
  targets = np.append(path[1:], traj.num_teacher_steps)
  for i, target in enumerate(targets):
    err, w = least_squares_helpers.direct_error(a, states, path[:i + 1], int(target))
    chex.assert_trees_all_close(np.asarray(schedule.weights)[i, :i + 2], w,
                                atol=WEIGHT_ATOL_F64, rtol=1e-6)
    np.testing.assert_allclose(info.step_errors[i], err, rtol=ERROR_RTOL_F64)
  assert schedule.metadata["num_fit_images"] == traj.batch_size
  np.testing.assert_array_equal(schedule.timesteps, np.asarray(traj.timesteps)[path])


def test_chunked_accumulation_and_merge_equal_one_pass():
  whole = testing.synthetic_trajectory(6, (2, 4, 4), 30, seed=1)
  chunks = [testing.synthetic_trajectory(idx, (2, 4, 4), 30, seed=1)
            for idx in ([0, 1], [2], [3, 4, 5])]
  one = stats_lib.trajectory_stats(whole)
  streamed = stats_lib.stats_from_chunks(iter(chunks))
  blocked = stats_lib.trajectory_stats(whole, rows_per_block=40)  # blocks across images
  parts = [stats_lib.trajectory_stats(c) for c in chunks]
  left = stats_lib.merge_stats(stats_lib.merge_stats(parts[0], parts[1]), parts[2])
  right = stats_lib.merge_stats(parts[0], stats_lib.merge_stats(parts[2], parts[1]))
  for other in (streamed, blocked, left, right):
    np.testing.assert_allclose(other.gram, one.gram, rtol=GRAM_RTOL_F64)
    assert other.num_images == 6 and other.num_elements == 6 * 32
  assert left.factor is None and streamed.factor is not None  # merging does not factor
  # the Gram is exactly A^T A of the float64 data
  a = np.concatenate([whole.x_T.reshape(1, -1), whole.model_outputs.reshape(30, -1)], 0)
  a = a.astype(np.float64)
  np.testing.assert_allclose(one.gram, a @ a.T, rtol=GRAM_RTOL_F64)
  r = np.asarray(one.factor)
  np.testing.assert_allclose(r.T @ r, a @ a.T, rtol=0, atol=1e-12 * np.max(a @ a.T))


def test_stats_of_device_arrays_under_jit_and_eagerly_agree():
  traj = testing.synthetic_trajectory(3, (2, 4, 4), 20, seed=2)
  host = stats_lib.trajectory_stats(traj)
  on_device = stats_lib.trajectory_stats(traj.replace(x_T=jnp.asarray(traj.x_T),
                                                      model_outputs=jnp.asarray(traj.model_outputs)))
  jitted = jax.jit(stats_lib.trajectory_stats)(traj)
  for other in (on_device, jitted):
    np.testing.assert_allclose(other.gram, host.gram, rtol=GRAM_RTOL_F64)
    assert other.gram.dtype == np.float64
  path = np.array([0, 5, 12], np.int32)
  with jax.disable_jit():
    nojit = oj.fit_weights(host, path)[0]
  np.testing.assert_allclose(oj.fit_weights(host, path)[0].weights, nojit.weights, atol=1e-12)


def test_rank_deficient_outputs_warn_and_stay_finite():
  traj = testing.synthetic_trajectory(2, (2, 4, 4), 20, seed=4)
  outputs = np.array(traj.model_outputs)
  outputs[6] = outputs[5]  # a repeated model output
  outputs[9] = 0.0         # a zero output
  traj = traj.replace(model_outputs=outputs)
  st = stats_lib.trajectory_stats(traj)
  r = np.asarray(st.factor)
  assert np.all(r[:, 10] == 0.0)  # the zero output is exactly zero in R-space
  with pytest.warns(RuntimeWarning, match="rank deficient"):
    schedule, info = oj.fit_weights(st, np.array([0, 5, 6, 9, 12], np.int32))
  assert np.all(np.isfinite(schedule.weights))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    _, direct = oj.fit_weights(traj, np.array([0, 5, 6, 9, 12], np.int32))
  np.testing.assert_allclose(info.step_errors, direct.step_errors, rtol=ERROR_RTOL_F64)


def test_bad_input_raises_naming_the_argument():
  traj = testing.synthetic_trajectory(2, (2, 2), 10)
  st = stats_lib.trajectory_stats(traj)
  with pytest.raises(TypeError, match="traj"):
    stats_lib.trajectory_stats(st)
  with pytest.raises(ValueError, match="rows_per_block"):
    stats_lib.trajectory_stats(traj, rows_per_block=0)
  other = stats_lib.trajectory_stats(testing.synthetic_trajectory(2, (2, 2), 12))
  with pytest.raises(ValueError, match="b: teacher"):
    stats_lib.merge_stats(st, other)
  with pytest.raises(ValueError, match="b: sample shape"):
    stats_lib.merge_stats(st, stats_lib.trajectory_stats(
        testing.synthetic_trajectory(2, (4,), 10)))
  with pytest.raises(TypeError, match="a:"):
    stats_lib.merge_stats(traj, st)
  with pytest.raises(ValueError, match="chunks"):
    stats_lib.stats_from_chunks([])
  with pytest.raises(ValueError, match="num_steps"):
    oj.search_path(st, 11)
  bad = np.array(traj.model_outputs)
  bad[3, 0, 0] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    stats_lib.trajectory_stats(traj.replace(model_outputs=bad))


def test_search_benchmark_small_runs():
  pytest.importorskip("torch")
  out = _load_benchmark().run(3, (2, 4, 4), 40, 4, verbose=False)
  assert out["paths_equal"], out  # (a'): the torch oracle in our control flow finds (b)'s path
  assert out["max_rel_error_diff"] < ERROR_RTOL_F64
  assert out["calls_a"] > 0 and out["t_a"] > 0 and out["t_b"] > 0
  assert len(out["path_a"]) <= 4 and out["path_a"][0] == 0


_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import olss_jax
    from olss_jax import stats as stats_lib
    assert len(jax.devices()) == 8, jax.devices()
    alphas = olss_jax.scaled_linear_alphas_cumprod()
    mix = olss_jax.analytic.make_gaussian_mixture(jax.random.PRNGKey(0), 4, (3, 4))
    denoise = olss_jax.analytic.mixture_denoiser(mix, alphas)
    x_T = jax.random.normal(jax.random.PRNGKey(1), (16, 3, 4), jnp.float32)
    one = olss_jax.collect_trajectory(denoise, x_T, alphas, 40, mesh=False)
    many = olss_jax.collect_trajectory(denoise, x_T, alphas, 40)           # default: 8 devices
    out = {}
    out["traj_diff"] = float(jnp.max(jnp.abs(many.model_outputs - one.model_outputs)))
    shards = many.model_outputs.addressable_shards
    out["num_shards"] = len(shards)
    out["shard_shapes"] = sorted({tuple(s.data.shape) for s in shards})
    out["shard_devices"] = len({s.device for s in shards})
    out["spec"] = str(many.model_outputs.sharding.spec)
    out["x_T_shard_shapes"] = sorted({tuple(s.data.shape) for s in many.x_T.addressable_shards})
    host = lambda t: t.replace(x_T=np.asarray(t.x_T), model_outputs=np.asarray(t.model_outputs))
    s_one = stats_lib.trajectory_stats(host(one))
    s_many = stats_lib.trajectory_stats(many)
    s_same = stats_lib.trajectory_stats(host(many))
    g_one, g_many, g_same = (np.asarray(s.gram) for s in (s_one, s_many, s_same))
    scale = np.max(np.abs(g_one))
    out["gram_rel"] = float(np.max(np.abs(g_many - g_same)) / scale)
    out["gram_rel_runs"] = float(np.max(np.abs(g_many - g_one)) / scale)
    path_one, _ = olss_jax.search_path(s_one, 5)
    path_many, _ = olss_jax.search_path(s_many, 5)
    out["paths"] = [path_one.tolist(), path_many.tolist()]
    schedule, _ = olss_jax.fit_weights(s_one, path_one)
    y_one = olss_jax.sample(denoise, schedule, x_T, mesh=False)
    y_many = olss_jax.sample(denoise, schedule, x_T)
    y_jit = jax.jit(olss_jax.sample)(denoise, schedule, x_T)
    mesh = stats_lib.batch_mesh(jax.devices()[:4])
    y_mesh4 = olss_jax.sample(denoise, schedule, x_T, mesh=mesh)
    out["sample_diff"] = max(float(jnp.max(jnp.abs(y - y_one))) for y in (y_many, y_jit, y_mesh4))
    out["sample_shard_shapes"] = sorted({tuple(s.data.shape) for s in y_many.addressable_shards})
    out["jit_shard_shapes"] = sorted({tuple(s.data.shape) for s in y_jit.addressable_shards})
    out["mesh4_shard_shapes"] = sorted({tuple(s.data.shape) for s in y_mesh4.addressable_shards})
    odd = olss_jax.collect_trajectory(denoise, x_T[:5], alphas, 4)       # 5 images: not split
    out["odd_devices"] = len(odd.model_outputs.sharding.device_set)
    try:
      olss_jax.sample(denoise, schedule, x_T[:6], mesh=stats_lib.batch_mesh())
      out["bad_mesh"] = "no error"
    except ValueError as err:
      out["bad_mesh"] = str(err)
    with jax.enable_x64(True):   # the amplification guard on the sharded route (32 noises)
      aden, atraj, apath = olss_jax.testing.amplifying_problem()
      a_many, i_many = olss_jax.closed_loop_fit(atraj, apath, aden)
      a_one, i_one = olss_jax.closed_loop_fit(host(atraj), apath, aden)
    # the per-noise cross-validations on the sharded route (each noise's factor gathered)
    fits = {}
    for name, fit_noises, reg in (("all", None, "cv-rmse"), ("split", np.arange(12), "cv-rmse"),
                                  ("robust", None, "cv-robust"),
                                  ("robust-split", np.arange(12), "cv-robust")):
      r_many, ri_many = olss_jax.closed_loop_fit(many, path_one, denoise,
                                                 regularization=reg, fit_noises=fit_noises)
      r_host, ri_host = olss_jax.closed_loop_fit(host(many), path_one, denoise,
                                                 regularization=reg, fit_noises=fit_noises)
      fits[name] = [np.asarray(ri_many.ridge).tolist(), np.asarray(ri_host.ridge).tolist(),
                    float(np.max(np.abs(r_many.weights - r_host.weights))
                          / np.max(np.abs(r_host.weights)))]
    out["cv_rmse"] = fits
    out["amp_devices"] = len(atraj.model_outputs.sharding.device_set)
    out["amp_guarded"] = [np.asarray(i.guarded).tolist() for i in (i_many, i_one)]
    out["amp_weights_rel"] = float(np.max(np.abs(a_many.weights - a_one.weights))
                                   / np.max(np.abs(a_one.weights)))
    print("RESULT" + json.dumps(out))
""")


def test_sharded_collection_stats_and_sampling_on_8_cpu_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  import json  # pylint: disable=import-outside-toplevel
  out = json.loads(lines[0][len("RESULT"):])
  assert out["traj_diff"] <= SHARD_ATOL_F32, out
  assert out["num_shards"] == 8 and out["shard_devices"] == 8, out
  assert out["shard_shapes"] == [[40, 2, 3, 4]], out          # each device: its 2 images only
  assert out["x_T_shard_shapes"] == [[2, 3, 4]], out
  for many_ridge, host_ridge, weights_rel in out["cv_rmse"].values():
    assert many_ridge == host_ridge and weights_rel <= CV_WEIGHTS_RTOL_F32, out["cv_rmse"]
  assert out["amp_devices"] == 8 and out["amp_guarded"] == [[True] * 3] * 2, out
  assert out["amp_weights_rel"] <= GUARDED_WEIGHTS_RTOL_F64, out   # held the same either way
  assert "batch" in out["spec"], out
  assert out["gram_rel"] < GRAM_RTOL_F64, out     # same data: device reduction == host sum
  assert out["gram_rel_runs"] < SHARD_ATOL_F32, out  # 8-device vs 1-device teacher runs
  assert out["paths"][0] == out["paths"][1], out
  assert out["sample_diff"] <= SHARD_ATOL_F32, out
  assert out["sample_shard_shapes"] == [[2, 3, 4]], out
  assert out["jit_shard_shapes"] == [[2, 3, 4]], out
  assert out["mesh4_shard_shapes"] == [[4, 3, 4]], out
  assert out["odd_devices"] == 1, out
  assert "mesh" in out["bad_mesh"] and "6" in out["bad_mesh"], out
