"""Schedules learned end to end: every weight and continuous model-call times (beyond the paper).

OLSS (paper Eq. 12) predicts each state as ``x_{i+1} = W[i, 0] x_T + sum_{j <= i} W[i, j+1] e_j``
and fits every row on its own by least squares, at model-call times on the teacher's grid. The
solvers that learn their coefficients against the *final* sample (BNS, Shaul et al., ICML 2024;
DS-Solver, arXiv 2505.21114) search the same span, with two differences: the criterion is the
final state's error through the whole n-step rollout, minimised by gradient descent, and the
times are continuous. This module is the one engine for all of them:

* a *parametrisation* maps a pytree of parameters to ``(times (n,), weights (n, n + 1))``:
  `FreeSchedule` (every lower-triangular weight, the structure kept exactly, and the times on
  a `TimeGrid`) here, BNS's init and DS-Solver's velocity coefficients in `olss_jax.peers`;
* `train` minimises the final-sample loss (``"log_mse"``, the mean log MSE: minus BNS's PSNR
  up to constants, the default; or ``"mse"``) by differentiating through `sampler.sample`,
  each model call wrapped in `jax.checkpoint`, with optax (Adam by default; every learning
  rate of a small grid from the same start), on the fit part of the fitting noises; the
  held-out part (`split.holdout_split`, deterministic) picks the rate and the iterate by the
  mean per-sample RMSE (the comparison's metric) and stops a run after `DEFAULT_PATIENCE`
  steps without improvement; the start is returned unless an iterate is strictly better on
  the held-out part (the safeguard);
* `learn_schedule` trains any `Schedule` this way; ``fit_olss(..., method="olss-e2e")``
  (`e2e.fit_e2e`) trains the least-squares start that validates best and the midpoint solver
  and keeps the better.

The update step is one `jax.jit` per call (the model, noises and targets are traced
arguments, never baked-in constants), shared by every learning rate.

Why the log loss: on a sharp mixture a few fitting noises end in another mode than the
teacher's; their squared errors dominate the mean MSE, and its gradient then spends the
weights on them, moving other noises across mode boundaries (measured on development seeds of
the 16-dim VP mixture at 5 steps: training on the MSE never beat its start on the held-out
noises, the log loss lowered their RMSE 13x). The defaults (rates, 1000 steps, patience 200,
time scale 10, log loss) were chosen on development seeds (11 / 12), not on the comparison's.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from olss_jax._src import regression
from olss_jax._src import sampler
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import split
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

LOSSES = ("mse", "log_mse")
DEFAULT_LOSS = "log_mse"           # robust to the few noises that land in another mode
CRITERIA = ("rmse", "mse", "log_mse")   # held-out criteria; "rmse": the comparison's metric
DEFAULT_NUM_ITERS = 1000
DEFAULT_LEARNING_RATES = (1e-3, 1e-2)
DEFAULT_TIME_SCALE = 10.0          # the times' logits move this much faster than the weights
DEFAULT_PATIENCE = 200
DEFAULT_HOLDOUT = 0.25
_MIN_GAP = 1e-4                    # relative floor of a start's gap (a call at the grid's end)
_TINY = 1e-30                      # log_mse: log(mse + tiny), finite for an exact sample


@dataclasses.dataclass(frozen=True)
class TimeGrid:
  """Strictly decreasing model-call times from softmax logits (static, hashable).

  ``t_0 = first`` (fixed) and, for i >= 1, ``t_i = end + (first - end) sum_{j >= i} p_j`` with
  ``p = softmax(u)``, u of shape (n,): the n positive increments ``(first - end) p_i`` are the
  n - 1 gaps between calls and the gap from the last call to ``end``. So every
  ``end < t_{n-1} < ... < t_1 < t_0 = first`` for any real u (up to float rounding).

  Attributes:
    first: the first call's time (the start's; the teacher's first).
    end: the bound the last call stays above (the teacher's last call time, or the time of
      the final state where the model is defined there).
  """
  first: float
  end: float

  def times(self, logits: jax.Array) -> jax.Array:
    """(n,) times from (n,) logits, in the logits' dtype."""
    p = jax.nn.softmax(logits)
    suffix = jnp.cumsum(p[::-1])[::-1]
    times = self.end + (self.first - self.end) * suffix
    return times.at[0].set(self.first)

  def logits(self, times) -> np.ndarray:
    """(n,) float64 logits whose `times` are ``times`` (gaps floored at 1e-4 of the span).

    Raises:
      ValueError: ``times`` not strictly decreasing from ``first`` (within 1e-6 of the span).
    """
    times = np.asarray(times, np.float64)
    span = self.first - self.end
    if times.ndim != 1 or times.shape[0] < 1 or not span > 0:
      raise ValueError(f"times: expected (n,) times below first={self.first} > end={self.end}")
    if abs(times[0] - self.first) > 1e-6 * span or np.any(np.diff(times) >= 0):
      raise ValueError(f"times: expected strictly decreasing times from {self.first}, got "
                       f"{times.tolist()!r:.120}")
    gaps = np.append(-np.diff(times), times[-1] - self.end) / span
    gaps = np.maximum(gaps, _MIN_GAP)
    return np.log(gaps / gaps.sum())


@dataclasses.dataclass(frozen=True)
class FreeSchedule:
  """Every lower-triangular weight (paper Eq. 12's span) and, on ``grid``, the times.

  Parameters ``{"w": (n (n + 3) / 2,), "u": (n,)}``: the entries of W allowed by
  `schedule.lower_triangular_mask` (so the structure is exact) and the grid's logits divided
  by ``time_scale`` (Adam's step on the logits is ``time_scale`` times its step on the
  weights). With ``grid=None`` the times are fixed (``data["times"]``) and "u" is unused.
  """
  num_steps: int
  grid: TimeGrid | None
  time_scale: float = DEFAULT_TIME_SCALE

  def init(self, times, weights, dtype) -> dict:
    """The parameters of a start ``(times (n,), weights (n, n + 1))``."""
    rows, cols = np.nonzero(schedule_lib.lower_triangular_mask(self.num_steps))
    w = np.asarray(weights, np.float64)[rows, cols]
    u = (self.grid.logits(times) / self.time_scale if self.grid is not None
         else np.zeros(self.num_steps))
    return {"w": jnp.asarray(w, dtype), "u": jnp.asarray(u, dtype)}

  def build(self, params: dict, data: dict) -> tuple[jax.Array, jax.Array]:
    """``(times (n,), weights (n, n + 1))`` of the parameters."""
    n = self.num_steps
    rows, cols = np.nonzero(schedule_lib.lower_triangular_mask(n))
    w = params["w"]
    weights = jnp.zeros((n, n + 1), w.dtype).at[rows, cols].set(w)
    if self.grid is None:
      return data["times"], weights
    return self.grid.times(self.time_scale * params["u"]), weights


class LearnInfo(NamedTuple):
  """Diagnostics of `train` / `learn_schedule` (host values).

  Attributes:
    train_losses: (iterations,) loss on the fit part, run after run (one run per rate).
    holdout_errors: (iterations,) the held-out criterion at each iterate (runs' last included).
    start_holdout_error: the criterion of the start itself on the held-out part.
    holdout_error: the criterion of the returned schedule (== start's when kept).
    start_holdout_mse, holdout_mse: the held-out final-state MSE of the start and the result.
    best_iteration: the returned iterate within its run (0: the start, kept).
    learning_rate: the rate of the returned iterate (nan when the start is kept).
    kept_start: no iterate was strictly better than the start on the held-out part.
    num_iterations: optimisation steps taken (all runs).
    num_model_calls: model-call equivalents on the fitting noises: a forward and backward
      pass is 3 per step, an evaluation 1 (the start, each run's last iterate).
    seconds: wall time (compilation included).
  """
  train_losses: np.ndarray
  holdout_errors: np.ndarray
  start_holdout_error: float
  holdout_error: float
  start_holdout_mse: float
  holdout_mse: float
  best_iteration: int
  learning_rate: float
  kept_start: bool
  num_iterations: int
  num_model_calls: int
  seconds: float


def per_sample_errors(times, weights, denoise_fn, x_T, target, *,
                      checkpoint: bool = True) -> jax.Array:
  """(B,) final-state MSE of each sample of the n-step rollout (paper Eq. 12 run by `sample`).

  Args:
    times: (n,) model-call times (float: differentiable; int: the teacher's grid).
    weights: (n, n + 1) lower-triangular weights.
    denoise_fn: ``(x_t (B, ...), t) -> e (B, ...)``.
    x_T: (B, ...) starting noises.
    target: (B, ...) the teacher's final states for those noises.
    checkpoint: wrap each model call in `jax.checkpoint` (reverse mode keeps one model input
      per step and recomputes the model's activations).

  Returns:
    (B,) ``mean((sample - target)^2)`` per sample, in at least float32.
  """
  model = jax.checkpoint(lambda x, t: denoise_fn(x, t)) if checkpoint else denoise_fn
  x = sampler.sample(model, schedule_lib.Schedule(times, weights), x_T)
  diff = (x - target).astype(jnp.promote_types(x.dtype, jnp.float32))
  return jnp.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1)


def reduce_errors(errors: jax.Array, mask: jax.Array, loss: str) -> jax.Array:
  """A criterion over the samples where ``mask`` is 1: mean MSE, mean log MSE or mean RMSE.

  ``"log_mse"`` is ``mean_b log(mse_b)``: minus the mean PSNR (BNS's loss) times ln(10) / 10,
  plus a constant; ``"rmse"`` is ``mean_b sqrt(mse_b)`` (the comparison's metric).
  """
  if loss == "log_mse":
    per = jnp.log(errors + _TINY)
  elif loss == "rmse":
    per = jnp.sqrt(errors)
  else:
    per = errors
  return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def rollout_loss(times, weights, denoise_fn, x_T, target, *, loss: str = "mse",
                 mask=None) -> jax.Array:
  """Scalar final-sample loss of a schedule's rollout, differentiable in times and weights.

  Args:
    times, weights, denoise_fn, x_T, target: as in `per_sample_errors`.
    loss: ``"mse"`` or ``"log_mse"`` (`reduce_errors`).
    mask: optional (B,) sample weights (1: counted).

  Returns:
    The loss (a scalar).
  """
  errors = per_sample_errors(times, weights, denoise_fn, x_T, target)
  mask = jnp.ones_like(errors) if mask is None else jnp.asarray(mask, errors.dtype)
  return reduce_errors(errors, mask, validation.check_choice(loss, "loss", LOSSES))


def _rates(learning_rate) -> tuple[float, ...]:
  rates = (learning_rate,) if np.ndim(learning_rate) == 0 else tuple(learning_rate)
  if not rates or not all(np.isfinite(r) and r > 0 for r in rates):
    raise ValueError(f"learning_rate: expected positive finite rates, got {learning_rate!r}")
  return tuple(float(r) for r in rates)


def final_target(traj: trajectory_lib.Trajectory) -> jax.Array:
  """(B, ...) the teacher's final states, in x_T's dtype."""
  x_T = jnp.asarray(traj.x_T)
  with jax.enable_x64(True):
    target = regression.teacher_states(traj, [traj.num_teacher_steps])[0]
  if sharding_lib.is_global(target):   # spans processes: reshaped where it lives
    return target.reshape(x_T.shape).astype(x_T.dtype)
  return jnp.asarray(np.asarray(target).reshape(x_T.shape), x_T.dtype)


def train(denoise_fn, traj: trajectory_lib.Trajectory, param, params0, start, *,
          loss: str = DEFAULT_LOSS, criterion: str = "rmse", num_iters: int = DEFAULT_NUM_ITERS,
          learning_rate=DEFAULT_LEARNING_RATES, optimizer: Callable[..., Any] = optax.adam,
          holdout=DEFAULT_HOLDOUT, patience: int | None = DEFAULT_PATIENCE,
          data: dict | None = None, jit: bool = True):
  """The engine: a parametrised schedule trained on the final sample's error.

  Minimises ``loss(sample(denoise_fn, param.build(params), x_T) - x_teacher_final)`` over the
  fit part of ``traj``'s noises with ``optimizer`` (Adam), one run from ``params0`` per
  learning rate, and returns the iterate with the lowest criterion on the held-out part, if
  it is strictly below the start's (``start``, evaluated exactly as given: the safeguard).
  A run stops after ``patience`` steps without held-out improvement or at a non-finite loss.
  The held-out criterion of each iterate comes from the same rollout as its gradient (the
  model runs on all B noises together, so per-noise conditioning stays aligned; the split is
  a mask), at no extra model calls.

  Args:
    denoise_fn: the model ``(x_t (B, ...), t) -> e`` the teacher ran.
    traj: the teacher `Trajectory` (B fitting noises; only the final states are targets).
    param: a parametrisation: ``param.build(params, data) -> (times (n,), weights (n, n + 1))``
      (`FreeSchedule`, `peers.bns.BnsParametrisation`, `peers.ds_solver`'s).
    params0: the starting parameters (a pytree of arrays).
    start: ``(times (n,), weights (n, n + 1))`` the start as it would be returned.
    loss: the training loss, ``"mse"`` or ``"log_mse"``.
    criterion: the held-out criterion, ``"rmse"`` (mean per-sample RMSE: what the comparison
      reports; less dominated than the MSE by the few held-out noises that land in another
      mode), ``"mse"`` or ``"log_mse"``.
    num_iters: optimisation steps per learning rate (>= 0).
    learning_rate: a rate or several (each a run from ``params0``; the held-out part picks).
    optimizer: ``learning_rate -> optax.GradientTransformation`` (e.g. `optax.adam`).
    holdout: fitting noises held out (a fraction in (0, 1) or a count >= 1).
    patience: steps without held-out improvement before a run stops (None: never).
    data: extra arrays ``param.build`` reads (traced arguments).
    jit: jit the update (one compile per call); False runs it eagerly.

  Returns:
    ``(times, weights, info)``: host arrays of the result (the start's when kept) and a
    `LearnInfo`.
  """
  t_start = time.perf_counter()
  validation.check_trajectory(traj)
  return _train(denoise_fn, traj, param, params0, start, loss=loss, criterion=criterion,
                num_iters=num_iters, learning_rate=learning_rate, optimizer=optimizer,
                holdout=holdout, patience=patience, data=data, jit=jit, t_start=t_start)


def _train(denoise_fn, traj, param, params0, start, *, loss: str = DEFAULT_LOSS,
           criterion: str = "rmse", num_iters: int = DEFAULT_NUM_ITERS,
           learning_rate=DEFAULT_LEARNING_RATES, optimizer: Callable[..., Any] = optax.adam,
           holdout=DEFAULT_HOLDOUT, patience: int | None = DEFAULT_PATIENCE,
           data: dict | None = None, jit: bool = True, t_start: float | None = None):
  """`train` on a checked trajectory (the core that trusts it; its options are checked)."""
  t_start = time.perf_counter() if t_start is None else t_start
  loss = validation.check_choice(loss, "loss", LOSSES)
  criterion = validation.check_choice(criterion, "criterion", CRITERIA)
  num_iters = validation.check_count(num_iters, "num_iters", minimum=0)
  if patience is not None:
    patience = validation.check_count(patience, "patience")
  rates = _rates(learning_rate)
  if not callable(optimizer):
    raise TypeError(f"optimizer: expected a function learning_rate -> optax "
                    f"GradientTransformation (e.g. optax.adam), got {type(optimizer).__name__}")
  train_idx, hold_idx = split_noises(traj.batch_size, holdout)
  if hold_idx.size == 0:
    raise ValueError("holdout: the engine validates on held-out fitting noises (got none)")
  x_T = jnp.asarray(traj.x_T)
  dtype = x_T.dtype
  fit_mask = np.zeros(traj.batch_size)
  fit_mask[train_idx] = 1.0
  data = {"f": trajectory_lib.as_denoise_pytree(denoise_fn), "x_T": x_T,
          "target": final_target(traj), "fit": jnp.asarray(fit_mask, dtype),
          "hold": jnp.asarray(1.0 - fit_mask, dtype), "extra": dict(data or {})}
  n = int(np.shape(start[0])[0])

  def criteria(errors, data):
    return (reduce_errors(errors, data["fit"], loss),
            reduce_errors(errors, data["hold"], criterion),
            reduce_errors(errors, data["hold"], "mse"))

  def objective(params, data):
    times, weights = param.build(params, data["extra"])
    errors = per_sample_errors(times, weights, data["f"], data["x_T"], data["target"])
    fit, hold, hold_mse = criteria(errors, data)
    return fit, (hold, hold_mse)

  transform = optax.inject_hyperparams(optimizer)(learning_rate=rates[0])

  def update(params, state, data):
    (fit, (hold, hold_mse)), grads = jax.value_and_grad(objective, has_aux=True)(params, data)
    updates, state = transform.update(grads, state, params)
    return optax.apply_updates(params, updates), state, fit, hold, hold_mse

  def evaluate(times, weights, data):
    errors = per_sample_errors(times, weights, data["f"], data["x_T"], data["target"],
                               checkpoint=False)
    return criteria(errors, data)

  def evaluate_params(params, data):
    return evaluate(*param.build(params, data["extra"]), data)

  if jit:
    update, evaluate, evaluate_params = (jax.jit(update), jax.jit(evaluate),
                                         jax.jit(evaluate_params))
  start_times = jnp.asarray(start[0])
  start_weights = jnp.asarray(np.asarray(start[1], np.float64), dtype)
  _, start_hold, start_mse = (float(v) for v in evaluate(start_times, start_weights, data))
  if not np.isfinite(start_hold):
    start_hold = np.inf
  calls = n
  best = (start_hold, 0, None, float("nan"), start_mse)
  train_losses, hold_errors, steps = [], [], 0
  for rate in rates:
    state = transform.init(params0)
    state.hyperparams["learning_rate"] = jnp.asarray(rate, state.hyperparams[
        "learning_rate"].dtype)
    params, run_best, since = params0, np.inf, 0
    for it in range(num_iters + 1):
      if it < num_iters:
        new_params, new_state, fit, hold, hold_mse = update(params, state, data)
        steps += 1
        calls += 3 * n
        train_losses.append(float(fit))
      else:                                   # the run's last iterate: evaluate only
        _, hold, hold_mse = evaluate_params(params, data)
        calls += n
      hold, hold_mse = float(hold), float(hold_mse)
      hold_errors.append(hold)
      if it > 0 and np.isfinite(hold) and hold < best[0]:   # iterate 0 is the start itself
        best = (hold, it, params, rate, hold_mse)
      if np.isfinite(hold) and hold < run_best:
        run_best, since = hold, 0
      else:
        since += 1
      if it == num_iters or (patience is not None and since >= patience):
        break
      if not (np.isfinite(train_losses[-1]) and all(
          bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(new_params))):
        break
      params, state = new_params, new_state
  kept = best[2] is None
  if kept:
    times, weights = np.asarray(start[0]), np.asarray(start[1], np.float64)
  else:
    times, weights = (np.asarray(a) for a in param.build(best[2], data["extra"]))
    times = times.astype(np.float32)
    weights = weights.astype(np.float64)
  info = LearnInfo(np.asarray(train_losses), np.asarray(hold_errors), float(start_hold),
                   float(best[0]), float(start_mse), float(best[4]), int(best[1]),
                   float(best[3]), bool(kept), int(steps), int(calls),
                   time.perf_counter() - t_start)
  return times, weights, info


def info_metadata(info: LearnInfo, prefix: str = "learn") -> dict:
  """The JSON-serialisable facts of a `LearnInfo` for a schedule's metadata."""
  return {f"{prefix}_kept_start": info.kept_start,
          f"{prefix}_start_holdout_error": info.start_holdout_error,
          f"{prefix}_holdout_error": info.holdout_error,
          f"{prefix}_start_holdout_mse": info.start_holdout_mse,
          f"{prefix}_holdout_mse": info.holdout_mse,
          f"{prefix}_best_iteration": info.best_iteration,
          f"{prefix}_learning_rate": info.learning_rate,
          f"{prefix}_iterations": info.num_iterations,
          f"{prefix}_model_calls": info.num_model_calls,
          f"{prefix}_seconds": info.seconds}


def teacher_grid(traj_or_teacher, first=None) -> TimeGrid:
  """The `TimeGrid` of a teacher's range: from ``first`` (its first call) down to its last."""
  teacher = getattr(traj_or_teacher, "teacher", traj_or_teacher)
  ts = np.asarray(teacher.timesteps, np.float64)
  return TimeGrid(float(ts[0] if first is None else first), float(ts[-1]))


def learn_schedule(denoise_fn, traj: trajectory_lib.Trajectory, schedule: schedule_lib.Schedule,
                   *, learn_times: bool = True, loss: str = DEFAULT_LOSS, criterion: str = "rmse",
                   num_iters: int = DEFAULT_NUM_ITERS, learning_rate=DEFAULT_LEARNING_RATES,
                   time_scale: float = DEFAULT_TIME_SCALE, holdout=DEFAULT_HOLDOUT,
                   patience: int | None = DEFAULT_PATIENCE, optimizer=optax.adam,
                   jit: bool = True):
  """Trains a schedule's weights and model-call times on the final sample's error.

  Every weight the lower-triangular structure allows (paper Eq. 12) and, with
  ``learn_times``, the times after the first on a `TimeGrid` between the schedule's first time
  and the teacher's last (softmax increments: always strictly decreasing and inside the
  range); `train` does the rest (module docstring). The result's times are float32, so the
  model must accept float t (the analytic models, the digits UNet and flow models do).

  Args:
    denoise_fn: the model ``(x_t (B, ...), t) -> e`` the teacher ran.
    traj: the teacher `Trajectory` (B >= 2 fitting noises).
    schedule: the start (any `Schedule` of the model, e.g. a least-squares fit).
    learn_times: also learn the times (False: weights only, at the schedule's times).
    loss: ``"mse"`` or ``"log_mse"`` (`reduce_errors`).
    criterion: the held-out criterion (`train`).
    num_iters, learning_rate, holdout, patience, optimizer: as in `train`.
    time_scale: the logits' step relative to the weights' (`FreeSchedule`).
    jit: jit the update step.

  Returns:
    ``(schedule, LearnInfo)``: the trained `Schedule` (float32 times, metadata
    ``fit="end_to_end"``, ``learned_from`` and the `info_metadata` facts) or, when nothing
    beat the start on the held-out noises, the start with those facts added.
  """
  if not isinstance(schedule, schedule_lib.Schedule):
    raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
  validation.check_schedule(schedule)
  validation.check_trajectory(traj)
  return _learn_schedule(denoise_fn, traj, schedule, learn_times=learn_times, loss=loss,
                         criterion=criterion, num_iters=num_iters, learning_rate=learning_rate,
                         time_scale=time_scale, holdout=holdout, patience=patience,
                         optimizer=optimizer, jit=jit)


def _learn_schedule(denoise_fn, traj, schedule, *, learn_times: bool = True,
                    loss: str = DEFAULT_LOSS, criterion: str = "rmse",
                    num_iters: int = DEFAULT_NUM_ITERS, learning_rate=DEFAULT_LEARNING_RATES,
                    time_scale: float = DEFAULT_TIME_SCALE, holdout=DEFAULT_HOLDOUT,
                    patience: int | None = DEFAULT_PATIENCE, optimizer=optax.adam,
                    jit: bool = True):
  """`learn_schedule` of a checked trajectory and schedule (the core that trusts them)."""
  time_scale = validation.check_positive(time_scale, "time_scale")
  n = schedule.num_steps
  times0 = np.asarray(schedule.timesteps)
  grid = None
  if learn_times:
    grid = teacher_grid(traj, first=float(times0[0]))
    grid = TimeGrid(grid.first, min(grid.end, float(times0[-1])))
  param = FreeSchedule(n, grid, float(time_scale))
  dtype = jnp.asarray(traj.x_T).dtype
  params0 = param.init(times0, schedule.weights, dtype)
  times, weights, info = _train(
      denoise_fn, traj, param, params0, (times0, schedule.weights), loss=loss,
      criterion=criterion, num_iters=num_iters, learning_rate=learning_rate,
      optimizer=optimizer, holdout=holdout,
      patience=patience, data={"times": jnp.asarray(times0, dtype)}, jit=jit)
  meta = schedule.metadata
  meta.update(info_metadata(info), learn_loss=loss, learn_criterion=criterion,
              learn_times=bool(learn_times))
  if info.kept_start:
    return schedule.replace(metadata=meta), info
  meta.update(fit="end_to_end", learned_from=schedule.metadata.get(
      "method", schedule.metadata.get("fit", "unknown")))
  if not learn_times:
    times = times0
  return schedule_lib.make_schedule(times, weights, meta), info


def split_noises(batch_size: int, holdout) -> tuple[np.ndarray, np.ndarray]:
  """`split.holdout_split`, holding out at least one noise for a fraction of few noises."""
  if isinstance(holdout, (float, np.floating)) and 0 < holdout < 1 and batch_size >= 2:
    holdout = holdout if round(holdout * batch_size) else 1
  return split.holdout_split(batch_size, holdout)


_errors_jit = jax.jit(functools.partial(per_sample_errors, checkpoint=False))


def holdout_criterion(schedule, denoise_fn, traj, hold_idx, criterion: str = "rmse") -> float:
  """A schedule's criterion on the held-out fitting noises (n model calls on all B)."""
  x_T = jnp.asarray(traj.x_T)
  errors = _errors_jit(jnp.asarray(schedule.timesteps), jnp.asarray(schedule.weights, x_T.dtype),
                       trajectory_lib.as_denoise_pytree(denoise_fn), x_T, final_target(traj))
  mask = np.zeros(traj.batch_size)
  mask[hold_idx] = 1.0
  value = float(reduce_errors(errors, jnp.asarray(mask, errors.dtype), criterion))
  return value if np.isfinite(value) else np.inf
