"""olss_jax.peers.tuned_schedule / gits_schedule / nearest_path (peers/tuned.py): a classical
solver on learned timesteps among the teacher's own steps.

Ground truth: the solver itself (`olss_jax.baseline_schedule` on the recorded timesteps), its
final-state MSE against the teacher on the fitting noises recomputed through `olss_jax.sample`
in float64, and GITS' own `gits_path`.
"""
import functools

import jax
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing

ALPHAS = oj.scaled_linear_alphas_cumprod()   # the table `testing.mixture_problem`'s teacher ran
F32_MSE_RTOL = 1e-4   # float32 samples: an MSE recomputed through `sample` (jit vs eager)
NUM_STEPS = 4


@functools.lru_cache(maxsize=None)
def _problem():
  return testing.mixture_problem((8,), num_noises=16)


def _dpm_solver_pp(timesteps):
  """The solver the peers tune: DPM-Solver++ on the model's table at ``timesteps``."""
  return oj.baseline_schedule("dpm_solver_pp", ALPHAS, timesteps=np.asarray(timesteps))


def _final_mse(den, sched, traj, *, jit=False):
  """The final-state MSE of the schedule against the teacher on the fitting noises (float64)."""
  out = (jax.jit(oj.sample) if jit else oj.sample)(den, sched, traj.x_T)
  ref = np.asarray(traj.states[-1], np.float64)
  return float(np.mean((np.asarray(out, np.float64) - ref) ** 2))


def test_peers_tuned_schedule_is_never_worse_than_its_start_on_its_fitting_noises():
  den, traj = _problem()
  build = _dpm_solver_pp
  sched = oj.peers.tuned_schedule(traj, NUM_STEPS, build, den, max_evaluations=25)
  meta = sched.metadata
  start, path = np.asarray(meta["tune_start_path"]), np.asarray(meta["path"])
  # the start: the solver's uniform path; the result: the solver on the tuned path's steps
  np.testing.assert_array_equal(start, (np.arange(NUM_STEPS) * traj.num_teacher_steps) // NUM_STEPS)
  timesteps = np.asarray(traj.timesteps)
  np.testing.assert_array_equal(sched.timesteps, timesteps[path])
  np.testing.assert_array_equal(sched.weights, build(timesteps[path]).weights)
  assert path[0] == 0 and np.all(np.diff(path) > 0) and path[-1] < traj.num_teacher_steps
  assert meta["peer"] == "tuned"
  assert 1 < meta["tune_evaluations"] <= 25
  assert meta["fit_model_calls"] == meta["tune_evaluations"] * NUM_STEPS
  start_mse = _final_mse(den, build(timesteps[start]), traj)
  tuned_mse = _final_mse(den, sched, traj)
  assert tuned_mse <= start_mse, (tuned_mse, start_mse)
  assert tuned_mse < 0.5 * start_mse, (tuned_mse, start_mse)   # and the search moved it
  np.testing.assert_allclose(_final_mse(den, sched, traj, jit=True), tuned_mse,
                             rtol=F32_MSE_RTOL)


def test_peers_tuned_schedule_starts_from_the_nearest_teacher_steps_of_default_timesteps():
  den, traj = _problem()
  default = np.asarray(oj.baselines.ddim_timesteps(NUM_STEPS))
  sched = oj.peers.tuned_schedule(traj, NUM_STEPS, _dpm_solver_pp, den, default_timesteps=default,
                                  max_evaluations=1)
  start = oj.peers.nearest_path(traj, default)
  np.testing.assert_array_equal(sched.metadata["tune_start_path"], start)
  # one evaluation: the start itself, n model calls on the fitting noises
  np.testing.assert_array_equal(sched.metadata["path"], start)
  assert sched.metadata["tune_evaluations"] == 1
  assert sched.metadata["fit_model_calls"] == NUM_STEPS


def test_peers_nearest_path_is_the_nearest_teacher_step_moved_up_on_collisions():
  _, traj = _problem()                                      # 100 teacher steps
  ts = np.asarray(traj.timesteps, np.float64)
  want_times = np.array([999.0, 700.0, 420.0, 35.0])
  got = oj.peers.nearest_path(traj, want_times)
  expect = np.abs(ts[None, :] - want_times[:, None]).argmin(axis=1)
  expect[0] = 0
  np.testing.assert_array_equal(got, expect)
  assert got.dtype == np.int32
  # three times nearest one teacher step: the later ones move up by one each
  np.testing.assert_array_equal(oj.peers.nearest_path(traj, [ts[0], ts[50], ts[50], ts[50]]),
                                [0, 50, 51, 52])
  with pytest.raises(ValueError, match="timesteps"):
    oj.peers.nearest_path(traj, [ts[0], ts[98], ts[99], ts[99]])


def test_peers_gits_schedule_is_the_solver_on_gits_path_at_no_model_cost():
  _, traj = _problem()
  build = _dpm_solver_pp
  sched = oj.peers.gits_schedule(traj, NUM_STEPS, build, grid_size=12)
  path, info = oj.peers.gits_path(traj, NUM_STEPS, grid_size=12)
  timesteps = np.asarray(traj.timesteps)
  np.testing.assert_array_equal(sched.metadata["path"], path)
  np.testing.assert_array_equal(sched.timesteps, timesteps[path])
  np.testing.assert_array_equal(sched.weights, build(timesteps[path]).weights)
  meta = sched.metadata
  assert meta["peer"] == "gits" and meta["fit_model_calls"] == 0
  assert meta["gits_grid_size"] == int(info.grid.size) and meta["gits_value"] == info.value


def test_peers_tuned_schedule_names_bad_input():
  den, traj = _problem()
  build = _dpm_solver_pp
  with pytest.raises(ValueError, match="default_timesteps"):
    oj.peers.tuned_schedule(traj, NUM_STEPS, build, den,
                            default_timesteps=oj.baselines.ddim_timesteps(NUM_STEPS + 1))
  with pytest.raises(ValueError, match="max_evaluations"):
    oj.peers.tuned_schedule(traj, NUM_STEPS, build, den, max_evaluations=0)
