"""Classical baselines as `Schedule`s against diffusers' Flax schedulers (no torch needed).

Ground truth: diffusers 0.39's own Flax scheduler loops (FlaxDDIMScheduler, FlaxPNDMScheduler,
FlaxEulerDiscreteScheduler, FlaxDPMSolverMultistepScheduler) run on the exact noise prediction
of a Gaussian mixture (a nonlinear model, so a wrong coefficient shows in the final sample).
DEIS, UniPC and iPNDM have no Flax scheduler; they are checked in `test_baselines_torch.py`;
structure and reference loops are in `test_baselines.py`.

Precision: in float64 (`jax.enable_x64`, schedulers with ``dtype=jnp.float64``) ours and
diffusers agree to ~1e-14 (measured max 6.6e-14), asserted at 1e-13. In float32, diffusers' own loop drifts
from its float64 loop by up to ~2e-5 relative on this model (it computes alpha_bar, log-SNR and
exp(h) - 1 in float32), so float32 agreement is checked at the float32 tolerance below.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from baseline_helpers import MIXTURE_SEED, NOISE_SEED, max_rel_err, mixture_denoiser_float64

diffusers = pytest.importorskip("diffusers")

# Max |ours - reference| / max |reference| on the final sample.
RTOL = {jnp.float32: 1e-4, jnp.float64: 1e-13}
STEP_COUNTS = (5, 10, 20)
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _denoiser(alphas, dtype):
  if dtype == jnp.float64:
    return mixture_denoiser_float64(alphas)
  return oj.analytic.mixture_denoiser(oj.analytic.make_gaussian_mixture(jax.random.PRNGKey(MIXTURE_SEED)), alphas)


_sample_jit = jax.jit(oj.sample)  # one cache for the whole file: compiles once per (n, dtype)


def _run_flax(scheduler, denoise_fn, x_T, num_inference_steps):
  """diffusers' Flax pipeline loop (as in FlaxStableDiffusionPipeline: `lax.fori_loop`, jitted).

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

  @jax.jit
  def loop(state, x, denoise_fn):

    def body(i, carry):
      x, state = carry
      t = state.timesteps[i]
      model_input = scheduler.scale_model_input(state, x, t)
      e = denoise_fn(model_input, t.astype(jnp.int32))
      return scheduler.step(state, e, t, x, return_dict=False)

    return jax.lax.fori_loop(0, len(timesteps), body, (x * state.init_noise_sigma, state))[0]

  return loop(state, x_T, denoise_fn), timesteps.astype(np.int64)


# name -> (Flax scheduler factory(dtype), our schedule(alphas, n), diffusers' num_inference_steps(n))
FLAX_CASES = {
    "ddim": (lambda dt: diffusers.FlaxDDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=True,
                                                    dtype=dt),
             lambda ab, n: oj.baselines.ddim_baseline_schedule(ab, n), lambda n: n),
    "ddim_sd": (lambda dt: diffusers.FlaxDDIMScheduler(**SD, clip_sample=False, steps_offset=1,
                                                       set_alpha_to_one=False, dtype=dt),
                lambda ab, n: oj.baselines.ddim_baseline_schedule(ab, n, steps_offset=1,
                                                        final_alpha_cumprod=ab[0]),
                lambda n: n),
    "pndm": (lambda dt: diffusers.FlaxPNDMScheduler(**SD, skip_prk_steps=True, dtype=dt),
             lambda ab, n: oj.baselines.pndm_schedule(ab, n), lambda n: n - 1),
    "pndm_sd": (lambda dt: diffusers.FlaxPNDMScheduler(**SD, skip_prk_steps=True, steps_offset=1,
                                                       dtype=dt),
                lambda ab, n: oj.baselines.pndm_schedule(ab, n, steps_offset=1), lambda n: n - 1),
    "euler": (lambda dt: diffusers.FlaxEulerDiscreteScheduler(**SD, timestep_spacing="leading",
                                                              dtype=dt),
              lambda ab, n: oj.baselines.euler_schedule(ab, n, steps_offset=1), lambda n: n),
    "dpm_solver": (lambda dt: diffusers.FlaxDPMSolverMultistepScheduler(
        **SD, algorithm_type="dpmsolver", dtype=dt),
                   lambda ab, n: oj.baselines.dpm_solver_schedule(ab, n), lambda n: n),
    "dpm_solver_pp": (lambda dt: diffusers.FlaxDPMSolverMultistepScheduler(
        **SD, algorithm_type="dpmsolver++", dtype=dt),
                      lambda ab, n: oj.baselines.dpm_solver_pp_schedule(ab, n, final_sigmas_type="sigma_min"),
                      lambda n: n),
    "dpm_solver_pp_3_heun": (lambda dt: diffusers.FlaxDPMSolverMultistepScheduler(
        **SD, algorithm_type="dpmsolver++", solver_order=3, solver_type="heun", dtype=dt),
                             lambda ab, n: oj.baselines.dpm_solver_pp_schedule(
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
  return max_rel_err(ours, ref)


# Default run: every configuration at 10 steps, plus 5 and 20 steps for the two with the most
# step-count-dependent logic (PNDM's start-up, DPM-Solver++'s lower-order final steps); every
# configuration at 5 and 20 steps under `-m slow` (keeps this file within its time budget).
FLOAT64_PARAMS = ([(case, 10) for case in sorted(FLAX_CASES)]
                  + [(case, n) for case in ("pndm_sd", "dpm_solver_pp") for n in (5, 20)]
                  + [pytest.param(case, n, marks=pytest.mark.slow)
                     for case in sorted(set(FLAX_CASES) - {"pndm_sd", "dpm_solver_pp"})
                     for n in (5, 20)])


@pytest.mark.parametrize("case,n", FLOAT64_PARAMS)
def test_matches_flax_scheduler_float64(case, n):
  with jax.enable_x64(True):
    err = _compare_with_flax(case, n, jnp.float64, use_jit=(case, n) != ("dpm_solver_pp", 10))
  assert err <= RTOL[jnp.float64], f"{case} n={n}: max relative error {err:.2e}"


@pytest.mark.parametrize("case", ["pndm_sd"])
def test_matches_flax_scheduler_float32(case):
  err = _compare_with_flax(case, 10, jnp.float32, use_jit=True)
  assert err <= RTOL[jnp.float32], f"{case} n=10: max relative error {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("n", STEP_COUNTS)
@pytest.mark.parametrize("case", sorted(FLAX_CASES))
def test_matches_flax_scheduler_float32_all(case, n):
  err = _compare_with_flax(case, n, jnp.float32, use_jit=n == 20)
  assert err <= RTOL[jnp.float32], f"{case} n={n}: max relative error {err:.2e}"
