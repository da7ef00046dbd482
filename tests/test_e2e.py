"""olss-e2e (e2e.py): the least-squares and midpoint starts trained end to end, the better kept."""
import functools

import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing
from olss_jax._src import e2e

ALPHAS = oj.scaled_linear_alphas_cumprod()


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


def test_e2e_vp_table_is_exact_for_a_full_teacher_and_interpolates_between_a_coarse_ones_steps():
  den, coarse = _vp()                                    # 100 of 1000 timesteps
  full = oj.collect_trajectory(den, coarse.x_T[:2], ALPHAS, 1000)
  table, exact = e2e.vp_table(full.teacher)
  assert exact
  np.testing.assert_array_equal(table, np.asarray(ALPHAS, np.float64))
  table, exact = e2e.vp_table(coarse.teacher)
  assert not exact and table.shape == (1000,)
  ts = np.asarray(coarse.teacher.timesteps)
  np.testing.assert_allclose(table[ts], np.asarray(coarse.teacher.levels)[:-1], rtol=1e-12)
  np.testing.assert_allclose(table[ts[-1]:ts[0] + 1], np.asarray(ALPHAS)[ts[-1]:ts[0] + 1],
                             rtol=1e-3)      # log-linear between steps 10 apart


def test_e2e_names_bad_starts_and_too_few_steps_for_the_midpoint():
  den, traj = _vp()
  with pytest.raises(ValueError, match="starts"):
    e2e.fit_e2e(traj, 2, den, starts=("olss",))
  with pytest.raises(ValueError, match="starts"):
    e2e.fit_e2e(traj, 2, den, starts=())
  with pytest.raises(ValueError, match="num_steps"):
    e2e.fit_e2e(traj, 1, den, starts=("midpoint",))


def test_fit_olss_passes_e2e_kwargs_and_refuses_them_for_other_methods():
  den, traj = _vp()
  sched = oj.fit_olss(traj, 3, denoise_fn=den, method="olss-e2e",
                      e2e_kwargs={"starts": ("midpoint",), "num_iters": 2})
  meta = sched.metadata
  assert meta["e2e_start"] == "midpoint" and set(meta["e2e_trained_holdout"]) == {"midpoint"}
  assert "e2e_start_holdout" not in meta and meta["path"] is None
  assert 1 <= meta["learn_iterations"] <= 2 * 2                 # two learning rates
  assert meta["fit"] in ("end_to_end", "midpoint") and meta["teacher"] == "ddim"
  with pytest.raises(ValueError, match="e2e_kwargs"):
    oj.fit_olss(traj, 3, denoise_fn=den, method="olss-cl", e2e_kwargs={"num_iters": 2})
