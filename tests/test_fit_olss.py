"""olss_jax.fit_olss: `fit_olss`, the one recipe, and the one method vocabulary."""
import warnings

import jax
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing

# The vocabulary's two families: the paper's methods fit the teacher's trajectory alone, the
# others also need the model (``denoise_fn``).
PAPER_METHODS = ("olss-p", "olss")
MODEL_METHODS = ("olss-p-cl", "olss-cl", "olss-ft", "olss-e2e")


def test_default_is_the_paper_without_a_model_and_the_tuned_closed_loop_with_one():
  den, traj = testing.mixture_problem()
  paper = oj.fit_olss(traj, 3)
  assert paper.metadata["method"] == "olss" and paper.metadata["fit"] == "teacher_forced"
  path, _ = oj.search_path(traj, 3)
  np.testing.assert_array_equal(paper.metadata["path"], path)
  np.testing.assert_array_equal(paper.weights, oj.fit_weights(traj, path)[0].weights)
  closed = oj.fit_olss(traj, 3, denoise_fn=den)
  assert closed.metadata["method"] == "olss-ft" and closed.metadata["fit"] == "closed_loop"
  cl_path, cl_info = oj.closed_loop_search(traj, 3, den)
  tuned, tune_info = oj.tune_path(traj, cl_path, den, alternatives=[oj.uniform_path(traj, 3)])
  np.testing.assert_array_equal(closed.metadata["tune_start_path"], cl_path)
  np.testing.assert_array_equal(closed.metadata["path"], tuned)
  # the returned fit uses the criterion whose walk the held-out noises chose
  assert closed.metadata["regularization"] == tune_info.regularization
  assert closed.metadata["tune_criteria"] == ["cv", "cv-robust"]
  np.testing.assert_array_equal(
      [np.nan if v is None else v for v in closed.metadata["tune_criterion_holdout_error"]],
      tune_info.criterion_holdout_error)
  np.testing.assert_array_equal(
      closed.weights,
      oj.closed_loop_fit(traj, tuned, den, regularization=tune_info.regularization)[0].weights)
  assert closed.metadata["fit_model_calls"] == (int(cl_info.num_model_calls)
                                                + tune_info.num_model_calls + 3)
  assert len(closed.metadata["step_errors"]) == 3 and len(closed.metadata["ridge"]) == 3
  assert closed.metadata["guarded"] == [False, False, False]   # a benign model: none held
  capped = oj.fit_olss(traj, 3, denoise_fn=den, max_evaluations=2)
  assert capped.metadata["tune_evaluations"] <= 2 * 2     # one walk per criterion


# olss-e2e learns float times and records its own facts: tests/test_e2e.py
@pytest.mark.parametrize("method", [m for m in oj.METHODS if m != "olss-e2e"])
def test_every_method_records_how_it_was_made(method):
  den, traj = testing.mixture_problem()
  sched = oj.fit_olss(traj, 3, denoise_fn=den, method=method)
  meta = sched.metadata
  assert meta["method"] == method
  with_model = method in MODEL_METHODS
  assert meta["fit"] == ("closed_loop" if with_model else "teacher_forced")
  if method in ("olss-p", "olss-p-cl"):
    assert meta["path_search"] == "uniform"
    np.testing.assert_array_equal(meta["path"], oj.uniform_path(traj, 3))
  np.testing.assert_array_equal(sched.timesteps, np.asarray(traj.timesteps)[meta["path"]])
  assert meta["teacher_steps"] == traj.num_teacher_steps and meta["num_fit_images"] == 16


def test_the_paper_methods_run_on_statistics():
  _, traj = testing.mixture_problem()
  stats = oj.trajectory_stats(traj)
  a = oj.fit_olss(stats, 3, method="olss")
  b = oj.fit_olss(traj, 3, method="olss")
  np.testing.assert_array_equal(a.metadata["path"], b.metadata["path"])
  np.testing.assert_allclose(a.weights, b.weights, atol=1e-6)
  with pytest.raises(ValueError, match="denoise_fn"):
    oj.fit_olss(stats, 3, method="olss-cl")


def test_refine_option_and_legacy_spellings():
  den, traj = testing.mixture_problem()
  refined = oj.fit_olss(traj, 3, denoise_fn=den, refine=True, refine_kwargs={"num_iters": 3})
  assert refined.metadata["method"] == "olss-ft+refine" and "refine_iters" in refined.metadata
  for old, uniform, new in (("paper", False, "olss"), ("paper", True, "olss-p"),
                            ("closed_loop", False, "olss-cl"), ("closed_loop", True, "olss-p-cl")):
    with pytest.warns(DeprecationWarning, match=new):
      sched = oj.fit_olss(traj, 3, denoise_fn=den, method=old, uniform=uniform)
    assert sched.metadata["method"] == new


def test_one_vocabulary_for_api_cli_and_comparison():
  assert oj.METHODS == ("olss-p", "olss", "olss-p-cl", "olss-cl", "olss-ft", "olss-e2e")
  assert oj.METHODS == PAPER_METHODS + MODEL_METHODS
  methods = oj.compare.default_methods(baselines=["ddim"], peers=False)
  assert list(methods) == ["ddim", *oj.METHODS]
  with_peers = oj.compare.default_methods(baselines=["ddim"])
  vp_peers = [p for p in oj.compare.PEERS if p != "ds-solver"]     # DS-Solver: flow only
  assert list(with_peers) == ["ddim", *vp_peers, *oj.METHODS]
  flow = oj.compare.default_methods(kind="flow")
  assert "gits-ipndm" not in flow and "ipndm" not in flow and "tuned-unipc" in flow


def test_regularization_reaches_the_closed_loop_fits_and_their_candidates():
  """``fit_olss(..., regularization="cv-rmse")``: the closed-loop fit of ``olss-cl`` and
  ``olss-ft``'s candidates and returned fit use it (the same as the verbs called with it)."""
  den, traj = testing.mixture_problem()
  cl = oj.fit_olss(traj, 4, denoise_fn=den, method="olss-cl", regularization="cv-rmse")
  path, _ = oj.closed_loop_search(traj, 4, den)
  direct, info = oj.closed_loop_fit(traj, path, den, regularization="cv-rmse")
  np.testing.assert_array_equal(cl.weights, direct.weights)
  assert cl.metadata["ridge"] == info.ridge.tolist() and cl.metadata["regularization"] == "cv-rmse"
  ft = oj.fit_olss(traj, 3, denoise_fn=den, regularization="cv-rmse", max_evaluations=4)
  tuned, _ = oj.tune_path(traj, oj.closed_loop_search(traj, 3, den)[0], den, max_evaluations=4,
                          alternatives=[oj.uniform_path(traj, 3)], regularization="cv-rmse")
  np.testing.assert_array_equal(ft.metadata["path"], tuned)
  np.testing.assert_array_equal(
      ft.weights, oj.closed_loop_fit(traj, tuned, den, regularization="cv-rmse")[0].weights)
  with pytest.raises(ValueError, match="regularization: only for the closed-loop"):
    oj.fit_olss(traj, 3, method="olss", regularization="cv-rmse")
  with pytest.raises(ValueError, match="regularization: expected"):
    oj.fit_olss(traj, 3, denoise_fn=den, method="olss-cl", regularization="rmse")
  with pytest.raises(ValueError, match="regularization: a sequence of criteria only for"):
    oj.fit_olss(traj, 3, denoise_fn=den, method="olss-cl", regularization=("cv", "cv-robust"))
  assert oj.fit_olss(traj, 3, denoise_fn=den, method="olss-cl").metadata["regularization"] == "cv"


@pytest.mark.filterwarnings("ignore:closed_loop_fit. the basis of some steps is rank deficient")
def test_olss_ft_records_a_skipped_criterion_and_its_schedule_saves(tmp_path):
  # A Gaussian model: "cv-robust" repeats "cv" on every starting path, so its walk is skipped
  # (recorded as None: the schedule's metadata stays JSON) and the fit is "cv"'s.
  with jax.enable_x64(True):
    den, traj = testing.gaussian_problem(num_noises=16)
    sched = oj.fit_olss(traj, 3, denoise_fn=den, max_evaluations=6)
    plain = oj.fit_olss(traj, 3, denoise_fn=den, max_evaluations=6, regularization="cv")
  meta = sched.metadata
  assert meta["tune_criteria"] == ["cv", "cv-robust"] and meta["regularization"] == "cv"
  assert meta["tune_criterion_holdout_error"][1] is None
  starts = {tuple(meta["tune_start_path"]), tuple(oj.uniform_path(traj, 3).tolist())}
  assert meta["tune_evaluations"] == plain.metadata["tune_evaluations"] + len(starts)
  np.testing.assert_array_equal(sched.weights, plain.weights)
  oj.save_schedule(tmp_path / "s.safetensors", sched)
  loaded = oj.load_schedule(tmp_path / "s.safetensors")
  assert loaded.metadata["tune_criteria"] == meta["tune_criteria"]


def test_bad_arguments_are_named():
  den, traj = testing.mixture_problem()
  with pytest.raises(ValueError, match="method"):
    oj.fit_olss(traj, 3, denoise_fn=den, method="magic")
  for method in MODEL_METHODS:
    with pytest.raises(ValueError, match="denoise_fn"):
      oj.fit_olss(traj, 3, method=method)
  with pytest.raises(ValueError, match="denoise_fn"):
    oj.fit_olss(traj, 3, refine=True)
  with pytest.raises(TypeError, match="uniform"):
    oj.fit_olss(traj, 3, method="olss", uniform=True)
  with pytest.raises(ValueError, match="num_steps"):
    oj.fit_olss(traj, 0)
  with pytest.raises(TypeError, match="traj"):
    oj.fit_olss(np.zeros(3), 3)


def test_too_few_fitting_noises_are_refused_with_the_minimum_and_few_warn():
  den, traj = testing.mixture_problem()
  for b in (1, 2, 3):
    with pytest.raises(ValueError, match=r"olss-ft.*at least 4 fitting noises.*got " + str(b)):
      oj.fit_olss(traj.take(np.arange(b)), 3, denoise_fn=den)
  with pytest.raises(ValueError, match=r"'olss-cl' needs at least 2 fitting noises.*got 1"):
    oj.fit_olss(traj.take(np.arange(1)), 3, denoise_fn=den, method="olss-cl")
  # one noise of 8 elements cannot determine the 10 weights of a 9-step schedule's last row
  with pytest.raises(ValueError, match="equations"):
    oj.fit_olss(traj.take(np.arange(1)), 9, method="olss-p")
  with pytest.warns(oj.validation.FewFitNoisesWarning, match="4 fitting noises") as caught:
    sched = oj.fit_olss(traj.take(np.arange(4)), 3, denoise_fn=den, max_evaluations=3)
  assert [w.filename for w in caught] == [__file__]   # the user's line, not the library's
  assert sched.metadata["num_fit_images"] == 4 and sched.metadata["method"] == "olss-ft"
  recommended = oj.validation.RECOMMENDED_FIT_NOISES
  with pytest.warns(oj.validation.FewFitNoisesWarning, match=f"at least {recommended} are"):
    oj.fit_olss(traj.take(np.arange(recommended - 1)), 3)
  with warnings.catch_warnings():
    warnings.simplefilter("error", oj.validation.FewFitNoisesWarning)
    oj.fit_olss(traj.take(np.arange(recommended)), 3)


def test_progress_reports_every_stage_and_candidate():
  den, traj = testing.mixture_problem()
  messages = []
  sched = oj.fit_olss(traj, 3, denoise_fn=den, max_evaluations=5, progress=messages.append)
  assert messages[0].startswith("search path")
  tuned = [m for m in messages if m.startswith("tune path")]
  assert len(tuned) == sched.metadata["tune_evaluations"] >= 2
  assert messages[-1].startswith("fit weights")
  paper = []
  oj.fit_olss(traj, 3, progress=paper.append)
  assert [m.split(":")[0] for m in paper] == ["search path", "fit weights"]


def test_a_model_for_other_samples_fails_in_one_line_naming_denoise_fn():
  _, traj = testing.mixture_problem()                           # samples of shape (8,)
  digits = oj.digits.load_digits_model().denoiser(np.zeros(16, np.int32))  # (1, 8, 8) images
  with pytest.raises((ValueError, TypeError), match=r"^denoise_fn: failed on x_t of shape "
                     r"\(16, 8\)") as info:
    oj.fit_olss(traj, 3, denoise_fn=digits)
  assert "\n" not in str(info.value)


_SCANS = []  # one entry per finiteness scan of a trajectory's model outputs, this session


def _count_scans(event, **kwargs):
  del kwargs
  if event == oj.validation.TRAJECTORY_SCAN_EVENT:
    _SCANS.append(event)


jax.monitoring.register_event_listener(_count_scans)


@pytest.mark.parametrize("method", ["olss-ft", "olss", "olss-cl"])
def test_fit_olss_scans_the_trajectory_once(method):
  # `fit_olss` checks at the door, then calls the verbs' cores, which trust the trajectory:
  # one finiteness scan of the (K, B, ...) outputs, not one per verb (issue 24).
  den, traj = testing.mixture_problem()
  before = len(_SCANS)
  model = None if method in PAPER_METHODS else den
  sched = oj.fit_olss(traj, 3, denoise_fn=model, method=method, max_evaluations=3)
  assert sched.metadata["method"] == method
  assert len(_SCANS) - before == 1, len(_SCANS) - before
  oj.search_path(traj, 3)  # a public verb on its own scans once too
  assert len(_SCANS) - before == 2