"""model_calls.py through oj.closed_loop_fit / oj.closed_loop_search: the caller's precision.

Both fits call the model from inside their float64 scope; the model must still be traced in the
precision the caller enabled (float32 in JAX's default mode, float64 only under
``jax.enable_x64(True)``), on x in the trajectory's dtype, while the library's least squares
stay float64. A recording denoiser notes, at trace time, x's dtype and JAX's default float
dtype (``jnp.zeros(())``): the latter is float64 inside the library's scope, so it tells the
two apart.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

PATH = [0, 5, 10, 15]


def _problem():
  """A tiny mixture problem as host float32 copies (the tests cast them per case)."""
  den, traj = oj.testing.mixture_problem(num_noises=4, num_teacher_steps=20)
  return den, oj.Trajectory(np.asarray(traj.x_T, np.float32),
                            np.asarray(traj.model_outputs, np.float32), traj.teacher)


def _recorder(den):
  seen = []

  def recording(x, t):
    seen.append((x.dtype, jnp.zeros(()).dtype))
    return den(x, t)

  return recording, seen


@pytest.mark.parametrize("x64,data_dtype", [(False, np.float32), (True, np.float64),
                                            (True, np.float32)])
def test_closed_loop_fit_traces_the_model_in_the_callers_precision(x64, data_dtype):
  den, traj = _problem()
  traj = oj.Trajectory(traj.x_T.astype(data_dtype), traj.model_outputs.astype(data_dtype),
                       traj.teacher)
  recording, seen = _recorder(den)
  with jax.enable_x64(x64):
    schedule, info = oj.closed_loop_fit(traj, PATH, recording, regularization=0.0)
  assert seen, "the model was never traced"
  default_float = np.float64 if x64 else np.float32
  assert set(seen) == {(np.dtype(data_dtype), np.dtype(default_float))}, seen
  # the algebra is float64 in either mode; the states stay in the data's dtype
  assert np.asarray(schedule.weights).dtype == np.float64
  assert info.step_errors.dtype == np.float64
  assert info.states.dtype == data_dtype
  assert np.all(np.isfinite(np.asarray(schedule.weights)))


def test_closed_loop_search_traces_the_model_in_float32_by_default():
  den, traj = _problem()
  recording, seen = _recorder(den)
  path, info = oj.closed_loop_search(traj, 3, recording, num_bisection_steps=4,
                                     include_teacher_forced=False)
  assert seen, "the model was never traced"
  assert set(seen) == {(np.dtype(np.float32), np.dtype(np.float32))}, seen
  assert np.asarray(path).shape == (3,) and int(np.asarray(path)[0]) == 0, path
  assert np.asarray(info.step_errors).dtype == np.float64    # the algebra: float64
