"""The teacher as data: a K-step deterministic linear solver (paper Sec. 3.1, Eq. 8-9).

Every state of a deterministic single-step linear solver is a fixed linear combination of the
previous state and the model output at it, ``x_{k+1} = a_k x_k + b_k e_k``, with scalars given
by the solver's *kind* and the noise levels of the two states. Unrolled, every teacher state
is a fixed combination of ``[x_T, e_0, ..., e_{K-1}]`` (Eq. 9): the rows of
`Teacher.state_coefficients`. Everything downstream (statistics, search, fits, closed loop,
refinement) reads those coefficients and never assumes a particular solver.

Kinds:

* ``"ddim"``: deterministic DDIM (paper Eq. 2, eta = 0) on a VP model predicting epsilon;
  levels are alpha_bar of the states. ``a = sqrt(ab'/ab)``,
  ``b = sqrt(1 - ab') - sqrt(ab') sqrt(1 - ab) / sqrt(ab)``.

The coefficient arithmetic is float64 (`jax.enable_x64`, scoped) and traceable.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise

# kind -> (levels_from, levels_to) -> (a, b): x_to = a * x_from + b * e(x_from).
StepFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _ddim_step(ab, ab_next):
  """Deterministic DDIM (Eq. 2) between alpha_bar levels, epsilon outputs."""
  a = jnp.sqrt(ab_next / ab)
  b = jnp.sqrt(1.0 - ab_next) - jnp.sqrt(ab_next) * jnp.sqrt(1.0 - ab) / jnp.sqrt(ab)
  return a, b


def _check_vp_levels(levels: np.ndarray, name: str) -> None:
  if not np.all(np.isfinite(levels)) or np.any(levels <= 0) or np.any(levels > 1):
    raise ValueError(f"{name}: expected every alpha_bar finite and in (0, 1], got range "
                     f"[{np.nanmin(levels) if np.any(~np.isnan(levels)) else np.nan}, "
                     f"{np.nanmax(levels) if np.any(~np.isnan(levels)) else np.nan}]")
  if np.any(np.diff(levels) < 0):
    raise ValueError(f"{name}: expected non-decreasing alpha_bar along the teacher states "
                     "(noise decreases)")


# kind -> (step function, level check on concrete float64 levels, what the levels are)
KINDS: dict[str, tuple[StepFn, Callable[[np.ndarray, str], None], str]] = {
    "ddim": (_ddim_step, _check_vp_levels, "alpha_bar"),
}


class _Frozen(tuple):
  """A frozen dict (sorted items), told apart from a frozen list."""


def _freeze(value):
  """A hashable image of JSON-like config: dicts -> `_Frozen` items, lists -> tuples."""
  if isinstance(value, Mapping):
    return _Frozen(sorted((str(k), _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def _thaw(value):
  if isinstance(value, _Frozen):
    return {k: _thaw(v) for k, v in value}
  if isinstance(value, tuple):
    return [_thaw(v) for v in value]
  return value


def as_float64(x):
  """``x`` as a float64 jax array (concrete float64 numpy keeps every bit; tracers cast)."""
  with jax.enable_x64(True):
    return jnp.asarray(x, jnp.float64)


@jax.tree_util.register_pytree_node_class
class Teacher:
  """A K-step deterministic linear solver: the complete generation process (a pytree).

  Attributes:
    timesteps: (K,) model-call times in call order (int32 training timesteps, or float32).
    levels: (K + 1,) float64 noise level of every state in the kind's parametrisation
      (alpha_bar for ``"ddim"``): ``levels[k]`` where the model is called at step k,
      ``levels[K]`` the final state's.
    kind: the solver (a key of `KINDS`); static.
    config: static JSON-serialisable facts (``num_train_timesteps``, ``steps_offset``, ...),
      recorded in files and stores.
  """

  def __init__(self, timesteps, levels, kind: str = "ddim",
               config: Mapping[str, Any] | None = None):
    if kind not in KINDS:
      raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    self.timesteps = timesteps
    self.levels = levels
    self.kind = kind
    self._config = _freeze(dict(config or {}))

  @property
  def config(self) -> dict[str, Any]:
    """A copy of the static facts."""
    return _thaw(self._config)

  @property
  def num_steps(self) -> int:
    """K, the number of teacher model calls."""
    return int(np.shape(self.timesteps)[0])

  def tree_flatten(self):
    return (self.timesteps, self.levels), (self.kind, self._config)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.timesteps, obj.levels = children
    obj.kind, obj._config = aux
    return obj

  def step(self, levels_from, levels_to):
    """(a, b) of the kind's one-step update between any levels: ``x' = a x + b e(x)``."""
    with jax.enable_x64(True):
      return KINDS[self.kind][0](as_float64(levels_from), as_float64(levels_to))

  def step_coefficients(self) -> tuple[jax.Array, jax.Array]:
    """(a, b), each (K,) float64: ``states[k + 1] = a[k] * states[k] + b[k] * e_k``."""
    levels = as_float64(self.levels)
    return self.step(levels[:-1], levels[1:])

  def state_coefficients(self) -> jax.Array:
    """(K + 1, K + 1) float64 C with ``states[k] = C[k] @ [x_T, e_0, ..., e_{K-1}]`` (Eq. 9)."""
    return state_coefficients(*self.step_coefficients())

  def path_weights(self, path) -> jax.Array:
    """(n, n + 1) float64 weights of the teacher's own solver jumping between states ``path``.

    Step i goes from state ``path[i]`` to ``path[i + 1]`` (the last to the final state K)
    with the kind's update: for ``"ddim"`` this is DDIM on the path's timesteps (Eq. 2),
    the classical scheduler on those steps. Row i is over [x_T, e_{path[0]}, ..., e_{path[i]}].
    """
    with jax.enable_x64(True):
      levels = as_float64(self.levels)
      idx = jnp.concatenate([jnp.asarray(path, jnp.int32), jnp.asarray([self.num_steps], jnp.int32)])
      lv = levels[idx]
      return state_coefficients(*self.step(lv[:-1], lv[1:]))[1:]

  def __repr__(self) -> str:
    return f"Teacher(kind={self.kind!r}, num_steps={self.num_steps})"


def state_coefficients(a, b) -> jax.Array:
  """Coefficients of every state of the recurrence ``x_{i+1} = a_i x_i + b_i e_i`` (Eq. 9).

  Args:
    a, b: (n,) step coefficients.

  Returns:
    (n + 1, n + 1) float64 C, row k using columns 0..k only:
    ``x_k = C[k, 0] * x_T + sum_j C[k, j + 1] * e_j``; row 0 is x_T itself.
  """
  with jax.enable_x64(True):
    return _state_coefficients(as_float64(a), as_float64(b))


@jax.jit
def _state_coefficients(a, b):
  with jax.enable_x64(True):
    n = a.shape[0]
    eye = jnp.eye(n + 1, dtype=jnp.float64)

    def row(prev, inputs):
      a_i, b_i, unit = inputs
      nxt = a_i * prev + b_i * unit
      return nxt, nxt

    _, rows = jax.lax.scan(row, eye[0], (a, b, eye[1:]))
    return jnp.concatenate([eye[:1], rows], axis=0)


def ddim_teacher(alphas_cumprod, num_teacher_steps: int = 1000, *, steps_offset: int = 0,
                 final_alpha_cumprod: float = 1.0) -> Teacher:
  """The paper's teacher: deterministic DDIM over a VP model's training timesteps (Eq. 1-2).

  The model is called at ``ddim_timesteps(num_teacher_steps, T, steps_offset)`` (with the
  defaults, 1000 of 1000 steps: every timestep 999, ..., 0, as in the paper), and the last
  step lands on ``final_alpha_cumprod`` (1.0: the clean sample, diffusers'
  ``set_alpha_to_one=True``; ``alphas_cumprod[0]`` for ``False``): each step is diffusers'
  ``FlaxDDIMScheduler.step`` with eta = 0 and no clipping.

  Args:
    alphas_cumprod: (T,) the model's training alpha_bar (may be traced).
    num_teacher_steps: K (static).
    steps_offset: diffusers' ``steps_offset`` (1 for Stable Diffusion's own configs).
    final_alpha_cumprod: alpha_bar after the last step.

  Returns:
    A ``"ddim"`` `Teacher` with int32 timesteps (K,) and float64 levels (K + 1,).
  """
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  num_train = int(alphas.shape[0])
  timesteps = noise.ddim_timesteps(num_teacher_steps, num_train, steps_offset=steps_offset)
  if not noise.is_traced(final_alpha_cumprod) and not 0 < float(final_alpha_cumprod) <= 1:
    raise ValueError(f"final_alpha_cumprod: expected a value in (0, 1], got "
                     f"{final_alpha_cumprod}")
  with jax.enable_x64(True):
    levels = jnp.concatenate([as_float64(alphas)[timesteps],
                              jnp.reshape(as_float64(final_alpha_cumprod), (1,))])
  config = {"num_train_timesteps": num_train, "steps_offset": int(steps_offset)}
  if not noise.is_traced(final_alpha_cumprod):
    config["final_alpha_cumprod"] = float(final_alpha_cumprod)
  return Teacher(jnp.asarray(timesteps), levels, "ddim", config)


def _dtype_of(x) -> np.dtype:
  return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def check_teacher(teacher, *, name: str = "teacher") -> None:
  """Validates a `Teacher`: shapes and dtypes always; values when concrete.

  timesteps (K,) integer or float, strictly decreasing, non-negative; levels (K + 1,) float,
  valid for the kind (``"ddim"``: alpha_bar finite in (0, 1], non-decreasing).
  """
  if not isinstance(teacher, Teacher):
    raise TypeError(f"{name}: expected a Teacher, got {type(teacher).__name__}")
  ts_shape = np.shape(teacher.timesteps)
  if len(ts_shape) != 1 or ts_shape[0] < 1:
    raise ValueError(f"{name}.timesteps: expected shape (K,) with K >= 1, got {ts_shape}")
  k = ts_shape[0]
  ts_dtype = _dtype_of(teacher.timesteps)
  if ts_dtype == np.bool_ or not (np.issubdtype(ts_dtype, np.integer)
                                  or np.issubdtype(ts_dtype, np.floating)):
    raise TypeError(f"{name}.timesteps: expected an integer or float dtype, got {ts_dtype}")
  if np.shape(teacher.levels) != (k + 1,):
    raise ValueError(f"{name}.levels: expected shape ({k + 1},) (one per teacher state), got "
                     f"{np.shape(teacher.levels)}")
  lv_dtype = _dtype_of(teacher.levels)
  if not np.issubdtype(lv_dtype, np.floating):
    raise TypeError(f"{name}.levels: expected a float dtype, got {lv_dtype}")
  if not noise.is_traced(teacher.timesteps):
    ts = np.asarray(teacher.timesteps)
    if np.issubdtype(ts.dtype, np.floating) and not np.all(np.isfinite(ts)):
      raise ValueError(f"{name}.timesteps: contains non-finite values")
    if np.any(ts < 0):
      raise ValueError(f"{name}.timesteps: expected non-negative times, got minimum {ts.min()}")
    if k > 1 and np.any(np.diff(ts) >= 0):
      raise ValueError(f"{name}.timesteps: expected strictly decreasing timesteps")
  if not noise.is_traced(teacher.levels):
    KINDS[teacher.kind][1](np.asarray(teacher.levels, np.float64), f"{name}.levels")
