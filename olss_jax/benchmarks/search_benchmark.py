"""Path search + fit at Stable Diffusion's size: the paper's direct search vs olss_jax's.

On one synthetic trajectory with a real teacher's correlations (`olss_jax._src.synthetic`:
32 images of 4x64x64 latents, 1000 teacher steps, neighbouring outputs correlated > 0.99),
it runs side by side:

  (a) the paper's search, written plainly here: every candidate step error is its own tall
      float64 least squares over all B * D rows (LAPACK gelsy, the reference code's
      torch.linalg.lstsq driver), 30 bisection rounds, greedy walks of Algorithms 1-2;
  (b) olss_jax: `trajectory_stats` (float64 Gram by BLAS syrk, streamed over images), then
      `search_path(stats, n)` and `fit_weights(stats, path)`.

(a) uses the same control flow as `search_path` (bracket from an always-feasible walk, jump
caps, best-of-feasible, uniform fallback) so the two paths are comparable; only the error
oracle differs. It reports wall times, their ratio, peak RSS, and whether the paths agree.

  python -m olss_jax.benchmarks.search_benchmark            # full size (a can take tens of minutes)
  python -m olss_jax.benchmarks.search_benchmark --small    # seconds; run by tests/test_stats.py
  python -m olss_jax.benchmarks.search_benchmark --reference-sample 200   # (a) timed on 200 of its
                       # tall least squares drawn at random from the full search's calls;
                       # its total time EXTRAPOLATED (says so in the output)
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

import numpy as np
import scipy.linalg


from olss_jax._src import fit  # pylint: disable=wrong-import-position
from olss_jax._src import search  # pylint: disable=wrong-import-position
from olss_jax._src import stats as stats_lib  # pylint: disable=wrong-import-position
from olss_jax._src import synthetic  # pylint: disable=wrong-import-position


def cpu_seconds() -> float:
  """User + system CPU time of this process (all threads) so far."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def peak_rss_gib() -> float:
  """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _Stop(Exception):
  pass


def reference_search(error_fn, num_teacher_steps: int, num_steps: int, *,
                     num_bisection_steps: int = 30, max_walks: int | None = None, log=None):
  """Algorithms 1-3 with an arbitrary step-error oracle, written plainly.

  Args:
    error_fn: ``(path_prefix list[int], target int) -> float``, the per-element MSE of
      projecting teacher state ``target`` on [x_T, e_{prefix}...].
    num_teacher_steps: K.
    num_steps: n.
    num_bisection_steps: bisection rounds.
    max_walks: stop (raise `_Stop`) after this many walks; None: run to the end.
    log: called with (walk_index, bound, result, seconds) after each walk.

  Returns:
    (path (n,) int32, step errors (n,), walks): the same control flow as `search_path`.
  """
  k, n = num_teacher_steps, num_steps
  walks = []

  def walk(bound):
    if max_walks is not None and len(walks) >= max_walks:
      raise _Stop()
    t0 = time.perf_counter()
    path, errs, result = [0], [], None
    for i in range(1, n + 1):
      current, cap = path[-1], k - (n - i)
      lo, hi, err_lo = current, cap, None
      while lo < hi:
        mid = (lo + hi + 1) // 2
        err = error_fn(path, mid)
        if err > bound:
          hi = mid - 1
        else:
          lo, err_lo = mid, err
      if lo == current:
        break
      errs.append(err_lo if err_lo is not None else error_fn(path, lo))
      if i == n:
        if lo == k:
          result = (np.asarray(path, np.int32), np.asarray(errs))
        break
      path.append(lo)
    walks.append((bound, result))
    if log is not None:
      log(len(walks), bound, result, time.perf_counter() - t0)
    return result

  def worst(w):
    return float(np.max(w[1]))

  best = walk(math.inf)
  hi = worst(best)
  found = walk(hi)
  for _ in range(64):
    if found is not None:
      break
    hi *= 2.0
    found = walk(hi)
  lo = 0.0
  if found is not None:
    best = min(best, found, key=worst)
    for _ in range(num_bisection_steps):
      mid = 0.5 * (lo + hi)
      found = walk(mid)
      if found is None:
        lo = mid
      else:
        hi = mid
        best = min(best, found, key=worst)
  path, errors = best
  uniform = ((np.arange(n) * k) // n).astype(np.int32)
  uniform_errors = np.asarray([error_fn(list(uniform[:i + 1]), int(t))
                               for i, t in enumerate(np.append(uniform[1:], k))])
  if np.max(uniform_errors) < np.max(errors):
    path, errors = uniform, uniform_errors
  return path, errors, walks


def direct_error_fn(x_T_flat, outputs_flat, states):
  """The paper's oracle: a tall float64 least squares over all rows per candidate.

  Args:
    x_T_flat: (B * D,) float32; outputs_flat: (K, B * D) float32; states: (K + 1, B * D)
      float64 teacher states.
  """
  m = x_T_flat.shape[0]
  calls = [0]

  def error(prefix, target):
    calls[0] += 1
    basis = np.stack([x_T_flat] + [outputs_flat[p] for p in prefix], axis=1).astype(np.float64)
    w = scipy.linalg.lstsq(basis, states[target], lapack_driver="gelsy", check_finite=False)[0]
    resid = states[target] - basis @ w
    return float(resid @ resid) / m

  error.calls = calls
  return error


def teacher_states(traj) -> np.ndarray:
  """(K + 1, B * D) float64 teacher states by the DDIM recurrence in float64."""
  a, b = traj.step_coefficients()
  k = traj.num_teacher_steps
  x = np.asarray(traj.x_T, np.float64).reshape(-1)
  out = np.empty((k + 1, x.shape[0]), np.float64)
  out[0] = x
  e = np.asarray(traj.model_outputs).reshape(k, -1)
  for i in range(k):
    out[i + 1] = a[i] * out[i] + b[i] * e[i]
  return out


def run(num_images, sample_shape, num_teacher_steps, num_steps, *, num_bisection_steps=30,
        reference_walks=None, reference_sample=None, noise=0.002, seed=0, verbose=True):
  """Runs (b) then (a) on the same data; returns a dict of the measurements."""
  say = print if verbose else (lambda *a, **k: None)
  t0 = time.perf_counter()
  traj = synthetic.synthetic_trajectory(num_images, sample_shape, num_teacher_steps,
                                        noise=noise, seed=seed)
  k = num_teacher_steps
  e = traj.model_outputs.reshape(k, -1)
  corr = [float(np.corrcoef(e[i, :65536], e[i + 1, :65536])[0, 1]) for i in range(0, k - 1,
                                                                                    max(1, k // 50))]
  rows = e.shape[1]
  say(f"data: {num_images} images x {sample_shape} x {k} teacher steps = {rows} rows x {k + 1} "
      f"columns (float32 outputs {traj.model_outputs.nbytes / 2**30:.2f} GiB), generated in "
      f"{time.perf_counter() - t0:.1f} s; neighbouring outputs' correlation (sampled pairs) "
      f"min {min(corr):.4f}, median {float(np.median(corr)):.4f}")
  rss_data = peak_rss_gib()

  say(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other users "
      "share it; wall times scale with the load, CPU seconds much less)")
  # (b) olss_jax
  c0 = cpu_seconds()
  t0 = time.perf_counter()
  st = stats_lib.trajectory_stats(traj)
  t_stats = time.perf_counter() - t0
  path_b, info_b = search.search_path(st, num_steps, num_bisection_steps=num_bisection_steps,
                                      return_info=True)
  t_search = time.perf_counter() - t0 - t_stats
  schedule = fit.fit_weights(st, path_b)
  t_b = time.perf_counter() - t0
  cpu_b = cpu_seconds() - c0
  rss_b = peak_rss_gib()
  say(f"(b) olss_jax: {t_b:.2f} s wall, {cpu_b:.1f} CPU s (statistics {t_stats:.2f} s, search {t_search:.2f} s over "
      f"{info_b.num_walks} walks, fit {t_b - t_stats - t_search:.2f} s); peak RSS "
      f"{rss_b:.2f} GiB (after data: {rss_data:.2f} GiB)")
  say(f"    path {path_b.tolist()}  max step error {info_b.max_error:.6e}")

  # the reference control flow driven by (b)'s own oracle, for walk-by-walk comparison
  proj = search.ProjectionErrors(st)

  calls = []

  def fast_error(prefix, target):
    calls.append((tuple(int(p) for p in prefix), int(target)))
    q = proj.start()
    for p in prefix:
      q = proj.add(q, int(p) + 1)
    return proj.error(q, int(target))

  path_f, _, walks_f = reference_search(fast_error, k, num_steps,
                                        num_bisection_steps=num_bisection_steps)
  assert np.array_equal(path_f, path_b), (path_f, path_b)

  # (a) the paper's direct search
  t0 = time.perf_counter()
  states = teacher_states(traj)
  t_states = time.perf_counter() - t0
  say(f"(a) teacher states in float64 for the direct oracle: {t_states:.1f} s "
      f"({states.nbytes / 2**30:.2f} GiB; not counted in (a)'s time)")
  oracle = direct_error_fn(traj.x_T.reshape(-1), e, states)
  if reference_sample is not None:
    # Unbiased estimate of (a): the full search's calls are known from the same control flow
    # driven by (b)'s oracle; time the direct oracle on a uniform random sample of them.
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(calls), min(reference_sample, len(calls)), replace=False)
    c0, t0 = cpu_seconds(), time.perf_counter()
    rel = 0.0
    for j in pick:
      prefix, target = calls[j]
      want = fast_error(list(prefix), target)
      rel = max(rel, abs(oracle(list(prefix), target) - want) / want)
    t_s, cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
    t_a, cpu_a = t_s / len(pick) * len(calls), cpu_s / len(pick) * len(calls)
    say(f"(a) EXTRAPOLATED: timed {len(pick)} of the full search's {len(calls)} tall least "
        f"squares (uniform random sample) in {t_s:.1f} s wall ({cpu_s:.1f} CPU s); estimate "
        f"for all {len(calls)}: {t_a:.0f} s wall, {cpu_a:.0f} CPU s. Max relative difference "
        f"of the sampled errors (a) vs (b): {rel:.2e}")
    say(f"RATIO (a)/(b) = {t_a / t_b:.1f}x wall, {cpu_a / cpu_b:.1f}x CPU   [(a) EXTRAPOLATED "
        f"from a {len(pick)}-call sample, (b) measured]")
    say(f"peak RSS of the whole run (incl. (a)'s float64 states): {peak_rss_gib():.2f} GiB")
    return dict(t_b=t_b, cpu_b=cpu_b, t_a=t_a, cpu_a=cpu_a, calls=len(calls), finished=False,
                max_rel_error_diff=rel, path_b=path_b, rss_b=rss_b)
  walk_times, agree = [], []

  def log(i, bound, result, seconds):
    walk_times.append(seconds)
    other = walks_f[i - 1] if i - 1 < len(walks_f) else None
    same = other is not None and (
        (result is None and other[1] is None)
        or (result is not None and other[1] is not None
            and np.array_equal(result[0], other[1][0])))
    agree.append(same)
    say(f"    (a) walk {i}: bound {bound:.6e} -> "
        f"{'infeasible' if result is None else result[0].tolist()} in {seconds:.1f} s; "
        f"same as (b)'s walk: {same}", flush=True)

  c0 = cpu_seconds()
  t0 = time.perf_counter()
  finished = True
  try:
    path_a, errors_a, walks_a = reference_search(oracle, k, num_steps,
                                                 num_bisection_steps=num_bisection_steps,
                                                 max_walks=reference_walks, log=log)
  except _Stop:
    finished = False
  t_a_measured = time.perf_counter() - t0
  cpu_a = cpu_seconds() - c0
  out = dict(t_b=t_b, cpu_b=cpu_b, t_stats=t_stats, rss_b=rss_b, rss_data=rss_data, path_b=path_b,
             walks=info_b.num_walks, reference_calls=oracle.calls[0],
             walks_agree=all(agree), finished=finished, schedule=schedule)
  if finished:
    rel = np.max(np.abs(errors_a - info_b.step_errors) / errors_a)
    out.update(t_a=t_a_measured, path_a=path_a, paths_equal=bool(np.array_equal(path_a, path_b)),
               max_rel_error_diff=float(rel))
    say(f"(a) paper's direct search: {t_a_measured:.1f} s wall, {cpu_a:.1f} CPU s over {len(walks_a)} walks, "
        f"{oracle.calls[0]} tall least squares; path {path_a.tolist()}")
    say(f"paths equal: {out['paths_equal']}; max relative difference of the path's step "
        f"errors (a) vs (b): {rel:.2e}")
    say(f"RATIO (a)/(b) = {t_a_measured / t_b:.1f}x   [(a) {t_a_measured:.1f} s measured, "
        f"(b) {t_b:.2f} s measured]; CPU-seconds ratio {cpu_a / cpu_b:.1f}x")
  else:
    per_walk = t_a_measured / len(walk_times)
    t_a = per_walk * info_b.num_walks
    out.update(t_a=t_a, paths_equal=None)
    say(f"(a) EXTRAPOLATED: ran only its first {len(walk_times)} of {info_b.num_walks} walks "
        f"({oracle.calls[0]} tall least squares) in {t_a_measured:.1f} s wall ({cpu_a:.1f} CPU "
        f"s) = {per_walk:.1f} s per "
        f"walk; full search estimated as {per_walk:.1f} s x {info_b.num_walks} walks = "
        f"{t_a:.0f} s. The walks run agree with (b)'s: {all(agree)}")
    say(f"RATIO (a)/(b) = {t_a / t_b:.1f}x   [(a) EXTRAPOLATED from {len(walk_times)} walks, "
        f"(b) {t_b:.2f} s measured]; CPU-seconds ratio (same extrapolation) "
        f"{cpu_a / len(walk_times) * info_b.num_walks / cpu_b:.1f}x")
  say(f"load average at the end: {os.getloadavg()[0]:.1f}")
  say(f"peak RSS of the whole run (incl. (a)'s float64 states): {peak_rss_gib():.2f} GiB")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="tiny problem, runs in seconds")
  parser.add_argument("--images", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10, help="n, model calls of the sampler")
  parser.add_argument("--teacher-steps", type=int, default=1000)
  parser.add_argument("--reference-walks", type=int, default=None,
                      help="run only this many walks of (a) and extrapolate its time (biased "
                      "low: the first walks take big jumps and evaluate fewer candidates)")
  parser.add_argument("--reference-sample", type=int, default=None,
                      help="time (a) on this many randomly drawn calls of the full search "
                      "and extrapolate")
  args = parser.parse_args(argv)
  if args.small:
    return run(4, (4, 8, 8), 100, 5)
  return run(args.images, (4, 64, 64), args.teacher_steps, args.steps,
             reference_walks=args.reference_walks, reference_sample=args.reference_sample)


if __name__ == "__main__":
  main()
