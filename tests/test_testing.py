"""olss_jax.testing (testing.py, synthetic.py): the fixtures' shapes, dtypes, seeds and closed forms.

`save_tiny_stable_diffusion` (tiny_pipeline.py) is exercised by tests/test_stable_diffusion.py.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
# gaussian_epsilon against a Monte Carlo regression of eps on x_t (400,000 float64 draws):
# the slope and intercept's standard errors are ~2e-3 (measured deviation: 1.6e-3).
MC_ATOL = 1e-2
# Affinity of the float64 Gaussian model (measured: ~1e-16, rounding only).
AFFINE_ATOL_F64 = 1e-12
# A teacher's first output (jitted scan) against the model called eagerly at x_T (measured:
# 0.0 in float64, 2.4e-7 in float32 on outputs of size ~2).
FIRST_CALL_ATOL_F64 = 1e-12
FIRST_CALL_ATOL_F32 = 1e-5


def test_gaussian_epsilon_is_the_posterior_mean_of_the_noise():
  mean, std, t = 0.7, 0.3, 400
  ab = ALPHAS[t]
  rng = np.random.default_rng(0)
  x0 = mean + std * rng.standard_normal(400_000)
  eps = rng.standard_normal(400_000)
  x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
  slope, intercept = np.polyfit(x_t, eps, 1)       # E[eps | x_t] is affine for Gaussian data
  grid = np.linspace(-2.0, 2.0, 5).astype(np.float32)
  ours = oj.testing.gaussian_epsilon(mean, std, ALPHAS, jnp.asarray(grid), t)
  chex.assert_type(ours, np.float32)                  # in x's dtype
  chex.assert_trees_all_close(ours, slope * grid + intercept, atol=MC_ATOL)
  with jax.enable_x64(True):
    chex.assert_type(oj.testing.gaussian_epsilon(mean, std, ALPHAS, jnp.asarray(grid, jnp.float64),
                                                 t), np.float64)


def test_gaussian_problem_is_an_affine_model_and_its_float64_teacher_run():
  with jax.enable_x64(True):
    den, traj = oj.testing.gaussian_problem(num_noises=4, dim=3, num_teacher_steps=10)
    chex.assert_shape([traj.x_T, traj.model_outputs], [(4, 3), (10, 4, 3)])
    chex.assert_type([traj.x_T, traj.model_outputs], np.float64)
    assert traj.teacher.num_steps == 10
    # the model is affine in x at every t
    x1, x2 = traj.x_T, jnp.flip(traj.x_T, axis=0) + 1.0
    for t in (traj.timesteps[0], traj.timesteps[-1]):
      chex.assert_trees_all_close(den(0.3 * x1 + 0.7 * x2, t),
                                  0.3 * den(x1, t) + 0.7 * den(x2, t), atol=AFFINE_ATOL_F64)
    # and the trajectory is its teacher run: the first output is the model at x_T
    chex.assert_trees_all_close(traj.model_outputs[0], den(traj.x_T, traj.timesteps[0]),
                                atol=FIRST_CALL_ATOL_F64)
    # by seed
    _, same = oj.testing.gaussian_problem(num_noises=4, dim=3, num_teacher_steps=10)
    _, other = oj.testing.gaussian_problem(num_noises=4, dim=3, num_teacher_steps=10, seed=1)
  chex.assert_trees_all_equal(same.model_outputs, traj.model_outputs)
  assert not np.allclose(other.x_T, traj.x_T)


def test_mixture_problem_is_float32_cached_and_seeded():
  den, traj = oj.testing.mixture_problem((2, 3), num_noises=4, num_teacher_steps=8)
  chex.assert_shape([traj.x_T, traj.model_outputs], [(4, 2, 3), (8, 4, 2, 3)])
  chex.assert_type([traj.x_T, traj.model_outputs], np.float32)
  chex.assert_tree_all_finite(traj.model_outputs)
  chex.assert_trees_all_close(traj.model_outputs[0], den(traj.x_T, traj.timesteps[0]),
                              atol=FIRST_CALL_ATOL_F32)
  again = oj.testing.mixture_problem((2, 3), num_noises=4, num_teacher_steps=8)
  assert again[1] is traj                                     # cached
  _, other = oj.testing.mixture_problem((2, 3), num_noises=4, num_teacher_steps=8, seed=1)
  assert not np.allclose(other.x_T, traj.x_T)


def test_mixture_problem_is_cached_per_precision():
  """Called first under jax.enable_x64 it is float64 there, and default mode stays float32."""
  with jax.enable_x64(True):
    _, wide = oj.testing.mixture_problem((3,), num_noises=2, num_teacher_steps=4)
  _, narrow = oj.testing.mixture_problem((3,), num_noises=2, num_teacher_steps=4)
  chex.assert_type(wide.x_T, np.float64)
  chex.assert_type([narrow.x_T, narrow.model_outputs], np.float32)


def test_random_schedule_is_lower_triangular_over_600_decades_and_seeded():
  schedule = oj.testing.random_schedule(3, 5, {"method": "test"})
  timesteps, weights = np.asarray(schedule.timesteps), np.asarray(schedule.weights)
  chex.assert_shape([timesteps, weights], [(5,), (5, 6)])
  assert timesteps.dtype == np.int32 and weights.dtype == np.float64
  assert np.all(np.diff(timesteps) < 0) and 0 <= timesteps.min() and timesteps.max() < 1000
  assert np.all(np.triu(weights, 2) == 0)              # row i sees x_T, e_0..e_i only
  assert weights[-1, 0] == 5e-324                      # a subnormal
  nonzero = np.abs(weights[weights != 0])
  assert np.log10(nonzero.max()) - np.log10(nonzero[nonzero > 1e-300].min()) > 100
  assert schedule.metadata["method"] == "test"
  chex.assert_trees_all_equal(oj.testing.random_schedule(3, 5).weights, weights)
  assert not np.array_equal(oj.testing.random_schedule(4, 5).weights, weights)
  floats = np.asarray(oj.testing.random_schedule(3, 5, float_timesteps=True).timesteps)
  assert floats.dtype == np.float32
  np.testing.assert_array_equal(floats, timesteps + np.float32(0.25))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_trajectory_has_the_asked_shapes_dtype_and_seed(dtype):
  traj = oj.testing.random_trajectory(num_teacher_steps=4, batch=2, sample_shape=(3,),
                                      seed=5, dtype=dtype)
  chex.assert_shape([traj.x_T, traj.model_outputs], [(2, 3), (4, 2, 3)])
  assert traj.x_T.dtype == dtype and traj.model_outputs.dtype == dtype
  assert traj.teacher.num_steps == 4
  same = oj.testing.random_trajectory(4, 2, (3,), seed=5, dtype=dtype)
  np.testing.assert_array_equal(same.model_outputs, traj.model_outputs)
  other = oj.testing.random_trajectory(4, 2, (3,), seed=6, dtype=dtype)
  assert not np.allclose(other.model_outputs, traj.model_outputs)


def test_synthetic_trajectory_is_float32_host_data_independent_of_chunking():
  kw = {"sample_shape": (2, 3), "num_teacher_steps": 6}
  full = oj.testing.synthetic_trajectory(4, **kw)
  assert isinstance(full.x_T, np.ndarray) and isinstance(full.model_outputs, np.ndarray)
  chex.assert_shape([full.x_T, full.model_outputs], [(4, 2, 3), (6, 4, 2, 3)])
  assert full.x_T.dtype == np.float32 and full.model_outputs.dtype == np.float32
  assert full.teacher.num_steps == 6
  np.testing.assert_array_equal(oj.testing.synthetic_trajectory(range(4), **kw).model_outputs,
                                full.model_outputs)
  # each image from its own seed: any chunking or order of the images gives the same data
  chunks = [oj.testing.synthetic_trajectory(idx, **kw) for idx in ([0, 1], [2, 3])]
  np.testing.assert_array_equal(np.concatenate([c.model_outputs for c in chunks], axis=1),
                                full.model_outputs)
  picked = oj.testing.synthetic_trajectory([3, 1], **kw)
  np.testing.assert_array_equal(picked.x_T, full.x_T[[3, 1]])
  np.testing.assert_array_equal(picked.model_outputs, full.model_outputs[:, [3, 1]])
  # the seed changes every image; a noise pool keeps the shapes and dtype
  assert not np.allclose(oj.testing.synthetic_trajectory(4, seed=1, **kw).x_T, full.x_T)
  pooled = oj.testing.synthetic_trajectory(4, noise_pool=2, **kw)
  chex.assert_shape(pooled.model_outputs, (6, 4, 2, 3))
  assert pooled.model_outputs.dtype == np.float32
  np.testing.assert_array_equal(pooled.x_T, full.x_T)      # same x_T, different noise
  assert not np.array_equal(pooled.model_outputs, full.model_outputs)
