"""olss_jax.closed_loop_search: Algorithms 1-3 on the sampler's own states, in pure JAX."""
import jax
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing

# The candidates `ClosedLoopSearchInfo.source_name` names (its documented values).
SOURCES = ("closed_loop_walk", "teacher_forced_walk", "uniform")
CRITERION_RTOL = 1e-6       # the search's Gram-projection errors vs QR residuals (float64 both)


@pytest.mark.parametrize("sample_shape,num_steps,seed", [((8,), 3, 0), ((2, 2, 2), 5, 2)])
def test_search_never_loses_to_uniform_by_its_criterion(sample_shape, num_steps, seed):
  den, traj = testing.mixture_problem(sample_shape, seed=seed)
  path, info = oj.closed_loop_search(traj, num_steps, den, num_bisection_steps=8)
  assert info.source_name in SOURCES
  assert float(info.max_error) <= float(info.uniform_max_error)
  assert path[0] == 0 and path.shape == (num_steps,) and np.all(np.diff(path) > 0)
  # Its criterion is the closed-loop least-squares residual: check against the QR fit.
  _, fit_info = oj.closed_loop_fit(traj, path, den, regularization=0.0)
  np.testing.assert_allclose(info.step_errors, fit_info.step_errors, rtol=CRITERION_RTOL,
                             atol=1e-12)
  _, uniform_info = oj.closed_loop_fit(traj, oj.uniform_path(traj, num_steps), den,
                                       regularization=0.0)
  np.testing.assert_allclose(float(info.uniform_max_error), np.max(uniform_info.step_errors),
                             rtol=CRITERION_RTOL)


def test_search_shares_model_calls_between_walks_and_reports_its_walk():
  den, traj = testing.mixture_problem()
  path, info = oj.closed_loop_search(traj, 3, den, num_bisection_steps=6,
                                     prefer_uniform_if_better=False, include_teacher_forced=False)
  assert not bool(info.chose_uniform) and info.source_name == "closed_loop_walk"
  walks, calls = int(info.num_walks), int(info.num_model_calls)
  assert walks == 8
  # Distinct bounds give distinct prefixes here: the root and two extensions per walk, but a
  # forced tail whose bounded errors stay below the walk's largest is not extended.
  assert walks < calls < 1 + walks * 2, calls
  np.testing.assert_allclose(float(info.max_error), np.max(info.step_errors))
  # with the teacher-forced and uniform candidates, prefixes repeat: the cache shares them
  n = 10
  _, full = oj.closed_loop_search(traj, n, den, num_bisection_steps=8)
  unshared = 1 + (int(full.num_walks) + 2) * (n - 1)
  assert int(full.num_model_calls) < 0.8 * unshared, (int(full.num_model_calls), unshared)
  jpath, jinfo = jax.jit(oj.closed_loop_search, static_argnums=(1,),
                         static_argnames=("num_bisection_steps", "prefer_uniform_if_better",
                                          "include_teacher_forced"))(
      traj, 3, den, num_bisection_steps=6, prefer_uniform_if_better=False,
      include_teacher_forced=False)
  np.testing.assert_array_equal(np.asarray(jpath), path)
  assert int(jinfo.num_model_calls) == calls


def test_bad_arguments_are_named():
  den, traj = testing.mixture_problem()
  with pytest.raises(ValueError, match="num_steps"):
    oj.closed_loop_search(traj, 0, den)
  with pytest.raises(ValueError, match="num_bisection_steps"):
    oj.closed_loop_search(traj, 3, den, num_bisection_steps=-2)
