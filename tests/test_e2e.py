"""olss-e2e (e2e.py): the least-squares and midpoint starts trained end to end, the better kept."""
import functools

import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing

ALPHAS = oj.scaled_linear_alphas_cumprod()
# The midpoint start of a 100-step teacher (levels interpolated log-linearly between timesteps
# 10 apart) against the exact table's: the same target levels, reached at times 1.1e-4
# relative apart (measured), so weights 1.1e-8 of the largest apart.
INTERPOLATED_TIMES_RTOL = 1e-3
INTERPOLATED_WEIGHTS_ATOL = 1e-6


@functools.lru_cache(maxsize=None)
def _vp(num_noises=16, seed=0):
  return testing.mixture_problem(num_noises=num_noises, seed=seed)


def test_olss_e2e_trains_the_better_least_squares_start_and_the_midpoint_and_keeps_the_better():
  den, traj = _vp()
  sched = oj.fit_olss(traj, 3, denoise_fn=den, method="olss-e2e")
  meta = sched.metadata
  assert meta["method"] == "olss-e2e" and meta["e2e_start"] in ("olss-p-cl", "olss-cl",
                                                                 "midpoint")
  starts = meta["e2e_start_holdout"]
  assert set(starts) == {"olss-p-cl", "olss-cl"}
  ls_start = min(starts, key=starts.get)
  trained = meta["e2e_trained_holdout"]
  assert set(trained) == {ls_start, "midpoint"}
  assert meta["learn_holdout_error"] == min(trained.values()) == trained[meta["e2e_start"]]
  if meta["e2e_start"] == ls_start:
    assert meta["learn_start_holdout_error"] == pytest.approx(starts[ls_start], rel=1e-5)
    assert meta["path"] == np.asarray(meta["path"]).tolist() and len(meta["path"]) == 3
  else:
    assert meta["path"] is None and meta["learned_from"] == "midpoint"
  assert meta["e2e_midpoint_exact_levels"] is False      # a 100-step teacher: interpolated
  assert meta["learn_holdout_error"] <= meta["learn_start_holdout_error"]
  assert meta["fit_model_calls"] > meta["learn_model_calls"] > 0 and meta["fit_seconds"] > 0
  assert meta["learn_iterations"] >= 1 and meta["teacher"] == "ddim"
  t = np.asarray(sched.timesteps)
  assert np.all(np.diff(t) < 0) and t[0] == traj.timesteps[0] and t[-1] >= traj.timesteps[-1]
  assert "olss-e2e" in oj.METHODS and oj.compare.default_methods(baselines=[])["olss-e2e"]
  with pytest.raises(ValueError, match="refine"):
    oj.fit_olss(traj, 3, denoise_fn=den, method="olss-e2e", refine=True)
  with pytest.raises(ValueError, match="denoise_fn"):
    oj.fit_olss(traj, 3, method="olss-e2e")


def test_the_midpoint_start_is_bns_midpoint_exact_for_a_full_teacher_close_for_a_coarse_one():
  """Untrained (num_iters=0), the midpoint start is `peers.bns_parametrisation`'s midpoint
  solver: bit for bit where the teacher visits every timestep (its levels are the table), and
  close where the levels between a 100-step teacher's timesteps are interpolated."""
  den, coarse = _vp()
  full = oj.collect_trajectory(den, coarse.x_T, ALPHAS, 1000)
  for traj, exact in ((full, True), (coarse, False)):
    sched = oj.fit_olss(traj, 3, denoise_fn=den, method="olss-e2e",
                        e2e_kwargs={"starts": ("midpoint",), "num_iters": 0})
    meta = sched.metadata
    assert meta["e2e_midpoint_exact_levels"] is exact and meta["fit"] == "midpoint"
    assert meta["learn_kept_start"] and meta["e2e_start"] == "midpoint"
    _, _, _, ref = oj.peers.bns_parametrisation(traj.teacher, 3, init="midpoint",
                                                alphas_cumprod=ALPHAS)
    if exact:
      np.testing.assert_array_equal(np.asarray(sched.timesteps), np.asarray(ref.timesteps))
      np.testing.assert_array_equal(np.asarray(sched.weights), np.asarray(ref.weights))
    else:
      np.testing.assert_allclose(np.asarray(sched.timesteps), np.asarray(ref.timesteps),
                                 rtol=INTERPOLATED_TIMES_RTOL)
      scale = np.max(np.abs(np.asarray(ref.weights)))
      np.testing.assert_allclose(np.asarray(sched.weights) / scale,
                                 np.asarray(ref.weights) / scale, rtol=0,
                                 atol=INTERPOLATED_WEIGHTS_ATOL)
      assert not np.array_equal(np.asarray(sched.timesteps), np.asarray(ref.timesteps))


def test_fit_olss_passes_e2e_kwargs_and_refuses_bad_ones():
  den, traj = _vp()
  sched = oj.fit_olss(traj, 3, denoise_fn=den, method="olss-e2e",
                      e2e_kwargs={"starts": ("midpoint",), "num_iters": 2})
  meta = sched.metadata
  assert meta["e2e_start"] == "midpoint" and set(meta["e2e_trained_holdout"]) == {"midpoint"}
  assert "e2e_start_holdout" not in meta and meta["path"] is None
  assert 1 <= meta["learn_iterations"] <= 2 * 2                 # two learning rates
  assert meta["fit"] in ("end_to_end", "midpoint") and meta["teacher"] == "ddim"
  one = oj.fit_olss(traj, 1, denoise_fn=den, method="olss-e2e", e2e_kwargs={"num_iters": 1})
  trained = one.metadata["e2e_trained_holdout"]                   # no midpoint of one call
  assert len(trained) == 1 and set(trained) <= {"olss-p-cl", "olss-cl"}
  for kwargs, match in [({"starts": ("olss",)}, "starts"), ({"starts": ()}, "starts"),
                        ({"holdout": 0}, "holdout"), ({"loss": "l1"}, "loss")]:
    with pytest.raises(ValueError, match=match):
      oj.fit_olss(traj, 3, denoise_fn=den, method="olss-e2e", e2e_kwargs=kwargs)
  with pytest.raises(ValueError, match="num_steps"):
    oj.fit_olss(traj, 1, denoise_fn=den, method="olss-e2e",
                e2e_kwargs={"starts": ("midpoint",)})
  with pytest.raises(ValueError, match="e2e_kwargs"):
    oj.fit_olss(traj, 3, denoise_fn=den, method="olss-cl", e2e_kwargs={"num_iters": 2})
