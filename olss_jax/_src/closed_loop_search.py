"""The closed-loop search: the paper's path search (Algorithms 1-3) on the sampler's own basis.

`closed_loop_search` is `search.search_path` (its teacher-forced twin: `search.bisect_bound` /
`search.greedy_walk`) with the closed-loop fit's change of basis (`closed_loop_fit`): each
greedy walk measures candidate step errors on the basis of its own predicted trajectory (one
model call per chosen step, none per candidate and none for a forced tail whose errors the
prefix already bounds; calls are shared between walks through a cache of model outputs keyed by
the path prefix).

Pure JAX: the model calls and the search run under one `jax.jit`; the model is traced in the
caller's precision (float64 only where the caller enabled it, `model_calls`), the algebra in
float64.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import linalg
from olss_jax._src import model_calls
from olss_jax._src import noise
from olss_jax._src import regression
from olss_jax._src import rows
from olss_jax._src import search
from olss_jax._src import sharding as sharding_lib
from olss_jax._src import trajectory as trajectory_lib
from olss_jax._src import validation

SOURCES = ("closed_loop_walk", "teacher_forced_walk", "uniform")


class ClosedLoopSearchInfo(NamedTuple):
  """Diagnostics of `closed_loop_search` (`search.SearchInfo`'s fields, then its own).

  Attributes:
    step_errors: (n,) float64 closed-loop step errors of the returned path (per-element MSE
      of projecting the teacher state on the path's own-trajectory basis).
    max_error: float64, max(step_errors) (Eq. 13's objective on the closed-loop basis).
    bound: float64, the smallest feasible bound D found by the bisection.
    uniform_max_error: float64, the objective on the uniform path.
    chose_uniform: bool, the uniform path was better and was returned instead.
    num_walks: int32, greedy walks run.
    num_model_calls: int32, model evaluations on the B fitting noises (prefix-cached).
    source: int32 index into `SOURCES` of the returned candidate ("closed_loop_walk",
      "teacher_forced_walk" or "uniform"); `source_name` spells it.
  """

  step_errors: jax.Array
  max_error: jax.Array
  bound: jax.Array
  uniform_max_error: jax.Array
  chose_uniform: jax.Array
  num_walks: jax.Array
  num_model_calls: jax.Array
  source: jax.Array

  @property
  def source_name(self) -> str:
    """The returned candidate's name (concrete info only)."""
    return SOURCES[int(self.source)]


class _Node(NamedTuple):
  """A path prefix and its own-trajectory basis.

  q: (N, n + 1) orthonormal basis of [x_T, e'_{p_0}, ..., e'_{p_i}] (unused columns zero);
  count: its columns in use; m: (n + 1, K + 1) ``q^T A`` (one row per basis vector);
  prefix: (n,) the path so far; length: its length.
  """

  q: jax.Array
  count: jax.Array
  m: jax.Array
  prefix: jax.Array
  length: jax.Array


class _Cache(NamedTuple):
  """Model outputs by prefix: prefixes (cap, n), lengths (cap,), outputs (cap, N), next slot.

  ``rows`` (cap, K + 1) float64: ``A^T q`` of the basis column the output added to the
  prefix's basis (the node of a prefix is a function of the prefix), so a walk that revisits
  a prefix costs neither a model call nor a pass over the teacher outputs.
  """

  prefixes: jax.Array
  lengths: jax.Array
  outputs: jax.Array
  slot: jax.Array
  calls: jax.Array
  rows: jax.Array


def _project_columns(traj, v, part=None):
  """``A^T v`` (K + 1,) float64 for v (N,): one pass over the teacher outputs.

  Batch-sharded (``part``): each device's rows, then a `psum` of the (K + 1,) partial sums.
  """

  def step(acc, x_rows, e_rows, v_rows):
    return acc + jnp.concatenate([(linalg.f64(x_rows) @ v_rows)[None],
                                  linalg.f64(e_rows) @ v_rows])

  init = jnp.zeros((traj.num_teacher_steps + 1,), jnp.float64)
  if part is None:
    return rows.fold_rows(step, init, traj.x_T, traj.model_outputs, extra=v)

  def local(x, e, v_rows, axes):
    with jax.enable_x64(True):
      return jax.lax.psum(rows.fold_rows(step, init, x, e, extra=v_rows), axes)

  return sharding_lib.shard_rows(local, part, (0, 1, 0), None)(traj.x_T, traj.model_outputs, v)


class _Oracle:
  """Closed-loop step errors of any prefix (traced pieces of `closed_loop_search`)."""

  def __init__(self, traj, denoise_fn, num_steps: int, x64: bool, part=None):
    self.traj = traj
    self.part = part
    self.denoise_fn = denoise_fn
    self.n = num_steps
    self.x64 = x64
    self.k = traj.num_teacher_steps
    self.x_T = jnp.asarray(traj.x_T)
    self.num_rows = traj.num_elements
    self.coeffs = traj.state_coefficients()                      # (K + 1, K + 1)
    self.norms = regression.state_norms(traj, part=part)         # ||y_m||^2
    self.timesteps = jnp.asarray(traj.timesteps)

  def root(self) -> _Node:
    n, k = self.n, self.k
    x = linalg.f64(self.x_T).reshape(-1)
    norm = jnp.linalg.norm(x)
    q0 = jnp.where(norm > 0, x / jnp.where(norm > 0, norm, 1.0), 0.0)
    q = jnp.zeros((self.num_rows, n + 1), jnp.float64).at[:, 0].set(q0)
    q = sharding_lib.constrain(q, self.part, 0)
    m = jnp.zeros((n + 1, k + 1), jnp.float64).at[0].set(_project_columns(self.traj, q0,
                                                                          self.part))
    return _Node(q, (norm > 0).astype(jnp.int32), m, jnp.zeros((n,), jnp.int32),
                 jnp.asarray(0, jnp.int32))

  def empty_cache(self) -> _Cache:
    itemsize = np.dtype(self.x_T.dtype).itemsize
    cap = int(min(1024, max(4 * self.n,
                            model_calls.CACHE_BYTES // max(1, self.num_rows * itemsize))))
    outputs = sharding_lib.constrain(jnp.zeros((cap, self.num_rows), self.x_T.dtype),
                                     self.part, 1)
    return _Cache(jnp.zeros((cap, self.n), jnp.int32), jnp.zeros((cap,), jnp.int32),
                  outputs, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32),
                  jnp.zeros((cap, self.k + 1), jnp.float64))

  def error(self, node: _Node, target):
    proj = node.m @ self.coeffs[target]
    return jnp.maximum(self.norms[target] - proj @ proj, 0.0) / self.num_rows

  def extend(self, node: _Node, index, cache: _Cache):
    """The prefix + (index,): one model call at its predicted state unless cached."""
    prefix = node.prefix.at[jnp.minimum(node.length, self.n - 1)].set(index)
    length = node.length + 1
    live = jnp.arange(self.n) < length
    match = jnp.all((cache.prefixes == prefix[None]) | ~live[None], axis=1) & (
        cache.lengths == length)
    hit = jnp.any(match)
    slot = linalg.first_true(match)
    x_flat = linalg.f64(self.x_T).reshape(-1)
    predicted = jnp.where(length == 1, x_flat, node.q @ (node.m @ self.coeffs[index]))
    x = predicted.reshape(self.x_T.shape).astype(self.x_T.dtype)

    def call(_):
      return model_calls.call_model(self.denoise_fn, x, self.timesteps[index], self.x64).reshape(-1)

    e = jax.lax.cond(hit, lambda _: cache.outputs[slot], call, None)
    q, count = linalg.extend_orthonormal(node.q, node.count, linalg.f64(e))
    q = sharding_lib.constrain(q, self.part, 0)
    grew = count > node.count
    # A^T q of the new column: cached with the output (one pass over the teacher's outputs
    # per distinct prefix, not per extension).
    row = jax.lax.cond(grew & ~hit,
                       lambda _: _project_columns(self.traj, q[:, count - 1], self.part),
                       lambda _: cache.rows[slot], None)
    m = jnp.where(grew, node.m.at[jnp.maximum(count - 1, 0)].set(row), node.m)
    put = ~hit
    cap = cache.prefixes.shape[0]
    at = cache.slot   # each buffer updated in place (a select of one row, not of the buffer)
    cache = _Cache(
        cache.prefixes.at[at].set(jnp.where(put, prefix, cache.prefixes[at])),
        cache.lengths.at[at].set(jnp.where(put, length, cache.lengths[at])),
        cache.outputs.at[at].set(jnp.where(put, e, cache.outputs[at])),
        jnp.where(put, (cache.slot + 1) % cap, cache.slot),
        cache.calls + put.astype(jnp.int32),
        cache.rows.at[at].set(jnp.where(put, row, cache.rows[at])))
    cache = cache._replace(outputs=sharding_lib.constrain(cache.outputs, self.part, 1))
    return _Node(q, count, m, prefix, length), cache

  def path_errors(self, path, start: _Node, cache: _Cache):
    """(n,) closed-loop step errors of a full path (its nodes via the cache)."""
    targets = regression.path_targets(path, self.k)

    def body(i, c):
      node, cache, errs = c
      node, cache = jax.lax.cond(i > 0, lambda nc: self.extend(nc[0], path[i], nc[1]),
                                 lambda nc: nc, (node, cache))
      return node, cache, errs.at[i].set(self.error(node, targets[i]))

    _, cache, errs = jax.lax.fori_loop(0, path.shape[0], body,
                                       (start, cache, jnp.zeros((self.n,), jnp.float64)))
    return errs, cache


def _search(traj, denoise_fn, tf_path, num_steps: int, num_bisection_steps, prefer_uniform,
            include_teacher_forced, x64: bool, part=None):
  """The closed-loop search (see `closed_loop_search`); traceable, statics: n, x64, part.

  ``part`` (static ``(mesh, axes)``, `sharding.trajectory_partition`), as in the closed-loop
  fit: the bases and cached outputs stay split over the batch, and only
  (K + 1,)-vectors and scalars are reduced across devices.
  """
  n = num_steps
  with jax.enable_x64(True):
    oracle = _Oracle(traj, denoise_fn, n, x64, part)
    cache = oracle.empty_cache()
    start, cache = oracle.extend(oracle.root(), jnp.asarray(0, jnp.int32), cache)

    def walk(bound, cache):
      return search.greedy_walk(oracle.error, oracle.extend, start, oracle.k, n, bound, cache,
                                bound_forced_tail=True)

    best, bound, walks, cache = search.bisect_bound(walk, num_bisection_steps, cache)
    uniform = jnp.asarray(search.uniform_path(oracle.k, n))
    # The paper's walk (no model calls to find, n to judge) as a second start, and the uniform
    # path, judged by the same closed-loop criterion in one loop (one traced model call): on
    # the sharp 16-dim mixture the paper's walk beat both the closed-loop walk and the uniform
    # path by this criterion at 5, 10 and 20 steps.
    # The walk's own errors are exact up to its largest; a forced tail it skipped holds upper
    # bounds (`greedy_walk`'s ``bound_forced_tail``): its exact errors are measured here too.
    candidates = jnp.stack([tf_path, uniform, best.path])

    def judge(cache, inputs):
      path, active = inputs
      errs, cache = jax.lax.cond(active, lambda c: oracle.path_errors(path, start, c),
                                 lambda c: (jnp.full((n,), jnp.inf, jnp.float64), c), cache)
      return cache, errs

    cache, errs = jax.lax.scan(judge, cache, (candidates, jnp.stack(
        [jnp.asarray(include_teacher_forced, bool), jnp.asarray(True), best.feasible])))
    tf_errors, uniform_errors = errs[0], errs[1]
    walk_errors = jnp.where(best.feasible, errs[2], best.step_errors)
    take = jnp.max(tf_errors) < jnp.max(best.step_errors)
    path = jnp.where(take, tf_path, best.path)
    errors = jnp.where(take, tf_errors, walk_errors)
    source = jnp.where(take, 1, 0).astype(jnp.int32)
    chose = prefer_uniform & (jnp.max(uniform_errors) < jnp.max(errors))
    path = jnp.where(chose, uniform, path)
    errors = jnp.where(chose, uniform_errors, errors)
    source = jnp.where(chose, 2, source).astype(jnp.int32)
    return path, ClosedLoopSearchInfo(errors, jnp.max(errors), bound, jnp.max(uniform_errors),
                                      chose, walks, cache.calls, source)


_search_jit = jax.jit(_search, static_argnums=(3, 7, 8))


def closed_loop_search(traj: trajectory_lib.Trajectory, num_steps: int, denoise_fn, *,
                       num_bisection_steps: int = search.DEFAULT_BISECTION_STEPS,
                       prefer_uniform_if_better: bool = True,
                       include_teacher_forced: bool = True):
  """Path optimisation (paper Eq. 13-14, Algorithms 1-3) on closed-loop step errors.

  The bisection on the bound D and the greedy walk are `search_path`'s
  (`search.bisect_bound`, `search.greedy_walk`); only the error of a candidate differs: it is
  measured on the basis ``[x_T, e'_0, ..., e'_i]`` of the walk's own predicted trajectory, where
  e'_j is the model output at the least-squares prediction of teacher state p_j on the parent
  prefix's basis. With teacher columns ``A`` and states ``y_m = A c_m`` (Eq. 9) the error of
  any state m is ``(||y_m||^2 - ||(Q^T A) c_m||^2) / N`` for the prefix's orthonormal Q: each
  candidate costs one (K + 1)-vector product, a new basis column one pass ``A^T q`` and one
  model call (cached by prefix and shared between walks). Once a walk's jump lands on its cap
  the rest is forced, and a longer prefix can only lower an error: when the forced steps'
  errors measured from the current prefix stay below the walk's largest, the walk ends there
  (the same path and largest error, no further calls; `search.greedy_walk`'s
  ``bound_forced_tail``), and the returned path's step errors are measured exactly at the end.
  Candidates, judged by the same criterion (max closed-loop step error): the best closed-loop
  walk of the bisection, the paper's teacher-forced walk and the uniform path; the returned
  path never has a larger maximum step error (by this criterion) than the uniform path when
  ``prefer_uniform_if_better``.

  Args:
    traj: the teacher `Trajectory`.
    num_steps: n (1 <= n <= K; static).
    denoise_fn: the model ``(x_t (B, ...), t) -> e (B, ...)``.
    num_bisection_steps: halvings of the bound bracket (may be traced).
    prefer_uniform_if_better: return the uniform path when it beats the search (may be traced).
    include_teacher_forced: also consider the paper's teacher-forced walk (may be traced).

  Returns:
    (path, info): (n,) int32 path and a `ClosedLoopSearchInfo`.
  """
  validation.check_model_data(traj)
  n = validation.check_num_steps(num_steps, traj.num_teacher_steps)
  return _closed_loop_search(traj, n, denoise_fn, num_bisection_steps=num_bisection_steps,
                             prefer_uniform_if_better=prefer_uniform_if_better,
                             include_teacher_forced=include_teacher_forced)


def _closed_loop_search(traj, num_steps: int, denoise_fn, *,
                        num_bisection_steps: int = search.DEFAULT_BISECTION_STEPS,
                        prefer_uniform_if_better: bool = True,
                        include_teacher_forced: bool = True):
  """`closed_loop_search` on a checked trajectory and step count (the core that trusts them)."""
  n = num_steps
  bisections, prefer = search.search_options(num_bisection_steps, prefer_uniform_if_better)
  denoise_fn = trajectory_lib.as_denoise_pytree(denoise_fn)
  tf_path, _ = search._search_path(  # pylint: disable=protected-access
      traj, n, num_bisection_steps=bisections, prefer_uniform_if_better=False)
  include = jnp.asarray(include_teacher_forced, bool)
  traced = any(noise.is_traced(x) for x in (traj.x_T, traj.model_outputs, bisections, prefer,
                                            include))
  fn = _search if traced else _search_jit
  return noise.to_host(fn(traj, denoise_fn, jnp.asarray(tf_path, jnp.int32), n, bisections,
                          prefer, include, model_calls.caller_x64(),
                          sharding_lib.trajectory_partition(traj)))
