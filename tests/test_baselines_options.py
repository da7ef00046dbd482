"""Oracle tests of the baselines' options: custom timesteps, sigma spacings, predictions, flows.

Each option is checked against diffusers' own PyTorch scheduler loop (``set_timesteps`` /
``scale_model_input`` / ``step``) on float64 tensors, fed the same exact Gaussian-mixture model
(VP: `analytic.mixture_denoiser` with the prediction type; flow: `analytic.flow_mixture_denoiser`)
in float64, as in test_baselines_torch.py; where diffusers has no such option, against an
independent numpy computation (said at each test). The measure is `max_rel_err` of the final
sample.

To compare the update arithmetic to float64 precision, diffusers' float32 noise levels are
redone in float64 by its own code: its ``alphas_cumprod`` is made a float64 tensor (of the
same float32 values, which is the table both sides use) before ``set_timesteps``, and its
stored float32 ``sigmas`` are afterwards either kept as float64 tensors (Karras / Lu / flow
sigmas, which olss_jax keeps at diffusers' float32 values) or recomputed in float64 from the
table at the timesteps (timestep spacings and custom timesteps, which olss_jax reads from the
table in float64). DPM-Solver, Euler and FlowMatchEuler also round the sample to float32 at
the start of ``step``; the sample handed to them is a `_KeepFloat64` tensor, for which that
cast is the identity, so the rest of their ``step`` runs in float64. A selection of the cases
is also run against diffusers exactly as it ships
(`test_baselines_options_match_diffusers_as_shipped`).

Not compared: non-integer ``timesteps=`` for the multistep baselines, which are continuous
times here while diffusers' DPM-Solver truncates them to int64 (a documented difference);
``use_lu_lambdas`` for UniPC / DEIS, which diffusers 0.39 does not have.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from baseline_helpers import MIXTURE_SEED, NOISE_SEED, max_rel_err

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.torch

# max |ours - diffusers| / max |diffusers| on the final sample.
# float64 oracles: diffusers' loops with float64 levels and no float32 sample cast (see the
# module docstring), and the numpy DDIM loop. Measured max 1.4e-13 (DEIS, flow sigmas, shift 1,
# 5 steps); every other check <= 3.3e-14 (custom timesteps <= 7.6e-15, Karras / Lu <= 2.9e-14,
# v / sample predictions <= 3.3e-14, flow Euler <= 6.9e-15, flow multistep <= 1.5e-14 for
# DPM-Solver++ and UniPC).
FLOAT64_RTOL = 1.5e-12
# diffusers as it ships (float32 noise levels; DPM-Solver / Euler / FlowMatchEuler round the
# sample to float32 in ``step``). Measured max 5.2e-6 (DPM-Solver++ v_prediction, 5 steps: the
# float32 rounding amplified by the last, sharp denoising step; the epsilon model gives the same).
FLOAT32_RTOL = 5e-5
STEP_COUNTS = (5, 10)
SHIFTS = (1.0, 3.0)
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
BATCH, DIM, COMPONENTS = 32, 16, 8


def _x_T() -> np.ndarray:
  return np.asarray(jax.random.normal(jax.random.PRNGKey(NOISE_SEED), (BATCH, DIM), jnp.float32),
                    np.float64)


def _mixture():
  return oj.analytic.make_gaussian_mixture(jax.random.PRNGKey(MIXTURE_SEED), COMPONENTS, (DIM,))


def _vp_denoiser(alphas, prediction_type="epsilon"):
  return oj.analytic.mixture_denoiser(_mixture(), alphas, prediction_type=prediction_type)


def _flow_denoiser():
  return oj.analytic.flow_mixture_denoiser(_mixture(), num_train_timesteps=1000)


def _custom_timesteps(n: int) -> np.ndarray:
  """(n,) irregular, strictly decreasing integer timesteps from 999 (denser at low noise)."""
  return np.round(999 * np.linspace(1.0, 0.05, n) ** 2).astype(np.int64)


_sample_jit = jax.jit(oj.sample)


# diffusers' levels in float64 (see the module docstring).
def _table_float64(scheduler):
  scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)


def _sigmas_float64(scheduler):
  scheduler.sigmas = scheduler.sigmas.to(torch.float64)


def _interp_sigmas_float64(scheduler):
  alphas = scheduler.alphas_cumprod.numpy().astype(np.float64)
  table = np.sqrt((1.0 - alphas) / alphas)
  last = 0.0 if float(scheduler.sigmas[-1]) == 0.0 else table[0]
  ts = scheduler.timesteps.numpy().astype(np.float64)
  sigmas = np.interp(ts, np.arange(table.shape[0]), table)
  scheduler.sigmas = torch.from_numpy(np.append(sigmas, last))


class _KeepFloat64(torch.Tensor):
  """A float64 sample whose ``.to(torch.float32)`` is itself.

  DPM-Solver's, Euler's and FlowMatchEuler's ``step`` begin with ``sample =
  sample.to(torch.float32)`` ("upcast to avoid precision issues", meant for float16 input),
  which for float64 input rounds the sample; with this the rest of diffusers' ``step`` runs
  unchanged in float64.
  """

  def to(self, *args, **kwargs):
    if (args and args[0] is torch.float32) or kwargs.get("dtype") is torch.float32:
      return self
    return super().to(*args, **kwargs)


def _run_diffusers(scheduler, model, x_T, *, set_kwargs, init_scale=None, before=_table_float64,
                   after=_interp_sigmas_float64, float_time=False, keep_float64=True):
  """diffusers' pipeline loop on float64 tensors. Returns (final sample, called times)."""
  if before is not None:
    before(scheduler)
  scheduler.set_timesteps(**set_kwargs)
  if after is not None:
    after(scheduler)
  if init_scale == "ve":     # ours: the VE latent starts at sqrt(sigma_0^2 + 1) x_T
    scale = float(np.sqrt(np.float64(scheduler.sigmas[0]) ** 2 + 1.0))
  else:
    scale = getattr(scheduler, "init_noise_sigma", 1.0) if init_scale is None else init_scale
  x = torch.from_numpy(x_T) * float(scale)
  calls = []
  for t in scheduler.timesteps:
    scaled = hasattr(scheduler, "scale_model_input")    # FlowMatchEuler has none
    model_input = scheduler.scale_model_input(x, t) if scaled else x
    t_call = np.float32(t) if float_time else int(t)
    calls.append(t_call)
    e = np.array(model(model_input.numpy(), t_call), np.float64)   # a writable copy
    out = scheduler.step(torch.from_numpy(e), t,
                         x.as_subclass(_KeepFloat64) if keep_float64 else x).prev_sample
    x = out.as_subclass(torch.Tensor)
  return x.numpy(), np.asarray(calls)


def _check(label, scheduler, schedule, denoise_fn, rtol, *, times_rtol=0.0, **run_kwargs):
  """Runs both sides on the same model; asserts the same calls and returns the error.

  ``times_rtol``: how far float model-call times may differ (diffusers as shipped computes
  continuous Karras times from its float32 table: measured 4.2e-7 relative).
  """
  x_T = _x_T()
  with jax.enable_x64(True):
    model = lambda x, t: np.asarray(denoise_fn(jnp.asarray(x), t))
    ref, calls = _run_diffusers(scheduler, model, x_T, **run_kwargs)
    ours = np.asarray(_sample_jit(denoise_fn, schedule, jnp.asarray(x_T)))
  assert schedule.num_steps == len(calls)
  if times_rtol:
    np.testing.assert_allclose(np.asarray(schedule.timesteps), calls, rtol=times_rtol, atol=0)
  else:
    np.testing.assert_array_equal(np.asarray(schedule.timesteps), calls)
  assert np.asarray(schedule.timesteps).dtype.kind == np.asarray(calls).dtype.kind
  assert np.all(np.isfinite(ref))
  err = max_rel_err(ours, ref)
  print(f"{label}: {err:.2e}")
  assert err <= rtol, f"{label}: max relative error {err:.2e}"
  return err


def _alphas(scheduler_cls, **kwargs):
  """The scheduler's own float32 alphas_cumprod, as float64 (the table both sides use)."""
  return scheduler_cls(**SD, **kwargs).alphas_cumprod.numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------
# 1. Custom timesteps.


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_custom_timesteps_dpm_solver_pp(n):
  """diffusers' DPMSolverMultistepScheduler.set_timesteps(timesteps=...) (also AYS's 10)."""
  cases = [("custom", _custom_timesteps(n))]
  if n == 10:
    cases.append(("ays", np.asarray(diffusers.schedulers.AysSchedules["StableDiffusionTimesteps"])))
  for label, ts in cases:
    for order in (2, 3):
      scheduler = diffusers.DPMSolverMultistepScheduler(**SD, solver_order=order)
      alphas = scheduler.alphas_cumprod.numpy().astype(np.float64)
      schedule = oj.baselines.dpm_solver_pp_schedule(alphas, timesteps=ts, solver_order=order)
      _check(f"dpm_solver_pp {label} order={order} n={n}", scheduler, schedule,
             _vp_denoiser(alphas), FLOAT64_RTOL, set_kwargs=dict(timesteps=ts.tolist()))


def _inject_timesteps(ts, final_sigma_min):
  """diffusers' own set_timesteps spacing branch, given these timesteps (UniPC/DEIS lack them).

  ``sigmas = interp(timesteps, arange(T), table)`` then the final sigma, in float64.
  """
  def after(scheduler):
    alphas = scheduler.alphas_cumprod.numpy().astype(np.float64)
    table = np.sqrt((1.0 - alphas) / alphas)
    last = table[0] if final_sigma_min else 0.0
    scheduler.timesteps = torch.from_numpy(np.asarray(ts, np.int64))
    scheduler.sigmas = torch.from_numpy(
        np.append(np.interp(np.asarray(ts, np.float64), np.arange(table.shape[0]), table), last))
    scheduler.num_inference_steps = len(ts)
  return after


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_custom_timesteps_unipc_deis(n):
  """UniPC and DEIS: diffusers has no ``timesteps=`` (UniPC's ``sigmas=`` needs flow sigmas).

  The oracle is diffusers' own loop with its spacing branch of ``set_timesteps`` fed these
  timesteps (``_inject_timesteps``): exactly what ``timesteps=`` means for the others.
  """
  ts = _custom_timesteps(n)
  for name in ("unipc", "unipc_3", "deis", "deis_3"):
    order = 3 if name.endswith("_3") else 2
    if name.startswith("unipc"):
      scheduler = diffusers.UniPCMultistepScheduler(**SD, solver_order=order)
      make = oj.baselines.unipc_schedule
    else:
      scheduler = diffusers.DEISMultistepScheduler(**SD, solver_order=order)
      make = oj.baselines.deis_schedule
    alphas = scheduler.alphas_cumprod.numpy().astype(np.float64)
    schedule = make(alphas, timesteps=ts, solver_order=order)
    _check(f"{name} custom n={n}", scheduler, schedule, _vp_denoiser(alphas), FLOAT64_RTOL,
           set_kwargs=dict(num_inference_steps=n),
           after=_inject_timesteps(ts, final_sigma_min=name.startswith("deis")))


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_custom_timesteps_euler(n):
  """diffusers' EulerDiscreteScheduler.set_timesteps(timesteps=...), integer and float."""
  kwargs = dict(**SD, timestep_spacing="leading")
  alphas = _alphas(diffusers.EulerDiscreteScheduler)
  ts_int = _custom_timesteps(n)
  ts_float = np.linspace(999.0, 3.5, n) - np.linspace(0.0, 0.25, n)   # fractional
  for label, ts, float_time in (("int", ts_int, False), ("float", ts_float, True)):
    schedule = oj.baselines.euler_schedule(alphas, timesteps=ts)
    set_kwargs = dict(timesteps=ts.tolist())
    _check(f"euler custom {label} n={n}", diffusers.EulerDiscreteScheduler(**kwargs), schedule,
           _vp_denoiser(alphas), FLOAT64_RTOL, set_kwargs=set_kwargs,
           init_scale="ve", float_time=float_time)


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_custom_timesteps_ipndm(n):
  """diffusers' IPNDMScheduler has no timesteps (its own continuous schedule); as in
  test_baselines_torch.py it steps our levels via ``trained_betas`` = the sigmas at the custom
  timesteps, the epsilon model presented to it as ``v = (eps - sigma x) / alpha``."""
  alphas = oj.scaled_linear_alphas_cumprod()
  ts = _custom_timesteps(n)
  schedule = oj.baselines.ipndm_schedule(alphas, timesteps=ts)
  np.testing.assert_array_equal(np.asarray(schedule.timesteps), ts)
  sigmas = np.append(np.sqrt(1.0 - alphas[ts]), 0.0)
  scheduler = diffusers.IPNDMScheduler(trained_betas=sigmas.tolist())
  betas = torch.from_numpy(sigmas)        # float64 (diffusers stores float32)
  x_T = _x_T()
  with jax.enable_x64(True):
    denoise_fn = _vp_denoiser(alphas)
    scheduler.set_timesteps(n)
    scheduler.betas, scheduler.alphas = betas, (1.0 - betas**2) ** 0.5
    x = torch.from_numpy(x_T)
    for i, t in enumerate(scheduler.timesteps):
      eps = np.asarray(denoise_fn(jnp.asarray(x.numpy()), int(ts[i])))
      sigma, alpha = np.float64(scheduler.betas[i]), np.float64(scheduler.alphas[i])
      v = (eps - sigma * x.numpy()) / alpha
      x = scheduler.step(torch.from_numpy(v), t, x).prev_sample
    ours = np.asarray(_sample_jit(denoise_fn, schedule, jnp.asarray(x_T)))
  err = max_rel_err(ours, x.numpy())
  print(f"ipndm custom n={n}: {err:.2e}")
  assert err <= FLOAT64_RTOL, f"ipndm custom n={n}: {err:.2e}"


def _ddim_numpy(alphas, ts, prediction_type, denoise_fn, x_T, final_alpha_cumprod=1.0):
  """Deterministic DDIM (eta = 0) from each timestep to the next, written out in numpy."""
  ab = np.append(alphas[ts], final_alpha_cumprod)
  x = x_T
  for i, t in enumerate(ts):
    out = np.asarray(denoise_fn(jnp.asarray(x), int(t)))
    a, s = np.sqrt(ab[i]), np.sqrt(1.0 - ab[i])
    if prediction_type == "epsilon":
      eps, x0 = out, (x - s * out) / a
    elif prediction_type == "sample":
      x0, eps = out, (x - a * out) / s
    else:   # v = a eps - s x0
      x0, eps = a * x - s * out, s * x + a * out
    x = np.sqrt(ab[i + 1]) * x0 + np.sqrt(1.0 - ab[i + 1]) * eps
  return x


@pytest.mark.parametrize("prediction_type", ("epsilon", "v_prediction", "sample"))
def test_baselines_options_custom_timesteps_ddim(prediction_type):
  """diffusers' DDIM has no custom timesteps (it steps by T // n): an independent numpy loop."""
  alphas = oj.scaled_linear_alphas_cumprod()
  x_T = _x_T()
  for n in STEP_COUNTS:
    ts = _custom_timesteps(n)
    schedule = oj.baselines.ddim_baseline_schedule(alphas, timesteps=ts,
                                                   prediction_type=prediction_type)
    with jax.enable_x64(True):
      denoise_fn = _vp_denoiser(alphas, prediction_type)
      ref = _ddim_numpy(alphas, ts, prediction_type, denoise_fn, x_T)
      ours = np.asarray(_sample_jit(denoise_fn, schedule, jnp.asarray(x_T)))
    err = max_rel_err(ours, ref)
    print(f"ddim custom {prediction_type} n={n}: {err:.2e}")
    assert err <= FLOAT64_RTOL


# ---------------------------------------------------------------------------------------------
# 2. Karras sigmas and uniform log-SNR (Lu) steps.


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_karras_lu_dpm_solver_pp(n):
  for option in ("use_karras_sigmas", "use_lu_lambdas"):
    for final in ("zero", "sigma_min"):
      scheduler = diffusers.DPMSolverMultistepScheduler(**SD, **{option: True},
                                                        final_sigmas_type=final)
      alphas = scheduler.alphas_cumprod.numpy().astype(np.float64)
      schedule = oj.baselines.dpm_solver_pp_schedule(alphas, n, final_sigmas_type=final,
                                                     **{option: True})
      _check(f"dpm_solver_pp {option} {final} n={n}", scheduler, schedule, _vp_denoiser(alphas),
             FLOAT64_RTOL, set_kwargs=dict(num_inference_steps=n), after=_sigmas_float64)


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_karras_unipc_deis(n):
  """UniPC and DEIS take Karras sigmas (neither has ``use_lu_lambdas`` in diffusers 0.39)."""
  cases = [("unipc zero", diffusers.UniPCMultistepScheduler, oj.baselines.unipc_schedule,
            dict(final_sigmas_type="zero")),
           ("unipc sigma_min", diffusers.UniPCMultistepScheduler, oj.baselines.unipc_schedule,
            dict(final_sigmas_type="sigma_min")),
           ("deis", diffusers.DEISMultistepScheduler, oj.baselines.deis_schedule, {})]
  for label, cls, make, kwargs in cases:
    scheduler = cls(**SD, use_karras_sigmas=True, **kwargs)
    alphas = scheduler.alphas_cumprod.numpy().astype(np.float64)
    schedule = make(alphas, n, use_karras_sigmas=True, **kwargs)
    _check(f"{label} karras n={n}", scheduler, schedule, _vp_denoiser(alphas), FLOAT64_RTOL,
           set_kwargs=dict(num_inference_steps=n), after=_sigmas_float64)


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_karras_euler(n):
  """EulerDiscreteScheduler(use_karras_sigmas=True), its default "linspace" spacing: float times."""
  kwargs = dict(**SD, use_karras_sigmas=True)
  alphas = _alphas(diffusers.EulerDiscreteScheduler)
  schedule = oj.baselines.euler_schedule(alphas, n, use_karras_sigmas=True,
                                         timestep_spacing="linspace")
  set_kwargs = dict(num_inference_steps=n)
  _check(f"euler karras n={n}", diffusers.EulerDiscreteScheduler(**kwargs), schedule,
         _vp_denoiser(alphas), FLOAT64_RTOL, set_kwargs=set_kwargs,
         init_scale="ve", after=_sigmas_float64, float_time=True)


# ---------------------------------------------------------------------------------------------
# 3. Prediction types.


@pytest.mark.parametrize("prediction_type", ("v_prediction", "sample"))
@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_prediction_types(prediction_type, n):
  cases = [
      ("dpm_solver_pp",
       diffusers.DPMSolverMultistepScheduler(**SD, prediction_type=prediction_type),
       oj.baselines.dpm_solver_pp_schedule, {}),
      ("unipc", diffusers.UniPCMultistepScheduler(**SD, prediction_type=prediction_type),
       oj.baselines.unipc_schedule, {}),
      ("ddim", diffusers.DDIMScheduler(**SD, prediction_type=prediction_type, clip_sample=False,
                                       set_alpha_to_one=True),
       oj.baselines.ddim_baseline_schedule, {}),
      ("deis", diffusers.DEISMultistepScheduler(**SD, prediction_type=prediction_type),
       oj.baselines.deis_schedule, {}),
      ("euler", diffusers.EulerDiscreteScheduler(**SD, prediction_type=prediction_type,
                                                 timestep_spacing="leading", steps_offset=1),
       oj.baselines.euler_schedule, dict(steps_offset=1)),
  ]
  for name, scheduler, make, kwargs in cases:
    alphas = scheduler.alphas_cumprod.numpy().astype(np.float64)
    schedule = make(alphas, n, prediction_type=prediction_type, **kwargs)
    after = None if name == "ddim" else _interp_sigmas_float64   # DDIM reads alphas_cumprod
    _check(f"{name} {prediction_type} n={n}", scheduler, schedule,
           _vp_denoiser(alphas, prediction_type), FLOAT64_RTOL,
           set_kwargs=dict(num_inference_steps=n), after=after,
           init_scale="ve" if name == "euler" else None)


# ---------------------------------------------------------------------------------------------
# 4. Rectified flows.


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_flow_euler(shift, n):
  """flow_euler_schedule vs FlowMatchEulerDiscreteScheduler(shift), default and custom times."""
  schedule = oj.baselines.flow_euler_schedule(n, shift=shift)
  _check(f"flow_euler shift={shift} n={n}", diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
         schedule, _flow_denoiser(), FLOAT64_RTOL, set_kwargs=dict(num_inference_steps=n),
         before=None, after=_sigmas_float64, float_time=True)
  ts = np.linspace(1000.0, 40.0, n) - np.linspace(0.0, 0.5, n)
  schedule = oj.baselines.flow_euler_schedule(shift=shift, timesteps=ts)
  _check(f"flow_euler custom shift={shift} n={n}",
         diffusers.FlowMatchEulerDiscreteScheduler(shift=shift), schedule, _flow_denoiser(),
         FLOAT64_RTOL, set_kwargs=dict(timesteps=ts.tolist()), before=None,
         after=_sigmas_float64, float_time=True)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_flow_multistep(shift, n):
  """DPM-Solver++ / UniPC / DEIS, ``use_flow_sigmas=True, prediction_type="flow_prediction"``."""
  flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift)
  cases = [("dpm_solver_pp", diffusers.DPMSolverMultistepScheduler,
            oj.baselines.dpm_solver_pp_schedule),
           ("unipc", diffusers.UniPCMultistepScheduler, oj.baselines.unipc_schedule),
           ("deis", diffusers.DEISMultistepScheduler, oj.baselines.deis_schedule)]
  for name, cls, make in cases:
    schedule = make(None, n, **flow)
    _check(f"{name} flow shift={shift} n={n}", cls(**flow), schedule, _flow_denoiser(),
           FLOAT64_RTOL, set_kwargs=dict(num_inference_steps=n), before=None,
           after=_sigmas_float64)


@pytest.mark.parametrize("shift", SHIFTS)
def test_baselines_options_flow_teacher_registry(shift):
  """baseline_schedule(name, flow_teacher(1000, shift), n) is the direct flow call."""
  teacher = oj.flow_teacher(1000, shift=shift)
  flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift,
              num_train_timesteps=1000)
  direct = {"euler": lambda n: oj.baselines.flow_euler_schedule(n, shift=shift),
            "dpm_solver_pp": lambda n: oj.baselines.dpm_solver_pp_schedule(None, n, **flow),
            "unipc": lambda n: oj.baselines.unipc_schedule(None, n, **flow),
            "deis": lambda n: oj.baselines.deis_schedule(None, n, **flow)}
  for name, make in direct.items():
    for n in STEP_COUNTS:
      got, want = oj.baselines.baseline_schedule(name, teacher, n), make(n)
      np.testing.assert_array_equal(np.asarray(got.timesteps), np.asarray(want.timesteps))
      assert np.asarray(got.timesteps).dtype == np.asarray(want.timesteps).dtype
      np.testing.assert_array_equal(np.asarray(got.weights), np.asarray(want.weights))


def test_baselines_options_vp_teacher_registry():
  """A v-prediction DDIM teacher gives the v_prediction baselines (table read off the teacher)."""
  alphas = oj.scaled_linear_alphas_cumprod()
  teacher = oj.ddim_teacher(alphas, 1000, prediction_type="v_prediction")
  for name, make in (("dpm_solver_pp", oj.baselines.dpm_solver_pp_schedule),
                     ("unipc", oj.baselines.unipc_schedule),
                     ("ddim", oj.baselines.ddim_baseline_schedule)):
    got = oj.baselines.baseline_schedule(name, teacher, 10)
    want = make(alphas, 10, prediction_type="v_prediction")
    np.testing.assert_array_equal(np.asarray(got.timesteps), np.asarray(want.timesteps))
    np.testing.assert_array_equal(np.asarray(got.weights), np.asarray(want.weights))


def _shipped_cases(n: int):
  """(label, scheduler, schedule, denoise_fn, set_kwargs, run options) for the shipped check."""
  flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
  ays = diffusers.schedulers.AysSchedules["StableDiffusionTimesteps"]
  ab = _alphas(diffusers.DPMSolverMultistepScheduler)   # the same float32 SD table in each
  steps = dict(num_inference_steps=n)
  bl = oj.baselines
  return [
      ("dpm_solver_pp karras", diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True),
       bl.dpm_solver_pp_schedule(ab, n, use_karras_sigmas=True), _vp_denoiser(ab), steps, {}),
      ("dpm_solver_pp lu", diffusers.DPMSolverMultistepScheduler(**SD, use_lu_lambdas=True),
       bl.dpm_solver_pp_schedule(ab, n, use_lu_lambdas=True), _vp_denoiser(ab), steps, {}),
      ("dpm_solver_pp custom", diffusers.DPMSolverMultistepScheduler(**SD),
       bl.dpm_solver_pp_schedule(ab, timesteps=_custom_timesteps(n)), _vp_denoiser(ab),
       dict(timesteps=_custom_timesteps(n).tolist()), {}),
      ("dpm_solver_pp v_prediction", diffusers.DPMSolverMultistepScheduler(
          **SD, prediction_type="v_prediction"),
       bl.dpm_solver_pp_schedule(ab, n, prediction_type="v_prediction"),
       _vp_denoiser(ab, "v_prediction"), steps, {}),
      ("unipc karras", diffusers.UniPCMultistepScheduler(**SD, use_karras_sigmas=True),
       bl.unipc_schedule(ab, n, use_karras_sigmas=True), _vp_denoiser(ab), steps, {}),
      ("unipc sample", diffusers.UniPCMultistepScheduler(**SD, prediction_type="sample"),
       bl.unipc_schedule(ab, n, prediction_type="sample"), _vp_denoiser(ab, "sample"), steps, {}),
      ("deis karras", diffusers.DEISMultistepScheduler(**SD, use_karras_sigmas=True),
       bl.deis_schedule(ab, n, use_karras_sigmas=True), _vp_denoiser(ab), steps, {}),
      ("ddim v_prediction", diffusers.DDIMScheduler(**SD, prediction_type="v_prediction",
                                                    clip_sample=False, set_alpha_to_one=True),
       bl.ddim_baseline_schedule(ab, n, prediction_type="v_prediction"),
       _vp_denoiser(ab, "v_prediction"), steps, {}),
      ("euler karras", diffusers.EulerDiscreteScheduler(**SD, use_karras_sigmas=True),
       bl.euler_schedule(ab, n, use_karras_sigmas=True, timestep_spacing="linspace"),
       _vp_denoiser(ab), steps, dict(init_scale="ve", float_time=True, times_rtol=2e-6)),
      ("flow_euler shift=3", diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
       oj.baselines.flow_euler_schedule(n, shift=3.0), _flow_denoiser(), steps,
       dict(float_time=True)),
      ("dpm_solver_pp flow shift=3", diffusers.DPMSolverMultistepScheduler(**flow),
       bl.dpm_solver_pp_schedule(None, n, **flow), _flow_denoiser(), steps, {}),
      ("unipc flow shift=3", diffusers.UniPCMultistepScheduler(**flow),
       bl.unipc_schedule(None, n, **flow), _flow_denoiser(), steps, {}),
      ("ays dpm_solver_pp", diffusers.DPMSolverMultistepScheduler(**SD),
       bl.BASELINES["ays_dpm_solver_pp"](ab, 10), _vp_denoiser(ab), dict(timesteps=list(ays)),
       {}),
  ]


@pytest.mark.parametrize("n", STEP_COUNTS)
def test_baselines_options_match_diffusers_as_shipped(n):
  """A selection of the above against unmodified diffusers (float32 levels, float32 casts)."""
  for label, scheduler, schedule, denoise_fn, set_kwargs, options in _shipped_cases(n):
    if label.startswith("ays") and n != 10:
      continue
    _check(f"shipped {label} n={n}", scheduler, schedule, denoise_fn, FLOAT32_RTOL,
           set_kwargs=set_kwargs, before=None, after=None, keep_float64=False, **options)


# ---------------------------------------------------------------------------------------------
# 5. Align Your Steps.


def _sd_table() -> tuple[np.ndarray, np.ndarray]:
  """Stable Diffusion's scaled-linear alpha_bar (float64) and its sigmas, written out here."""
  betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
  alphas = np.cumprod(1.0 - betas)
  return alphas, np.sqrt((1.0 - alphas) / alphas)


def _ays_reference(n: int, published) -> np.ndarray:
  """The AYS page's loglinear_interp of the table's sigmas at the published timesteps and at
  t = 0, then diffusers' ``_sigma_to_t`` and rounding, the final (t = 0) dropped."""
  _, sigmas = _sd_table()
  levels = sigmas[np.append(np.asarray(published), 0)]
  xs = np.linspace(0, 1, levels.shape[0])
  new = np.exp(np.interp(np.linspace(0, 1, n + 1), xs, np.log(levels[::-1])))[::-1]
  to_t = diffusers.DPMSolverMultistepScheduler()._sigma_to_t
  ts = np.array([to_t(s, np.log(sigmas)) for s in new]).round()
  return ts[:-1].astype(np.int64)


def test_baselines_options_ays_timesteps():
  schedules = diffusers.schedulers.AysSchedules
  for model in ("StableDiffusion", "StableDiffusionXL"):
    published = schedules[f"{model}Timesteps"]
    np.testing.assert_array_equal(oj.baselines.ays_timesteps(10, model), published)
    for n in (5, 20):
      got = oj.baselines.ays_timesteps(n, model)
      assert got.shape == (n,) and got[0] == 999
      np.testing.assert_array_equal(got, _ays_reference(n, published))
  # The published (optimised, 3-decimal) SD sigmas are close to, not equal to, the table's at
  # the published timesteps (measured: 0.32% at most); diffusers' list ends at 0.0 where the
  # AYS page has sigma_min = 0.029.
  _, sigmas = _sd_table()
  np.testing.assert_allclose(sigmas[np.asarray(schedules["StableDiffusionTimesteps"])],
                             schedules["StableDiffusionSigmas"][:-1], rtol=5e-3)


# ---------------------------------------------------------------------------------------------
# 6. Bad input.


def test_baselines_options_errors():
  alphas = oj.scaled_linear_alphas_cumprod()
  bl = oj.baselines
  with pytest.raises(ValueError, match="^timesteps: .*strictly decreasing"):
    bl.dpm_solver_pp_schedule(alphas, timesteps=[999, 500, 500, 10])
  with pytest.raises(ValueError, match="^timesteps: .*strictly decreasing"):
    bl.unipc_schedule(alphas, timesteps=[10, 500, 999])
  with pytest.raises(ValueError, match=r"^timesteps: .*\[0, 999\]"):
    bl.euler_schedule(alphas, timesteps=[1000, 500, 10])
  with pytest.raises(ValueError, match="^num_steps: 5 disagrees"):
    bl.deis_schedule(alphas, 5, timesteps=[999, 500, 10])
  with pytest.raises(ValueError, match="^num_steps: pass num_steps or timesteps"):
    bl.ipndm_schedule(alphas)
  with pytest.raises(ValueError, match="^timesteps: explicit timesteps cannot be combined"):
    bl.dpm_solver_pp_schedule(alphas, timesteps=[999, 500, 10], use_karras_sigmas=True)
  with pytest.raises(ValueError, match="^use_flow_sigmas: only one of"):
    bl.dpm_solver_pp_schedule(alphas, 5, use_karras_sigmas=True, use_flow_sigmas=True,
                              prediction_type="flow_prediction")
  with pytest.raises(ValueError, match="^use_lu_lambdas: only one of"):
    bl.dpm_solver_pp_schedule(alphas, 5, use_karras_sigmas=True, use_lu_lambdas=True)
  with pytest.raises(ValueError, match="^use_flow_sigmas: prediction_type='flow_prediction'"):
    bl.unipc_schedule(alphas, 5, prediction_type="flow_prediction")
  with pytest.raises(ValueError, match="^prediction_type: use_flow_sigmas=True"):
    bl.unipc_schedule(alphas, 5, use_flow_sigmas=True)
  with pytest.raises(ValueError, match="^prediction_type: expected one of"):
    bl.ddim_baseline_schedule(alphas, 5, prediction_type="velocity")
  with pytest.raises(ValueError, match="^final_sigmas_type: with use_flow_sigmas"):
    bl.dpm_solver_pp_schedule(None, 5, use_flow_sigmas=True, prediction_type="flow_prediction",
                              final_sigmas_type="sigma_min")
  flow_teacher = oj.flow_teacher(10, shift=3.0)
  with pytest.raises(ValueError, match="^name: 'pndm' is not available for a 'flow' teacher"):
    bl.baseline_schedule("pndm", flow_teacher, 5)
  with pytest.raises(ValueError, match="^prediction_type: a flow teacher needs"):
    bl.baseline_schedule("unipc", flow_teacher, 5, prediction_type="epsilon")
  with pytest.raises(ValueError, match="^model: expected one of"):
    oj.baselines.ays_timesteps(5, "SD3")
  with pytest.raises(ValueError, match="^shift: expected a finite value > 0"):
    oj.baselines.flow_euler_schedule(5, shift=0.0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_baselines_options_first_order_solvers_on_teacher_steps_are_the_teacher_jump(shift):
  # DDIM, Euler and first-order DPM-Solver++ are the same update; on a teacher's own steps they
  # must reproduce the teacher's path weights (flow: s = t / T, no second shift).
  teacher = oj.flow_teacher(200, shift=shift)
  path = np.array([0, 20, 60, 120, 170])
  ts = np.asarray(teacher.timesteps)[path]
  ref = np.asarray(teacher.path_weights(path))
  euler = oj.baseline_schedule("euler", teacher, timesteps=ts)
  np.testing.assert_array_equal(euler.timesteps, ts)
  np.testing.assert_allclose(euler.weights, ref, rtol=0, atol=FLOAT64_RTOL)
  dpm1 = oj.baseline_schedule("dpm_solver_pp", teacher, timesteps=ts, solver_order=1)
  np.testing.assert_array_equal(dpm1.timesteps, ts)
  # s = 1 at the first teacher step is lowered by 1e-6 (log(1 - s) finite): weights move ~1e-6.
  np.testing.assert_allclose(dpm1.weights, ref, rtol=0, atol=2e-6)
  alphas = oj.scaled_linear_alphas_cumprod()
  vp = oj.ddim_teacher(alphas, 1000)
  vpath = np.array([0, 200, 500, 800, 950])
  dpm_vp = oj.baseline_schedule("dpm_solver_pp", alphas,
                                timesteps=np.asarray(vp.timesteps)[vpath], solver_order=1)
  np.testing.assert_allclose(dpm_vp.weights, np.asarray(vp.path_weights(vpath)), rtol=0,
                             atol=FLOAT64_RTOL)
