"""Classical baselines as `Schedule`s: structure, model calls, and each solver's reference loop.

Each baseline is written once as a linear *program* (its own update code); its `Schedule` is
read off by running that program on coefficient vectors. Here the same program runs on real
arrays as the plain reference loop and must equal `sample` with the extracted weights; the
formulas themselves are checked against diffusers in `test_baselines_flax.py` (Flax
schedulers) and `test_baselines_torch.py` (PyTorch schedulers, optional).
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from baseline_helpers import MIXTURE_SEED, NOISE_SEED, max_rel_err, mixture_denoiser_float64
from olss_jax._src.baselines import deis as deis_lib
from olss_jax._src.baselines import dpm_solver as dpm_lib
from olss_jax._src.baselines import euler as euler_lib
from olss_jax._src.baselines import ipndm as ipndm_lib
from olss_jax._src.baselines import linear
from olss_jax._src.baselines import pndm as pndm_lib
from olss_jax._src.baselines import spacing
from olss_jax._src.baselines import unipc as unipc_lib

# Max |ours - reference| / max |reference| on the final sample.
RTOL = {jnp.float32: 1e-4, jnp.float64: 1e-13}


_sample_jit = jax.jit(oj.sample)  # one cache for the whole file: compiles once per (n, dtype)


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
                oj.baselines.euler_schedule(alphas, n)),
      "pndm": (pndm_lib._pndm_program(alphas, n - 1, 0, float(alphas[0])),
               oj.baselines.pndm_schedule(alphas, n)),
      "deis": (deis_lib._deis_program(*lv_min, ts_multi, solver_order=2, lower_order_final=True),
               oj.baselines.deis_schedule(alphas, n)),
      "dpm_solver": (dpm_lib._dpm_program(*lv_min, ts_multi, plus_plus=False, solver_order=2,
                                          solver_type="midpoint", lower_order_final=True,
                                          zero_final=False),
                     oj.baselines.dpm_solver_schedule(alphas, n)),
      "dpm_solver_pp": (dpm_lib._dpm_program(*lv_zero, ts_multi, plus_plus=True, solver_order=2,
                                             solver_type="midpoint", lower_order_final=True,
                                             zero_final=True),
                        oj.baselines.dpm_solver_pp_schedule(alphas, n)),
      "unipc": (unipc_lib._unipc_program(*lv_zero, ts_multi, solver_order=2, solver_type="bh2",
                                         predict_x0=True, lower_order_final=True,
                                         disable_corrector=()),
                oj.baselines.unipc_schedule(alphas, n)),
      "ipndm": (ipndm_lib._ipndm_program(*lv_zero[:2], ts_multi), oj.baselines.ipndm_schedule(alphas, n)),
  }


@pytest.mark.parametrize("n", (1, 3, 5, 10, 20))
@pytest.mark.parametrize("name", sorted(oj.baselines.BASELINES))
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
    denoise_fn = mixture_denoiser_float64(ALPHAS)
    x_T = jax.random.normal(jax.random.PRNGKey(NOISE_SEED), (32, 16), jnp.float64)
    calls = []

    def model(x, t):
      calls.append(t)
      return denoise_fn(x, jnp.int32(t))

    ref = program(model, x_T)                      # plain Python loop, eager
    ours = _sample_jit(denoise_fn, schedule, x_T)
    chex.assert_type(ours, jnp.float64)
  assert calls == [int(t) for t in np.asarray(schedule.timesteps)]
  assert max_rel_err(ours, ref) <= RTOL[jnp.float64]


@pytest.mark.parametrize("n", (1, 5, 10, 20))
def test_ddim_baseline_is_core_ddim_schedule(n):
  ours = oj.baseline_schedule("ddim", ALPHAS, n)
  core = oj.baselines.ddim_schedule(ALPHAS, oj.baselines.ddim_timesteps(n))
  np.testing.assert_array_equal(np.asarray(ours.timesteps), np.asarray(core.timesteps))
  np.testing.assert_array_equal(np.asarray(ours.weights), np.asarray(core.weights))


@pytest.mark.parametrize("n", (1, 5, 20))
def test_first_order_solvers_are_ddim(n):
  """Euler in sigma space, DEIS-1, DPM-Solver-1 and DPM-Solver++-1 are all DDIM (exact algebra)."""
  tol = 1e-10
  euler = oj.baselines.euler_schedule(ALPHAS, n, steps_offset=1)
  ddim_leading = oj.baselines.ddim_schedule(ALPHAS, oj.baselines.ddim_timesteps(n, steps_offset=1))
  np.testing.assert_allclose(euler.weights, ddim_leading.weights, rtol=tol, atol=tol)
  ts = spacing.multistep_timesteps(n)
  ddim_min = oj.baselines.ddim_schedule(ALPHAS, ts, final_alpha_cumprod=ALPHAS[0])
  for schedule in (oj.baselines.deis_schedule(ALPHAS, n, solver_order=1),
                   oj.baselines.dpm_solver_schedule(ALPHAS, n, solver_order=1),
                   oj.baselines.dpm_solver_pp_schedule(ALPHAS, n, solver_order=1,
                                             final_sigmas_type="sigma_min")):
    np.testing.assert_array_equal(np.asarray(schedule.timesteps), ts)
    np.testing.assert_allclose(schedule.weights, ddim_min.weights, rtol=tol, atol=tol)
  ddim_zero = oj.baselines.ddim_schedule(ALPHAS, ts, final_alpha_cumprod=1.0)
  np.testing.assert_allclose(oj.baselines.dpm_solver_pp_schedule(ALPHAS, n, solver_order=1).weights,
                             ddim_zero.weights, rtol=tol, atol=tol)


def test_pndm_model_calls():
  """PLMS-only PNDM calls its second timestep twice: num_steps = diffusers' N + 1."""
  schedule = oj.baselines.pndm_schedule(ALPHAS, 5, steps_offset=1)
  np.testing.assert_array_equal(np.asarray(schedule.timesteps), [751, 501, 501, 251, 1])
  assert schedule.metadata["num_inference_steps"] == 4
  assert oj.baselines.pndm_schedule(ALPHAS, 1).num_steps == 1
  with pytest.raises(ValueError, match="num_steps"):
    oj.baselines.pndm_schedule(ALPHAS, 2)


def test_one_compiled_sampler_serves_every_baseline():
  denoise_fn = oj.analytic.mixture_denoiser(oj.analytic.make_gaussian_mixture(jax.random.PRNGKey(MIXTURE_SEED)),
                                   ALPHAS)
  x_T = jax.random.normal(jax.random.PRNGKey(NOISE_SEED), (8, 16), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(denoise_fn, schedule, x_T):
    return oj.sample(denoise_fn, schedule, x_T)

  for name in sorted(oj.baselines.BASELINES):
    chex.assert_tree_all_finite(run(denoise_fn, oj.baseline_schedule(name, ALPHAS, 5), x_T))


def test_bad_input_raises():
  with pytest.raises(ValueError, match="name"):
    oj.baseline_schedule("heun", ALPHAS, 5)
  with pytest.raises(ValueError, match="timestep_spacing"):
    oj.baselines.euler_schedule(ALPHAS, 5, timestep_spacing="linspace")
  with pytest.raises(ValueError, match="num_steps"):
    oj.baselines.unipc_schedule(ALPHAS, 0)
  with pytest.raises(TypeError, match="num_steps"):
    oj.baselines.deis_schedule(ALPHAS, 5.0)
  with pytest.raises(ValueError, match="solver_order"):
    oj.baselines.dpm_solver_pp_schedule(ALPHAS, 5, solver_order=4)
  with pytest.raises(ValueError, match="final_sigmas_type"):
    oj.baselines.unipc_schedule(ALPHAS, 5, final_sigmas_type="one")
  with pytest.raises(ValueError, match="alphas_cumprod"):
    oj.baselines.ipndm_schedule(ALPHAS[::-1], 5)
  with pytest.raises(ValueError, match="model calls"):
    linear.schedule_from_program(lambda model, x: model(model(x, 9), 8), 3)
