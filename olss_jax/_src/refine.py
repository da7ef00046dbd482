"""End-to-end refinement: schedule weights trained through the n-step sampler with optax.

Least squares (paper Eq. 12, teacher-forced or closed-loop) fits each step on its own. The
quantity that matters is the final sample, which depends on every weight through the model
calls in between. `refine` minimises the final-sample error against the teacher on the
fitting noises by differentiating through `sampler.sample` (model calls included), starting
from a fitted schedule, keeping the lower-triangular structure and stopping on an internal
hold-out split of the fitting noises.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from olss_jax._src import regression
from olss_jax._src import sampler
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import split
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

DEFAULT_NUM_ITERS = 200
DEFAULT_HOLDOUT = 0.25
DEFAULT_PATIENCE = 50


class RefineInfo(NamedTuple):
  """Diagnostics of `refine` (host values).

  Attributes:
    train_losses: (iters + 1,) fitting-split loss at each iterate (0: the initial weights).
    holdout_losses: (iters + 1,) hold-out loss at each iterate (empty without a hold-out).
    best_iteration: int, the iterate returned (0: the initial weights).
    initial_loss: float, loss of the initial weights on all fitting noises.
    final_loss: float, loss of the returned weights on all fitting noises.
  """

  train_losses: np.ndarray
  holdout_losses: np.ndarray
  best_iteration: int
  initial_loss: float
  final_loss: float


def refine(denoise_fn, traj: trajectory_lib.Trajectory, schedule: schedule_lib.Schedule, *,
           optimizer: optax.GradientTransformation | None = None,
           num_iters: int = DEFAULT_NUM_ITERS, holdout=DEFAULT_HOLDOUT,
           patience: int | None = DEFAULT_PATIENCE, jit: bool = True):
  """Refines a schedule's weights end to end through the sampler (beyond the paper).

  Minimises ``mean((sample(denoise_fn, W, x_T) - x_teacher_final)^2)`` over the fitting
  noises of ``traj`` with optax, differentiating through the n model calls of
  `sampler.sample` (each wrapped in `jax.checkpoint`: memory is one model input per step,
  activations are recomputed in the backward pass). Only the entries allowed by the
  lower-triangular structure (row i: x_T and e_0..e_i) are parameters, so the structure is
  kept exactly. The fitting noises are split (deterministically, interleaved) into a training
  part and a hold-out; the iterate with the smallest hold-out loss is returned, training stops
  after ``patience`` iterations without hold-out improvement, and the initial weights are
  returned unchanged unless the chosen iterate also lowers the loss on all fitting noises.
  Every fitting noise is from ``traj``: evaluation noises are never touched.

  Args:
    denoise_fn: the model ``(x_t (B, ...), t) -> e (B, ...)`` the teacher ran.
    traj: the teacher `Trajectory` (B fitting noises).
    schedule: the starting `Schedule` (timesteps must be the model's; weights (n, n + 1)).
    optimizer: an optax transformation; default ``optax.adam(1e-3)``.
    num_iters: optimisation steps (>= 0).
    holdout: fraction in [0, 1) or count of fitting noises held out for early stopping (0:
      select by the training loss).
    patience: stop after this many iterations without hold-out improvement (None: never).
    jit: jit the optimisation step (one compile per call); False runs it eagerly.

  Returns:
    (schedule, info): a `Schedule` with the same timesteps, refined weights and metadata
    ``fit="refined"``, ``refined_from`` (the starting fit), ``refine_kept_initial``,
    ``refine_iters``, ``refine_best_iter`` and the loss curves; and a `RefineInfo`. When no
    iterate improved on the start, the weights are the starting ones, ``refine_kept_initial``
    is True and ``fit`` stays the starting schedule's.
  """
  validation.check_trajectory(traj)
  return _refine(denoise_fn, traj, schedule, optimizer=optimizer, num_iters=num_iters,
                 holdout=holdout, patience=patience, jit=jit)


def _refine(denoise_fn, traj, schedule, *, optimizer=None, num_iters: int = DEFAULT_NUM_ITERS,
            holdout=DEFAULT_HOLDOUT, patience: int | None = DEFAULT_PATIENCE, jit: bool = True):
  """`refine` of a checked trajectory (the core that trusts it; its options are checked)."""
  if not isinstance(schedule, schedule_lib.Schedule):
    raise TypeError(f"schedule: expected a Schedule, got {type(schedule).__name__}")
  if isinstance(num_iters, bool) or not isinstance(num_iters, (int, np.integer)) or num_iters < 0:
    raise ValueError(f"num_iters: expected an int >= 0, got {num_iters!r}")
  if patience is not None and (not isinstance(patience, (int, np.integer)) or patience < 1):
    raise ValueError(f"patience: expected an int >= 1 or None, got {patience!r}")
  if optimizer is None:
    optimizer = optax.adam(1e-3)
  elif not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer: expected an optax.GradientTransformation, got "
                    f"{type(optimizer).__name__}")
  denoise_fn = trajectory_lib.as_denoise_pytree(denoise_fn)
  n = schedule.num_steps
  init_weights = np.asarray(schedule.weights, np.float64)
  if init_weights.shape != (n, n + 1):
    raise ValueError(f"schedule: expected weights ({n}, {n + 1}), got {init_weights.shape}")
  rows, cols = np.nonzero(schedule_lib.lower_triangular_mask(n))
  train_idx, hold_idx = split.holdout_split(traj.batch_size, holdout)

  x_T = jnp.asarray(traj.x_T)
  with jax.enable_x64(True):
    target = regression.teacher_states(traj, [traj.num_teacher_steps])[0]
    target = target.reshape(x_T.shape).astype(x_T.dtype)
  timesteps = jnp.asarray(schedule.timesteps, jnp.int32)
  dtype = x_T.dtype
  rows_j, cols_j = jnp.asarray(rows), jnp.asarray(cols)

  def to_weights(params):
    return jnp.zeros((n, n + 1), dtype).at[rows_j, cols_j].set(params)

  # One sampler run on all B fitting noises per evaluation: models conditioned per sample
  # (class labels, prompts) see the batch they were built for; the split is a mask.
  train_mask = np.zeros(traj.batch_size, bool)
  train_mask[train_idx] = True
  w_train = jnp.asarray(train_mask / train_mask.sum(), dtype)
  w_hold = jnp.asarray(~train_mask / max(hold_idx.size, 1), dtype)
  has_holdout = hold_idx.size > 0

  # The data are arguments of the jitted functions, never closed over: a batch-sharded x_T
  # spanning several processes (multi-host) cannot be baked into a computation.
  data = (x_T, target)

  def losses(params, model, data):
    x_T, target = data
    x = sampler.sample(jax.checkpoint(lambda x, t: model(x, t)),
                       schedule_lib.Schedule(timesteps, to_weights(params)), x_T)
    per = jnp.mean(((x - target).astype(jnp.float32) ** 2).reshape(x.shape[0], -1), axis=1)
    hold = jnp.sum(w_hold * per) if has_holdout else jnp.sum(w_train * per)
    return jnp.sum(w_train * per), (hold, jnp.mean(per))

  def step(params, opt_state, model, data):
    (loss, (hold, _)), grads = jax.value_and_grad(losses, has_aux=True)(params, model, data)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, hold

  def evaluate(params, model, data):
    loss, (hold, full) = losses(params, model, data)
    return loss, hold, full

  if jit:
    step = jax.jit(step)
    evaluate = jax.jit(evaluate)

  params0 = jnp.asarray(init_weights[rows, cols], dtype)
  params, opt_state = params0, optimizer.init(params0)
  train_losses, hold_losses = [], []
  best_params, best_score, best_iter, since = params0, np.inf, 0, 0
  for it in range(num_iters + 1):
    if it < num_iters:
      new_params, new_state, loss, hold = step(params, opt_state, denoise_fn, data)
    else:  # the last iterate: evaluate only
      loss, hold, _ = evaluate(params, denoise_fn, data)
    loss, hold = float(loss), float(hold)
    train_losses.append(loss)
    hold_losses.append(hold)
    if np.isfinite(hold) and hold < best_score:
      best_params, best_score, best_iter, since = params, hold, it, 0
    else:
      since += 1
    if it == num_iters or (patience is not None and since >= patience):
      break
    if not bool(jnp.all(jnp.isfinite(new_params))):
      break
    params, opt_state = new_params, new_state

  initial_loss = float(evaluate(params0, denoise_fn, data)[2])
  final_loss = float(evaluate(best_params, denoise_fn, data)[2])
  kept_initial = best_iter == 0 or not final_loss < initial_loss
  if kept_initial:
    weights, best_iter, final_loss = init_weights, 0, initial_loss
  else:
    weights = np.zeros((n, n + 1))
    weights[rows, cols] = np.asarray(best_params, np.float64)
  meta = schedule.metadata
  meta.update({
      # weights kept as they came keep the name of the fit that made them
      "fit": schedule.metadata.get("fit", "unknown") if kept_initial else "refined",
      "refined_from": schedule.metadata.get("fit", schedule.metadata.get("method", "unknown")),
      "refine_kept_initial": bool(kept_initial),
      "refine_iters": len(train_losses) - 1,
      "refine_best_iter": int(best_iter),
      "refine_holdout": int(hold_idx.size),
      "refine_initial_loss": initial_loss,
      "refine_final_loss": final_loss,
      "refine_train_losses": train_losses,
      "refine_holdout_losses": hold_losses if has_holdout else [],
  })
  out = schedule_lib.make_schedule(np.asarray(schedule.timesteps), weights, meta)
  info = RefineInfo(np.asarray(train_losses), np.asarray(hold_losses if has_holdout else []),
                    int(best_iter), initial_loss, final_loss)
  return out, info
