"""olss_jax.compare: the held-out protocol, and the README's digits claims at reduced size."""
import chex
import jax
import numpy as np
import pytest

import olss_jax as oj


CLASSICAL = ("ddim", "deis", "dpm_solver", "dpm_solver_pp", "unipc")
# The learned-timestep peers of the default suite's claim fixture; LD3 (our implementation,
# 200 full-batch iterations through the solver) costs more than all of them together and runs
# in the slow test below against the same fixture settings.
PEERS = ("ays_dpm_solver_pp", "gits-ipndm", "gits-dpm_solver_pp", "tuned-dpm_solver_pp",
         "tuned-unipc")
# The same float32 teacher run again outside the harness (jitted alike): rounding at most.
F32_RERUN_RTOL = 1e-5
# The main job's comparison at reduced size: 8 fitting noises, a 200-step teacher, 64 held-out
# noises, coordinate searches capped at 100 candidates (the README's tables: 32, 1000, 256, 400).
REDUCED = {"steps": (5, 10), "num_fit": 8, "num_eval": 64, "num_teacher_steps": 200,
           "keep_samples": False}


def _reduced_comparison(names):
  model = oj.compare.embedded_model("digits")
  methods = oj.compare.default_methods(baselines=["euler", *CLASSICAL, "ays_dpm_solver_pp"],
                                       max_evaluations=100)
  result = oj.compare.run_comparison(model, methods={k: methods[k] for k in names}, **REDUCED)
  return {(r["method"], r["steps"]): r["rmse"] for r in result.rows}, result


@pytest.fixture(scope="module")
def digits_comparison():
  return _reduced_comparison(["euler", *CLASSICAL, *PEERS, "olss", "olss-cl", "olss-ft"])


def test_the_default_fit_leads_every_peer_and_classical_solver_on_digits(digits_comparison):
  """README: olss-ft has the lowest held-out RMSE of every method of the main tables at 5 and 10
  steps (not of BNS, which beats it at 5 steps: README, "Learned end to end"). At this
  size (retrained 64-channel digits model) measured 1.16x / 2.5x below the best peer or
  classical solver (tuned UniPC at 5 steps, GITS' DPM-Solver++ at 10; LD3: the slow test) and
  1.43x / 1.07x below olss-cl; asserted 1.05x / 2.0x, 1.25x / 1.0x, and 10 steps at least 3x
  below its own 5 steps (measured 3.6x)."""
  rmse, _ = digits_comparison
  others = CLASSICAL + PEERS + ("olss",)
  for n, factor, own in ((5, 1.05, 1.25), (10, 2.0, 1.0)):
    best = min(rmse[(m, n)] for m in others)
    assert rmse[("olss-ft", n)] * factor < best, (n, rmse[("olss-ft", n)], best)
    assert rmse[("olss-ft", n)] * own < rmse[("olss-cl", n)], (n, rmse[("olss-ft", n)])
  assert rmse[("olss-ft", 10)] * 3 < rmse[("olss-ft", 5)]


@pytest.mark.slow
def test_the_default_fit_leads_ld3_on_digits():
  """README: olss-ft is below LD3 at 5 and 10 steps. At the fixture's reduced size measured
  0.0277 against 0.0367 (1.32x) and 0.00772 against 0.0150 (1.94x); asserted 1.15x / 1.6x.
  (Slow: LD3's fits take about five minutes on two cores.)"""
  rmse, _ = _reduced_comparison(["ld3-dpm_solver_pp", "olss-ft"])
  for n, factor in ((5, 1.15), (10, 1.6)):
    assert rmse[("olss-ft", n)] * factor < rmse[("ld3-dpm_solver_pp", n)], (n, rmse)


def test_the_closed_loop_fit_leads_every_classical_solver_on_digits(digits_comparison):
  """README: olss-cl is below the best classical solver on its default timesteps at 5 / 10
  steps. At this size measured 2.47x / 6.5x; asserted 1.4x / 2.5x."""
  rmse, _ = digits_comparison
  for n, factor in ((5, 1.4), (10, 2.5)):
    best = min(rmse[(m, n)] for m in CLASSICAL)
    assert rmse[("olss-cl", n)] * factor < best, (n, rmse[("olss-cl", n)], best)
  assert rmse[("olss-cl", 10)] < rmse[("olss-cl", 5)] / 3


def test_the_papers_fit_loses_to_ddim_on_digits(digits_comparison):
  """README: on the digits model the paper's teacher-forced fit is worse than DDIM at 5 steps
  and no better at 10. At this size measured 2.06x / 1.03x; asserted 1.4x / 0.9x."""
  rmse, _ = digits_comparison
  assert rmse[("olss", 5)] > 1.4 * rmse[("ddim", 5)]
  assert rmse[("olss", 10)] > 0.9 * rmse[("ddim", 10)]


def test_the_protocol_evaluates_on_other_noises_than_it_fits(digits_comparison):
  rmse, result = digits_comparison
  assert rmse[("ddim", 5)] == rmse[("euler", 5)]  # DDIM is Euler in these coordinates
  info = result.info
  assert info["fit_seed"] != info["eval_seed"] and info["num_eval"] == 64
  model = oj.compare.embedded_model("analytic")
  fit = oj.compare.draw_noises(model, info["fit_seed"], 8)
  held_out = oj.compare.draw_noises(model, info["eval_seed"], 8)
  assert not np.any(np.isclose(np.asarray(fit)[:, None], np.asarray(held_out)[None]).all(-1))
  with pytest.raises(ValueError, match="eval_seed"):
    oj.compare.run_comparison(model, fit_seed=3, eval_seed=3)


def test_mean_interval_and_per_sample_rmse():
  values = np.array([1.0, 2.0, 3.0, 4.0])
  mean, lo, hi = oj.compare.mean_interval(values)
  assert mean == 2.5 and np.isclose(hi - mean, 1.96 * values.std(ddof=1) / 2)
  a = np.zeros((2, 3))
  b = np.ones((2, 3)) * np.array([[1.0], [2.0]])
  np.testing.assert_allclose(oj.compare.per_sample_rmse(a, b), [1.0, 2.0])
  x = jax.random.normal(jax.random.key(0), (3, 2))
  np.testing.assert_allclose(oj.compare.per_sample_rmse(x, x), 0.0)


def test_paired_difference_compares_two_rows_noise_by_noise(digits_comparison):
  rmse, result = digits_comparison
  for name, n in rmse:                  # every row keeps its per-noise errors, their mean its RMSE
    chex.assert_shape(result.per_sample[(name, n)], (64,))
    np.testing.assert_allclose(np.mean(result.per_sample[(name, n)]), rmse[(name, n)],
                               rtol=1e-12)
  diff, lo, hi = oj.compare.paired_difference(result, "olss-ft", "ddim", 5)
  want = oj.compare.mean_interval(result.per_sample[("olss-ft", 5)]
                                  - result.per_sample[("ddim", 5)])
  np.testing.assert_allclose((diff, lo, hi), want)
  np.testing.assert_allclose(diff, rmse[("olss-ft", 5)] - rmse[("ddim", 5)], rtol=1e-9)
  assert hi < 0                             # the default beats DDIM on these very noises
  # paired on the same noises, the interval is narrower than either row's own
  own = oj.compare.mean_interval(result.per_sample[("ddim", 5)])
  assert hi - lo < own[2] - own[1]
  with pytest.raises(KeyError, match="no per-noise errors for .*'olss-ft', 20"):
    oj.compare.paired_difference(result, "olss-ft", "unipc", 20)


def test_a_cheaper_fitting_teacher_is_measured_against_the_full_one():
  """``fit_teacher_steps``: the fitting noises get a K'-step teacher, the held-out ones are
  still scored against the K-step one, and the cheap teacher's own distance is recorded."""
  model = oj.compare.embedded_model("analytic")
  seen = {}

  def paper_fit(ctx, n):
    seen["teacher_steps"] = ctx.traj.num_teacher_steps
    return oj.fit_olss(ctx.traj, n, method="olss-p")

  kwargs = {"steps": (3,), "num_fit": 8, "num_eval": 8, "num_teacher_steps": 60,
            "methods": {"olss-p": paper_fit}, "keep_samples": False}
  cheap = oj.compare.run_comparison(model, fit_teacher_steps=20, **kwargs)
  assert seen["teacher_steps"] == 20
  assert cheap.info["num_teacher_steps"] == 60 and cheap.info["fit_teacher_steps"] == 20
  # the recorded distance is the 20-step teacher's, recomputed here on the held-out noises
  x_eval = oj.compare.draw_noises(model, cheap.info["eval_seed"], 8)
  f_eval = model.denoiser(model.draw_conditions(cheap.info["eval_seed"], 8))
  finals = [oj.collect_trajectory(f_eval, x_eval, model.make_teacher(k)).states[-1]
            for k in (20, 60)]
  want = oj.compare.mean_interval(oj.compare.per_sample_rmse(*map(np.asarray, finals)))
  np.testing.assert_allclose(cheap.info["fit_teacher_rmse"], want, rtol=F32_RERUN_RTOL)
  assert want[0] > 0
  full = oj.compare.run_comparison(model, **kwargs)
  assert seen["teacher_steps"] == 60 and full.info["fit_teacher_rmse"] is None
  assert full.rows[0]["rmse"] != cheap.rows[0]["rmse"]   # the fit saw another teacher
  with pytest.raises(ValueError, match="fit_teacher_steps"):
    oj.compare.run_comparison(model, fit_teacher_steps=0, **kwargs)
  with pytest.raises(TypeError, match="fit_teacher_steps"):
    oj.compare.run_comparison(model, fit_teacher_steps=2.5, **kwargs)
