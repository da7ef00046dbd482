"""The teacher as data: a K-step deterministic linear solver (paper Sec. 3.1, Eq. 8-9).

Every state of a deterministic single-step linear solver is a fixed linear combination of the
previous state and the model output at it, ``x_{k+1} = a_k x_k + b_k e_k``, with scalars given
by the solver's *kind* and the noise levels of the two states. Unrolled, every teacher state
is a fixed combination of ``[x_T, e_0, ..., e_{K-1}]`` (Eq. 9): the rows of
`Teacher.state_coefficients`. Everything downstream (statistics, search, fits, closed loop,
refinement) reads those coefficients and never assumes a particular solver.

A kind is a noise process and what the model predicts. A state at a level is
``x = alpha x_0 + sigma eps`` with

* VP (``"ddim"``, ``"ddim_v"``, ``"ddim_x0"``): level alpha_bar, ``alpha = sqrt(alpha_bar)``,
  ``sigma = sqrt(1 - alpha_bar)``; the model predicts epsilon, v = alpha eps - sigma x_0, or
  x_0 (diffusers' ``prediction_type`` "epsilon", "v_prediction", "sample");
* rectified flow (``"flow"``): level s, ``alpha = 1 - s``, ``sigma = s``; the model predicts
  the velocity ``v = eps - x_0`` (diffusers' ``FlowMatchEulerDiscreteScheduler``).

Each kind turns its output e into linear predictions ``x_0 = cx x + ce e`` and
``eps = dx x + de e`` (`Kind.x0_coefficients`, `Kind.eps_coefficients`); the step is
deterministic DDIM in the kind's coordinates, ``x' = alpha' x_0 + sigma' eps`` (Eq. 2 with
eta = 0). For epsilon this is the paper's ``a = sqrt(ab'/ab)``,
``b = sqrt(1 - ab') - sqrt(ab') sqrt(1 - ab) / sqrt(ab)``; for the flow it is Euler,
``x' = x + (s' - s) v``; on VP sigmas it is also Euler in Karras' sigma coordinates, so a
Karras-sigma (EDM) teacher is a ``"ddim"`` teacher on Karras levels (`karras_teacher`).

The coefficient arithmetic is float64 (`jax.enable_x64`, scoped) and traceable.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise

Coefficients = tuple[jax.Array, jax.Array]


def _vp_alpha_sigma(level):
  return jnp.sqrt(level), jnp.sqrt(1.0 - level)


def _flow_alpha_sigma(level):
  return 1.0 - level, level


def _eps_to_x0(alpha, sigma):
  return 1.0 / alpha, -sigma / alpha


def _eps_to_eps(alpha, sigma):
  return jnp.zeros_like(alpha), jnp.ones_like(alpha)


def _v_to_x0(alpha, sigma):
  return alpha, -sigma


def _v_to_eps(alpha, sigma):
  return sigma, alpha


def _x0_to_x0(alpha, sigma):
  return jnp.zeros_like(alpha), jnp.ones_like(alpha)


def _x0_to_eps(alpha, sigma):
  return 1.0 / sigma, -alpha / sigma


def _flow_to_x0(alpha, sigma):
  return jnp.ones_like(alpha), -sigma


def _flow_to_eps(alpha, sigma):
  return jnp.ones_like(alpha), alpha


def _check_vp_levels(levels: np.ndarray, name: str) -> None:
  if not np.all(np.isfinite(levels)) or np.any(levels <= 0) or np.any(levels > 1):
    raise ValueError(f"{name}: expected every alpha_bar finite and in (0, 1], got range "
                     f"[{np.nanmin(levels) if np.any(~np.isnan(levels)) else np.nan}, "
                     f"{np.nanmax(levels) if np.any(~np.isnan(levels)) else np.nan}]")
  if np.any(np.diff(levels) < 0):
    raise ValueError(f"{name}: expected non-decreasing alpha_bar along the teacher states "
                     "(noise decreases)")


def _check_flow_levels(levels: np.ndarray, name: str) -> None:
  if not np.all(np.isfinite(levels)) or np.any(levels < 0) or np.any(levels > 1):
    raise ValueError(f"{name}: expected every flow sigma finite and in [0, 1], got range "
                     f"[{np.nanmin(levels) if np.any(~np.isnan(levels)) else np.nan}, "
                     f"{np.nanmax(levels) if np.any(~np.isnan(levels)) else np.nan}]")
  if np.any(np.diff(levels) > 0):
    raise ValueError(f"{name}: expected non-increasing flow sigmas along the teacher states "
                     "(noise decreases)")


@dataclasses.dataclass(frozen=True)
class Kind:
  """A noise process and model parametrisation (see the module docstring).

  Attributes:
    name: the key in `KINDS` (recorded in files).
    process: ``"vp"`` or ``"flow"``.
    prediction: diffusers' ``prediction_type``: ``"epsilon"``, ``"v_prediction"``,
      ``"sample"`` or ``"flow_prediction"``.
    level_name: what the levels are (``"alpha_bar"`` or ``"sigma"``).
  """
  name: str
  process: str
  prediction: str
  level_name: str
  alpha_sigma_fn: Callable = dataclasses.field(repr=False, compare=False)
  to_x0_fn: Callable = dataclasses.field(repr=False, compare=False)
  to_eps_fn: Callable = dataclasses.field(repr=False, compare=False)
  check_fn: Callable = dataclasses.field(repr=False, compare=False)

  def alpha_sigma(self, level) -> Coefficients:
    """(alpha, sigma) of states at ``level``: ``x = alpha x_0 + sigma eps`` (float64)."""
    with jax.enable_x64(True):
      return self.alpha_sigma_fn(as_float64(level))

  def x0_coefficients(self, level) -> Coefficients:
    """(cx, ce): the data prediction ``x_0 = cx x + ce e`` from the state and output."""
    with jax.enable_x64(True):
      return self.to_x0_fn(*self.alpha_sigma_fn(as_float64(level)))

  def eps_coefficients(self, level) -> Coefficients:
    """(dx, de): the noise prediction ``eps = dx x + de e`` from the state and output."""
    with jax.enable_x64(True):
      return self.to_eps_fn(*self.alpha_sigma_fn(as_float64(level)))

  def step(self, levels_from, levels_to) -> Coefficients:
    """(a, b) of deterministic DDIM in this kind's coordinates: ``x' = a x + b e(x)``.

    ``a = alpha' cx + sigma' dx``, ``b = alpha' ce + sigma' de`` (Eq. 2, eta = 0); for
    ``"ddim"`` in the paper's closed form.
    """
    with jax.enable_x64(True):
      lf, lt = as_float64(levels_from), as_float64(levels_to)
      if self.name == "ddim":   # the paper's form, bit for bit as olss_jax 0.1 computed it
        a = jnp.sqrt(lt / lf)
        b = jnp.sqrt(1.0 - lt) - jnp.sqrt(lt) * jnp.sqrt(1.0 - lf) / jnp.sqrt(lf)
        return a, b
      alpha, sigma = self.alpha_sigma_fn(lf)
      alpha_to, sigma_to = self.alpha_sigma_fn(lt)
      cx, ce = self.to_x0_fn(alpha, sigma)
      dx, de = self.to_eps_fn(alpha, sigma)
      return alpha_to * cx + sigma_to * dx, alpha_to * ce + sigma_to * de


KINDS: dict[str, Kind] = {
    "ddim": Kind("ddim", "vp", "epsilon", "alpha_bar", _vp_alpha_sigma, _eps_to_x0,
                 _eps_to_eps, _check_vp_levels),
    "ddim_v": Kind("ddim_v", "vp", "v_prediction", "alpha_bar", _vp_alpha_sigma, _v_to_x0,
                   _v_to_eps, _check_vp_levels),
    "ddim_x0": Kind("ddim_x0", "vp", "sample", "alpha_bar", _vp_alpha_sigma, _x0_to_x0,
                    _x0_to_eps, _check_vp_levels),
    "flow": Kind("flow", "flow", "flow_prediction", "sigma", _flow_alpha_sigma, _flow_to_x0,
                 _flow_to_eps, _check_flow_levels),
}
VP_PREDICTIONS = {"epsilon": "ddim", "v_prediction": "ddim_v", "sample": "ddim_x0"}


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
      (alpha_bar for VP kinds, sigma for ``"flow"``): ``levels[k]`` where the model is called
      at step k, ``levels[K]`` the final state's.
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

  @property
  def parametrisation(self) -> Kind:
    """The `Kind`: noise process, prediction type and output conversions."""
    return KINDS[self.kind]

  def step(self, levels_from, levels_to):
    """(a, b) of the kind's one-step update between any levels: ``x' = a x + b e(x)``."""
    return KINDS[self.kind].step(levels_from, levels_to)

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
    with the kind's update: DDIM on the path's timesteps (Eq. 2; Euler for the flow), the
    classical scheduler on those steps. Row i is over [x_T, e_{path[0]}, ..., e_{path[i]}].
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


def _vp_kind(prediction_type: str) -> str:
  if prediction_type not in VP_PREDICTIONS:
    raise ValueError(f"prediction_type: expected one of {sorted(VP_PREDICTIONS)}, got "
                     f"{prediction_type!r}")
  return VP_PREDICTIONS[prediction_type]


def ddim_teacher(alphas_cumprod, num_teacher_steps: int = 1000, *, steps_offset: int = 0,
                 final_alpha_cumprod: float = 1.0,
                 prediction_type: str = "epsilon") -> Teacher:
  """The paper's teacher: deterministic DDIM over a VP model's training timesteps (Eq. 1-2).

  The model is called at ``ddim_timesteps(num_teacher_steps, T, steps_offset)`` (with the
  defaults, 1000 of 1000 steps: every timestep 999, ..., 0, as in the paper), and the last
  step lands on ``final_alpha_cumprod`` (1.0: the clean sample, diffusers'
  ``set_alpha_to_one=True``; ``alphas_cumprod[0]`` for ``False``): each step is diffusers'
  ``FlaxDDIMScheduler.step`` / ``DDIMScheduler.step`` with eta = 0 and no clipping, for a
  model predicting ``prediction_type``.

  Args:
    alphas_cumprod: (T,) the model's training alpha_bar (may be traced).
    num_teacher_steps: K (static).
    steps_offset: diffusers' ``steps_offset`` (1 for Stable Diffusion's own configs).
    final_alpha_cumprod: alpha_bar after the last step.
    prediction_type: what the model predicts, in diffusers' words: ``"epsilon"`` (kind
      ``"ddim"``), ``"v_prediction"`` (``"ddim_v"``) or ``"sample"`` (x_0, ``"ddim_x0"``).

  Returns:
    A VP `Teacher` with int32 timesteps (K,) and float64 levels (K + 1,).
  """
  kind = _vp_kind(prediction_type)
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
  return Teacher(jnp.asarray(timesteps), levels, kind, config)


def karras_teacher(alphas_cumprod, num_teacher_steps: int = 1000, *, rho: float = 7.0,
                   prediction_type: str = "epsilon") -> Teacher:
  """An EDM-style teacher: Euler on Karras sigmas (Karras et al. 2022, Eq. 5) of a VP model.

  diffusers' ``EulerDiscreteScheduler(use_karras_sigmas=True)`` (``"linspace"`` spacing, final
  sigma 0) with ``set_timesteps(num_teacher_steps)``: sigmas from the table's largest to its
  smallest, ``rho``-spaced, the model called at the continuous timesteps
  `noise.sigma_to_t` gives them (float32). Euler in sigma coordinates,
  ``x~' = x~ + (sigma' - sigma) eps`` on ``x~ = x sqrt(1 + sigma^2)``, is DDIM in the VP
  coordinates the trajectory keeps (``x = x~ / sqrt(1 + sigma^2)``, the model's input after
  diffusers' ``scale_model_input``), so this is a VP `Teacher` on the Karras levels
  ``alpha_bar = 1 / (1 + sigma^2)`` (sigmas rounded to float32 as diffusers stores them; it
  computes its sigma table in float32, so its values differ from these by ~1e-7 relative).
  diffusers' pipelines start this scheduler at ``noise * sigma_max`` (its
  ``init_noise_sigma`` for "linspace" spacing), which is the VP state
  ``x_T = noise * sigma_max / sqrt(1 + sigma_max^2)``; pass that x_T to reproduce them.

  Args:
    alphas_cumprod: (T,) the model's training alpha_bar (concrete).
    num_teacher_steps: K.
    rho: the Karras exponent (7 in the paper and in diffusers).
    prediction_type: as in `ddim_teacher`.

  Returns:
    A VP `Teacher` with float32 timesteps (K,) and float64 levels (K + 1,) ending at 1.
  """
  kind = _vp_kind(prediction_type)
  alphas = noise.check_alphas_cumprod(alphas_cumprod)
  if noise.is_traced(alphas):
    raise TypeError("alphas_cumprod: karras_teacher needs a concrete table")
  num_train = alphas.shape[0]
  k = noise.check_count(num_teacher_steps, "num_teacher_steps")
  if not np.isfinite(rho) or rho <= 0:
    raise ValueError(f"rho: expected a finite value > 0, got {rho}")
  table = noise.vp_sigmas(alphas)
  sigmas = noise.karras_sigmas(float(table[0]), float(table[-1]), k, rho)
  timesteps = noise.sigma_to_t(sigmas, alphas).astype(np.float32)
  sigmas = np.append(sigmas, 0.0).astype(np.float32).astype(np.float64)
  if k > 1 and np.any(np.diff(timesteps) >= 0):
    raise ValueError(f"num_teacher_steps: {k} Karras steps give repeated float32 timesteps")
  levels = 1.0 / (1.0 + sigmas**2)
  config = {"num_train_timesteps": int(num_train), "sigmas": "karras", "rho": float(rho)}
  return Teacher(jnp.asarray(timesteps), as_float64(levels), kind, config)


def flow_teacher(num_teacher_steps: int = 1000, *, shift: float = 1.0,
                 num_train_timesteps: int = 1000) -> Teacher:
  """Euler on a rectified flow ``x_s = (1 - s) x_0 + s eps``, from s = 1 to s = 0.

  diffusers' ``FlowMatchEulerDiscreteScheduler(shift=shift)`` with
  ``set_timesteps(num_teacher_steps)`` (`noise.flow_euler_sigmas`, its float32 sigmas bit for
  bit): the model is called as ``denoise_fn(x_s, t)`` with ``t = T s`` a float32 scalar and
  predicts the velocity ``v = eps - x_0``; each step is ``x_{s'} = x_s + (s' - s) v``.

  Args:
    num_teacher_steps: K.
    shift: the scheduler's time shift (1: none; SD3 uses 3).
    num_train_timesteps: T, the model's time scale.

  Returns:
    A ``"flow"`` `Teacher` with float32 timesteps (K,) and float64 sigmas (K + 1,) ending at 0.
  """
  k = noise.check_count(num_teacher_steps, "num_teacher_steps")
  t = noise.check_count(num_train_timesteps, "num_train_timesteps")
  timesteps, sigmas = noise.flow_euler_sigmas(k, shift=shift, num_train_timesteps=t)
  if k > 1 and np.any(np.diff(timesteps) >= 0):
    raise ValueError(f"num_teacher_steps: {k} flow steps give repeated float32 timesteps")
  config = {"num_train_timesteps": t, "shift": float(shift)}
  return Teacher(jnp.asarray(timesteps), as_float64(sigmas.astype(np.float64)), "flow", config)


def _dtype_of(x) -> np.dtype:
  return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def check_teacher(teacher, *, name: str = "teacher") -> None:
  """Validates a `Teacher`: shapes and dtypes always; values when concrete.

  timesteps (K,) integer or float, strictly decreasing, non-negative; levels (K + 1,) float,
  valid for the kind (VP: alpha_bar finite in (0, 1], non-decreasing; flow: sigma finite in
  [0, 1], non-increasing).
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
    KINDS[teacher.kind].check_fn(np.asarray(teacher.levels, np.float64), f"{name}.levels")


def same_teacher(a: Teacher, b: Teacher) -> bool:
  """Two teachers of the same kind, timesteps and levels (bit for bit).

  Traced timesteps or levels (under a caller's jit) are compared by kind and shape only.
  """
  if a.kind != b.kind or np.shape(a.timesteps) != np.shape(b.timesteps):
    return False
  if any(noise.is_traced(v) for v in (a.timesteps, a.levels, b.timesteps, b.levels)):
    return True
  return bool(np.array_equal(np.asarray(a.timesteps), np.asarray(b.timesteps))
              and np.array_equal(np.asarray(a.levels), np.asarray(b.levels)))
