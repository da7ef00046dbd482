"""GITS (Chen et al., ICML 2024): timesteps by dynamic programming on a one-step cost matrix.

"On the Trajectory Regularity of ODE-based Diffusion Sampling" chooses a solver's n timesteps
among a grid of G teacher timesteps. From warm-up teacher trajectories it builds the cost of
every single jump, ``cost[i, j]`` = the error of one first-order step (Euler in the EDM
coordinates ``x / alpha``, which is DDIM) from the teacher state at grid point i to grid point
j, against the teacher state at j (for a flow teacher, whose first state is pure noise with
alpha = 0, the flow's own coordinates x); dynamic programming then picks the path of n jumps from the
first grid point to the last minimising

  V_1(i) = cost[i, G - 1],   V_k(j) = min_{j < i < G - 1} cost[j, i] + coeff * V_{k-1}(i),

and the chosen timesteps are given to the target solver (iPNDM, DPM-Solver++, UniPC, ...).

Faithful to the authors' code (zju-pi/diff-sampler, ``gits-main``) with their recommended
settings: a grid of 61 points polynomial in sigma with rho = 7 (Karras' spacing), the
``"dev"`` metric (the change in the trajectory's deviation from the straight line between its
ends, the paper's regularity measure) or ``"l2"`` (the mean per-image L2 distance), and
coeff = 1.15. Here the warm-up trajectories are the teacher `Trajectory` itself (its fitting
noises), the grid points are the teacher states whose sigma is nearest the polynomial grid,
and the last grid point is the teacher's final state. Pure JAX (the DP is a `lax.scan`).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise
from olss_jax._src import regression
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

METRICS = ("dev", "l2")
DEFAULT_GRID_SIZE = 61
DEFAULT_RHO = 7.0
DEFAULT_COEFF = 1.15


class GitsInfo(NamedTuple):
  """Diagnostics of `gits_path` (host values).

  Attributes:
    grid: (G,) int32 teacher-state indices of the grid (the last is the final state K).
    cost: (G, G) float64 one-step cost matrix (upper triangle used).
    value: float, the DP's optimal objective.
  """
  grid: np.ndarray
  cost: np.ndarray
  value: float


def polynomial_grid(traj: trajectory_lib.Trajectory, grid_size: int = DEFAULT_GRID_SIZE,
                    rho: float = DEFAULT_RHO) -> np.ndarray:
  """Teacher-state indices nearest (in log sigma) to a rho-polynomial grid in sigma.

  The grid runs from the noisiest teacher state (index 0) to the least noisy one the model is
  called at (index K - 1) with Karras' spacing (`noise.karras_sigmas`), then the final state
  K (a flow teacher's state 0, pure noise, is kept and the spacing starts at state 1). Sigma here is the kind's ``sigma / alpha`` (Karras' sigma for VP models, ``s / (1 - s)``
  for flows). Duplicates are merged, so the grid may hold fewer than ``grid_size`` points.

  Returns:
    (G,) int32 strictly increasing indices into the teacher's K + 1 states, ending with K.
  """
  k = traj.num_teacher_steps
  grid_size = noise.check_count(grid_size, "grid_size", minimum=2)
  kind = traj.teacher.parametrisation
  alpha, sigma = kind.alpha_sigma(np.asarray(traj.levels, np.float64)[:k])
  with np.errstate(divide="ignore"):
    log_sigma = np.log(np.asarray(sigma) / np.asarray(alpha))
  # A flow teacher starts at pure noise (s = 1, alpha = 0, sigma / alpha infinite): the grid
  # then spans its finite states and keeps state 0 as the start.
  first = 1 if not np.isfinite(log_sigma[0]) else 0
  want = np.log(noise.karras_sigmas(float(np.exp(log_sigma[-1])),
                                    float(np.exp(log_sigma[first])), grid_size - 1, rho))
  idx = first + np.abs(log_sigma[None, first:] - want[:, None]).argmin(axis=1)
  return np.unique(np.concatenate([[0], idx, [k]])).astype(np.int32)


@jax.jit
def _cost_matrix(states, outputs, step_a, step_b, alphas, metric_dev):
  """(G, G) cost of one step between grid points; states (G, B, D), outputs (G - 1, B, D)."""
  with jax.enable_x64(True):
    scaled = states / alphas[:, None, None]           # EDM coordinates x / alpha
    start, end = scaled[0], scaled[-1]
    line = end - start
    unit = line / jnp.linalg.norm(line, axis=-1, keepdims=True)

    def deviation(x):                                   # (..., B, D) -> (..., B)
      ac = end - x
      proj = jnp.sum(ac * unit, axis=-1, keepdims=True) * unit
      return jnp.linalg.norm(ac - proj, axis=-1)

    dev_teacher = deviation(scaled)                     # (G, B); 0 at both ends

    def row(i):
      nxt = (step_a[i][:, None, None] * states[i][None]
             + step_b[i][:, None, None] * outputs[i][None]) / alphas[:, None, None]
      dist = jnp.linalg.norm(nxt - scaled, axis=-1)     # (G, B)
      dev = deviation(nxt) - dev_teacher
      return jnp.mean(jnp.where(metric_dev, dev, dist), axis=-1)

    cost = jax.lax.map(row, jnp.arange(outputs.shape[0]))
    return jnp.concatenate([cost, jnp.full((1, states.shape[0]), jnp.inf)], axis=0)


@jax.jit
def _dp(cost, coeff, num_steps_arr):
  """GITS' dynamic programme: V[j, k] and the greedy read-out of the optimal path."""
  with jax.enable_x64(True):
    g = cost.shape[0]
    n_max = num_steps_arr.shape[0]
    j_idx = jnp.arange(g)
    allowed = (j_idx[None, :] > j_idx[:, None]) & (j_idx[None, :] < g - 1)   # j -> i
    v1 = cost[:, -1]

    def stage(v_prev, _):
      cand = jnp.where(allowed, cost + coeff * v_prev[None, :], jnp.inf)
      v = jnp.min(cand, axis=1)
      return v, v_prev

    _, vs = jax.lax.scan(stage, v1, None, length=n_max)   # vs[k - 1] = V_k
    return vs


def gits_path(traj: trajectory_lib.Trajectory, num_steps: int, *,
              grid_size: int = DEFAULT_GRID_SIZE, rho: float = DEFAULT_RHO,
              metric: str = "dev", coeff: float = DEFAULT_COEFF):
  """GITS' timesteps for an n-step solver, as teacher-step indices.

  Args:
    traj: the teacher `Trajectory` (its B noises are GITS' warm-up samples).
    num_steps: n model calls of the target solver (n jumps on the grid).
    grid_size: G, points of the rho-polynomial grid (`polynomial_grid`; the authors' 61).
    rho: the grid's polynomial exponent (7).
    metric: ``"dev"`` (the authors' recommended) or ``"l2"``.
    coeff: the DP's discount of later steps (1.15).

  Returns:
    ``(path, GitsInfo)``: path (n,) int32 teacher-step indices with ``path[0] == 0`` (the
    solver's model-call timesteps are ``traj.timesteps[path]``; its last step lands on the
    final state).
  """
  validation.check_trajectory(traj)
  if metric not in METRICS:
    raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
  if not np.isfinite(coeff) or coeff <= 0:
    raise ValueError(f"coeff: expected a finite value > 0, got {coeff}")
  grid = polynomial_grid(traj, grid_size, rho)
  g = grid.shape[0]
  n = noise.check_count(num_steps, "num_steps", maximum=g - 1)
  with jax.enable_x64(True):
    b = traj.batch_size
    states = regression.teacher_states(traj, grid).reshape(g, b, -1)
    outputs = jnp.asarray(traj.model_outputs)[jnp.asarray(grid[:-1])].reshape(g - 1, b, -1)
    levels = jnp.asarray(traj.levels, jnp.float64)[jnp.asarray(grid)]
    step_a, step_b = traj.teacher.step(levels[:-1, None], levels[None, :])
    alphas, _ = traj.teacher.parametrisation.alpha_sigma(levels)
    # EDM coordinates x / alpha, unless a state is pure noise (a flow's s = 1, alpha = 0):
    # then the flow's own coordinates x.
    alphas = jnp.where(jnp.all(alphas > 0), alphas, jnp.ones_like(alphas))
    cost = _cost_matrix(states, outputs.astype(jnp.float64), step_a, step_b, alphas,
                        jnp.asarray(metric == "dev"))
    vs = np.asarray(_dp(cost, jnp.asarray(coeff, jnp.float64), jnp.zeros(n)))
    cost = np.asarray(cost)
  # Read the path out as the authors do: from node 0, the first j attaining V.
  path, w = [0], 0
  for k in range(n, 1, -1):
    target = vs[k - 1][w]
    cands = [j for j in range(w + 1, g - 1)
             if np.isclose(cost[w, j] + coeff * vs[k - 2][j], target, rtol=1e-12, atol=0)]
    if not cands:
      raise RuntimeError("gits_path: no path attains the DP value (inconsistent costs)")
    w = cands[0]
    path.append(w)
  value = float(vs[n - 1][0])
  return grid[np.asarray(path)].astype(np.int32), GitsInfo(grid, cost, value)
