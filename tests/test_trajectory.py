"""olss_jax.collect_trajectory: the teacher run, its replayed states, and the run under jit."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
FIT_SEED = 1
# Model outputs of the same float32 teacher, jitted or eager (XLA may fuse differently).
F32_RUN_ATOL = 1e-5
# The float64 coefficients applied to the float32 outputs vs the float32 recurrence itself.
F32_REPLAY_ATOL = 1e-4


def _as_float64(x):
  """``x`` as a float64 jax array (concrete float64 numpy keeps every bit)."""
  with jax.enable_x64(True):
    return jnp.asarray(x, jnp.float64)


def _model(seed=0, components=8, shape=(16,)):
  return oj.analytic.mixture_denoiser(
      oj.analytic.make_gaussian_mixture(jax.random.key(seed), components, shape), ALPHAS)


def _noise(seed, batch, shape=(16,)):
  return jax.random.normal(jax.random.key(seed), (batch,) + shape)


@pytest.fixture(scope="module")
def teacher():
  f = _model()
  return f, oj.collect_trajectory(f, _noise(FIT_SEED, 32), ALPHAS)


def test_trajectory_contract(teacher):
  f, traj = teacher
  chex.assert_shape(traj.x_T, (32, 16))
  chex.assert_shape(traj.model_outputs, (1000, 32, 16))
  states = traj.states
  chex.assert_shape(states, (1001, 32, 16))
  np.testing.assert_array_equal(np.asarray(states[0]), np.asarray(traj.x_T))
  np.testing.assert_array_equal(np.asarray(traj.timesteps), np.arange(999, -1, -1))
  assert traj.teacher.kind == "ddim" and float(traj.levels[-1]) == 1.0
  assert traj.levels.dtype == jnp.float64
  np.testing.assert_array_equal(np.asarray(traj.levels[:-1]), ALPHAS[::-1])
  # states[k] is what the model saw: re-evaluating the model there gives the stored output.
  for k in (0, 500, 999):
    chex.assert_trees_all_close(f(states[k], jnp.int32(traj.timesteps[k])), traj.model_outputs[k],
                                rtol=1e-5, atol=F32_RUN_ATOL)
  # The exact float64 coefficients reproduce the float32 recurrence.
  coeffs = np.asarray(traj.state_coefficients())
  basis = np.concatenate([np.asarray(traj.x_T, np.float64)[None],
                          np.asarray(traj.model_outputs, np.float64)], axis=0)
  final = np.tensordot(coeffs[-1], basis, axes=1)
  np.testing.assert_allclose(final, np.asarray(states[-1]), rtol=0, atol=F32_REPLAY_ATOL)


@pytest.mark.parametrize("offset,set_one", [(0, True), (1, False)])
def test_teacher_matches_diffusers_flax_ddim_step_for_step(offset, set_one):
  """Our teacher is diffusers' FlaxDDIMScheduler (eta = 0), every state, float64."""
  from diffusers import FlaxDDIMScheduler
  with jax.enable_x64(True):
    f = _model()
    x_T = jax.random.normal(jax.random.key(FIT_SEED), (4, 16), jnp.float64)
    sched = FlaxDDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", set_alpha_to_one=set_one,
                              steps_offset=offset, clip_sample=False, dtype=jnp.float64)
    state = sched.set_timesteps(sched.create_state(), 50)
    final_alpha = 1.0 if set_one else float(ALPHAS[0])
    traj = oj.collect_trajectory(f, x_T, ALPHAS, 50, steps_offset=offset,
                                 final_alpha_cumprod=final_alpha)
    ours = traj.states
    x = x_T
    np.testing.assert_array_equal(np.asarray(traj.timesteps), np.asarray(state.timesteps))
    for k, t in enumerate(state.timesteps):
      x = sched.step(state, f(x, t), t, x).prev_sample
      # diffusers' float32 alphas_cumprod table vs our float64 one: 1e-7 relative per step.
      chex.assert_trees_all_close(ours[k + 1], x, rtol=1e-6, atol=1e-6)


def test_collect_under_jit_equals_eager_with_only_num_teacher_steps_static(teacher):
  f, traj = teacher
  x_T = traj.x_T[:8]
  eager = oj.collect_trajectory(f, x_T, traj.teacher)
  jitted = jax.jit(oj.collect_trajectory)(f, x_T, traj.teacher)
  chex.assert_trees_all_close(jitted.model_outputs, eager.model_outputs, atol=F32_RUN_ATOL)
  np.testing.assert_array_equal(np.asarray(jitted.levels), np.asarray(traj.levels))
  assert jitted.levels.dtype == jnp.float64  # float64 levels cross the jit boundary intact
  # alphas_cumprod traced (a float64 jax array keeps its precision through jit).
  by_table = jax.jit(oj.collect_trajectory, static_argnames="num_teacher_steps")(
      f, x_T, _as_float64(ALPHAS), num_teacher_steps=1000)
  chex.assert_trees_all_close(by_table.model_outputs, eager.model_outputs, atol=F32_RUN_ATOL)
  np.testing.assert_array_equal(np.asarray(by_table.levels), np.asarray(traj.levels))


def test_chunked_collection_equals_one_scan(teacher):
  f, traj = teacher
  x_T = traj.x_T[:4]
  calls = []
  chunked = oj.collect_trajectory(f, x_T, ALPHAS, 100, steps_per_chunk=30,
                                  callback=lambda done, total: calls.append((done, total)))
  whole = oj.collect_trajectory(f, x_T, ALPHAS, 100)
  assert isinstance(chunked.model_outputs, np.ndarray)  # gathered on the host
  np.testing.assert_allclose(chunked.model_outputs, np.asarray(whole.model_outputs), atol=1e-6)
  assert calls == [(30, 100), (60, 100), (90, 100), (100, 100)]


def test_legacy_ddim_constructor_and_replace(teacher):
  _, traj = teacher
  legacy = oj.Trajectory(timesteps=np.asarray(traj.timesteps), x_T=traj.x_T,
                         model_outputs=traj.model_outputs, alphas=np.asarray(traj.levels))
  assert legacy.teacher.kind == "ddim"
  chex.assert_trees_all_close(legacy.state_coefficients(), traj.state_coefficients(), rtol=0)
  swapped = traj.replace(x_T=traj.x_T * 0)
  assert swapped.teacher is traj.teacher and float(jnp.max(jnp.abs(swapped.x_T))) == 0.0
  leaves, treedef = jax.tree_util.tree_flatten(traj)
  again = jax.tree_util.tree_unflatten(treedef, leaves)
  assert again.teacher.kind == "ddim" and again.num_teacher_steps == 1000
  with pytest.raises(TypeError, match="teacher"):
    oj.Trajectory(traj.x_T, traj.model_outputs, traj.teacher, alphas=np.asarray(traj.levels))
  with pytest.raises(TypeError, match="replace"):
    traj.replace(alphas=1)


def test_bad_inputs_name_the_argument():
  f = _model()
  with pytest.raises(ValueError, match="alphas_cumprod"):
    oj.collect_trajectory(f, _noise(0, 2), -ALPHAS, 10)
  with pytest.raises(ValueError, match="num_steps"):
    oj.collect_trajectory(f, _noise(0, 2), ALPHAS, 0)
  with pytest.raises(TypeError, match="x_T"):
    oj.collect_trajectory(f, jnp.zeros((2, 16), jnp.int32), ALPHAS, 10)
  with pytest.raises(ValueError, match="x_T"):
    oj.collect_trajectory(f, jnp.zeros(()), ALPHAS, 10)
  with pytest.raises(TypeError, match="denoise_fn"):
    oj.collect_trajectory("model", _noise(0, 2), ALPHAS, 10)
  with pytest.raises(ValueError, match="denoise_fn: returned shape"):
    oj.collect_trajectory(lambda x, t: x[:, :3], _noise(0, 2), ALPHAS, 10)
  teacher = oj.ddim_teacher(ALPHAS, 10)
  with pytest.raises(TypeError, match="num_teacher_steps"):
    oj.collect_trajectory(f, _noise(0, 2), teacher, 10)
  with pytest.raises(ValueError, match="steps_per_chunk"):
    oj.collect_trajectory(f, _noise(0, 2), teacher, steps_per_chunk=0)
  with pytest.raises(ValueError, match="steps_per_chunk"):
    jax.jit(lambda x: oj.collect_trajectory(f, x, teacher, steps_per_chunk=5).model_outputs)(
        _noise(0, 2))


def test_nan_in_x_T_is_refused_before_the_teacher_runs():
  x_T = np.asarray(_noise(0, 3)).copy()
  x_T[2, 0] = np.inf
  with pytest.raises(ValueError, match="x_T: non-finite .*sample 2"):
    oj.collect_trajectory(_model(), x_T, ALPHAS, 10)


def test_a_digits_model_built_for_other_labels_fails_in_one_line_naming_denoise_fn():
  model = oj.digits.load_digits_model()
  f = model.denoiser(np.arange(4, dtype=np.int32))            # built for 4 labels
  x_T = jax.random.normal(jax.random.key(0), (8, *model.sample_shape))  # called on 8 noises
  with pytest.raises((ValueError, TypeError),
                     match=r"^denoise_fn: failed on x_t of shape \(8, 1, 8, 8\)") as info:
    oj.collect_trajectory(f, x_T, model.teacher(2))
  assert "\n" not in str(info.value) and "this batch of 8 noises" in str(info.value)
  assert info.value.__cause__ is not None                     # the model's own error, chained
  # a model for another sample shape: the same one line
  analytic = _model()
  with pytest.raises((ValueError, TypeError), match="^denoise_fn: failed on x_t"):
    oj.collect_trajectory(analytic, x_T, ALPHAS, 2)
