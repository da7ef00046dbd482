"""Issue 6: fit and search on precomputed statistics equal the paper's direct tall least squares."""
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

from olss_jax._src import fit
from olss_jax._src import search
from olss_jax._src import stats as stats_lib
from olss_jax._src import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Gram-based step errors vs the direct float64 tall least squares (issue 6's requirement).
ERROR_RTOL_F64 = 1e-6
# Gram sums of the same float32 data in a different order: float64 rounding only.
GRAM_RTOL_F64 = 1e-12
WEIGHT_ATOL_F64 = 1e-6
# float32 model runs on 8 devices vs 1: same ops, possibly different reduction order.
SHARD_ATOL_F32 = 1e-5


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
      "search_benchmark", os.path.join(ROOT, "benchmarks", "search_benchmark.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def correlated():
  """Strongly correlated outputs (cond(A) ~ 5e4): the hard case for a Gram."""
  traj = synthetic.synthetic_trajectory(5, (4, 8, 8), 120, noise=3e-4, seed=3)
  k = traj.num_teacher_steps
  a = np.concatenate([traj.x_T.reshape(1, -1), traj.model_outputs.reshape(k, -1)], 0)
  a = a.astype(np.float64).T                                          # (B * D, K + 1)
  states = a @ traj.state_coefficients().T                            # (B * D, K + 1)
  return traj, a, states


def _direct_error(a, states, prefix, target):
  basis = a[:, np.concatenate([[0], np.asarray(prefix) + 1])]
  w = np.linalg.lstsq(basis, states[:, target], rcond=None)[0]
  resid = states[:, target] - basis @ w
  return resid @ resid / a.shape[0], w


def test_neighbouring_outputs_correlate_like_a_teacher(correlated):
  traj, a, _ = correlated
  e = a[:, 1:]
  corr = [np.corrcoef(e[:, i], e[:, i + 1])[0, 1] for i in range(e.shape[1] - 1)]
  assert min(corr) > 0.99
  assert np.linalg.cond(a) > 1e4  # genuinely ill-conditioned, not a soft test


def test_candidate_errors_equal_direct_least_squares(correlated):
  traj, a, states = correlated
  proj = search.ProjectionErrors(stats_lib.trajectory_stats(traj))
  rng = np.random.default_rng(0)
  k = traj.num_teacher_steps
  worst = 0.0
  for _ in range(150):
    prefix = np.sort(rng.choice(k, rng.integers(1, 9), replace=False))
    target = int(rng.integers(prefix[-1] + 1, k + 1))
    want, _ = _direct_error(a, states, prefix, target)
    q = proj.start()
    for p in prefix:
      q = proj.add(q, int(p) + 1)
    worst = max(worst, abs(proj.error(q, target) - want) / want)
  assert worst < ERROR_RTOL_F64, worst


@pytest.mark.parametrize("num_steps", [3, 6])
def test_search_on_stats_equals_direct_search(correlated, num_steps):
  traj, a, states = correlated
  bench = _load_benchmark()
  want_path, want_errors, _ = bench.reference_search(
      lambda prefix, target: _direct_error(a, states, prefix, target)[0],
      traj.num_teacher_steps, num_steps)
  st = stats_lib.trajectory_stats(traj)
  path, info = search.search_path(st, num_steps, return_info=True)
  np.testing.assert_array_equal(path, want_path)
  chex.assert_trees_all_close(info.step_errors, want_errors, rtol=ERROR_RTOL_F64)
  np.testing.assert_array_equal(search.search_path(traj, num_steps), path)
  chex.assert_trees_all_close(search.path_errors(st, path), want_errors, rtol=ERROR_RTOL_F64)


def test_fit_on_stats_equals_direct_least_squares(correlated):
  traj, a, states = correlated
  path = np.array([0, 7, 30, 61, 100], np.int32)
  schedule = fit.fit_weights(stats_lib.trajectory_stats(traj), path)
  targets = np.append(path[1:], traj.num_teacher_steps)
  for i, target in enumerate(targets):
    err, w = _direct_error(a, states, path[:i + 1], int(target))
    chex.assert_trees_all_close(np.asarray(schedule.weights)[i, :i + 2], w,
                                atol=WEIGHT_ATOL_F64, rtol=1e-6)
    np.testing.assert_allclose(schedule.metadata["step_errors"][i], err, rtol=ERROR_RTOL_F64)
  assert schedule.metadata["num_fit_images"] == traj.batch_size
  np.testing.assert_array_equal(schedule.timesteps, traj.timesteps[path])


def test_chunked_accumulation_and_merge_equal_one_pass():
  whole = synthetic.synthetic_trajectory(6, (2, 4, 4), 30, seed=1)
  chunks = [synthetic.synthetic_trajectory(idx, (2, 4, 4), 30, seed=1)
            for idx in ([0, 1], [2], [3, 4, 5])]
  one = stats_lib.trajectory_stats(whole)
  streamed = stats_lib.stats_from_chunks(iter(chunks))
  blocked = stats_lib.trajectory_stats(whole, images_per_block=4)
  parts = [stats_lib.trajectory_stats(c) for c in chunks]
  left = stats_lib.merge_stats(stats_lib.merge_stats(parts[0], parts[1]), parts[2])
  right = stats_lib.merge_stats(parts[0], stats_lib.merge_stats(parts[2], parts[1]))
  for other in (streamed, blocked, left, right):
    chex.assert_trees_all_close(other.gram, one.gram, rtol=GRAM_RTOL_F64)
    assert other.num_images == 6 and other.num_elements == 6 * 32
  # the Gram is exactly A^T A of the float64 data
  a = np.concatenate([whole.x_T.reshape(1, -1), whole.model_outputs.reshape(30, -1)], 0)
  a = a.astype(np.float64)
  chex.assert_trees_all_close(one.gram, a @ a.T, rtol=GRAM_RTOL_F64)


def test_stats_of_jax_arrays_jit_and_no_jit_agree():
  traj = synthetic.synthetic_trajectory(3, (2, 4, 4), 20, seed=2)
  host = stats_lib.trajectory_stats(traj)
  on_device = stats_lib.trajectory_stats(jax.tree_util.tree_map(jnp.asarray, traj))
  chex.assert_trees_all_close(on_device.gram, host.gram, rtol=GRAM_RTOL_F64)
  r = host.factor()
  chex.assert_trees_all_close(r.T @ r, host.gram, rtol=1e-10, atol=1e-10 * np.max(host.gram))
  path = np.array([0, 5, 12], np.int32)
  with jax.disable_jit():
    nojit = fit.fit_weights(host, path)
  chex.assert_trees_all_close(fit.fit_weights(host, path).weights, nojit.weights, atol=1e-12)


def test_rank_deficient_outputs_warn_and_stay_finite():
  traj = synthetic.synthetic_trajectory(2, (2, 4, 4), 20, seed=4)
  outputs = np.array(traj.model_outputs)
  outputs[6] = outputs[5]  # a repeated model output
  outputs[9] = 0.0         # a zero output
  traj = traj.__class__(timesteps=traj.timesteps, x_T=traj.x_T, model_outputs=outputs,
                        alphas=traj.alphas)
  st = stats_lib.trajectory_stats(traj)
  r = st.factor()
  assert np.all(r[:, 10] == 0.0)
  with pytest.warns(RuntimeWarning, match="rank deficient"):
    schedule = fit.fit_weights(st, np.array([0, 5, 6, 9, 12], np.int32))
  assert np.all(np.isfinite(schedule.weights))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    direct = fit.fit_weights(traj, np.array([0, 5, 6, 9, 12], np.int32))
  np.testing.assert_allclose(schedule.metadata["step_errors"], direct.metadata["step_errors"],
                             rtol=ERROR_RTOL_F64)


def test_bad_input_raises_naming_the_argument():
  traj = synthetic.synthetic_trajectory(2, (2, 2), 10)
  st = stats_lib.trajectory_stats(traj)
  with pytest.raises(TypeError, match="traj"):
    stats_lib.trajectory_stats(st)
  with pytest.raises(ValueError, match="images_per_block"):
    stats_lib.trajectory_stats(traj, images_per_block=0)
  other = stats_lib.trajectory_stats(synthetic.synthetic_trajectory(2, (2, 2), 12))
  with pytest.raises(ValueError, match="b: teacher"):
    stats_lib.merge_stats(st, other)
  with pytest.raises(ValueError, match="b: sample shape"):
    stats_lib.merge_stats(st, stats_lib.trajectory_stats(
        synthetic.synthetic_trajectory(2, (4,), 10)))
  with pytest.raises(TypeError, match="a:"):
    stats_lib.merge_stats(traj, st)
  with pytest.raises(ValueError, match="chunks"):
    stats_lib.stats_from_chunks([])
  with pytest.raises(ValueError, match="gram"):
    stats_lib.gram_factor(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="num_steps"):
    search.search_path(st, 11)
  bad = np.array(traj.model_outputs)
  bad[3, 0, 0] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    stats_lib.trajectory_stats(traj.__class__(timesteps=traj.timesteps, x_T=traj.x_T,
                                              model_outputs=bad, alphas=traj.alphas))


def test_search_benchmark_small_runs():
  out = _load_benchmark().run(3, (2, 4, 4), 40, 4, verbose=False)
  assert out["finished"] and out["paths_equal"] and out["walks_agree"]
  assert out["max_rel_error_diff"] < ERROR_RTOL_F64
