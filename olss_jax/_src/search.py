"""Choosing the n steps: the paper's path optimisation (Section 3.4, Eq. 13-14, Algorithms 1-3).

The control flow is written once, in `lax` loops, for any step-error oracle (`greedy_walk`,
`bisect_bound`); `closed_loop_search` reuses it with its own errors. Here the errors are the
paper's: the per-element mean squared error of projecting a teacher state on the span of
``[x_T, e_{t(1)}, ..., e_{t(i)}]`` (the Eq. 12 basis, in search and fit alike), computed in the
compressed R-space of all K + 1 columns (`regression.full_factor`): a path's basis is
orthonormalised one column at a time and every candidate is one projection of a
(K + 1)-vector, so a greedy walk costs O(n log K) small products whatever the image size.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import linalg
from olss_jax._src import noise
from olss_jax._src import regression
from olss_jax._src import validation

MAX_BRACKET_DOUBLINGS = 64
DEFAULT_BISECTION_STEPS = 30   # the reference code's halvings of the bound bracket


class Walk(NamedTuple):
  """One greedy walk (Algorithm 2): path (n,) int32, step_errors (n,) float64, feasible bool."""

  path: jax.Array
  step_errors: jax.Array
  feasible: jax.Array


class SearchInfo(NamedTuple):
  """Diagnostics of `search_path` (arrays; concrete outside jit).

  Attributes:
    step_errors: (n,) float64 d(t(1..i+1)) of each step of the returned path (per-element MSE).
    max_error: float64, max(step_errors), the objective of Eq. 13.
    bound: float64, the smallest feasible error bound D found by the bisection (Algorithm 3).
    uniform_max_error: float64, the objective on the uniform path (OLSS-P).
    chose_uniform: bool, the uniform path was better and was returned instead.
    num_walks: int32, how many greedy walks (Algorithm 2) ran.
  """

  step_errors: jax.Array
  max_error: jax.Array
  bound: jax.Array
  uniform_max_error: jax.Array
  chose_uniform: jax.Array
  num_walks: jax.Array


def uniform_path(traj, num_steps: int) -> np.ndarray:
  """OLSS-P's path: n equally spaced teacher steps, ``floor(i * K / n)`` for i < n.

  With K = 1000 and n = 5 this calls the model at timesteps 999, 799, 599, 399, 199.

  Args:
    traj: a `Trajectory`, `TrajectoryStats` or the number of teacher steps K.
    num_steps: n (1 <= n <= K).

  Returns:
    (n,) int32 indices into the teacher's timesteps (``path[0] == 0``).
  """
  k = traj if isinstance(traj, (int, np.integer)) else traj.num_teacher_steps
  n = validation.check_num_steps(num_steps, k)
  return ((np.arange(n, dtype=np.int64) * k) // n).astype(np.int32)


def greedy_walk(error: Callable, extend: Callable, state, num_teacher_steps: int,
                num_steps: int, bound, memo=(), *, bound_forced_tail: bool = False):
  """Algorithm 2 with Algorithm 1 inside: the greedy path under an error bound (traceable).

  From the current step, binary search (Algorithm 1, assuming the error grows with the jump)
  for the farthest teacher state whose step error is <= ``bound``, but no farther than leaves
  one teacher step for each remaining model call, so that a feasible walk has exactly n calls.
  Feasible when every jump moves and the n-th reaches the final state K. Once infeasible, the
  remaining steps are skipped (no oracle calls, no extensions).

  Args:
    error: ``error(state, target) -> float64 scalar``, the step error of jumping to teacher
      state ``target`` from the path so far (summarised by ``state``).
    extend: ``extend(state, index, memo) -> (state, memo)`` after adding teacher step
      ``index`` to the path (same pytree structures and shapes).
    state: the state of the path [0].
    num_teacher_steps: K (static).
    num_steps: n (static).
    bound: the error bound D.
    memo: a pytree threaded through every extension and returned (a cache shared between
      walks; ``()`` for none).
    bound_forced_tail: (static) once a jump lands on its cap, the rest of the walk is forced
      (one teacher step per remaining call). The error of jumping to a state can only fall as
      the path grows (the basis of a longer prefix spans the shorter one's), so the errors of
      the forced steps measured from the current prefix bound them from above; when those
      bounds are no larger than the largest step error of the walk so far, the walk ends
      there, feasible, with the same path, feasibility and largest step error as the full
      walk, without the forced steps' extensions (the closed-loop search's model calls and
      passes over the teacher outputs). The skipped steps' ``step_errors`` are then those
      upper bounds.

  Returns:
    (walk, memo): a `Walk` and the final memo.
  """
  k, n = num_teacher_steps, num_steps
  with jax.enable_x64(True):
    bound = linalg.f64(bound)

    def one_step(i, carry):
      state, memo, path, errs, current, feasible, done = carry

      def run(args):
        state, memo, path, errs, current = args
        cap = k - (n - i)

        def cond(c):
          return c[0] < c[1]

        def body(c):
          lo, hi, err_lo = c
          mid = (lo + hi + 1) // 2
          err = error(state, mid)
          ok = ~(err > bound)
          return (jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1), jnp.where(ok, err, err_lo))

        lo, _, err_lo = jax.lax.while_loop(
            cond, body, (current, jnp.asarray(cap, jnp.int32), jnp.asarray(jnp.nan, jnp.float64)))
        moved = lo > current
        last = i == n
        ok = moved & (~last | (lo == k))
        errs = errs.at[i - 1].set(err_lo)
        grow = moved & ~last
        path = jnp.where(grow, path.at[jnp.minimum(i, n - 1)].set(lo), path)
        finish = jnp.asarray(False)
        if bound_forced_tail:
          # Steps j = i + 1..n jump to lo + (j - i) (the last to K); bounded from this prefix.
          later = jnp.arange(1, n + 1, dtype=jnp.int32)
          live = later <= n - i
          tail = jax.vmap(lambda m: error(state, m))(jnp.minimum(lo + later, k))
          tail = jnp.where(live, tail, 0.0)
          finish = grow & (lo == cap) & (jnp.max(tail) <= jnp.max(errs))
          slots = jnp.arange(n, dtype=jnp.int32)   # walk position of each later step
          fill = finish & (slots >= i)
          errs = jnp.where(fill, jnp.roll(tail, i), errs)      # errs[i + m - 1] = tail[m - 1]
          path = jnp.where(fill & (slots > i), (lo + slots - i).astype(path.dtype), path)
        state, memo = jax.lax.cond(grow & ~finish, lambda sm: extend(sm[0], lo, sm[1]),
                                   lambda sm: sm, (state, memo))
        return state, memo, path, errs, lo, ok, finish

      def skip(args):
        state, memo, path, errs, current = args
        return state, memo, path, errs, current, feasible, done

      return jax.lax.cond(feasible & ~done, run, skip, (state, memo, path, errs, current))

    init = (state, memo, jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.float64),
            jnp.asarray(0, jnp.int32), jnp.asarray(True), jnp.asarray(False))
    _, memo, path, errs, _, feasible, _ = jax.lax.fori_loop(1, n + 1, one_step, init)
    return Walk(path, errs, feasible), memo


def _worst(w: Walk):
  return jnp.max(w.step_errors)


def _better(candidate: Walk, best: Walk, use) -> Walk:
  """candidate where ``use`` and its max error is strictly smaller, else best."""
  take = use & (_worst(candidate) < _worst(best))
  return jax.tree_util.tree_map(lambda c, b: jnp.where(take, c, b), candidate, best)


def bisect_bound(walk: Callable, num_bisection_steps: int, memo=()):
  """Algorithm 3: bisection on the error bound D over greedy walks (traceable).

  The bracket starts at the maximum error of the always-feasible walk with D = inf (every jump
  to its cap), doubled until a walk under it is feasible (at most `MAX_BRACKET_DOUBLINGS`
  times); then ``num_bisection_steps`` halvings. All walks run in one `lax.while_loop` (one
  traced copy of the walk), in this order: D = inf, the bracket, its doublings, the halvings.

  Args:
    walk: ``walk(bound, memo) -> (Walk, memo)``.
    num_bisection_steps: halvings of the bracket (an int, static or traced).
    memo: threaded through every walk (see `greedy_walk`).

  Returns:
    (best, bound, num_walks, memo): the feasible walk with the smallest maximum step error seen
    (the first of equals), the smallest feasible bound (inf if none), how many walks ran, and
    the final memo.
  """
  start, grow, halve, done = 0, 1, 2, 3
  with jax.enable_x64(True):
    inf = jnp.asarray(jnp.inf, jnp.float64)
    # A walk of the right structure for the carry (never used: phase `start` replaces it).
    template = jax.eval_shape(lambda m: walk(inf, m)[0], memo)
    blank = jax.tree_util.tree_map(lambda t: jnp.zeros(t.shape, t.dtype), template)

    def cond(c):
      return c[0] != done

    def body(c):
      phase, pending, lo, hi, best, doublings, halvings, walks, memo = c
      w, memo = walk(pending, memo)
      walks = walks + 1
      # start: the always-feasible walk is the first best; its worst error brackets D.
      first_hi = _worst(w)
      # grow: a feasible walk under the bracket starts the halvings, else the bracket doubles.
      grown_ok = w.feasible
      give_up = ~w.feasible & (doublings >= MAX_BRACKET_DOUBLINGS)
      # halve: the usual bisection step.
      h_lo = jnp.where(w.feasible, lo, pending)
      h_hi = jnp.where(w.feasible, pending, hi)
      h_done = halvings + 1 >= num_bisection_steps

      is_start, is_grow, is_halve = phase == start, phase == grow, phase == halve
      best = jax.tree_util.tree_map(lambda a, b: jnp.where(is_start, a, b), w,
                                    _better(w, best, w.feasible))
      lo_next = jnp.where(is_grow, 0.0, jnp.where(is_halve, h_lo, lo))
      hi_next = jnp.where(is_start, first_hi,
                          jnp.where(is_grow & grown_ok, pending,
                                    jnp.where(is_grow & give_up, inf,
                                              jnp.where(is_halve, h_hi, hi))))
      start_halving = grown_ok & (num_bisection_steps > 0)
      phase_next = jnp.where(
          is_start, grow,
          jnp.where(is_grow, jnp.where(start_halving, halve,
                                       jnp.where(grown_ok | give_up, done, grow)),
                    jnp.where(is_halve & h_done, done, phase))).astype(jnp.int32)
      pending_next = jnp.where(
          is_start, first_hi,
          jnp.where(is_grow, jnp.where(grown_ok, 0.5 * pending, 2.0 * pending),
                    0.5 * (h_lo + h_hi)))
      doublings = jnp.where((phase == grow) & ~grown_ok, doublings + 1, doublings)
      halvings = jnp.where(phase == halve, halvings + 1, halvings)
      return (phase_next, pending_next, lo_next, hi_next, best, doublings, halvings, walks,
              memo)

    zero = jnp.asarray(0.0, jnp.float64)
    i0 = jnp.asarray(0, jnp.int32)
    init = (jnp.asarray(start, jnp.int32), inf, zero, inf, blank, i0, i0, i0, memo)
    _, _, _, hi, best, _, _, walks, memo = jax.lax.while_loop(cond, body, init)
    return best, hi, walks, memo


class Projection(NamedTuple):
  """The teacher-forced oracle's data in R-space: every column and every teacher state.

  Attributes:
    columns: (M, K + 1) float64 R, ``R^T R = A^T A`` (column j + 1 is e_j, column 0 x_T).
    states: (M, K + 1) float64 ``R C^T``: column m is teacher state m in R-space.
    num_elements: B * D (static), the denominator of the per-element MSE.
  """

  columns: jax.Array
  states: jax.Array
  num_elements: int


def projection(data) -> Projection:
  """The R-space oracle of a `Trajectory` or `TrajectoryStats` (`regression.full_factor`)."""
  r = regression.full_factor(data)
  with jax.enable_x64(True):
    return Projection(r, r @ data.state_coefficients().T, data.num_elements)


def _start(proj: Projection, num_steps: int):
  """The orthonormal basis of span{x_T, e_0} in R-space, in a (M, n + 1) buffer."""
  with jax.enable_x64(True):
    q = jnp.zeros((proj.columns.shape[0], num_steps + 1), jnp.float64)
    count = jnp.asarray(0, jnp.int32)
    q, count = linalg.extend_orthonormal(q, count, proj.columns[:, 0])
    return linalg.extend_orthonormal(q, count, proj.columns[:, 1])


def _error(proj: Projection, state, target):
  with jax.enable_x64(True):
    q, _ = state
    v = linalg.orthogonalize(q, proj.states[:, target])
    return (v @ v) / proj.num_elements


def _extend(proj: Projection, state, index):
  return linalg.extend_orthonormal(state[0], state[1], proj.columns[:, index + 1])


def _walk(proj: Projection, start, num_steps: int):
  k = proj.columns.shape[1] - 1

  def walk(bound, memo):
    return greedy_walk(lambda s, m: _error(proj, s, m),
                       lambda s, i, mm: (_extend(proj, s, i), mm), start, k, num_steps, bound, memo)

  return walk


@jax.jit
def projection_path_errors(proj: Projection, path) -> jax.Array:
  """(n,) teacher-forced step errors of a given path from the R-space oracle (traceable)."""
  n = path.shape[0]
  targets = regression.path_targets(path, proj.columns.shape[1] - 1)
  with jax.enable_x64(True):
    state = _start(proj, n)

    def body(i, c):
      state, errs = c
      state = jax.lax.cond(i > 0, lambda s: _extend(proj, s, path[i]), lambda s: s, state)
      return state, errs.at[i].set(_error(proj, state, targets[i]))

    _, errs = jax.lax.fori_loop(0, n, body, (state, jnp.zeros((n,), jnp.float64)))
    return errs


def search_on_projection(proj: Projection, num_steps: int, num_bisection_steps,
                         prefer_uniform_if_better):
  """`search_path`'s algorithm on a prepared oracle (traceable; only ``num_steps`` static)."""
  k = proj.columns.shape[1] - 1
  n = num_steps
  with jax.enable_x64(True):
    best, bound, walks, _ = bisect_bound(_walk(proj, _start(proj, n), n), num_bisection_steps)
    uniform = jnp.asarray(uniform_path(k, n))
    uniform_errors = projection_path_errors(proj, uniform)
    chose = prefer_uniform_if_better & (jnp.max(uniform_errors) < _worst(best))
    path = jnp.where(chose, uniform, best.path)
    errors = jnp.where(chose, uniform_errors, best.step_errors)
    return path, SearchInfo(errors, jnp.max(errors), bound, jnp.max(uniform_errors), chose, walks)


_search_jit = jax.jit(search_on_projection, static_argnums=1)


def search_path(traj, num_steps: int, *, num_bisection_steps: int = DEFAULT_BISECTION_STEPS,
                prefer_uniform_if_better: bool = True):
  """Path optimisation (paper Eq. 13-14, Algorithms 1-3): min over paths of the max step error.

  Bisection (Algorithm 3) on the error bound D; for each D a greedy walk (Algorithm 2) jumps
  to the farthest step whose projection error is within D (Algorithm 1). Step errors are the
  per-element mean squared error of projecting the teacher state on span{x_T, e_{t(1)}, ...,
  e_{t(i)}} (the paper's Eq. 12 basis in both search and fit). Differences from the
  reference code, all deliberate: the bracket starts at the error of an always-feasible walk
  rather than the fixed [0, 10], so the halvings are relative to the data's scale; a jump
  never goes so far that fewer teacher steps than remaining model calls are left; among all
  feasible walks the one with the smallest actual maximum error is returned; and when the
  uniform path (OLSS-P) has a smaller maximum error than the greedy result, the uniform path
  is returned (the greedy walk assumes the error grows with the jump length, which real
  models can violate).

  All K + 1 columns [x_T, e_0, ..., e_{K-1}] are compressed once into a (K + 1, K + 1)
  factor (`regression.full_factor`: a streamed QR of a small trajectory, the square root of
  the Gram for a large one or for `TrajectoryStats`), then every candidate is a small
  projection. Pure JAX: ``jax.jit(search_path, static_argnums=1)`` works.

  Args:
    traj: the teacher `Trajectory`, or its `TrajectoryStats` (`trajectory_stats`; pass them
      to reuse one Gram for several step counts and for `fit_weights`).
    num_steps: n, the number of model calls (1 <= n <= K; static).
    num_bisection_steps: halvings of the bound bracket (the reference code's 30; may be traced:
      one compilation serves every count).
    prefer_uniform_if_better: return the uniform path when it beats the search (may be traced).

  Returns:
    (path, info): (n,) int32 indices into the teacher's timesteps (``path[0] == 0``) and a
    `SearchInfo` (host numpy arrays when called eagerly, traced arrays under jit).
  """
  validation.check_data(traj)
  n = validation.check_num_steps(num_steps, traj.num_teacher_steps)
  return _search_path(traj, n, num_bisection_steps=num_bisection_steps,
                      prefer_uniform_if_better=prefer_uniform_if_better)


def _search_path(traj, num_steps: int, *, num_bisection_steps=DEFAULT_BISECTION_STEPS,
                 prefer_uniform_if_better=True):
  """`search_path` on a checked trajectory and step count (the core that trusts them)."""
  n = num_steps
  bisections, prefer = search_options(num_bisection_steps, prefer_uniform_if_better)
  proj = projection(traj)
  if any(noise.is_traced(x) for x in (proj.columns, proj.states, bisections, prefer)):
    return search_on_projection(proj, n, bisections, prefer)
  return noise.to_host(_search_jit(proj, n, bisections, prefer))


def search_options(num_bisection_steps, prefer_uniform_if_better):
  """The two dynamic options of both searches as arrays (checked when concrete)."""
  if isinstance(num_bisection_steps, jax.Array) and not noise.is_traced(num_bisection_steps):
    num_bisection_steps = num_bisection_steps.item() if num_bisection_steps.ndim == 0 and (
        jnp.issubdtype(num_bisection_steps.dtype, jnp.integer)) else num_bisection_steps
  if not noise.is_traced(num_bisection_steps):
    num_bisection_steps = validation.check_count(num_bisection_steps, "num_bisection_steps",
                                                 minimum=0)
  return (jnp.asarray(num_bisection_steps, jnp.int32),
          jnp.asarray(prefer_uniform_if_better, bool))


def path_errors(traj, path) -> jax.Array:
  """Per-step least-squares errors of a path (the paper's d(t(1), ..., t(i+1)), Eq. 13).

  Args:
    traj: a `Trajectory` or `TrajectoryStats`.
    path: (n,) int indices into the teacher's timesteps.

  Returns:
    (n,) float64 mean squared error per element of each step's Eq. 12 fit.
  """
  validation.check_data(traj)
  path = validation.check_path(path, traj.num_teacher_steps)
  errors = linalg.x64_call(lambda data, p: regression.solve_path(data, p)[1], traj,
                           jnp.asarray(path, jnp.int32))   # grad from float32 mode too
  return noise.to_host(errors)

