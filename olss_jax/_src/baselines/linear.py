"""Reads a linear multistep solver's `Schedule` off its own update code (paper Eq. 8-9).

A classical solver such as DDIM, PNDM, DEIS, DPM-Solver(++) or UniPC only ever forms linear
combinations, with scalar coefficients, of the starting noise x_T and the model outputs seen so
far. Each is therefore written here as an ordinary *program*: a Python function
``program(model, x_T) -> x_final`` that calls ``model(x, t)`` once per step and combines arrays
with ``+``, ``-`` and scalar ``*`` / ``/`` only. Running that program on coefficient vectors
instead of images (x_T = unit vector 0, the j-th model output = unit vector j + 1) gives, for
every state it builds, the weights over [x_T, e_0, ..., e_{n-1}]: the rows of the `Schedule`.
The very same program run on real arrays with a real model is the solver's plain reference loop.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from olss_jax._src import schedule as schedule_lib

# ``model(x, t) -> e``: x an array (or a coefficient vector), t a Python int training timestep
# or a float32 continuous one (see `call_time`).
ModelFn = Callable[[Any, Any], Any]
# ``program(model, x_T) -> x_final``: one solver run, linear in x_T and the model outputs.
Program = Callable[[ModelFn, Any], Any]


def call_time(t):
  """The time a program passes to ``model``: a Python int for integer timesteps, else float32.

  Args:
    t: a scalar timestep (numpy or Python, integer or float).

  Returns:
    ``int(t)`` for an integer dtype, ``np.float32(t)`` for a float (the dtype a `Schedule`
    stores continuous timesteps in, so the model is called at exactly the stored time).
  """
  if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
    return int(t)
  return np.float32(t)


def schedule_from_program(program: Program, num_steps: int,
                          metadata: Mapping[str, Any] | None = None) -> schedule_lib.Schedule:
  """Runs a linear solver program symbolically and returns its `Schedule` (paper Eq. 9).

  The program is called once with float64 coefficient vectors of length n + 1. Its first model
  call must be at x_T itself (the `sample` convention: the model first sees the unit-variance
  starting noise); the input of model call i + 1 becomes row i of the weights and the returned
  final state the last row.

  Args:
    program: ``program(model, x_T) -> x_final`` making exactly ``num_steps`` model calls.
    num_steps: n, the number of model calls the program must make.
    metadata: the schedule's metadata (``method`` and the solver's configuration).

  Returns:
    A `Schedule` with (n,) timesteps (the ``t`` of each call, in order: int32 when every call
    passed an integer, else float32) and (n, n + 1) float64 lower-triangular weights over
    [x_T, e_0, ..., e_{n-1}].

  Raises:
    ValueError: when the program makes a different number of model calls, does not start at
      x_T, or uses a model output before it was produced.
  """
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
    raise ValueError(f"num_steps: expected an int >= 1, got {num_steps!r}")
  basis = np.eye(num_steps + 1, dtype=np.float64)
  inputs: list[np.ndarray] = []
  timesteps: list[int] = []

  def model(x, t):
    if len(inputs) == num_steps:
      raise ValueError(f"program: made more than the expected num_steps={num_steps} model calls")
    inputs.append(np.array(x, dtype=np.float64, copy=True))
    timesteps.append(call_time(t))
    return basis[len(inputs)]

  final = np.asarray(program(model, basis[0]), dtype=np.float64)
  if len(inputs) != num_steps:
    raise ValueError(f"program: made {len(inputs)} model calls, expected num_steps={num_steps}")
  if not np.allclose(inputs[0], basis[0], rtol=0.0, atol=1e-12):
    raise ValueError("program: its first model call must be at x_T itself (weights [1, 0, ...]); "
                     f"got {inputs[0]}")
  weights = np.stack(inputs[1:] + [final])
  if all(isinstance(t, int) for t in timesteps):
    times = np.asarray(timesteps, np.int64)
  else:
    times = np.asarray(timesteps, np.float32)
  return schedule_lib.make_schedule(times, weights, metadata)
