"""olss_jax.peers.gits_path: GITS' cost matrix and dynamic programme against brute force."""
import inspect
import itertools

import jax
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing

F64_COST_RTOL = 1e-9    # float64 costs: pure-JAX against the numpy recurrence below


def _numpy_teacher_states(traj):
  """(K + 1, B, D) float64 DDIM states, the recurrence written out in numpy."""
  ab = np.asarray(traj.levels, np.float64)
  x = np.asarray(traj.x_T, np.float64).reshape(traj.batch_size, -1)
  outs = np.asarray(traj.model_outputs, np.float64).reshape(traj.num_teacher_steps,
                                                            traj.batch_size, -1)
  states = [x]
  for k in range(traj.num_teacher_steps):
    a, a2 = ab[k], ab[k + 1]
    x = np.sqrt(a2 / a) * x + (np.sqrt(1 - a2) - np.sqrt(a2) * np.sqrt(1 - a) / np.sqrt(a)) * outs[k]
    states.append(x)
  return np.stack(states), outs


def _numpy_cost(traj, grid, metric):
  states, outs = _numpy_teacher_states(traj)
  ab = np.asarray(traj.levels, np.float64)[grid]
  scaled = states[grid] / np.sqrt(ab)[:, None, None]
  start, end = scaled[0], scaled[-1]
  unit = (end - start) / np.linalg.norm(end - start, axis=-1, keepdims=True)

  def deviation(x):
    ac = end - x
    return np.linalg.norm(ac - np.sum(ac * unit, -1, keepdims=True) * unit, axis=-1)

  g = grid.shape[0]
  cost = np.full((g, g), np.nan)
  for i in range(g - 1):
    x, e, a = states[grid[i]], outs[grid[i]], ab[i]
    for j in range(i + 1, g):
      x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)           # DDIM in EDM coordinates: x / alpha
      nxt = x0 + np.sqrt((1 - ab[j]) / ab[j]) * e
      if metric == "l2":
        cost[i, j] = np.mean(np.linalg.norm(nxt - scaled[j], axis=-1))
      else:
        cost[i, j] = np.mean(deviation(nxt) - deviation(scaled[j]))
  return cost


@pytest.mark.parametrize("metric,num_steps", [("l2", 4), ("dev", 4), ("dev", 2)])
def test_gits_path_is_the_brute_force_optimum_of_its_cost(metric, num_steps):
  den, traj = testing.mixture_problem((8,), num_noises=8)
  coeff = inspect.signature(oj.peers.gits_path).parameters["coeff"].default   # GITS' own
  with jax.enable_x64(True):
    path, info = oj.peers.gits_path(traj, num_steps, grid_size=12, metric=metric, coeff=coeff)
  grid = info.grid
  g = grid.shape[0]
  assert grid[0] == 0 and grid[-1] == traj.num_teacher_steps and np.all(np.diff(grid) > 0)
  assert 8 <= g <= 12
  want = _numpy_cost(traj, grid, metric)
  upper = np.triu(np.ones((g, g), bool), 1)
  np.testing.assert_allclose(info.cost[upper], want[upper], rtol=F64_COST_RTOL, atol=1e-12)
  best, best_path = np.inf, None
  for inner in itertools.combinations(range(1, g - 1), num_steps - 1):
    nodes = (0,) + inner + (g - 1,)
    value = sum(coeff ** m * want[nodes[m], nodes[m + 1]] for m in range(num_steps))
    if value < best:
      best, best_path = value, nodes[:-1]
  np.testing.assert_allclose(info.value, best, rtol=1e-9)
  np.testing.assert_array_equal(path, grid[np.asarray(best_path)])
  assert path.dtype == np.int32 and path.shape == (num_steps,)


def test_gits_grid_is_the_nearest_teacher_state_to_karras_spacing_in_sigma():
  _, traj = testing.mixture_problem((8,), num_noises=4)
  k = traj.num_teacher_steps
  grid = oj.peers.polynomial_grid(traj, 61, 7.0)
  ab = np.asarray(traj.levels, np.float64)[:k]
  log_sig = np.log(np.sqrt((1 - ab) / ab))              # teacher states 0..K-1
  s_max, s_min = np.exp(log_sig[0]), np.exp(log_sig[-1])
  ramp = np.linspace(0, 1, 60)          # 60 Karras points over states 0..K-1, then K: 61
  want = (s_max ** (1 / 7) + ramp * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
  nearest = np.abs(log_sig[None] - np.log(want)[:, None]).argmin(axis=1)
  np.testing.assert_array_equal(grid, np.unique(np.append(nearest, k)))
  assert grid[0] == 0 and grid[-2] == k - 1 and grid[-1] == k


def test_gits_path_rejects_bad_input_by_name():
  _, traj = testing.mixture_problem((8,), num_noises=4)
  with pytest.raises(ValueError, match="metric"):
    oj.peers.gits_path(traj, 3, metric="l1")
  with pytest.raises(ValueError, match="coeff"):
    oj.peers.gits_path(traj, 3, coeff=0.0)
  with pytest.raises(ValueError, match="num_steps"):
    oj.peers.gits_path(traj, 20, grid_size=8)
