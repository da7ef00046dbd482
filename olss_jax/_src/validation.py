"""Shared input validators, called on concrete (host) values before anything is traced.

Conventions (house style): bad input raises `TypeError` (wrong kind of object or dtype) or
`ValueError` (wrong shape or value), and the message names the argument, what was expected
and what came. Suspicious but possible input (a schedule fitted for another model or
guidance scale) warns with `ScheduleMismatchWarning`. Value checks are skipped for traced
arrays (inside `jax.jit`), where only shapes are known: there the verbs use the traced
counterparts (`schedule_is_valid`, `path_is_valid`) and return NaN for what they would have
refused (each verb's docstring says what it checks under jit).

The one home of the checks, and they run once, at the door: a public verb (`fit_olss`,
`search_path`, `fit_weights`, `closed_loop_fit`, `closed_loop_search`, `tune_path`, `refine`,
`learn_schedule`, ...) checks its inputs here, then calls its private core (`_search_path`,
`_fit_weights`, `_closed_loop_fit`, ...), which trusts them; a verb built on others calls
their cores. So one `fit_olss` scans the trajectory for NaN once (`check_trajectory`), as
diffrax's `diffeqsolve` checks once and its inner loop trusts its inputs. The checks of the
bottom layer (`noise.check_count`, the one integer checker; `noise.check_alphas_cumprod`;
`teacher.check_teacher`) are written there, below this module, and exported here.
"""
from __future__ import annotations

import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise
from olss_jax._src import schedule as schedule_lib
from olss_jax._src import stats as stats_lib
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib

# Metadata keys a `Schedule` may carry that `check_schedule_compatible` understands.
META_SAMPLE_SHAPE = "sample_shape"          # list[int]: x_T.shape[1:] it was fitted for
META_MODEL_NAME = "model_name"              # str: the model it was fitted for ("model" also read)
META_GUIDANCE_SCALE = "guidance_scale"      # float: classifier-free guidance it was fitted at
META_NUM_TRAIN_TIMESTEPS = "num_train_timesteps"  # int: T of the model's noise schedule

_BLOCK_BYTES = 64 * 2**20


class ScheduleMismatchWarning(UserWarning):
  """A schedule is used with another model or guidance scale than it was fitted for."""


class FewFitNoisesWarning(UserWarning):
  """A fit on fewer fitting noises than recommended (`fit_olss.RECOMMENDED_FIT_NOISES`)."""


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


# The checks of the bottom layer, which the ones here build on (`noise` and `teacher` sit below
# this module, so their checks are written there); they belong to this module's API.
check_count = noise.check_count              # olss_jax's one integer checker
check_alphas_cumprod = noise.check_alphas_cumprod
check_teacher = teacher_lib.check_teacher


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_stacklevel() -> int:
  """The ``stacklevel`` for `warnings.warn` (called from the warning's caller) that names the
  first frame outside the olss_jax package: the user's line, however deep the library call."""
  frame, level = sys._getframe(1), 1   # pylint: disable=protected-access
  while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
    frame, level = frame.f_back, level + 1
  return level


def check_choice(value, name: str, allowed) -> str:
  """Checks that ``value`` is one of ``allowed`` (a loss, a criterion, an init's name)."""
  if value not in allowed:
    raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {value!r}")
  return value


def check_positive(value, name: str) -> float:
  """Checks a finite real ``value > 0`` (a scale, a rate); returns it as a Python float."""
  try:
    if isinstance(value, (str, bytes, bool, np.bool_)) or np.ndim(value) != 0:
      raise TypeError
    out = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{name}: expected a finite number > 0, got {value!r:.80}") from None
  if not np.isfinite(out) or out <= 0:
    raise ValueError(f"{name}: expected a finite value > 0, got {value!r}")
  return out


def check_flow_teacher(teacher, *, name: str = "traj", what: str = "this method") -> float:
  """Checks a rectified-flow teacher (velocity prediction); returns its time scale T.

  Raises:
    ValueError: naming ``name`` when the teacher is of another kind (``what`` says who needs
      a flow model).
  """
  if teacher_lib.KINDS[teacher.kind].process != "flow":
    raise ValueError(f"{name}: {what} is for rectified-flow models (a 'flow' teacher, "
                     f"velocity prediction); got a {teacher.kind!r} teacher")
  return float(teacher.config.get("num_train_timesteps", 1000))


def check_num_steps(num_steps, num_teacher_steps, *, name: str = "num_steps") -> int:
  """Checks a step count n: an int with ``1 <= n <= num_teacher_steps`` (paper Alg. 1's n).

  Returns:
    n as a Python int.
  """
  k = check_count(num_teacher_steps, "num_teacher_steps", minimum=None)
  n = check_count(num_steps, name, minimum=None)
  if not 1 <= n <= k:
    raise ValueError(f"{name}: expected 1 <= {name} <= {k} (the number of teacher steps), "
                     f"got {n}")
  return n


def _to_numpy(value, name: str) -> np.ndarray:
  if _is_traced(value):
    raise TypeError(f"{name}: expected concrete values, got a traced array; validate outside "
                    "jax.jit")
  try:
    arr = np.asarray(value)
  except (ValueError, TypeError, OverflowError) as e:
    raise TypeError(f"{name}: expected an array, got {type(value).__name__} that numpy cannot "
                    f"convert ({e})") from None
  return arr


def _check_int_dtype(arr, name: str) -> None:
  dtype = np.dtype(arr.dtype)
  if dtype == np.bool_ or not np.issubdtype(dtype, np.integer):
    raise TypeError(f"{name}: expected an integer dtype, got {dtype}")


def _check_time_dtype(arr, name: str) -> None:
  dtype = np.dtype(arr.dtype)
  if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
    raise TypeError(f"{name}: expected an integer or float dtype, got {dtype}")


def _check_float_dtype(arr, name: str) -> None:
  if not jnp.issubdtype(arr.dtype, jnp.floating):
    raise TypeError(f"{name}: expected a float dtype, got {arr.dtype}")


def check_path(path, num_teacher_steps, *, name: str = "path") -> np.ndarray:
  """Checks an OLSS path (paper Alg. 1's t(1) > ... > t(n) as teacher-step indices).

  Args:
    path: (n,) integer indices into the teacher's timesteps.
    num_teacher_steps: K.
    name: the argument name used in messages.

  Returns:
    (n,) int32 host copy: strictly increasing, ``path[0] == 0``, every entry < K, n <= K.
    A traced path (under jit) is checked for shape and dtype only and returned as int32.
  """
  k = check_count(num_teacher_steps, "num_teacher_steps", minimum=None)
  if k < 1:
    raise ValueError(f"num_teacher_steps: expected >= 1, got {k}")
  if _is_traced(path):  # under jit: what the shape and dtype can tell
    _check_int_dtype(path, name)
    if path.ndim != 1 or not 1 <= path.shape[0] <= k:
      raise ValueError(f"{name}: expected shape (n,) with 1 <= n <= {k}, got {path.shape}")
    return path.astype(jnp.int32)
  arr = _to_numpy(path, name)
  _check_int_dtype(arr, name)
  if arr.ndim != 1 or arr.shape[0] < 1:
    raise ValueError(f"{name}: expected shape (n,) with n >= 1, got {arr.shape}")
  if arr.shape[0] > k:
    raise ValueError(f"{name}: expected at most {k} entries (teacher steps), got {arr.shape[0]}")
  if arr[0] != 0:
    raise ValueError(f"{name}: expected {name}[0] == 0 (the path starts at x_T), got {arr[0]}")
  if arr.shape[0] > 1:
    bad = np.flatnonzero(arr[1:] <= arr[:-1])
    if bad.size:
      i = int(bad[0])
      raise ValueError(f"{name}: expected strictly increasing indices, got {name}[{i}] = "
                       f"{arr[i]} then {name}[{i + 1}] = {arr[i + 1]}")
  if arr[-1] >= k:
    raise ValueError(f"{name}: expected indices in [0, {k}), got {arr[-1]}")
  return arr.astype(np.int32)


def _first_nonfinite(array) -> jax.Array:
  """Flat index of the first non-finite element, -1 if none: one program per shape (eager
  `jnp` calls compiled one program per operation and shape), one fused pass over the data, and
  the search for the index only when the pass found one."""
  flat = array.reshape(-1)
  index = jax.dtypes.canonicalize_dtype(np.int64)  # int32 unless float64 is switched on
  return jax.lax.cond(jnp.any(~jnp.isfinite(flat)),
                      lambda a: jnp.argmax(~jnp.isfinite(a)).astype(index),
                      lambda a: jnp.asarray(-1, index), flat)


_first_nonfinite_jit = jax.jit(_first_nonfinite)


def find_nonfinite(array) -> tuple[int, ...] | None:
  """Index of the first non-finite element of ``array`` in C order, or None.

  For model outputs (K, B, ...) the first two entries are the step and the sample where a
  NaN or infinity first appears. Integer arrays and traced arrays give None. Host arrays are
  scanned in blocks along axis 0 (no full-size boolean temporary).
  """
  if _is_traced(array):
    return None
  if isinstance(array, jax.Array):
    if not jnp.issubdtype(array.dtype, jnp.inexact) or array.size == 0:
      return None
    out = _first_nonfinite_jit(array)
    if isinstance(out, jax.core.Tracer):  # a concrete closure inside a caller's jit
      # evaluated now; never the default, since it compiles the array in as a constant
      # (50 s for 2 GB of outputs at Stable Diffusion's latent size)
      with jax.ensure_compile_time_eval():
        out = _first_nonfinite_jit(array)
    flat = int(out)
    return None if flat < 0 else tuple(int(i) for i in np.unravel_index(flat, array.shape))
  arr = np.asarray(array)
  if not np.issubdtype(arr.dtype, np.inexact) and arr.dtype.name != "bfloat16":
    return None
  if arr.ndim == 0:
    return None if np.isfinite(arr) else ()
  row_bytes = max(1, arr[0:1].nbytes)
  step = max(1, _BLOCK_BYTES // row_bytes)
  for start in range(0, arr.shape[0], step):
    block = arr[start:start + step]
    finite = np.isfinite(block)
    if not finite.all():
      flat = int(np.argmin(finite.reshape(-1)))
      idx = np.unravel_index(flat, block.shape)
      return (start + int(idx[0]),) + tuple(int(i) for i in idx[1:])
  return None


def check_finite(array, name: str, *, axis_names: tuple[str, ...] = ()) -> None:
  """Raises ValueError if ``array`` holds a NaN or infinity, saying where it first appears.

  Args:
    array: any shape.
    name: the argument name used in the message.
    axis_names: names of the leading axes, e.g. ``("step", "sample")`` for (K, B, ...) model
      outputs, so the message reads "first at step 12, sample 3".
  """
  idx = find_nonfinite(array)
  if idx is None:
    return
  value = np.asarray(array[idx] if idx else array)
  where = ", ".join(f"{axis} {i}" for axis, i in zip(axis_names, idx))
  where = f"first at {where} " if where else "first "
  raise ValueError(f"{name}: non-finite value ({float(value)}) {where}(index {idx})")


# Recorded (`jax.monitoring.record_event`) once per finiteness scan of a trajectory's model
# outputs, the only check that reads all of them: listen with
# `jax.monitoring.register_event_listener` to count scans (a public verb scans once).
TRAJECTORY_SCAN_EVENT = "/olss_jax/validation/trajectory_finiteness_scan"


def check_trajectory(traj, *, name: str = "traj", check_finite_values: bool = True) -> None:
  """Checks a `Trajectory` (paper Sec. 3.3's recorded teacher) before fitting or saving.

  Shapes and dtypes always (also under jit): x_T (B, ...) float with B >= 1; model_outputs
  (K, B, ...) float; the teacher (`teacher.check_teacher`: timesteps (K,) strictly
  decreasing, levels (K + 1,) valid for its kind). With ``check_finite_values`` concrete x_T
  and model_outputs must be finite (the message names the first step and sample with a NaN
  or infinity); each such scan of concrete outputs records `TRAJECTORY_SCAN_EVENT`.
  """
  if not isinstance(traj, trajectory_lib.Trajectory):
    raise TypeError(f"{name}: expected an olss_jax Trajectory, got {type(traj).__name__}")
  teacher_lib.check_teacher(traj.teacher, name=f"{name}.teacher")
  k = traj.teacher.num_steps
  x_shape = np.shape(traj.x_T)
  if len(x_shape) < 1 or x_shape[0] < 1:
    raise ValueError(f"{name}.x_T: expected shape (B, ...) with B >= 1, got {x_shape}")
  _check_float_dtype(traj.x_T if hasattr(traj.x_T, "dtype") else np.asarray(traj.x_T),
                     f"{name}.x_T")
  out_shape = np.shape(traj.model_outputs)
  if out_shape != (k,) + tuple(x_shape):
    raise ValueError(f"{name}.model_outputs: expected shape {(k,) + tuple(x_shape)} "
                     f"(K, *x_T.shape), got {out_shape}")
  outputs = traj.model_outputs
  _check_float_dtype(outputs if hasattr(outputs, "dtype") else np.asarray(outputs),
                     f"{name}.model_outputs")
  if check_finite_values:
    check_finite(traj.x_T, f"{name}.x_T", axis_names=("sample",))
    if not _is_traced(outputs):
      jax.monitoring.record_event(TRAJECTORY_SCAN_EVENT)
    check_finite(outputs, f"{name}.model_outputs", axis_names=("step", "sample"))


def check_data(data, name: str = "traj") -> None:
  """A `Trajectory` (`check_trajectory`: one finiteness scan) or its `TrajectoryStats` (the
  paper's fits take either); anything else is a TypeError."""
  if isinstance(data, stats_lib.TrajectoryStats):
    return
  if not isinstance(data, trajectory_lib.Trajectory):
    raise TypeError(f"{name}: expected a Trajectory or TrajectoryStats, got "
                    f"{type(data).__name__}")
  check_trajectory(data, name=name)


def check_model_data(traj, name: str = "traj") -> None:
  """A `Trajectory` (`check_trajectory`) for the fits that call the model (closed loop, tuning,
  end-to-end training): they need its noises and model outputs, not only its statistics."""
  if not isinstance(traj, trajectory_lib.Trajectory):
    raise TypeError(f"{name}: expected a Trajectory (the closed loop needs its noises and "
                    f"model outputs), got {type(traj).__name__}")
  check_trajectory(traj, name=name)


def check_fit_noises(fit_noises, batch_size: int) -> tuple | None:
  """``fit_noises`` as a sorted tuple of distinct indices into the batch (None: all)."""
  if fit_noises is None:
    return None
  idx = np.asarray(fit_noises)
  if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"fit_noises: expected a non-empty 1-D array of ints, got {fit_noises!r:.80}")
  if np.any(idx < 0) or np.any(idx >= batch_size) or np.unique(idx).size != idx.size:
    raise ValueError(f"fit_noises: expected distinct indices in [0, {batch_size}), got "
                     f"{idx.tolist()!r:.80}")
  return tuple(int(i) for i in np.sort(idx))


def check_fit_noise_count(traj, num_steps: int, *, method: str, minimum: int,
                          recommended: int, why: str) -> None:
  """Refuses fewer than ``minimum`` fitting noises for ``method`` (one line naming the minimum
  and ``why``), or fewer equations than the last row's n + 1 weights; warns
  (`FewFitNoisesWarning`) below ``recommended``. The numbers are the recipe's
  (`fit_olss.MIN_FIT_NOISES`, `fit_olss.RECOMMENDED_FIT_NOISES`)."""
  b = int(traj.batch_size)
  if b < minimum:
    raise ValueError(f"traj: method={method!r} needs at least {minimum} fitting noises ({why}), "
                     f"got {b}; collect more (the paper fits on 32) or use method='olss'")
  elements = b * int(np.prod(traj.sample_shape))
  if elements < num_steps + 1:
    raise ValueError(f"traj: {b} fitting noise(s) of {elements // b} elements give {elements} "
                     f"equations, fewer than the {num_steps + 1} weights of the last step; "
                     "collect more noises or fit fewer steps")
  if b < recommended:
    warnings.warn(f"fit_olss: {b} fitting noises; at least {recommended} are "
                  "recommended (the paper fits on 32), fewer overfit them",
                  FewFitNoisesWarning, stacklevel=user_stacklevel())


def check_timesteps(timesteps, num_train_timesteps: int, *, name: str = "timesteps",
                    maximum: float | None = None) -> np.ndarray:
  """Validates explicit model-call timesteps (diffusers' ``set_timesteps(timesteps=...)``).

  Args:
    timesteps: (n,) strictly decreasing training timesteps in [0, T - 1], integer or float.
    num_train_timesteps: T.
    name: the argument's name in error messages.
    maximum: the largest allowed time (default T - 1; flow models take T).

  Returns:
    (n,) int32 for integer input, else float32 (the dtype the model is called with).

  Raises:
    TypeError: not an integer or float array.
    ValueError: wrong shape, non-finite, outside [0, T - 1], or not strictly decreasing.
  """
  arr = np.asarray(timesteps)
  if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)
                                   or np.issubdtype(arr.dtype, np.floating)):
    raise TypeError(f"{name}: expected integer or float training timesteps, got dtype {arr.dtype}")
  if arr.ndim != 1 or arr.shape[0] < 1:
    raise ValueError(f"{name}: expected shape (n,) with n >= 1, got {arr.shape}")
  if np.issubdtype(arr.dtype, np.floating):
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"{name}: contains non-finite values")
    arr = arr.astype(np.float32)
  top = num_train_timesteps - 1 if maximum is None else maximum
  if arr.min() < 0 or arr.max() > top:
    raise ValueError(f"{name}: expected every timestep in [0, {top}], got "
                     f"[{arr.min()}, {arr.max()}]")
  if np.any(np.diff(arr) >= 0):
    raise ValueError(f"{name}: expected strictly decreasing timesteps, got {arr.tolist()}")
  return arr.astype(np.int32) if np.issubdtype(arr.dtype, np.integer) else arr


def check_sigma_options(*, use_karras_sigmas: bool, use_lu_lambdas: bool, use_flow_sigmas: bool,
                        timesteps) -> str | None:
  """The one sigma spacing asked for (None: a timestep spacing), or ValueError."""
  chosen = [name for name, flag in (("use_karras_sigmas", use_karras_sigmas),
                                    ("use_lu_lambdas", use_lu_lambdas),
                                    ("use_flow_sigmas", use_flow_sigmas)) if flag]
  if len(chosen) > 1:
    raise ValueError(f"{chosen[1]}: only one of use_karras_sigmas, use_lu_lambdas and "
                     f"use_flow_sigmas can be set; got {chosen}")
  if chosen and chosen[0] != "use_flow_sigmas" and timesteps is not None:
    raise ValueError(f"timesteps: explicit timesteps cannot be combined with {chosen[0]}=True "
                     "(as in diffusers' set_timesteps)")
  return {"use_karras_sigmas": "karras", "use_lu_lambdas": "lu",
          "use_flow_sigmas": "flow"}[chosen[0]] if chosen else None


def check_schedule(schedule, *, name: str = "schedule",
                   num_train_timesteps: int | None = None, kind: str | None = None) -> None:
  """Checks a `Schedule` (paper Eq. 12's weights): shapes, dtypes, structure, finiteness.

  timesteps (n,) integer or float (finite), n >= 1, each in [0, num_train_timesteps) (>= 0
  if not given; a rectified flow, ``kind="flow"`` or a schedule whose metadata says so
  (`schedule_kind`), calls its model at t = T s with s in [0, 1], so up to T inclusive);
  weights (n, n + 1) float, finite, zero above the diagonal (row i uses x_T, e_0..e_i only).
  Traced schedules (under jit) get the shape checks only (`schedule_is_valid` is the traced
  counterpart that `sample` uses to return NaN instead).
  """
  if not isinstance(schedule, schedule_lib.Schedule):
    raise TypeError(f"{name}: expected an olss_jax Schedule, got {type(schedule).__name__}")
  ts_shape, w_shape = np.shape(schedule.timesteps), np.shape(schedule.weights)
  if len(ts_shape) != 1 or ts_shape[0] < 1:
    raise ValueError(f"{name}.timesteps: expected shape (n,) with n >= 1, got {ts_shape}")
  n = ts_shape[0]
  if w_shape != (n, n + 1):
    raise ValueError(f"{name}.weights: expected shape ({n}, {n + 1}) for {n} timesteps, got "
                     f"{w_shape}")
  if _is_traced(schedule.timesteps) or _is_traced(schedule.weights):
    return
  ts = _to_numpy(schedule.timesteps, f"{name}.timesteps")
  weights = _to_numpy(schedule.weights, f"{name}.weights")
  _check_time_dtype(ts, f"{name}.timesteps")
  _check_float_dtype(weights, f"{name}.weights")
  if np.issubdtype(ts.dtype, np.floating) and not np.all(np.isfinite(ts)):
    raise ValueError(f"{name}.timesteps: contains non-finite values")
  if np.any(ts < 0):
    raise ValueError(f"{name}.timesteps: expected non-negative training timesteps, got "
                     f"minimum {ts.min()}")
  if num_train_timesteps is not None:
    t_max = check_count(num_train_timesteps, "num_train_timesteps", minimum=None)
    flow = (kind or schedule_kind(schedule)) == "flow"
    if np.any(ts > t_max) or (not flow and np.any(ts >= t_max)):
      bound = f"<= {t_max} (the flow model's time scale)" if flow else (
          f"< {t_max} (the model's training timesteps)")
      raise ValueError(f"{name}.timesteps: expected values {bound}, got maximum {ts.max()}")
  idx = find_nonfinite(weights)
  if idx is not None:
    raise ValueError(f"{name}.weights: non-finite value at row {idx[0]}, column {idx[1]}")
  upper = weights[~schedule_lib.lower_triangular_mask(n)]
  if np.any(upper != 0):
    raise ValueError(f"{name}.weights: expected zeros above the diagonal (row i may use only "
                     "x_T and e_0..e_i), got nonzero entries")


def schedule_kind(schedule) -> str | None:
  """The teacher kind (a `teacher.KINDS` key) a schedule was made for, from its metadata.

  A fitted schedule records its teacher's kind (``metadata["teacher"]``), a baseline the
  prediction type it was built for (diffusers' ``"prediction_type"``: ``"epsilon"``,
  ``"v_prediction"``, ``"sample"``, ``"flow_prediction"``; PNDM and iPNDM are epsilon only).

  Returns:
    ``"ddim"``, ``"ddim_v"``, ``"ddim_x0"``, ``"flow"``, or None when the metadata does not say.
  """
  meta = schedule.metadata
  kind = meta.get("teacher")
  if isinstance(kind, str) and kind in teacher_lib.KINDS:
    return kind
  prediction = meta.get("prediction_type")
  if prediction == teacher_lib.KINDS["flow"].prediction:
    return "flow"
  if isinstance(prediction, str) and prediction in teacher_lib.VP_PREDICTIONS:
    return teacher_lib.VP_PREDICTIONS[prediction]
  if meta.get("method") in ("pndm", "ipndm"):
    return "ddim"
  return None


def _kind_text(kind: str) -> str:
  spec = teacher_lib.KINDS[kind]
  return f"{kind!r} teacher ({spec.process}, {spec.prediction})"


def check_schedule_model(schedule, x_shape, *, teacher=None, name: str = "schedule") -> None:
  """Checks that ``schedule`` can drive this model: what `sample` checks from the metadata.

  Uses only static facts (the schedule's metadata, x_T's shape, the teacher's kind and
  config), so it runs the same eagerly and at trace time under `jax.jit`. Errors
  (`ValueError`) for what cannot work:

  * samples of another rank, or another leading (channel) size, than the schedule's
    ``metadata["sample_shape"]`` (a spatial size change alone is allowed: convolutional
    models run at any resolution; `stable_diffusion.generate` warns about it);
  * with ``teacher``: a schedule made for another teacher kind (`schedule_kind`: its weights
    read the model outputs as that kind's epsilon, velocity, v or x_0), or for another
    ``num_train_timesteps``.

  Args:
    schedule: the `Schedule`.
    x_shape: the shape of x_T, (B, ...).
    teacher: optional `Teacher` of the model (its kind and ``config["num_train_timesteps"]``).
    name: the schedule's argument name in messages.
  """
  meta = schedule.metadata
  shape = tuple(int(d) for d in x_shape[1:])
  fitted = meta.get(META_SAMPLE_SHAPE)
  if fitted is not None:
    fitted = tuple(int(d) for d in fitted)
    if len(fitted) != len(shape) or (fitted and fitted[0] != shape[0]):
      raise ValueError(f"x_T: sample shape {shape} differs from the shape {fitted} {name} was "
                       f"fitted for (metadata sample_shape: another rank or number of "
                       f"channels); fit a schedule on this model")
  if teacher is None:
    return
  if not isinstance(teacher, teacher_lib.Teacher):
    raise TypeError(f"teacher: expected the model's olss_jax Teacher (e.g. "
                    f"oj.ddim_teacher(alphas_cumprod) or oj.flow_teacher()), got "
                    f"{type(teacher).__name__}")
  kind = schedule_kind(schedule)
  if kind is not None and kind != teacher.kind:
    raise ValueError(f"{name}: made for a {_kind_text(kind)}, used with a "
                     f"{_kind_text(teacher.kind)}; its weights read the model's outputs as "
                     f"the other kind's, so the samples would be wrong: use "
                     f"baseline_schedule(name, teacher, n) or a fit on this model")
  t_model = teacher.config.get("num_train_timesteps")
  t_fitted = meta.get(META_NUM_TRAIN_TIMESTEPS)
  if t_model is not None and t_fitted is not None and int(t_model) != int(t_fitted):
    raise ValueError(f"teacher: its model has num_train_timesteps={t_model}, but {name} was "
                     f"made for {t_fitted}")


def schedule_is_valid(timesteps, weights, *, num_train_timesteps: int | None = None,
                      kind: str | None = None) -> jax.Array:
  """A traced bool: what `check_schedule` checks of the values, for schedules under `jax.jit`.

  Finite weights, zeros above the diagonal, finite timesteps >= 0 and, with
  ``num_train_timesteps`` T, below T (up to T for ``kind="flow"``). `sample` replaces its
  result by NaN where this is False (values cannot raise under jit).
  """
  timesteps = jnp.asarray(timesteps)
  weights = jnp.asarray(weights)
  n = timesteps.shape[0]
  upper = jnp.asarray(~schedule_lib.lower_triangular_mask(n))
  ok = jnp.all(jnp.isfinite(weights)) & jnp.all(jnp.where(upper, weights == 0, True))
  ok &= jnp.all(timesteps >= 0)
  if jnp.issubdtype(timesteps.dtype, jnp.floating):
    ok &= jnp.all(jnp.isfinite(timesteps))
  if num_train_timesteps is not None:
    bound = timesteps <= num_train_timesteps if kind == "flow" else (
        timesteps < num_train_timesteps)
    ok &= jnp.all(bound)
  return ok


def path_is_valid(path, num_teacher_steps: int) -> jax.Array:
  """A traced bool: what `check_path` checks of the values (``path[0] == 0``, strictly
  increasing, every entry < K), for paths under `jax.jit`; the fits return NaN where False."""
  path = jnp.asarray(path)
  ok = (path[0] == 0) & (path[-1] < num_teacher_steps)
  if path.shape[0] > 1:
    ok &= jnp.all(path[1:] > path[:-1])
  return ok


def check_schedule_compatible(schedule, x_T, *, num_steps: int | None = None,
                              model_name: str | None = None, guidance_scale: float | None = None,
                              num_train_timesteps: int | None = None, teacher=None) -> None:
  """Checks that ``schedule`` can drive a sampler from ``x_T`` and was fitted for this use.

  Errors (`ValueError`) for the impossible: a malformed schedule, x_T without a batch axis,
  a sample shape other than ``schedule.metadata["sample_shape"]``, a step count other than
  ``num_steps``, timesteps beyond ``num_train_timesteps``, a schedule of another teacher kind
  than ``teacher``'s. Warnings
  (`ScheduleMismatchWarning`) for the suspicious: ``model_name`` or ``guidance_scale``
  differing from what the metadata records (keys ``"model_name"`` or ``"model"``,
  ``"guidance_scale"``) (schedules are specific to the model and guidance
  they were fitted on). A metadata key that is absent is not checked.

  Args:
    schedule: the `Schedule`.
    x_T: (B, ...) the starting noises it will be used with.
    num_steps: the expected n, if the caller has one.
    model_name: the model about to be sampled.
    guidance_scale: the classifier-free guidance scale about to be used.
    num_train_timesteps: T of the model's noise schedule (default: the teacher's).
    teacher: the model's `Teacher`: a schedule of another kind (`schedule_kind`) is an error
      (`check_schedule_model`).
  """
  if not isinstance(schedule, schedule_lib.Schedule):
    raise TypeError(f"schedule: expected an olss_jax Schedule, got {type(schedule).__name__}")
  if teacher is not None:
    check_schedule_model(schedule, (1,) + tuple(np.shape(x_T))[1:], teacher=teacher)
    if num_train_timesteps is None:
      num_train_timesteps = teacher.config.get("num_train_timesteps")
  check_schedule(schedule, num_train_timesteps=num_train_timesteps,
                 kind=None if teacher is None else teacher.kind)
  x_shape = tuple(np.shape(x_T))
  if len(x_shape) < 1 or x_shape[0] < 1:
    raise ValueError(f"x_T: expected shape (B, ...) with B >= 1, got {x_shape}")
  _check_float_dtype(x_T if hasattr(x_T, "dtype") else np.asarray(x_T), "x_T")
  if (num_steps is not None
      and check_count(num_steps, "num_steps", minimum=None) != schedule.num_steps):
    raise ValueError(f"schedule: has {schedule.num_steps} steps, expected num_steps = "
                     f"{num_steps}")
  meta = schedule.metadata
  fitted_shape = meta.get(META_SAMPLE_SHAPE)
  if fitted_shape is not None and tuple(fitted_shape) != x_shape[1:]:
    raise ValueError(f"x_T: sample shape {x_shape[1:]} differs from the shape "
                     f"{tuple(fitted_shape)} the schedule was fitted for")
  fitted_t = meta.get(META_NUM_TRAIN_TIMESTEPS)
  if (num_train_timesteps is not None and fitted_t is not None
      and int(fitted_t) != int(num_train_timesteps)):
    raise ValueError(f"num_train_timesteps: {num_train_timesteps} differs from the "
                     f"{fitted_t} the schedule was fitted for")
  fitted_model = meta.get(META_MODEL_NAME, meta.get("model"))
  if model_name is not None and fitted_model is not None and fitted_model != model_name:
    warnings.warn(f"schedule was fitted for model {fitted_model!r}, used with {model_name!r}; "
                  "OLSS weights are model-specific, refit for best results",
                  ScheduleMismatchWarning, stacklevel=2)
  fitted_g = meta.get(META_GUIDANCE_SCALE)
  if guidance_scale is not None and fitted_g is not None and not np.isclose(
      float(fitted_g), float(guidance_scale), rtol=1e-6, atol=0.0):
    warnings.warn(f"schedule was fitted at guidance_scale={fitted_g}, used at "
                  f"{guidance_scale}; OLSS weights depend on the guidance scale, refit for "
                  "best results", ScheduleMismatchWarning, stacklevel=2)
