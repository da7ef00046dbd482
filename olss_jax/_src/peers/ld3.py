"""LD3 (Tong et al., ICLR 2025): a solver's timesteps learned by backpropagation through it.

"Learning to Discretize Denoising Diffusion ODEs" keeps a classical solver (here
DPM-Solver++(2M), diffusers' form with a first-order final step onto sigma = 0) and learns its
n model-call times by gradient descent on the final error to the teacher, with two further
sets of parameters: *decoupled* model-input times (the model is called at ``t_i + d_i`` while
the solver's coefficients use ``t_i``) and the *soft teacher* slack: the student may start
from any ``x'`` within a ball around ``x_T`` (radius ``r sigma_T``, sigma_T the noise's
per-coordinate scale, the RMS of ``x_T``), so the timesteps are not spent on matching details
the few steps cannot reach,

  min over (t, d, x') of  mean_b || Psi_{t, d}(x'_b) - x_teacher_b ||^2,  ||x'_b - x_T,b|| <= r sigma_T.

Sampling uses ``x_T`` itself. Here the times are parametrised as ``t_0 = t_max`` (the
teacher's first) and ``t_i = t_max - (t_max - t_min) sum_{j<i} softmax(u)_j``, which keeps
them decreasing inside the teacher's range; Adam (optax) runs full-batch on the fit part of
the fitting noises, once per learning rate of a small grid, and the iterate with the lowest
final error on the held-out part (`split.holdout_split`, checked every few iterations, the
start included) is returned: the result is never worse on validation than the solver's
default timesteps. The radius r = 0.1 and the iteration count are fixed defaults, not tuned.

The solver is written here in `jax.numpy` so gradients flow through the coefficients and the
model calls (`jax.checkpoint` around each); at the start it equals the library's own
`dpm_solver_pp_schedule` on the same times (tested), and the returned `Schedule` is that
baseline on the learned times with the model-input times as its timesteps.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from olss_jax._src import learned
from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import split
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src.baselines import registry

DEFAULT_NUM_ITERS = 200
DEFAULT_LEARNING_RATES = (0.01, 0.05)   # each run; the held-out part picks
DEFAULT_BALL = 0.1
_FLOW_CLAMP = 1e-6        # s = 1 lowered as the flow baselines do (finite log-SNR)


class Ld3Info(NamedTuple):
  """Diagnostics of `ld3_schedule` (host values).

  Attributes:
    timesteps: (n,) float32 learned solver times; input_timesteps: (n,) the model-call times.
    train_losses: (iters * rates,) soft-teacher loss on the fit part, rate after rate.
    holdout_errors: (checks,) final-state MSE on the held-out part (x_T itself).
    best_iteration: the iteration returned (0: the start), within its learning rate's run.
    num_model_calls: model-call equivalents on the fitting noises: a forward and backward
      pass counted as three calls per step and iteration, plus the held-out checks.
  """
  timesteps: np.ndarray
  input_timesteps: np.ndarray
  train_losses: np.ndarray
  holdout_errors: np.ndarray
  best_iteration: int
  num_model_calls: int


def level_fn(teacher: teacher_lib.Teacher, alphas_cumprod=None):
  """Continuous t -> the kind's level (alpha_bar for VP, s for the flow): `dpm_solver_pp_2m`'s.

  Args:
    teacher: the model's `Teacher` (its kind; a flow's ``num_train_timesteps``).
    alphas_cumprod: (T,) the VP model's alpha_bar table (unused for a flow).

  Returns:
    ``t -> level``: (n,) float times to (n,) levels (`noise.alpha_bar_at` on the table; for a
    flow ``t / T`` clamped below 1), differentiable in t.
  """
  kind = teacher_lib.KINDS[teacher.kind]
  if kind.process == "flow":
    scale = float(teacher.config.get("num_train_timesteps", 1000))
    wide = jax.dtypes.canonicalize_dtype(jnp.float64)     # float64 under jax.enable_x64
    return lambda t: jnp.minimum(jnp.asarray(t).astype(wide) / scale, 1.0 - _FLOW_CLAMP)
  table = np.asarray(alphas_cumprod, np.float64)   # float64 under jax.enable_x64, else float32
  return lambda t: noise.alpha_bar_at(jnp.asarray(table), t)


def dpm_solver_pp_2m(denoise_fn, x_T, times, input_times, level_fn, kind: teacher_lib.Kind,
                     final_level):
  """Differentiable DPM-Solver++(2M) (diffusers' form, final sigma 0) on continuous times.

  Args:
    denoise_fn: ``(x, t) -> model output`` of the given kind.
    x_T: (B, ...) starting noises.
    times: (n,) decreasing solver times; input_times: (n,) the times the model is called at.
    level_fn: t -> level; kind: the teacher `Kind`; final_level: the level after the last
      step (alpha_bar = 1 or s = 0: sigma 0).

  Returns:
    (B, ...) the final sample: ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1}(e^{-h}-1)
    (D_i + [i > 0] (D_i - D_{i-1}) / (2 r_i))``, h = lambda_{i+1} - lambda_i,
    r_i = (lambda_i - lambda_{i-1}) / h, D the data prediction; first order at i = 0 and
    on the last step, which lands on ``alpha_n D_{n-1}``.
  """
  n = times.shape[0]
  alpha, sigma = kind.alpha_sigma_fn(level_fn(times))
  alpha_f, _ = kind.alpha_sigma_fn(jnp.asarray(final_level, alpha.dtype))
  lam = jnp.log(alpha) - jnp.log(sigma)
  call = jax.checkpoint(lambda x, t: denoise_fn(x, t))
  x, prev = x_T, None
  for i in range(n):
    e = call(x, input_times[i].astype(jnp.float32))
    cx, ce = kind.to_x0_fn(alpha[i], sigma[i])
    d = cx * x + ce * e
    if i == n - 1:
      return (alpha_f * d).astype(x_T.dtype)
    h = lam[i + 1] - lam[i]
    step = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * (jnp.exp(-h) - 1.0) * d
    if prev is not None:
      r = (lam[i] - lam[i - 1]) / h
      step = step - 0.5 * alpha[i + 1] * (jnp.exp(-h) - 1.0) * (d - prev) / r
    x, prev = step.astype(x_T.dtype), d
  return x


def ld3_schedule(traj: trajectory_lib.Trajectory, num_steps: int, denoise_fn, *,
                 alphas_cumprod=None, default_timesteps=None, num_iters: int = DEFAULT_NUM_ITERS,
                 learning_rate=DEFAULT_LEARNING_RATES, ball: float = DEFAULT_BALL,
                 holdout=0.25, check_every: int = 10):
  """DPM-Solver++(2M) on LD3-learned timesteps (module docstring), fitted on ``traj``.

  Args:
    traj: the teacher `Trajectory` (B fitting noises; only its final states are targets).
    num_steps: n model calls.
    denoise_fn: the model conditioned on the B fitting noises (called on subsets of them
      only through ``x``; a per-noise conditioned model must accept the whole batch, so the
      fit and held-out parts are run together and masked).
    alphas_cumprod: (T,) the VP model's table (not for a flow teacher).
    default_timesteps: (n,) the start (default: DPM-Solver++'s own for n).
    num_iters: Adam iterations (full batch) per learning rate.
    learning_rate: Adam's step size, or several: each trains from the start and the held-out
      part of the fitting noises picks the rate and the iterate.
    ball: r, the soft-teacher radius in units of the noise scale (0: plain teacher forcing).
    holdout: fitting noises held out for the early stopping (`split.holdout_split`).
    check_every: iterations between held-out checks (the slack starts at zero: no seed).

  Returns:
    ``(schedule, Ld3Info)``: the `Schedule` (DPM-Solver++ on the learned times, timesteps the
    model-input times, metadata ``peer="ld3"``, ``fit_model_calls``).
  """
  teacher = traj.teacher
  kind = teacher_lib.KINDS[teacher.kind]
  flow = kind.process == "flow"
  if not flow and alphas_cumprod is None:
    raise ValueError("alphas_cumprod: required for a VP teacher (the continuous levels)")
  n = noise.check_count(num_steps, "num_steps", minimum=2)
  num_iters = noise.check_count(num_iters, "num_iters", minimum=0)
  if not np.isfinite(ball) or ball < 0:
    raise ValueError(f"ball: expected a finite value >= 0, got {ball}")
  extra = {} if flow else {"alphas_cumprod": alphas_cumprod}

  def build(times):
    return registry.baseline_schedule("dpm_solver_pp", teacher, timesteps=np.asarray(times),
                                      **extra)

  t_all = np.asarray(teacher.timesteps, np.float64)
  t_max, t_min = float(t_all[0]), float(t_all[-1])
  start = (_default(teacher, n, extra) if default_timesteps is None
           else np.asarray(default_timesteps, np.float64))
  if start.shape == (n,):
    start = np.concatenate([[t_max], start[1:]])       # the first call at the teacher's first
  gaps = np.append(-np.diff(start), start[-1] - t_min) / (t_max - t_min)
  if start.shape != (n,) or np.any(gaps <= 0):
    raise ValueError(f"default_timesteps: expected {n} decreasing times in ({t_min}, {t_max}]")
  levels_of = level_fn(teacher, alphas_cumprod)
  final_level = float(np.asarray(teacher.levels)[-1])
  x_T = jnp.asarray(traj.x_T)
  target = learned.final_target(traj)
  train, hold = split.holdout_split(traj.batch_size, holdout)
  fit_mask = jnp.zeros(traj.batch_size, x_T.dtype).at[jnp.asarray(train)].set(1.0)
  hold_mask = 1.0 - fit_mask
  span = t_max - t_min
  # LD3's ball ||x' - x_T|| <= r sigma_T: sigma_T is the noise's per-coordinate scale (RMS).
  radius = ball * jnp.sqrt(jnp.mean(x_T.reshape(x_T.shape[0], -1) ** 2, axis=1))

  def times_of(params):
    p = jax.nn.softmax(params["u"])
    c = jnp.concatenate([jnp.zeros(1), jnp.cumsum(p)[:-1]])
    times = t_max - span * c
    inputs = jnp.clip(times + span * params["d"], t_min, t_max)
    return times, inputs

  # The model and the data are arguments of the jitted functions, never baked-in constants.
  data = {"f": trajectory_lib.as_denoise_pytree(denoise_fn), "x_T": x_T, "target": target,
          "fit": fit_mask, "hold": hold_mask, "radius": radius}

  def project(z, radius):
    norm = jnp.sqrt(jnp.maximum(jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=1), 1e-24))
    scale = jnp.minimum(1.0, radius / norm)   # (the floor keeps d norm / dz finite at z = 0)
    return z * scale.reshape((-1,) + (1,) * (z.ndim - 1))

  def per_sample(params, x0, data):
    times, inputs = times_of(params)
    out = dpm_solver_pp_2m(data["f"], x0, times, inputs, levels_of, kind, final_level)
    return jnp.mean(((out - data["target"]) ** 2).reshape(x0.shape[0], -1), axis=1)

  def loss_fn(params, data):
    err = per_sample(params, data["x_T"] + project(params["z"], data["radius"]), data)
    return jnp.sum(err * data["fit"]) / jnp.sum(data["fit"])

  @jax.jit
  def held_out(params, data):
    err = per_sample(params, data["x_T"], data)
    return jnp.sum(err * data["hold"]) / jnp.maximum(jnp.sum(data["hold"]), 1.0)

  init = {"u": jnp.asarray(np.log(gaps), jnp.float32), "d": jnp.zeros(n, jnp.float32),
          "z": jnp.zeros_like(x_T)}
  rates = (learning_rate,) if np.ndim(learning_rate) == 0 else tuple(learning_rate)
  best = (float(held_out(init, data)), 0, init, rates[0])
  losses, checks = [], [best[0]]
  # The rate lives in the optimiser's state, so one compiled update serves every rate.
  optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=rates[0])

  @jax.jit
  def update(params, state, data):
    loss, grads = jax.value_and_grad(loss_fn)(params, data)
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    params["z"] = project(params["z"], data["radius"])
    return params, state, loss

  for rate in rates:                  # each rate from the start; validation picks (rate, iterate)
    state = optimizer.init(init)
    params, state = init, state._replace(hyperparams={
        **state.hyperparams, "learning_rate": jnp.asarray(rate, jnp.float32)})
    for it in range(1, num_iters + 1):
      params, state, loss = update(params, state, data)
      losses.append(float(loss))
      if it % check_every == 0 or it == num_iters:
        h = float(held_out(params, data))
        checks.append(h)
        if h < best[0]:
          best = (h, it, params, rate)
  times, inputs = (np.asarray(a, np.float64) for a in times_of(best[2]))
  calls = n * (3 * num_iters * len(rates) + len(checks))
  if best[1] == 0:
    sched = build(start)
  else:
    base = build(times.astype(np.float32))
    sched = schedule_lib.make_schedule(inputs.astype(np.float32), base.weights, base.metadata)
  sched = sched.with_metadata(method="ld3", peer="ld3", ld3_best_iteration=best[1],
                              ld3_learning_rate=float(best[3]),
                              ld3_solver_timesteps=times.tolist(), fit_model_calls=calls)
  info = Ld3Info(times.astype(np.float32), inputs.astype(np.float32), np.asarray(losses),
                 np.asarray(checks), best[1], calls)
  return sched, info


def _default(teacher, n, extra):
  """DPM-Solver++'s own n model-call times for this teacher's model."""
  return np.asarray(registry.baseline_schedule("dpm_solver_pp", teacher, n, **extra).timesteps,
                    np.float64)
