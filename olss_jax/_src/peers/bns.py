"""BNS, Bespoke Non-Stationary solvers (Shaul et al., ICML 2024), on the engine of `learned`.

A non-stationary solver takes n model calls at learned times t_0 > ... > t_{n-1} and forms
each state from the starting point and *every* velocity so far,

  z_{i+1} = a_i z_0 + sum_{j <= i} b_ij u_j,      u_j = u(z_j, s_j),

in the coordinates of the equivalent conditional-OT flow, ``z = x / (alpha + sigma)`` at flow
time ``s = sigma / (alpha + sigma)`` (the paper's scale-time transformation of a diffusion
model: x_0 and eps predictions are unchanged, ``u = eps_hat - x0_hat``). For a flow model
``z = x`` and ``u`` is its output. The family contains Runge-Kutta and multistep methods and
their exponential and scale-time variants. Its parameters here are a (n,), the b_ij of the
lower triangle (n (n + 1) / 2) and the n - 1 free times (softmax increments on a
`learned.TimeGrid`: always strictly ordered inside the teacher's range).

Because each u_j is ``P_j x_j + Q_j e_j`` with scalars of its level and x_j is itself in
span{x_T, e_0, ..., e_{j-1}}, every BNS solver is a `Schedule` (paper Eq. 12's span; `build`
maps (a, b, times) to its weights, differentiably), and BNS is trained by `learned.train`, the
same engine as ``olss-e2e``: what differs is the parametrisation (velocity coordinates), the
initialisation (the paper's Euler or midpoint solver on uniform flow times, `bns_init`) and
the loss (the paper's PSNR: ``"log_mse"``, the mean log final MSE). The paper trains on about
520 teacher pairs from an adaptive RK45 solver; here it sees the same fitting noises and
teacher as every other method. There is no official code; this follows the paper's text.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import learned
from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation
from olss_jax._src.baselines import levels as levels_lib
from olss_jax._src.baselines import registry

INITS = ("euler", "midpoint")


def _flow_scale(teacher: teacher_lib.Teacher) -> float:
  return float(teacher.config.get("num_train_timesteps", 1000))


def teacher_table(teacher: teacher_lib.Teacher, alphas_cumprod=None) -> np.ndarray:
  """(T,) the VP model's alphas_cumprod: given (checked against the teacher's levels), or read
  off a teacher of every training timestep; ValueError when neither."""
  return registry._teacher_table(teacher, alphas_cumprod)  # pylint: disable=protected-access


def call_levels(teacher: teacher_lib.Teacher, times, table=None) -> np.ndarray:
  """(n,) float64 levels of float32 model-call times as the model and baselines read them.

  Flow: ``s = t / T`` in float32 (`flow_euler_schedule`'s arithmetic); VP: alpha_bar by
  `noise.alpha_bar_at` (`ddim_schedule`'s for float times).
  """
  t32 = np.asarray(times, np.float32)
  if teacher_lib.KINDS[teacher.kind].process == "flow":
    return np.asarray(t32 / np.float32(_flow_scale(teacher)), np.float64)
  return levels_lib.table_alpha_bars(np.asarray(table, np.float64), t32)


def flow_time(kind: teacher_lib.Kind, levels) -> np.ndarray:
  """The conditional-OT flow time ``s = sigma / (alpha + sigma)`` of host levels, float64."""
  alpha, sigma = (np.asarray(v, np.float64) for v in kind.alpha_sigma(np.asarray(levels,
                                                                                 np.float64)))
  return sigma / (alpha + sigma)


def bns_weights(a, b, levels, final_level, kind: teacher_lib.Kind):
  """(n, n + 1) Schedule weights of a BNS solver (module docstring), differentiable.

  Args:
    a: (n,) coefficients of z_0.
    b: (n, n) lower-triangular coefficients of the velocities (entries above ignored).
    levels: (n,) the kind's levels at the model-call times.
    final_level: the final state's level.
    kind: the teacher `Kind`.

  Returns:
    Weights over [x_T, e_0, ..., e_{n-1}]: row i is ``x_{i+1} = c_{i+1} z_{i+1}`` with
    ``c = alpha + sigma``, each velocity ``u_j = (dx - cx) x_j + (de - ce) e_j`` (x_0 and eps
    read off e_j by the kind at level j).
  """
  n = levels.shape[0]
  lv = jnp.concatenate([levels, jnp.asarray([final_level], levels.dtype)])
  alpha, sigma = kind.alpha_sigma_fn(lv)
  c = alpha + sigma
  cx, ce = kind.to_x0_fn(alpha[:-1], sigma[:-1])
  dx, de = kind.to_eps_fn(alpha[:-1], sigma[:-1])
  p, q = dx - cx, de - ce
  eye = jnp.eye(n + 1, dtype=levels.dtype)
  states = [eye[0]]                        # x_j over [x_T, e_0, ...]
  velocities = []
  for i in range(n):
    velocities.append(p[i] * states[i] + q[i] * eye[i + 1])
    z = a[i] * states[0] / c[0] + sum(b[i, j] * velocities[j] for j in range(i + 1))
    states.append(c[i + 1] * z)
  return jnp.stack(states[1:])


@dataclasses.dataclass(frozen=True)
class BnsParametrisation:
  """BNS's parameters ``{"a": (n,), "b": (n (n + 1) / 2,), "u": (n,)}`` -> (times, weights).

  Static and hashable (`learned.train` jits `build`); the VP table is ``data["table"]``.
  """
  num_steps: int
  grid: learned.TimeGrid
  kind: str
  final_level: float
  flow_scale: float
  time_scale: float = learned.DEFAULT_TIME_SCALE

  def levels(self, times, data):
    kind = teacher_lib.KINDS[self.kind]
    if kind.process == "flow":
      return times / jnp.asarray(self.flow_scale, times.dtype)
    return noise.alpha_bar_at(data["table"], times).astype(times.dtype)

  def build(self, params, data):
    n = self.num_steps
    rows, cols = np.tril_indices(n)
    b = jnp.zeros((n, n), params["b"].dtype).at[rows, cols].set(params["b"])
    times = self.grid.times(self.time_scale * params["u"])
    weights = bns_weights(params["a"], b, self.levels(times, data), self.final_level,
                          teacher_lib.KINDS[self.kind])
    return times, weights


def _uniform_flow_times(teacher, grid, s_targets, table) -> np.ndarray:
  """float32 model-call times whose flow times are ``s_targets`` (clipped into the grid)."""
  kind = teacher_lib.KINDS[teacher.kind]
  fine = np.linspace(grid.end, grid.first, 20001)
  s_fine = flow_time(kind, call_levels(teacher, fine, table))
  order = np.argsort(s_fine)
  t = np.interp(s_targets, s_fine[order], fine[order])
  t[0] = grid.first
  span = grid.first - grid.end
  for i in range(1, t.shape[0]):          # strictly decreasing, above the grid's end
    t[i] = min(t[i], t[i - 1] - 1e-3 * span)
  if t[-1] <= grid.end:
    raise ValueError(f"num_steps: {t.shape[0]} calls do not fit the teacher's range")
  return t.astype(np.float32)


def bns_init(teacher: teacher_lib.Teacher, num_steps: int, *, init: str = "euler",
             alphas_cumprod=None):
  """The paper's starting solvers on uniform flow times, as BNS parameters.

  ``"euler"``: ``z_{i+1} = z_i + (s_{i+1} - s_i) u_i`` at ``s_i`` uniform between the flow
  time of the teacher's first call and the final state's (n calls; for any kind this is
  deterministic DDIM on those levels, flow Euler for a flow). ``"midpoint"``: n // 2 RK2
  midpoint steps (calls at s_k and halfway to s_{k+1}; so the calls are uniform too), then one
  Euler step when n is odd.

  Args:
    teacher: the model's `Teacher` (its range, kind and final level).
    num_steps: n model calls (>= 1; "midpoint": >= 2).
    init: "euler" or "midpoint".
    alphas_cumprod: the VP model's table (not needed for a flow, or for a teacher of every
      training timestep).

  Returns:
    ``(a (n,), b (n, n), times (n,) float32, levels (n,) float64)``: the parameters (b lower
    triangular) at the realised float32 times and their levels.
  """
  n = noise.check_count(num_steps, "num_steps")
  init = validation.check_choice(init, "init", INITS)
  if init == "midpoint" and n < 2:
    raise ValueError("num_steps: the midpoint init needs at least 2 calls")
  kind = teacher_lib.KINDS[teacher.kind]
  table = None if kind.process == "flow" else teacher_table(teacher, alphas_cumprod)
  grid = learned.teacher_grid(teacher)
  final_level = float(np.asarray(teacher.levels, np.float64)[-1])
  s_first = float(flow_time(kind, call_levels(teacher, [grid.first], table))[0])
  s_final = float(flow_time(kind, np.float64(final_level)))
  num_big = n // 2 + n % 2 if init == "midpoint" else n
  big = np.linspace(s_first, s_final, num_big + 1)
  if init == "euler":
    targets = big[:-1]
  else:
    targets = []
    for k in range(n // 2):
      targets += [big[k], 0.5 * (big[k] + big[k + 1])]
    if n % 2:
      targets.append(big[-2])
    targets = np.asarray(targets)
  times = _uniform_flow_times(teacher, grid, targets, table)
  levels = call_levels(teacher, times, table)
  s = np.append(flow_time(kind, levels), s_final)      # realised flow times, then the final
  a, b = np.ones(n), np.zeros((n, n))
  if init == "euler":
    for i in range(n):
      b[i, :i + 1] = np.diff(s)[:i + 1]
  else:
    full = []                                  # (index, ds) of the steps' second velocities
    for k in range(n // 2):
      i = 2 * k
      for j, ds in full:
        b[i, j] = b[i + 1, j] = ds
      b[i, i] = s[i + 1] - s[i]                              # to the midpoint
      b[i + 1, i + 1] = s[i + 2] - s[i]                      # the full step with u(midpoint)
      full.append((i + 1, s[i + 2] - s[i]))
    if n % 2:
      for j, ds in full:
        b[n - 1, j] = ds
      b[n - 1, n - 1] = s[n] - s[n - 1]
  return a, b, times, levels


def bns_schedule(traj: trajectory_lib.Trajectory, num_steps: int, denoise_fn, *,
                 init: str = "midpoint", alphas_cumprod=None, loss: str = "log_mse",
                 criterion: str = "rmse", num_iters: int = learned.DEFAULT_NUM_ITERS,
                 learning_rate=learned.DEFAULT_LEARNING_RATES,
                 time_scale: float = learned.DEFAULT_TIME_SCALE, holdout=learned.DEFAULT_HOLDOUT,
                 patience: int | None = learned.DEFAULT_PATIENCE, jit: bool = True):
  """A BNS solver (module docstring) trained on ``traj``'s fitting noises.

  Args:
    traj: the teacher `Trajectory` (B >= 2 fitting noises; the targets are its final states).
    num_steps: n model calls.
    denoise_fn: the model the teacher ran.
    init: the starting solver, "midpoint" or "euler" (`bns_init`; midpoint led on
      development seeds, at 5 and 10 steps on both 16-dim mixtures).
    alphas_cumprod: the VP model's table (see `bns_init`).
    loss: "log_mse" (the paper's PSNR) or "mse".
    criterion, num_iters, learning_rate, holdout, patience, jit: `learned.train`'s.
    time_scale: the times' logits' step relative to the coefficients'.

  Returns:
    ``(schedule, learned.LearnInfo)``: the `Schedule` (float32 times; metadata
    ``peer="bns"``, ``bns_init``, ``fit_model_calls``, ``fit_seconds`` and the
    `learned.info_metadata` facts); the initial solver itself when training did not beat it
    on the held-out fitting noises.
  """
  t0 = time.perf_counter()
  teacher = traj.teacher
  param, params0, data, start = bns_parametrisation(
      teacher, num_steps, init=init, alphas_cumprod=alphas_cumprod, time_scale=time_scale,
      dtype=jnp.asarray(traj.x_T).dtype)
  out_t, out_w, info = learned.train(
      denoise_fn, traj, param, params0, (start.timesteps, start.weights), loss=loss,
      criterion=criterion, num_iters=num_iters, learning_rate=learning_rate, holdout=holdout,
      patience=patience, data=data, jit=jit)
  meta = {"method": "bns", "peer": "bns", "bns_init": init, "bns_loss": loss,
          "teacher": teacher.kind, "teacher_steps": traj.num_teacher_steps,
          "num_fit_images": traj.batch_size, "sample_shape": list(traj.sample_shape),
          "fit": "initial" if info.kept_start else "end_to_end",
          "fit_model_calls": info.num_model_calls, **learned.info_metadata(info)}
  meta["fit_seconds"] = time.perf_counter() - t0
  return schedule_lib.make_schedule(out_t, out_w, meta), info


def bns_parametrisation(teacher: teacher_lib.Teacher, num_steps: int, *, init: str = "midpoint",
                        alphas_cumprod=None, time_scale: float = learned.DEFAULT_TIME_SCALE,
                        dtype=jnp.float32):
  """What `bns_schedule` hands to `learned.train`: the parametrisation and its start.

  Returns:
    ``(param, params0, data, start)``: a `BnsParametrisation`, its parameters at `bns_init`
    (in ``dtype``), the arrays its ``build`` reads (the VP table) and the start as a float64
    `Schedule` (`start_schedule`).
  """
  time_scale = validation.check_positive(time_scale, "time_scale")
  a, b, times, _ = bns_init(teacher, num_steps, init=init, alphas_cumprod=alphas_cumprod)
  n = times.shape[0]
  flow = teacher_lib.KINDS[teacher.kind].process == "flow"
  table = None if flow else teacher_table(teacher, alphas_cumprod)
  final_level = float(np.asarray(teacher.levels, np.float64)[-1])
  grid = learned.teacher_grid(teacher)
  param = BnsParametrisation(n, grid, teacher.kind, final_level, _flow_scale(teacher),
                             float(time_scale))
  rows, cols = np.tril_indices(n)
  params0 = {"a": jnp.asarray(a, dtype), "b": jnp.asarray(b[rows, cols], dtype),
             "u": jnp.asarray(grid.logits(times) / time_scale, dtype)}
  data = {} if flow else {"table": jnp.asarray(table, dtype)}
  return param, params0, data, start_schedule(teacher, a, b, times, table)


def start_schedule(teacher: teacher_lib.Teacher, a, b, times, table=None,
                   metadata=None) -> schedule_lib.Schedule:
  """The `Schedule` of BNS parameters at float32 ``times``, in float64 (`bns_weights`)."""
  kind = teacher_lib.KINDS[teacher.kind]
  levels = call_levels(teacher, times, table)
  final_level = float(np.asarray(teacher.levels, np.float64)[-1])
  with jax.enable_x64(True):
    weights = np.asarray(bns_weights(jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64),
                                     jnp.asarray(levels, jnp.float64), final_level, kind))
  return schedule_lib.make_schedule(np.asarray(times, np.float32), weights, metadata)
