"""olss_jax.stats.closed_loop_fit_chunks: the closed-loop fit on noises streamed in chunks."""
import chex
import jax
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
# float64 algebra on float32 trajectories; the streamed factors are merged by TSQR instead of
# one Householder pass: measured 1e-12 (weights, n = 10) and 1e-11 relative (step errors).
WEIGHTS_ATOL_F64 = 1e-10
ERRORS_RTOL_F64 = 1e-9
# Rows held by the amplification guard: weights up to 10x the teacher's (~100), from the
# strength the guard picked on TSQR-merged factors (measured agreement 3e-13 relative).
GUARDED_WEIGHTS_RTOL_F64 = 1e-8


@pytest.fixture(scope="module")
def problem():
  """18 fitting noises of the sharp 16-dim mixture, 100-step teacher."""
  mix = oj.analytic.make_gaussian_mixture(jax.random.key(0), 8, (16,), std=0.1)
  den = oj.analytic.mixture_denoiser(mix, ALPHAS)
  return den, oj.collect_trajectory(den, jax.random.normal(jax.random.key(1), (18, 16)),
                                    ALPHAS, 100)


def _chunked(traj, den, sizes):
  edges = np.cumsum([0] + list(sizes))
  return lambda: ((traj.take(np.arange(a, b)), den) for a, b in zip(edges[:-1], edges[1:]))


UNEVEN = (5, 6, 5, 2)   # chunks starting at noises 0, 5, 11, 16: folds offset by 0, 1, 3, 0


@pytest.mark.parametrize("num_steps,sizes", [(1, (18,)), (5, UNEVEN)])
def test_streamed_fit_equals_the_closed_loop_fit_on_all_noises(problem, num_steps, sizes):
  """Same rows, targets, ridge and folds (noise b of the stream in fold b % 4, across uneven
  chunks): the same weights and step errors to rounding, the same ridge strengths."""
  den, traj = problem
  path = oj.uniform_path(traj, num_steps)
  ref, ref_info = oj.closed_loop_fit(traj, path, den)
  sched, info = oj.stats.closed_loop_fit_chunks(_chunked(traj, den, sizes), path)
  chex.assert_trees_all_close(sched.weights, ref.weights, atol=WEIGHTS_ATOL_F64)
  np.testing.assert_array_equal(sched.timesteps, ref.timesteps)
  np.testing.assert_allclose(info.step_errors, ref_info.step_errors, rtol=ERRORS_RTOL_F64)
  np.testing.assert_array_equal(info.ridge, ref_info.ridge)
  assert info.num_noises == 18 and info.num_chunks == len(sizes)
  assert info.num_model_calls == num_steps * (num_steps + 1) // 2
  assert sched.metadata["num_fit_images"] == 18 and sched.metadata["fit"] == "closed_loop"
  assert sched.metadata["streamed_chunks"] == len(sizes)


def test_streamed_fit_with_a_fixed_ridge_and_plain_least_squares(problem):
  den, traj = problem
  path = oj.uniform_path(traj, 5)
  for reg in (0.0, 1e-4):
    ref, _ = oj.closed_loop_fit(traj, path, den, regularization=reg)
    sched, info = oj.stats.closed_loop_fit_chunks(_chunked(traj, den, UNEVEN), path,
                                                  regularization=reg)
    chex.assert_trees_all_close(sched.weights, ref.weights, atol=WEIGHTS_ATOL_F64)
    assert np.all(info.ridge == reg)


@pytest.mark.parametrize("regularization", ["cv-rmse", "cv-robust"])
def test_streamed_fit_with_the_per_noise_criterion_equals_the_in_memory_one(problem,
                                                                           regularization):
  """The per-noise criteria (``"cv-rmse"``, ``"cv-robust"``'s re-weighted noises): each noise's
  factor kept across uneven chunks (folds by the stream's noise index) gives the in-memory
  fit's strengths and weights."""
  den, traj = problem
  path = oj.uniform_path(traj, 5)
  ref, ref_info = oj.closed_loop_fit(traj, path, den, regularization=regularization)
  sched, info = oj.stats.closed_loop_fit_chunks(_chunked(traj, den, UNEVEN), path,
                                                regularization=regularization)
  np.testing.assert_array_equal(info.ridge, ref_info.ridge)
  chex.assert_trees_all_close(sched.weights, ref.weights, atol=WEIGHTS_ATOL_F64)
  np.testing.assert_allclose(info.step_errors, ref_info.step_errors, rtol=ERRORS_RTOL_F64)
  assert sched.metadata["regularization"] == regularization


def test_bad_streams_are_refused_by_name(problem):
  den, traj = problem
  path = oj.uniform_path(traj, 3)
  with pytest.raises(TypeError, match="chunks"):
    oj.stats.closed_loop_fit_chunks([(traj, den)], path)
  with pytest.raises(ValueError, match="chunks"):
    oj.stats.closed_loop_fit_chunks(lambda: iter(()), path)
  with pytest.raises(ValueError, match="path"):
    oj.stats.closed_loop_fit_chunks(_chunked(traj, den, (9, 9)), [0, 5, 5])
  with pytest.raises(ValueError, match="regularization"):
    oj.stats.closed_loop_fit_chunks(_chunked(traj, den, (9, 9)), path, regularization=-1.0)
  calls = []

  def shrinking():   # the second pass yields fewer noises than the first
    calls.append(1)
    sizes = (9, 9) if len(calls) <= 2 else (9, 8)
    return _chunked(traj, den, sizes)()

  with pytest.raises(ValueError, match="same chunks"):
    oj.stats.closed_loop_fit_chunks(shrinking, path)
  other = oj.collect_trajectory(den, traj.x_T[:4], ALPHAS, 50)
  with pytest.raises(ValueError, match="another teacher"):
    oj.stats.closed_loop_fit_chunks(lambda: iter([(traj, den), (other, den)]), path)
  # the same steps and timesteps on another noise table: another teacher too
  levels = oj.collect_trajectory(den, traj.x_T[:4], oj.linear_alphas_cumprod(), 100)
  np.testing.assert_array_equal(levels.timesteps, traj.timesteps)
  with pytest.raises(ValueError, match="another teacher"):
    oj.stats.closed_loop_fit_chunks(lambda: iter([(traj, den), (levels, den)]), path)


def test_memory_benchmark_closed_loop_mode_runs_small(capsys):
  """tests/benchmarks/memory_benchmark.py --mode closed-loop (the README's 1,024-noise figure)
  at toy size: it streams, fits and prints its result line."""
  import importlib.util
  import pathlib
  spec = importlib.util.spec_from_file_location(
      "memory_benchmark", pathlib.Path(__file__).parent / "benchmarks" / "memory_benchmark.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.main(["--mode", "closed-loop", "--images", "6", "--chunk", "4", "--latent", "4",
               "--teacher-steps", "20", "--steps", "3"])
  out = capsys.readouterr().out
  assert "closed-loop fit of 6 noises in 2 chunks" in out and "6 model calls per noise" in out
  assert "RESULT mode=closed-loop images=6" in out and "peak RSS" in out


def test_streamed_fit_holds_amplifying_rows_as_the_closed_loop_fit_does():
  """The amplification guard on the streamed route: `testing.amplifying_problem`, whose rows
  the in-memory fit holds, gives the same held rows, strengths and weights streamed."""
  with jax.enable_x64(True):
    den, traj, path = oj.testing.amplifying_problem()
    ref, ref_info = oj.closed_loop_fit(traj, path, den)
    sched, info = oj.stats.closed_loop_fit_chunks(_chunked(traj, den, (10, 13, 9)), path)
  assert np.all(ref_info.guarded)
  np.testing.assert_array_equal(info.guarded, ref_info.guarded)
  np.testing.assert_array_equal(info.ridge, ref_info.ridge)
  chex.assert_trees_all_close(sched.weights, ref.weights, rtol=GUARDED_WEIGHTS_RTOL_F64,
                              atol=WEIGHTS_ATOL_F64)
