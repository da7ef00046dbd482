"""olss_jax.tune_path / olss_jax.peers.coordinate_search (path_tuning.py) and the hold-out split
(split.py): the coordinate search, a path tuned for the final error."""
import inspect

import chex
import jax
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing

F32_MSE_RTOL = 1e-4     # float32 samples: MSEs recomputed through `sample`
# The defaults of the public verbs: the search's budget and the fraction `tune_path` holds out.
DEFAULT_MAX_EVALUATIONS = inspect.signature(oj.peers.coordinate_search).parameters[
    "max_evaluations"].default
DEFAULT_HOLDOUT = inspect.signature(oj.tune_path).parameters["holdout"].default
DEFAULT_PROBE = inspect.signature(oj.tune_path).parameters["probe"].default
# The divergence probe's cost per candidate probed with 16 fitting noises, in batches of n
# model calls (tune_path's docstring): the candidate's fit and 2 x min(4, B - 1) fresh batches.
PROBE_BATCHES = 1 + 2 * 4


def _quadratic(target):
  target = np.asarray(target, np.float64)
  return lambda p: float(np.sum((np.asarray(p, np.float64) - target) ** 2))


@pytest.mark.parametrize("start,target", [([0, 10, 20, 30], [0, 3, 17, 41]),
                                          ([0, 25], [0, 1]), ([0, 5, 40], [0, 6, 39])])
def test_tune_coordinate_search_finds_a_separable_minimum_exactly(start, target):
  result = oj.peers.coordinate_search(_quadratic(target), start, 50)
  np.testing.assert_array_equal(result.path, target)
  assert result.score == 0.0 and result.path.dtype == np.int32
  assert 1 < result.num_evaluations <= DEFAULT_MAX_EVALUATIONS


def test_tune_coordinate_search_keeps_order_budget_and_ignores_nan():
  # The minimum (0, 30, 5) is not increasing; the search must stay on increasing paths.
  score = _quadratic([0, 30, 5])
  result = oj.peers.coordinate_search(score, [0, 10, 20], 40)
  assert np.all(np.diff(result.path) > 0) and result.path[0] == 0 and result.path[-1] < 40
  assert result.score <= score([0, 10, 20])
  capped = oj.peers.coordinate_search(score, [0, 10, 20], 40, max_evaluations=3)
  assert capped.num_evaluations == 3
  nan_left = lambda p: np.nan if p[1] < 10 else float(p[1])   # lower is better, NaN below 10
  got = oj.peers.coordinate_search(nan_left, [0, 20, 30], 40)
  assert got.path[1] == 10 and np.isfinite(got.score)
  with pytest.raises(ValueError, match="max_evaluations"):
    oj.peers.coordinate_search(score, [0, 10, 20], 40, max_evaluations=0)


@pytest.mark.parametrize("batch,holdout,want", [(16, 0.25, 4), (16, 3, 3), (5, 0.0, 0),
                                                (8, 0.5, 4)])
def test_split_holdout_is_disjoint_spread_and_deterministic(batch, holdout, want):
  train, hold = oj.peers.holdout_split(batch, holdout)
  assert hold.size == want and train.size == batch - want
  np.testing.assert_array_equal(np.sort(np.concatenate([train, hold])), np.arange(batch))
  if want > 1:
    assert hold[0] == 0 and hold[-1] == batch - 1          # spread over the whole batch
  train2, hold2 = oj.peers.holdout_split(batch, holdout)
  np.testing.assert_array_equal(hold, hold2)
  for bad in (1.0, -0.1, batch):
    with pytest.raises(ValueError, match="holdout"):
      oj.peers.holdout_split(batch, bad)
  with pytest.raises(TypeError, match="holdout"):
    oj.peers.holdout_split(batch, "0.25")


def _final_mse(den, sched, traj, idx):
  """The final-state MSE of `sample` against the teacher on the noises ``idx``."""
  with jax.enable_x64(True):
    out = np.asarray(oj.sample(den, sched, traj.x_T[idx]), np.float64)
    ref = np.asarray(traj.states[-1], np.float64)[idx]
  return float(np.mean((out - ref) ** 2))


def test_tune_path_scores_by_the_final_error_on_its_split_and_validates_on_the_rest():
  den, traj = testing.mixture_problem((8,), num_noises=16)
  start, _ = oj.closed_loop_search(traj, 4, den, num_bisection_steps=6)
  path, info = oj.tune_path(traj, start, den, max_evaluations=40, regularization="cv")
  train, hold = oj.peers.holdout_split(traj.batch_size, DEFAULT_HOLDOUT)
  assert info.regularization == "cv" and info.criterion_holdout_error.shape == (1,)
  np.testing.assert_array_equal(info.start_path, start)
  assert info.num_evaluations <= 40
  assert info.num_model_calls == 4 * info.num_evaluations + 4 * PROBE_BATCHES * len(info.divergent)
  assert info.fit_error[1] <= info.fit_error[0]      # the search never ends above its start
  # Its scores are the sampler's own final errors, recomputed independently: fit on the
  # training part only (an unconditional model, so a sub-trajectory is the same problem).
  for col, p in enumerate((info.start_path, info.tuned_path)):
    sched, _ = oj.closed_loop_fit(traj.take(train), p, den)
    np.testing.assert_allclose(info.fit_error[col], _final_mse(den, sched, traj, train),
                               rtol=F32_MSE_RTOL)
    np.testing.assert_allclose(info.holdout_error[col], _final_mse(den, sched, traj, hold),
                               rtol=F32_MSE_RTOL)
  assert info.kept_start == (not info.holdout_error[1] <= info.holdout_error[0])
  np.testing.assert_array_equal(path, info.start_path if info.kept_start else info.tuned_path)


def test_tune_path_lowers_the_final_error_on_fresh_noises():
  # The point of tuning: a sharp mixture, 32 fitting noises, judged on 64 fresh ones.
  # Measured: RMSE 0.141 from the closed-loop search's path, 0.0187 tuned (ratio 0.13).
  den, traj = testing.mixture_problem((16,), num_noises=32, seed=3, std=0.05, num_components=8,
                                      num_teacher_steps=200)
  start, _ = oj.closed_loop_search(traj, 5, den, num_bisection_steps=8)
  path, info = oj.tune_path(traj, start, den)
  assert not info.kept_start
  x_eval = jax.random.normal(jax.random.key(99), (64, 16))
  teacher = oj.collect_trajectory(den, x_eval, traj.teacher).states[-1]
  err = {}
  for name, p, reg in (("start", start, "cv"), ("tuned", path, info.regularization)):
    sched, _ = oj.closed_loop_fit(traj, p, den, regularization=reg)
    err[name] = float(np.sqrt(np.mean((np.asarray(oj.sample(den, sched, x_eval))
                                       - np.asarray(teacher)) ** 2)))
  assert err["tuned"] < 0.25 * err["start"], err


def test_tune_path_walks_from_the_best_start_but_guards_the_given_one():
  den, traj = testing.mixture_problem((8,), num_noises=16)
  good, _ = oj.closed_loop_search(traj, 4, den, num_bisection_steps=6)
  bad = np.array([0, 1, 2, 3], np.int32)            # three tiny steps, then one giant leap
  path, info = oj.tune_path(traj, bad, den, alternatives=[good], max_evaluations=30,
                            regularization="cv")
  np.testing.assert_array_equal(info.start_path, bad)
  # the walk started from the better of the two: its result scores at most the good start's
  train, _ = oj.peers.holdout_split(traj.batch_size, DEFAULT_HOLDOUT)
  errors = oj.peers.final_errors_fn(traj, den, fit_noises=train)
  assert info.fit_error[1] <= errors(good)[0] < errors(bad)[0]
  assert info.num_evaluations <= 30
  np.testing.assert_array_equal(info.origin_path, good)
  # validation picks among the given path, the walk's start and the tuned path
  hold = {"bad": errors(bad)[1], "good": errors(good)[1], "tuned": info.holdout_error[1]}
  want = {"bad": bad, "good": good, "tuned": info.tuned_path}[
      "tuned" if hold["tuned"] <= min(hold["bad"], hold["good"]) else
      ("good" if hold["good"] < hold["bad"] else "bad")]
  np.testing.assert_array_equal(path, want)
  assert info.kept_start == (want is bad)
  assert errors(path)[1] <= hold["bad"]
  with pytest.raises(ValueError, match="alternatives"):
    oj.tune_path(traj, bad, den, alternatives=[good[:3]])


def test_tune_path_rejects_bad_input_by_name():
  den, traj = testing.mixture_problem()
  with pytest.raises(ValueError, match="holdout"):
    oj.tune_path(traj, [0, 30], den, holdout=0)
  with pytest.raises(ValueError, match="path"):
    oj.tune_path(traj, [0, 0, 5], den)
  with pytest.raises(TypeError, match="traj"):
    oj.tune_path(traj.x_T, [0, 30], den)


def test_closed_loop_fit_noises_equals_the_fit_on_the_subset_and_reports_the_rest():
  den, traj = testing.mixture_problem((8,), num_noises=16)
  path = oj.uniform_path(traj, 4)
  train, hold = oj.peers.holdout_split(traj.batch_size, 0.25)
  sched, info = oj.closed_loop_fit(traj, path, den, fit_noises=train)
  sub, sub_info = oj.closed_loop_fit(traj.take(train), path, den)
  chex.assert_trees_all_close(sched.weights, sub.weights, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(info.step_errors, sub_info.step_errors, rtol=1e-6)
  np.testing.assert_allclose(info.holdout_errors[-1], _final_mse(den, sched, traj, hold),
                             rtol=F32_MSE_RTOL)
  fit_fn = oj.peers.final_errors_fn(traj, den, fit_noises=train)
  np.testing.assert_allclose(fit_fn(path), (info.step_errors[-1], info.holdout_errors[-1]),
                             rtol=1e-9)
  _, full = oj.closed_loop_fit(traj, path, den)
  assert np.all(np.isnan(full.holdout_errors))
  for bad in ([], [0, 0], [16], [[0, 1]], [0.5]):
    with pytest.raises(ValueError, match="fit_noises"):
      oj.closed_loop_fit(traj, path, den, fit_noises=bad)


def test_tune_path_fits_exactly_its_budget_with_or_without_alternatives():
  """``max_evaluations`` counts every distinct path fitted, the walk's start included."""
  den, traj = testing.mixture_problem((8,), num_noises=16)
  start = oj.uniform_path(traj, 4)
  for alternatives in ((), (np.array([0, 10, 20, 30], np.int32),)):
    _, info = oj.tune_path(traj, start, den, max_evaluations=5, alternatives=alternatives,
                           regularization="cv")
    assert info.num_evaluations == 5, alternatives
    assert info.num_model_calls == 4 * 5 + 4 * PROBE_BATCHES * len(info.divergent), alternatives
    # one walk per criterion, each within the budget (both walk here: "cv-robust" differs)
    _, info = oj.tune_path(traj, start, den, max_evaluations=5, alternatives=alternatives,
                           regularization=("cv", "cv-robust"))
    assert not np.any(np.isnan(info.criterion_holdout_error))
    assert info.num_evaluations == 10, alternatives


def test_tune_path_walks_once_per_criterion_and_the_held_out_noises_pick():
  den, traj = testing.mixture_problem((8,), num_noises=16)
  start = oj.uniform_path(traj, 4)
  alternatives = [np.array([0, 30, 55, 80], np.int32)]
  criteria = ("cv", "cv-robust")
  path, info = oj.tune_path(traj, start, den, max_evaluations=20, alternatives=alternatives)
  assert inspect.signature(oj.tune_path).parameters["regularization"].default == criteria
  # each walk is the single-criterion tuning: same path, same held-out error, same cost
  single = [oj.tune_path(traj, start, den, max_evaluations=20, alternatives=alternatives,
                         regularization=reg) for reg in criteria]
  holds = [s_info.criterion_holdout_error[0] for _, s_info in single]
  np.testing.assert_allclose(info.criterion_holdout_error, holds, rtol=1e-12)
  assert holds[0] != holds[1]          # this model has noises "cv-robust" down-weights
  best = int(np.argmin(holds))
  assert info.regularization == criteria[best]
  np.testing.assert_array_equal(path, single[best][0])
  np.testing.assert_array_equal(info.tuned_path, single[best][1].tuned_path)
  assert info.num_evaluations == sum(s_info.num_evaluations for _, s_info in single)
  # the returned path's held-out error, recomputed with the chosen criterion, is the minimum
  train, _ = oj.peers.holdout_split(traj.batch_size, DEFAULT_HOLDOUT)
  errors = oj.peers.final_errors_fn(traj, den, fit_noises=train,
                                    regularization=info.regularization)
  np.testing.assert_allclose(errors(path)[1], min(holds), rtol=1e-9)


def test_tune_path_skips_a_criterion_that_repeats_the_first():
  # A Gaussian model: every noise is fitted closely, so "cv-robust" down-weights none and its
  # walk would repeat "cv"'s: it costs the starting paths' evaluations only.
  with jax.enable_x64(True):
    den, traj = testing.gaussian_problem(num_noises=16)
    start = oj.uniform_path(traj, 3)
    path, info = oj.tune_path(traj, start, den, max_evaluations=12)
    ref_path, ref = oj.tune_path(traj, start, den, max_evaluations=12, regularization="cv")
  np.testing.assert_array_equal(path, ref_path)
  assert info.regularization == "cv" and np.isnan(info.criterion_holdout_error[1])
  assert info.num_evaluations == ref.num_evaluations + 1


def test_tune_path_rejects_bad_criteria_by_name():
  den, traj = testing.mixture_problem()
  for bad in ((), ("cv", "cv"), ("cv", "mse"), ("cv", -1.0)):
    with pytest.raises(ValueError, match="regularization"):
      oj.tune_path(traj, [0, 30], den, regularization=bad)


def _probe_ratios(den, sched, traj):
  """Each fresh noise's sample RMS over the teacher's largest final RMS (tune_path's probe,
  recomputed from its docstring: batches (x_T + s roll(x_T, k)) / sqrt(2), k = 1..4, s = +-1)."""
  x_T = np.asarray(traj.x_T)
  final = np.asarray(traj.states[-1]).reshape(traj.batch_size, -1)
  top = np.sqrt(np.mean(final ** 2, axis=1)).max()
  ratios = []
  for k in range(1, min(4, traj.batch_size - 1) + 1):
    for s in (1.0, -1.0):
      x = (x_T + s * np.roll(x_T, k, axis=0)) / np.sqrt(2.0)
      out = np.asarray(oj.sample(den, sched, x.astype(x_T.dtype))).reshape(traj.batch_size, -1)
      ratios.append(np.sqrt(np.mean(out ** 2, axis=1)) / top)
  return np.concatenate(ratios)


def test_tune_path_probes_its_choice_for_divergence_on_fresh_noises():
  den, traj = testing.mixture_problem((8,), num_noises=16)
  start = oj.uniform_path(traj, 4)
  path, info = oj.tune_path(traj, start, den, max_evaluations=20)
  plain, plain_info = oj.tune_path(traj, start, den, max_evaluations=20, probe=None)
  assert plain_info.divergent.shape == (0,)
  # a benign model: the validated choice does not diverge, one candidate is probed, and the
  # count is the documented one (recomputed on the returned fit)
  np.testing.assert_array_equal(path, plain)
  assert info.regularization == plain_info.regularization
  sched, _ = oj.closed_loop_fit(traj, path, den, regularization=info.regularization)
  ratios = _probe_ratios(den, sched, traj)
  assert ratios.shape == (8 * 16,) and ratios.max() < DEFAULT_PROBE
  assert info.divergent.tolist() == [0]
  assert info.num_model_calls == plain_info.num_model_calls + 4 * PROBE_BATCHES
  # a bound below every sample: every candidate diverges on every fresh noise; the fewest
  # (a tie) keeps the validated choice, after probing every candidate
  low = float(ratios.min()) / 2
  tight, tight_info = oj.tune_path(traj, start, den, max_evaluations=20, probe=low)
  np.testing.assert_array_equal(tight, plain)
  assert len(tight_info.divergent) >= 2 and set(tight_info.divergent.tolist()) == {8 * 16}
  # a bound between: the count is the number of fresh noises beyond it
  mid = float(np.median(ratios))
  _, mid_info = oj.tune_path(traj, start, den, max_evaluations=20, probe=mid)
  assert mid_info.divergent[0] == int(np.sum(ratios > mid))
  for bad in (0.0, -1.0, float("inf"), True, "2"):
    with pytest.raises(ValueError, match="probe"):
      oj.tune_path(traj, start, den, probe=bad)
