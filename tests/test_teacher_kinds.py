"""olss_jax.Teacher kinds: v / x0 prediction, Karras sigmas and rectified flow, step for step.

Each teacher runs an exact analytic model (`olss_jax.analytic`) and its states are compared
with (1) the same recurrence written in float64 numpy from the paper / diffusers' formulas on
diffusers' own timesteps and sigmas, to ``F64_RTOL``, and (2) diffusers' PyTorch scheduler
loop itself: DDIM with float64 noise levels to ``F64_RTOL``; Euler and flow-matching Euler,
which cast the sample to float32 inside ``step``, to ``F32_RTOL``.
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

F64_RTOL = 1e-12   # max |ours - reference| / max |reference| over every state
F32_RTOL = 2e-5    # against a loop computing in float32
K = 50
B, DIM = 8, 6


def _mixture64():
  mixture = oj.analytic.make_gaussian_mixture(jax.random.key(11), 4, (DIM,), std=0.3)
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), mixture)


def _x_T():
  return np.asarray(jax.random.normal(jax.random.key(12), (B, DIM)), np.float64)


def _rel(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def _states(denoise_fn, teacher, x_T):
  with jax.enable_x64(True):
    traj = oj.collect_trajectory(denoise_fn, jnp.asarray(x_T), teacher)
    return np.asarray(traj.states), traj


@pytest.mark.parametrize("prediction_type,kind", [("epsilon", "ddim"), ("v_prediction", "ddim_v"),
                                                  ("sample", "ddim_x0")])
def test_teacher_vp_prediction_types_are_ddim_on_the_prediction(prediction_type, kind):
  """DDIM (Eq. 2): x' = sqrt(ab') x0_hat + sqrt(1 - ab') eps_hat, with x0_hat and eps_hat
  recovered from the model's output as diffusers' DDIMScheduler.step does."""
  alphas = oj.scaled_linear_alphas_cumprod()
  teacher = oj.ddim_teacher(alphas, K, prediction_type=prediction_type)
  assert teacher.kind == kind and teacher.parametrisation.prediction == prediction_type
  with jax.enable_x64(True):
    f = oj.analytic.mixture_denoiser(_mixture64(), alphas, prediction_type=prediction_type)
    ours, traj = _states(f, teacher, _x_T())
    chex.assert_shape(traj.model_outputs, (K, B, DIM))
    x = _x_T()
    levels = np.asarray(teacher.levels)
    for k, t in enumerate(np.asarray(teacher.timesteps)):
      np.testing.assert_allclose(ours[k], x, rtol=0, atol=F64_RTOL * np.abs(x).max())
      e = np.asarray(f(jnp.asarray(x), jnp.int32(t)))
      ab, ab_next = levels[k], levels[k + 1]
      if prediction_type == "epsilon":
        x0, eps = (x - np.sqrt(1 - ab) * e) / np.sqrt(ab), e
      elif prediction_type == "sample":
        x0, eps = e, (x - np.sqrt(ab) * e) / np.sqrt(1 - ab)
      else:
        x0 = np.sqrt(ab) * x - np.sqrt(1 - ab) * e
        eps = np.sqrt(1 - ab) * x + np.sqrt(ab) * e
      x = np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next) * eps
    assert _rel(ours[K], x) <= F64_RTOL


def test_teacher_kinds_step_is_linear_and_consistent_across_parametrisations():
  """The same model written three ways gives the same DDIM trajectory (the kinds differ only
  in how they read the output)."""
  alphas = oj.scaled_linear_alphas_cumprod()
  with jax.enable_x64(True):
    mixture = _mixture64()
    finals = []
    for p in ("epsilon", "v_prediction", "sample"):
      f = oj.analytic.mixture_denoiser(mixture, alphas, prediction_type=p)
      states, _ = _states(f, oj.ddim_teacher(alphas, K, prediction_type=p), _x_T())
      finals.append(states)
  # x0-prediction has 1/sigma at the noisiest states; the three agree to rounding.
  assert _rel(finals[1], finals[0]) <= 1e-10
  assert _rel(finals[2], finals[0]) <= 1e-10


def test_karras_teacher_is_euler_on_karras_sigmas():
  """x~' = x~ + (sigma' - sigma) eps(x~ / sqrt(1 + sigma^2), t(sigma)), x~ = x sqrt(1 + sigma^2)."""
  alphas = oj.scaled_linear_alphas_cumprod()
  teacher = oj.karras_teacher(alphas, K)
  ts = np.asarray(teacher.timesteps)
  assert ts.dtype == np.float32 and ts[0] == np.float32(999.0)
  sigmas = np.sqrt(1 / np.asarray(teacher.levels) - 1)
  assert sigmas[-1] == 0
  with jax.enable_x64(True):
    f = oj.analytic.mixture_denoiser(_mixture64(), alphas)
    ours, _ = _states(f, teacher, _x_T())
    xt = _x_T() * np.sqrt(1 + sigmas[0] ** 2)
    for k in range(K):
      x = xt / np.sqrt(1 + sigmas[k] ** 2)
      assert _rel(ours[k], x) <= F64_RTOL
      e = np.asarray(f(jnp.asarray(x), jnp.float32(ts[k])))
      xt = xt + (sigmas[k + 1] - sigmas[k]) * e
    assert _rel(ours[K], xt) <= F64_RTOL


def test_flow_teacher_is_euler_on_the_rectified_flow():
  teacher = oj.flow_teacher(K, shift=3.0)
  assert teacher.kind == "flow" and teacher.config == {"num_train_timesteps": 1000, "shift": 3.0}
  ts, s = np.asarray(teacher.timesteps), np.asarray(teacher.levels)
  assert ts.dtype == np.float32 and s[0] == 1.0 and s[-1] == 0.0
  with jax.enable_x64(True):
    f = oj.analytic.flow_mixture_denoiser(_mixture64())
    ours, _ = _states(f, teacher, _x_T())
    x = _x_T()
    for k in range(K):
      assert _rel(ours[k], x) <= F64_RTOL
      x = x + (s[k + 1] - s[k]) * np.asarray(f(jnp.asarray(x), jnp.float32(ts[k])))
    assert _rel(ours[K], x) <= F64_RTOL
  # Euler on the flow is DDIM in flow coordinates: a = 1, b = s' - s exactly.
  a, b = teacher.step_coefficients()
  np.testing.assert_array_equal(np.asarray(a), 1.0)
  np.testing.assert_allclose(np.asarray(b), np.diff(s), rtol=1e-15)


def test_flow_teacher_reaches_the_data():
  """1000 Euler steps of the exact velocity land on the mixture's modes (x_0 ~ data)."""
  with jax.enable_x64(True):
    mixture = _mixture64()
    traj = oj.collect_trajectory(oj.analytic.flow_mixture_denoiser(mixture),
                                 jnp.asarray(_x_T()), oj.flow_teacher(1000))
    final = np.asarray(traj.states[-1])
  d = np.linalg.norm(final[:, None] - np.asarray(mixture.means)[None], axis=-1).min(axis=1)
  assert np.all(d < 4 * 0.3 * np.sqrt(DIM)), d   # within 4 std of a component mean


def test_teacher_kinds_bad_arguments():
  alphas = oj.scaled_linear_alphas_cumprod()
  with pytest.raises(ValueError, match="prediction_type"):
    oj.ddim_teacher(alphas, 10, prediction_type="flow")
  with pytest.raises(ValueError, match="shift"):
    oj.flow_teacher(10, shift=0.0)
  with pytest.raises(ValueError, match="rho"):
    oj.karras_teacher(alphas, 10, rho=-1.0)
  with pytest.raises(ValueError, match="levels"):
    oj.validation.check_teacher(oj.Teacher(np.array([900.0, 100.0], np.float32),
                                           np.array([0.2, 0.5, 0.0]), "flow"))


# --- diffusers' PyTorch schedulers (the torch extra) ---------------------------------------

def _torch_loop(scheduler, denoise_fn, x_T, *, scale_input: bool):
  """diffusers' pipeline loop; returns the model input at every step and the final sample."""
  torch = pytest.importorskip("torch")
  sample = torch.from_numpy(x_T.copy()) * getattr(scheduler, "init_noise_sigma", 1.0)
  inputs = []
  for t in scheduler.timesteps:
    model_in = scheduler.scale_model_input(sample, t) if scale_input else sample
    inputs.append(model_in.numpy().astype(np.float64))
    tj = jnp.float32(float(t)) if scheduler.timesteps.dtype.is_floating_point else jnp.int32(int(t))
    e = np.asarray(denoise_fn(jnp.asarray(model_in.numpy().astype(np.float64)), tj))
    sample = scheduler.step(torch.from_numpy(e), t, sample).prev_sample
  return np.stack(inputs), sample.numpy().astype(np.float64)


@pytest.mark.torch
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_teacher_vp_matches_diffusers_ddim_scheduler(prediction_type):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=True, prediction_type=prediction_type)
  sched.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)   # float64 noise levels
  sched.set_timesteps(K)
  alphas = sched.alphas_cumprod.numpy()
  with jax.enable_x64(True):
    f = oj.analytic.mixture_denoiser(_mixture64(), alphas, prediction_type=prediction_type)
    inputs, final = _torch_loop(sched, f, _x_T(), scale_input=False)
    ours, _ = _states(f, oj.ddim_teacher(alphas, K, prediction_type=prediction_type), _x_T())
  np.testing.assert_array_equal(np.asarray(oj.ddim_teacher(alphas, K).timesteps),
                                sched.timesteps.numpy())
  assert _rel(ours[:K], inputs) <= F64_RTOL
  assert _rel(ours[K], final) <= F64_RTOL


@pytest.mark.torch
def test_karras_teacher_matches_diffusers_euler_karras():
  diffusers = pytest.importorskip("diffusers")
  sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", use_karras_sigmas=True)
  sched.set_timesteps(K)
  alphas = sched.alphas_cumprod.numpy().astype(np.float64)
  teacher = oj.karras_teacher(alphas, K)
  # diffusers computes its sigma table from float32 alpha_bar in float32; ours is float64.
  np.testing.assert_allclose(np.asarray(teacher.timesteps), sched.timesteps.numpy(), rtol=1e-6,
                             atol=1e-5)
  np.testing.assert_allclose(np.sqrt(1 / np.asarray(teacher.levels) - 1), sched.sigmas.numpy(),
                             rtol=1e-6)
  with jax.enable_x64(True):
    f = oj.analytic.mixture_denoiser(_mixture64(), alphas)
    inputs, final = _torch_loop(sched, f, _x_T(), scale_input=True)
    # diffusers starts Euler ("linspace") at noise * sigma_max, not noise * sqrt(1 + sigma_max^2):
    # its first VP state is the noise scaled by sigma_max / sqrt(1 + sigma_max^2).
    sigma_max = float(sched.sigmas[0])
    np.testing.assert_allclose(inputs[0], _x_T() * sigma_max / np.sqrt(1 + sigma_max**2),
                               rtol=1e-6)
    ours, _ = _states(f, teacher, inputs[0])
  assert _rel(ours[:K], inputs) <= F32_RTOL
  assert _rel(ours[K], final) <= F32_RTOL


@pytest.mark.torch
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_teacher_matches_diffusers_flow_match_euler(shift):
  diffusers = pytest.importorskip("diffusers")
  sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
  sched.set_timesteps(K)
  teacher = oj.flow_teacher(K, shift=shift)
  np.testing.assert_array_equal(np.asarray(teacher.timesteps), sched.timesteps.numpy())
  np.testing.assert_array_equal(np.asarray(teacher.levels).astype(np.float32), sched.sigmas.numpy())
  with jax.enable_x64(True):
    f = oj.analytic.flow_mixture_denoiser(_mixture64())
    inputs, final = _torch_loop(sched, f, _x_T(), scale_input=False)
    ours, _ = _states(f, teacher, _x_T())
  assert _rel(ours[:K], inputs) <= F32_RTOL
  assert _rel(ours[K], final) <= F32_RTOL
