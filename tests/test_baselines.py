"""Classical baselines as `Schedule`s: against diffusers' Flax schedulers, and structure checks.

Ground truth: diffusers 0.39's own Flax scheduler loops (FlaxDDIMScheduler, FlaxPNDMScheduler,
FlaxEulerDiscreteScheduler, FlaxDPMSolverMultistepScheduler) run on the exact noise prediction
of a Gaussian mixture (a nonlinear model, so a wrong coefficient shows in the final sample).
DEIS, UniPC and iPNDM have no Flax scheduler; they are checked in `test_baselines_torch.py`.

Precision: in float64 (`jax.enable_x64`, schedulers with ``dtype=jnp.float64``) ours and
diffusers agree to ~1e-14, far inside the 1e-5 target. In float32, diffusers' own loop drifts
from its float64 loop by up to ~2e-5 relative on this model (it computes alpha_bar, log-SNR and
exp(h) - 1 in float32), so float32 agreement is checked at the float32 tolerance below and the
1e-5 target is asserted in float64.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from olss_jax._src.baselines import deis as deis_lib
from olss_jax._src.baselines import dpm_solver as dpm_lib
from olss_jax._src.baselines import euler as euler_lib
from olss_jax._src.baselines import ipndm as ipndm_lib
from olss_jax._src.baselines import linear
from olss_jax._src.baselines import pndm as pndm_lib
from olss_jax._src.baselines import spacing
from olss_jax._src.baselines import unipc as unipc_lib

diffusers = pytest.importorskip("diffusers")

# Max |ours - reference| / max |reference| on the final sample.
RTOL = {jnp.float32: 1e-4, jnp.float64: 1e-10}
STEP_COUNTS = (5, 10, 20)
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
MIXTURE_SEED, NOISE_SEED = 0, 1


def _max_rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _mixture_eps(mu, var_data, log_w, alphas, x_t, t):
  ab = alphas[t]
  x = x_t.reshape(x_t.shape[0], -1)
  var = ab * var_data + 1.0 - ab                                   # (M,)
  diff = x[:, None, :] - jnp.sqrt(ab) * mu[None]                   # (B, M, D)
  logits = log_w - 0.5 * x.shape[1] * jnp.log(var) - 0.5 * jnp.sum(diff**2, -1) / var
  resp = jax.nn.softmax(logits, axis=-1)                           # (B, M)
  return (jnp.sqrt(1.0 - ab) * jnp.einsum("bm,bmd->bd", resp / var, diff)).reshape(x_t.shape)


def _mixture_denoiser_float64(alphas):
  """`oj.mixture_denoiser`'s closed-form noise prediction, evaluated in float64 (call under x64).

  `oj.mixture_denoiser` computes in float32; its rounding differs between eager and compiled
  XLA code by ~1e-7, which the sharp mixture amplifies to ~1e-5 in the final sample. The
  float64 checks need the model itself in float64.
  """
  mixture = oj.make_gaussian_mixture(jax.random.PRNGKey(MIXTURE_SEED))
  as64 = lambda a: jnp.asarray(np.asarray(a, np.float64))
  mu = as64(mixture.means).reshape(mixture.means.shape[0], -1)
  return jax.tree_util.Partial(_mixture_eps, mu, as64(mixture.stds) ** 2,
                               as64(mixture.log_weights), as64(alphas))


def _denoiser(alphas, dtype):
  if dtype == jnp.float64:
    return _mixture_denoiser_float64(alphas)
  return oj.mixture_denoiser(oj.make_gaussian_mixture(jax.random.PRNGKey(MIXTURE_SEED)), alphas)


_sample_jit = jax.jit(oj.sample)  # one cache for the whole file: compiles once per (n, dtype)


def _run_flax(scheduler, denoise_fn, x_T, num_inference_steps):
  """diffusers' Flax pipeline loop (as in FlaxStableDiffusionPipeline), run eagerly.

  Returns:
    (final sample, the timesteps the model was called at).
  """
  state = scheduler.create_state()
  state = scheduler.set_timesteps(state, num_inference_steps, x_T.shape)
  # diffusers' DPM-Solver `step` mixes int32 timesteps with default ints in `lax.select`; under
  # x64 that needs the default int width.
  int_type = jnp.result_type(int)
  for field in ("timesteps", "prev_timestep"):
    value = getattr(state, field, None)
    if value is not None and jnp.issubdtype(value.dtype, jnp.integer):
      state = state.replace(**{field: value.astype(int_type)})
  timesteps = np.asarray(state.timesteps)
  x = x_T * state.init_noise_sigma
  for t in state.timesteps:
    model_input = scheduler.scale_model_input(state, x, t)
    e = denoise_fn(model_input, t.astype(jnp.int32))
    x, state = scheduler.step(state, e, t, x, return_dict=False)
  return x, timesteps.astype(np.int64)


# name -> (Flax scheduler factory(dtype), our schedule(alphas, n), diffusers' num_inference_steps(n))
FLAX_CASES = {
    "ddim": (lambda dt: diffusers.FlaxDDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True,
                                                    dtype=dt),
             lambda ab, n: oj.ddim_baseline_schedule(ab, n), lambda n: n),
    "ddim_sd": (lambda dt: diffusers.FlaxDDIMScheduler(**SD, clip_sample=False, steps_offset=1,
                                                       set_alpha_to_one=False, dtype=dt),
                lambda ab, n: oj.ddim_baseline_schedule(ab, n, steps_offset=1,
                                                        final_alpha_cumprod=ab[0]),
                lambda n: n),
    "pndm": (lambda dt: diffusers.FlaxPNDMScheduler(**SD, skip_prk_steps=True, dtype=dt),
             lambda ab, n: oj.pndm_schedule(ab, n), lambda n: n - 1),
    "pndm_sd": (lambda dt: diffusers.FlaxPNDMScheduler(**SD, skip_prk_steps=True, steps_offset=1,
                                                       dtype=dt),
                lambda ab, n: oj.pndm_schedule(ab, n, steps_offset=1), lambda n: n - 1),
    "euler": (lambda dt: diffusers.FlaxEulerDiscreteScheduler(**SD, timestep_spacing="leading",
                                                              dtype=dt),
              lambda ab, n: oj.euler_schedule(ab, n, steps_offset=1), lambda n: n),
    "dpm_solver": (lambda dt: diffusers.FlaxDPMSolverMultistepScheduler(
        **SD, algorithm_type="dpmsolver", dtype=dt),
                   lambda ab, n: oj.dpm_solver_schedule(ab, n), lambda n: n),
    "dpm_solver_pp": (lambda dt: diffusers.FlaxDPMSolverMultistepScheduler(
        **SD, algorithm_type="dpmsolver++", dtype=dt),
                      lambda ab, n: oj.dpm_solver_pp_schedule(ab, n, final_sigmas_type="sigma_min"),
                      lambda n: n),
    "dpm_solver_pp_3_heun": (lambda dt: diffusers.FlaxDPMSolverMultistepScheduler(
        **SD, algorithm_type="dpmsolver++", solver_order=3, solver_type="heun", dtype=dt),
                             lambda ab, n: oj.dpm_solver_pp_schedule(
                                 ab, n, solver_order=3, solver_type="heun",
                                 final_sigmas_type="sigma_min"),
                             lambda n: n),
}


def _compare_with_flax(case: str, n: int, dtype, *, use_jit: bool) -> float:
  make_scheduler, make_schedule, num_inference = FLAX_CASES[case]
  scheduler = make_scheduler(dtype)
  alphas = np.asarray(scheduler.create_state().common.alphas_cumprod, np.float64)
  denoise_fn = _denoiser(alphas, dtype)
  x_T = jax.random.normal(jax.random.PRNGKey(NOISE_SEED), (64, 16), jnp.float32).astype(dtype)
  ref, ref_timesteps = _run_flax(scheduler, denoise_fn, x_T, num_inference(n))
  schedule = make_schedule(alphas, n)
  # Same model calls: count and timesteps.
  assert schedule.num_steps == n == len(ref_timesteps)
  np.testing.assert_array_equal(np.asarray(schedule.timesteps), ref_timesteps)
  run = _sample_jit if use_jit else oj.sample
  ours = run(denoise_fn, schedule, x_T)
  chex.assert_type(ours, dtype)
  chex.assert_tree_all_finite(ours)
  return _max_rel_err(ours, ref)


# The five configurations the comparison uses run at every step count; the variants (offset 0
# PNDM, Stable Diffusion's DDIM, third-order Heun DPM-Solver++) at 10 steps.
CORE_CASES = ("ddim", "pndm_sd", "euler", "dpm_solver", "dpm_solver_pp")
FLOAT64_PARAMS = ([(case, n) for case in CORE_CASES for n in STEP_COUNTS]
                  + [(case, 10) for case in sorted(set(FLAX_CASES) - set(CORE_CASES))])


@pytest.mark.parametrize("case,n", FLOAT64_PARAMS)
def test_matches_flax_scheduler_float64(case, n):
  with jax.enable_x64(True):
    err = _compare_with_flax(case, n, jnp.float64, use_jit=True)
  assert err <= RTOL[jnp.float64], f"{case} n={n}: max relative error {err:.2e}"


@pytest.mark.parametrize("case", ["dpm_solver_pp"])
def test_matches_flax_scheduler_float32(case):
  err = _compare_with_flax(case, 10, jnp.float32, use_jit=False)
  assert err <= RTOL[jnp.float32], f"{case} n=10: max relative error {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("n", STEP_COUNTS)
@pytest.mark.parametrize("case", sorted(FLAX_CASES))
def test_matches_flax_scheduler_float32_all(case, n):
  err = _compare_with_flax(case, n, jnp.float32, use_jit=n == 20)
  assert err <= RTOL[jnp.float32], f"{case} n={n}: max relative error {err:.2e}"


# ----------------------------------------------------------------------------------------------
# Structure: shapes, triangularity, model calls, and the reference loop of each solver's program.

ALPHAS = oj.scaled_linear_alphas_cumprod()


def _programs(alphas, n):
  """Each baseline's own update program (the plain reference loop), with its schedule."""
  ts_multi = spacing.multistep_timesteps(n, alphas.shape[0])
  lv_min = spacing.vp_levels(alphas, ts_multi, alphas[0])
  lv_zero = spacing.vp_levels(alphas, ts_multi, 1.0)
  ts_euler = spacing.single_step_timesteps(n, alphas.shape[0])
  sig = np.sqrt((1 - alphas[ts_euler]) / alphas[ts_euler])
  return {
      "euler": (euler_lib._euler_program(np.append(sig, 0.0), ts_euler),
                oj.euler_schedule(alphas, n)),
      "pndm": (pndm_lib._pndm_program(alphas, n - 1, 0, float(alphas[0])),
               oj.pndm_schedule(alphas, n)),
      "deis": (deis_lib._deis_program(*lv_min, ts_multi, solver_order=2, lower_order_final=True),
               oj.deis_schedule(alphas, n)),
      "dpm_solver": (dpm_lib._dpm_program(*lv_min, ts_multi, plus_plus=False, solver_order=2,
                                          solver_type="midpoint", lower_order_final=True,
                                          zero_final=False),
                     oj.dpm_solver_schedule(alphas, n)),
      "dpm_solver_pp": (dpm_lib._dpm_program(*lv_zero, ts_multi, plus_plus=True, solver_order=2,
                                             solver_type="midpoint", lower_order_final=True,
                                             zero_final=True),
                        oj.dpm_solver_pp_schedule(alphas, n)),
      "unipc": (unipc_lib._unipc_program(*lv_zero, ts_multi, solver_order=2, solver_type="bh2",
                                         predict_x0=True, lower_order_final=True,
                                         disable_corrector=()),
                oj.unipc_schedule(alphas, n)),
      "ipndm": (ipndm_lib._ipndm_program(*lv_zero[:2], ts_multi), oj.ipndm_schedule(alphas, n)),
  }


@pytest.mark.parametrize("n", (1, 3, 5, 10, 20))
@pytest.mark.parametrize("name", sorted(oj.BASELINES))
def test_schedule_structure(name, n):
  schedule = oj.baseline_schedule(name, ALPHAS, n)
  weights, timesteps = np.asarray(schedule.weights), np.asarray(schedule.timesteps)
  chex.assert_shape(weights, (n, n + 1))
  chex.assert_shape(timesteps, (n,))
  assert schedule.num_steps == n
  assert schedule.metadata["method"] == name
  assert np.all(np.isfinite(weights))
  # Row i may use x_T and e_0..e_i only (lower-triangular over the basis).
  assert np.all(weights[np.triu_indices(n, k=2, m=n + 1)] == 0)
  assert np.all(np.diff(timesteps) <= 0) and timesteps.min() >= 0 and timesteps.max() < 1000
  # Every row must put weight on the newest output it has seen (the solver uses every call),
  # except a final step diffusers makes from t to the same alpha_bar (PNDM, offset 0).
  newest = weights[np.arange(n), np.arange(n) + 1]
  assert np.all(newest[:-1] != 0)


@pytest.mark.parametrize("n", (5, pytest.param(20, marks=pytest.mark.slow)))
@pytest.mark.parametrize("name", ["euler", "pndm", "deis", "dpm_solver", "dpm_solver_pp", "unipc",
                                  "ipndm"])
def test_jit_sample_equals_reference_loop(name, n):
  """`sample` (jit) with the extracted weights == the solver's own loop on real arrays (float64)."""
  program, schedule = _programs(ALPHAS, n)[name]
  with jax.enable_x64(True):
    denoise_fn = _mixture_denoiser_float64(ALPHAS)
    x_T = jax.random.normal(jax.random.PRNGKey(NOISE_SEED), (32, 16), jnp.float64)
    calls = []

    def model(x, t):
      calls.append(t)
      return denoise_fn(x, jnp.int32(t))

    ref = program(model, x_T)                      # plain Python loop, eager
    ours = _sample_jit(denoise_fn, schedule, x_T)
    chex.assert_type(ours, jnp.float64)
  assert calls == [int(t) for t in np.asarray(schedule.timesteps)]
  assert _max_rel_err(ours, ref) <= RTOL[jnp.float64]


@pytest.mark.parametrize("n", (1, 5, 10, 20))
def test_ddim_baseline_is_core_ddim_schedule(n):
  ours = oj.baseline_schedule("ddim", ALPHAS, n)
  core = oj.ddim_schedule(ALPHAS, oj.ddim_timesteps(n))
  np.testing.assert_array_equal(np.asarray(ours.timesteps), np.asarray(core.timesteps))
  np.testing.assert_array_equal(np.asarray(ours.weights), np.asarray(core.weights))


@pytest.mark.parametrize("n", (1, 5, 20))
def test_first_order_solvers_are_ddim(n):
  """Euler in sigma space, DEIS-1, DPM-Solver-1 and DPM-Solver++-1 are all DDIM (exact algebra)."""
  tol = 1e-10
  euler = oj.euler_schedule(ALPHAS, n, steps_offset=1)
  ddim_leading = oj.ddim_schedule(ALPHAS, oj.ddim_timesteps(n, steps_offset=1))
  np.testing.assert_allclose(euler.weights, ddim_leading.weights, rtol=tol, atol=tol)
  ts = spacing.multistep_timesteps(n)
  ddim_min = oj.ddim_schedule(ALPHAS, ts, final_alpha_cumprod=ALPHAS[0])
  for schedule in (oj.deis_schedule(ALPHAS, n, solver_order=1),
                   oj.dpm_solver_schedule(ALPHAS, n, solver_order=1),
                   oj.dpm_solver_pp_schedule(ALPHAS, n, solver_order=1,
                                             final_sigmas_type="sigma_min")):
    np.testing.assert_array_equal(np.asarray(schedule.timesteps), ts)
    np.testing.assert_allclose(schedule.weights, ddim_min.weights, rtol=tol, atol=tol)
  ddim_zero = oj.ddim_schedule(ALPHAS, ts, final_alpha_cumprod=1.0)
  np.testing.assert_allclose(oj.dpm_solver_pp_schedule(ALPHAS, n, solver_order=1).weights,
                             ddim_zero.weights, rtol=tol, atol=tol)


def test_pndm_model_calls():
  """PLMS-only PNDM calls its second timestep twice: num_steps = diffusers' N + 1."""
  schedule = oj.pndm_schedule(ALPHAS, 5, steps_offset=1)
  np.testing.assert_array_equal(np.asarray(schedule.timesteps), [751, 501, 501, 251, 1])
  assert schedule.metadata["num_inference_steps"] == 4
  assert oj.pndm_schedule(ALPHAS, 1).num_steps == 1
  with pytest.raises(ValueError, match="num_steps"):
    oj.pndm_schedule(ALPHAS, 2)


def test_one_compiled_sampler_serves_every_baseline():
  denoise_fn = oj.mixture_denoiser(oj.make_gaussian_mixture(jax.random.PRNGKey(MIXTURE_SEED)),
                                   ALPHAS)
  x_T = jax.random.normal(jax.random.PRNGKey(NOISE_SEED), (8, 16), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(denoise_fn, schedule, x_T):
    return oj.sample(denoise_fn, schedule, x_T)

  for name in sorted(oj.BASELINES):
    chex.assert_tree_all_finite(run(denoise_fn, oj.baseline_schedule(name, ALPHAS, 5), x_T))


def test_bad_input_raises():
  with pytest.raises(ValueError, match="name"):
    oj.baseline_schedule("heun", ALPHAS, 5)
  with pytest.raises(ValueError, match="timestep_spacing"):
    oj.euler_schedule(ALPHAS, 5, timestep_spacing="linspace")
  with pytest.raises(ValueError, match="num_steps"):
    oj.unipc_schedule(ALPHAS, 0)
  with pytest.raises(TypeError, match="num_steps"):
    oj.deis_schedule(ALPHAS, 5.0)
  with pytest.raises(ValueError, match="solver_order"):
    oj.dpm_solver_pp_schedule(ALPHAS, 5, solver_order=4)
  with pytest.raises(ValueError, match="final_sigmas_type"):
    oj.unipc_schedule(ALPHAS, 5, final_sigmas_type="one")
  with pytest.raises(ValueError, match="alphas_cumprod"):
    oj.ipndm_schedule(ALPHAS[::-1], 5)
  with pytest.raises(ValueError, match="model calls"):
    linear.schedule_from_program(lambda model, x: model(model(x, 9), 8), 3)
