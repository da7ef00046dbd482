"""Shared by the fit, regression, search and stats tests: synthetic trajectories and the direct
float64 least squares they are checked against."""
import numpy as np

import olss_jax as oj
from olss_jax import testing

ALPHAS = oj.scaled_linear_alphas_cumprod()


def synthetic(seed, k=20, b=8, d=32, correlated=False, dtype=np.float32):
  """A random (K = k, B = b, D = d) trajectory on a DDIM teacher; ``correlated``: outputs smooth
  in the step index, so neighbouring outputs correlate strongly."""
  rng = np.random.default_rng(seed)
  x_T = rng.standard_normal((b, d))
  if correlated:
    fields = rng.standard_normal((4, b, d))
    s = np.linspace(0, 1, k)[:, None, None, None]
    outputs = (np.cos(np.pi * s * np.arange(1, 5)[None, :, None, None]) * fields[None]).sum(1)
    outputs = outputs + 1e-3 * rng.standard_normal(outputs.shape)
  else:
    outputs = rng.standard_normal((k, b, d))
  return oj.Trajectory(x_T.astype(dtype), outputs.astype(dtype), oj.ddim_teacher(ALPHAS, k))


def correlated_problem():
  """Strongly correlated outputs (cond(A) ~ 5e4), the hard case for a Gram: the trajectory,
  the float64 basis ``A = [x_T, e_0, ..., e_{K-1}]`` (B * D, K + 1) and the teacher's states
  ``A C^T`` (B * D, K + 1)."""
  traj = testing.synthetic_trajectory(5, (4, 8, 8), 120, noise=3e-4, seed=3)
  k = traj.num_teacher_steps
  a = np.concatenate([traj.x_T.reshape(1, -1), traj.model_outputs.reshape(k, -1)], 0)
  a = a.astype(np.float64).T
  states = a @ np.asarray(traj.state_coefficients()).T
  return traj, a, states


def direct_error(a, states, prefix, target):
  """The mean squared residual and weights of ``states[:, target]`` on x_T and the outputs of
  ``prefix``, by numpy's tall least squares (float64)."""
  basis = a[:, np.concatenate([[0], np.asarray(prefix) + 1])]
  w = np.linalg.lstsq(basis, states[:, target], rcond=None)[0]
  resid = states[:, target] - basis @ w
  return resid @ resid / a.shape[0], w
