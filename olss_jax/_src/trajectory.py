"""The recorded teacher run (paper Sections 3.2-3.3) and `collect_trajectory`, which makes one."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import teacher as teacher_lib

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


@jax.tree_util.register_pytree_node_class
class Trajectory:
  """A recorded teacher run on B starting noises (a pytree).

  Attributes:
    x_T: (B, ...) the starting noises.
    model_outputs: (K, B, ...) the model outputs ``e_k = denoise_fn(states[k], timesteps[k])``.
    teacher: the `Teacher` (its timesteps (K,), float64 levels (K + 1,) and kind).

  The teacher states are not stored: the teacher is linear, so every state is a fixed linear
  combination of x_T and the earlier model outputs (paper Eq. 9); `states` recomputes them and
  the fit and search use the exact float64 coefficients (`Teacher.state_coefficients`).

  ``Trajectory(x_T, model_outputs, teacher)``; the DDIM teacher can also be given as
  ``Trajectory(timesteps=..., x_T=..., model_outputs=..., alphas=...)`` with its (K,) timesteps
  and (K + 1,) alpha_bar levels (the layout of olss_jax 0.1).
  """

  def __init__(self, x_T=None, model_outputs=None, teacher=None, *, timesteps=None,
               alphas=None):
    if teacher is None:
      if timesteps is None or alphas is None:
        raise TypeError("Trajectory: expected (x_T, model_outputs, teacher), or the DDIM "
                        "shorthand with timesteps= and alphas=")
      teacher = teacher_lib.Teacher(timesteps, teacher_lib.as_float64(alphas)
                                    if not noise.is_traced(alphas) else alphas, "ddim")
    elif timesteps is not None or alphas is not None:
      raise TypeError("Trajectory: pass either teacher or timesteps= and alphas=, not both")
    self.x_T = x_T
    self.model_outputs = model_outputs
    self.teacher = teacher

  def tree_flatten(self):
    return (self.x_T, self.model_outputs, self.teacher), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux
    obj = object.__new__(cls)
    obj.x_T, obj.model_outputs, obj.teacher = children
    return obj

  def replace(self, **changes) -> "Trajectory":
    """A copy with ``x_T``, ``model_outputs`` or ``teacher`` replaced."""
    fields = {"x_T": self.x_T, "model_outputs": self.model_outputs, "teacher": self.teacher}
    unknown = set(changes) - set(fields)
    if unknown:
      raise TypeError(f"Trajectory.replace got unknown fields: {sorted(unknown)}")
    fields.update(changes)
    return Trajectory(**fields)

  def take(self, indices) -> "Trajectory":
    """The trajectory of a subset of its noises: ``x_T[indices]``, ``model_outputs[:, indices]``.

    Args:
      indices: (m,) ints into the batch (e.g. a validation split of the fitting noises).
    """
    idx = jnp.asarray(indices, jnp.int32)
    return self.replace(x_T=jnp.asarray(self.x_T)[idx],
                        model_outputs=jnp.asarray(self.model_outputs)[:, idx])

  @property
  def timesteps(self):
    """(K,) the teacher's model-call times."""
    return self.teacher.timesteps

  @property
  def levels(self):
    """(K + 1,) float64 noise levels of the teacher's states (alpha_bar for DDIM)."""
    return self.teacher.levels

  alphas = levels  # the DDIM teacher's name for its levels (alpha_bar)

  @property
  def num_teacher_steps(self) -> int:
    """K, the number of teacher model calls."""
    return int(np.shape(self.teacher.timesteps)[0])

  @property
  def batch_size(self) -> int:
    """B, the number of starting noises."""
    return int(np.shape(self.x_T)[0])

  @property
  def sample_shape(self) -> tuple[int, ...]:
    """The shape of one sample, x_T.shape[1:]."""
    return tuple(np.shape(self.x_T)[1:])

  @property
  def num_elements(self) -> int:
    """B * D, every element of every sample (the rows of the least-squares problems)."""
    return self.batch_size * int(np.prod(self.sample_shape))

  def step_coefficients(self):
    """(a, b), each (K,) float64: ``states[k + 1] = a[k] * states[k] + b[k] * e_k``."""
    return self.teacher.step_coefficients()

  def state_coefficients(self) -> jax.Array:
    """(K + 1, K + 1) float64 C with ``states[k] = C[k] @ [x_T, e_0, ..., e_{K-1}]``."""
    return self.teacher.state_coefficients()

  @property
  def states(self) -> jax.Array:
    """(K + 1, B, ...) teacher states: ``states[0] == x_T``, ``states[K]`` the final output.

    Recomputed by the teacher's own recurrence in the dtype of `model_outputs`, so
    ``states[k]`` is the input the model saw at step k.
    """
    dtype = jnp.result_type(self.x_T, self.model_outputs)
    with jax.enable_x64(True):
      a, b = (c.astype(dtype) for c in self.step_coefficients())
    return _replay_states(self.x_T, self.model_outputs, a, b)

  def __repr__(self) -> str:
    return (f"Trajectory(batch_size={self.batch_size}, sample_shape={self.sample_shape}, "
            f"teacher={self.teacher!r})")


@jax.jit
def _replay_states(x_T, model_outputs, a, b):
  dtype = jnp.result_type(x_T, model_outputs)
  a = jnp.asarray(a).astype(dtype)
  b = jnp.asarray(b).astype(dtype)

  def step(x, inputs):
    a_k, b_k, e_k = inputs
    x_next = (a_k * x + b_k * e_k).astype(dtype)
    return x_next, x_next

  x0 = jnp.asarray(x_T, dtype)
  _, rest = jax.lax.scan(step, x0, (a, b, jnp.asarray(model_outputs, dtype)))
  return jnp.concatenate([x0[None], rest], axis=0)


def as_denoise_pytree(denoise_fn: DenoiseFn):
  """Wraps a plain callable into a `jax.tree_util.Partial` so it can cross a jit boundary.

  A `Partial` (or any pytree with a ``__call__``) is returned unchanged, keeping its arrays
  (model parameters) as traced leaves rather than baked-in constants.
  """
  if not callable(denoise_fn):
    raise TypeError(f"denoise_fn: expected a callable (x_t, t) -> model output, got "
                    f"{type(denoise_fn).__name__}")
  leaves, _ = jax.tree_util.tree_flatten(denoise_fn)
  if isinstance(denoise_fn, jax.tree_util.Partial) or (leaves and leaves[0] is not denoise_fn):
    return denoise_fn
  return jax.tree_util.Partial(denoise_fn)


_TRACING_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                   jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError,
                   jax.errors.UnexpectedTracerError)


def call_model(denoise_fn, x, t):
  """``denoise_fn(x, t)``, checked to keep x's shape, in x's dtype.

  An error raised inside the model (a `ValueError`, `TypeError` or `IndexError`, typically a
  model built for another batch of conditions or another sample shape) is re-raised as one
  line naming ``denoise_fn`` and the input it was called on, the original chained.
  """
  try:
    e = denoise_fn(x, t)
  except _TRACING_ERRORS:  # JAX's own messages about tracing say it best
    raise
  except (ValueError, TypeError, IndexError) as error:
    first = " ".join(str(error).split()) or type(error).__name__
    if len(first) > 300:
      first = first[:297] + "..."
    message = (f"denoise_fn: failed on x_t of shape {tuple(x.shape)} ({x.dtype}): "
               f"{type(error).__name__}: {first} (is the model built for this batch of "
               f"{x.shape[0] if x.ndim else '?'} noises, their conditions, and this sample shape?)")
    raise (TypeError if isinstance(error, TypeError) else ValueError)(message) from error
  if not hasattr(e, "shape") or e.shape != x.shape:
    raise ValueError(f"denoise_fn: returned shape {getattr(e, 'shape', type(e).__name__)}, "
                     f"expected the input's {x.shape}")
  return e.astype(x.dtype)


def _teacher_scan(denoise_fn, x, timesteps, a, b):
  dtype = x.dtype

  def step(x, inputs):
    t, a_k, b_k = inputs
    e = call_model(denoise_fn, x, t)
    return (a_k.astype(dtype) * x + b_k.astype(dtype) * e).astype(dtype), e

  return jax.lax.scan(step, x, (timesteps, a, b))


_teacher_scan_jit = jax.jit(_teacher_scan)


def resolve_teacher(teacher, num_teacher_steps=None, *, steps_offset: int = 0,
                    final_alpha_cumprod: float = 1.0) -> teacher_lib.Teacher:
  """A `Teacher`, or an ``alphas_cumprod`` table turned into the DDIM teacher (`ddim_teacher`).

  The DDIM options (``num_teacher_steps`` (default 1000), ``steps_offset``,
  ``final_alpha_cumprod``) belong to a table; with a `Teacher` they must be left unset.
  """
  if isinstance(teacher, teacher_lib.Teacher):
    if num_teacher_steps is not None or steps_offset != 0 or final_alpha_cumprod != 1.0:
      raise TypeError("num_teacher_steps, steps_offset, final_alpha_cumprod: describe a DDIM "
                      "teacher built from alphas_cumprod; a Teacher already fixes them")
    teacher_lib.check_teacher(teacher)
    return teacher
  return teacher_lib.ddim_teacher(teacher, 1000 if num_teacher_steps is None else num_teacher_steps,
                                  steps_offset=steps_offset,
                                  final_alpha_cumprod=final_alpha_cumprod)


def collect_trajectory(denoise_fn: DenoiseFn, x_T: jax.Array, teacher,
                       num_teacher_steps: int | None = None, *, steps_offset: int = 0,
                       final_alpha_cumprod: float = 1.0, steps_per_chunk: int | None = None,
                       callback: Callable[[int, int], None] | None = None,
                       mesh=None) -> Trajectory:
  """Runs the complete generation process (the teacher) and records its model outputs.

  Step k calls ``e_k = denoise_fn(x_k, teacher.timesteps[k])`` and moves to
  ``x_{k+1} = a_k x_k + b_k e_k`` (`Teacher.step_coefficients`, cast to x_T's dtype); for the
  paper's DDIM teacher this is Eq. 1 with sigma_t = 0, diffusers' ``FlaxDDIMScheduler.step``
  with eta = 0. A pure JAX function: ``jax.jit(collect_trajectory,
  static_argnames="num_teacher_steps")`` compiles the whole teacher as one `lax.scan`.

  Args:
    denoise_fn: ``(x_t (B, ...), t scalar) -> e (B, ...)``, the model output. Pass a
      `jax.tree_util.Partial` so its parameters stay traced; plain callables are wrapped.
    x_T: (B, ...) starting noises (float; finite, checked when concrete).
    teacher: a `Teacher`, or the model's (T,) training ``alphas_cumprod`` for the paper's
      DDIM teacher (`ddim_teacher` with the three options below).
    num_teacher_steps: K of the DDIM teacher (default 1000; static under jit).
    steps_offset: the DDIM teacher's ``steps_offset`` (1 for Stable Diffusion's configs).
    final_alpha_cumprod: the DDIM teacher's alpha_bar after the last step (1.0, or
      ``alphas_cumprod[0]`` for diffusers' ``set_alpha_to_one=False``).
    steps_per_chunk: None runs the whole teacher as one `lax.scan` (usable under `jax.jit`);
      an int runs jitted chunks of that many steps and gathers the outputs on the host, so
      device memory holds one chunk (concrete inputs only).
    callback: called as ``callback(steps_done, K)`` after each chunk (progress bars).
    mesh: shard the batch over devices (`sharding.resolve_mesh`): None splits it over all
      of ``jax.devices()`` when there are several and B divides evenly by their number; a
      `jax.sharding.Mesh` splits it over that mesh; False never shards. With a mesh, x_T and
      model_outputs come back batch-sharded (``steps_per_chunk`` mode gathers the outputs on
      the host instead, one process only). Multi-host: see `olss_jax._src.sharding`.

  Returns:
    A `Trajectory` (x_T (B, ...), model_outputs (K, B, ...) in x_T's dtype, the teacher).
  """
  teacher = resolve_teacher(teacher, num_teacher_steps, steps_offset=steps_offset,
                            final_alpha_cumprod=final_alpha_cumprod)
  x_T = jnp.asarray(x_T)
  if x_T.ndim < 1 or x_T.shape[0] < 1:
    raise ValueError(f"x_T: expected shape (B, ...) with B >= 1, got {x_T.shape}")
  if not jnp.issubdtype(x_T.dtype, jnp.floating):
    raise TypeError(f"x_T: expected a float dtype, got {x_T.dtype}")
  if not noise.is_traced(x_T):  # on the host: also inside a caller's trace
    finite = np.isfinite(np.asarray(x_T).reshape(x_T.shape[0], -1)).all(axis=1)
    if not finite.all():
      raise ValueError(f"x_T: non-finite value (NaN or infinity) in sample "
                       f"{int(np.argmin(finite))}; the teacher would record NaN")
  mesh = sharding_lib.resolve_mesh(mesh, x_T.shape[0])
  x_T = sharding_lib.shard_batch(x_T, mesh)
  denoise_fn = as_denoise_pytree(denoise_fn)
  with jax.enable_x64(True):  # the float64 coefficients, rounded once to the state's dtype
    a, b = (c.astype(x_T.dtype) for c in teacher.step_coefficients())
  timesteps = jnp.asarray(teacher.timesteps)
  k_total = teacher.num_steps
  if steps_per_chunk is None:
    _, outputs = _teacher_scan_jit(denoise_fn, x_T, timesteps, a, b)
    outputs = sharding_lib.shard_batch(outputs, mesh, axis=1)
    if callback is not None:
      callback(k_total, k_total)
  else:
    steps_per_chunk = noise.check_count(steps_per_chunk, "steps_per_chunk")
    if noise.is_traced(x_T):
      raise ValueError("steps_per_chunk: gathers outputs on the host, which needs concrete "
                       "inputs; use steps_per_chunk=None under jax.jit")
    outputs = np.empty((k_total,) + x_T.shape, x_T.dtype)
    x = x_T
    for start in range(0, k_total, steps_per_chunk):
      stop = min(start + steps_per_chunk, k_total)
      x, chunk = _teacher_scan_jit(denoise_fn, x, timesteps[start:stop], a[start:stop],
                                   b[start:stop])
      outputs[start:stop] = np.asarray(chunk)
      if callback is not None:
        callback(stop, k_total)
  return Trajectory(x_T, outputs, teacher)
