"""Path search + fit at Stable Diffusion's size: the paper's direct search vs olss_jax's.

On one synthetic trajectory with a real teacher's correlations (`olss_jax._src.synthetic`:
32 images of 4x64x64 latents, 1000 teacher steps, neighbouring outputs correlated > 0.99),
it runs side by side, each timed on the same data in the same process:

  (b)  olss_jax: `trajectory_stats` (float64 Gram by BLAS syrk, streamed over images), then
       `search_path(stats, n)` and `fit_weights(stats, path)`;
  (a)  the paper's search as published (Algorithms 1-3 with the reference implementation's
       choices: bound D bisected 30 times on [0, 10], Algorithm 1's binary search over all
       remaining teacher steps, the path of the final upper bound, then its n fits), every
       candidate step error its own tall float64 least squares over all B * D rows (LAPACK
       gelsy, the reference code's torch.linalg.lstsq driver);
  (a') the same per-candidate least squares driven by `search_path`'s own control flow
       (bracket from an always-feasible walk, jump caps, best-of-feasible, uniform fallback):
       it must give (b)'s path and step errors (to 1e-6 relative), walk by walk.

It reports wall and CPU times, the ratios, peak RSS, and whether the paths agree.

  python -m olss_jax.benchmarks.search_benchmark            # full size, all measured (~5 min)
  python -m olss_jax.benchmarks.search_benchmark --small    # seconds; run by tests/test_stats.py
  python -m olss_jax.benchmarks.search_benchmark --reference-sample 200   # (a) and (a') timed
                       # on 200 of their tall least squares drawn at random from the calls
                       # their full searches make; totals EXTRAPOLATED (the output says so)
"""
from __future__ import annotations

import argparse
import math
import os
import resource
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


def reference_search(error_fn, num_teacher_steps: int, num_steps: int, *,
                     num_bisection_steps: int = 30, log=None):
  """`search_path`'s control flow (Algorithms 1-3 with its changes) on any error oracle.

  Args:
    error_fn: ``(path_prefix list[int], target int) -> float``, the per-element MSE of
      projecting teacher state ``target`` on [x_T, e_{prefix}...].
    num_teacher_steps: K.
    num_steps: n.
    num_bisection_steps: bisection rounds.
    log: called with (walk_index, bound, result, seconds) after each walk.

  Returns:
    (path (n,) int32, step errors (n,), walks): the same control flow as `search_path`.
  """
  k, n = num_teacher_steps, num_steps
  walks = []

  def walk(bound):
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


def paper_search(error_fn, num_teacher_steps: int, num_steps: int, *,
                 num_bisection_steps: int = 30, bound_max: float = 10.0):
  """Algorithms 1-3 as published, with the reference implementation's concrete choices.

  Algorithm 3 bisects D on [0, ``bound_max``] a fixed ``num_bisection_steps`` times; for each
  D, Algorithm 2 walks greedily from step 0, Algorithm 1 binary-searching the farthest next
  teacher state (one past the current at least, the farthest the final state K) whose step
  error is <= D; a walk that reaches K within n calls is feasible (its path may be shorter).
  The path of the final upper bound is then fitted: its n step errors are n more solves.

  Returns:
    (path (n',) int32 with n' <= n, step errors (n',), number of walks).
  """
  k, n = num_teacher_steps, num_steps

  def walk(bound):
    path = [0]
    for _ in range(n):
      lo, hi = path[-1] + 1, k
      while hi > lo:
        mid = (lo + hi + 1) // 2
        if error_fn(path, mid) > bound:
          hi = mid - 1
        else:
          lo = mid
      if lo == k:
        return path
      path.append(lo)
    return None

  lo, hi = 0.0, bound_max
  for _ in range(num_bisection_steps):
    mid = 0.5 * (lo + hi)
    if walk(mid) is None:
      lo = mid
    else:
      hi = mid
  path = walk(hi)
  if path is None:
    raise RuntimeError(f"paper_search: no feasible path under the bound {bound_max}")
  targets = path[1:] + [k]
  errors = np.asarray([error_fn(path[:i + 1], t) for i, t in enumerate(targets)])
  return np.asarray(path, np.int32), errors, num_bisection_steps + 1


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


def _time(fn):
  """(result, wall seconds, CPU seconds) of ``fn()``."""
  c0, t0 = cpu_seconds(), time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0, cpu_seconds() - c0


def run(num_images, sample_shape, num_teacher_steps, num_steps, *, num_bisection_steps=30,
        reference_sample=None, noise=0.002, seed=0, verbose=True):
  """Runs (b), then (a) and (a') on the same data; returns a dict of the measurements."""
  say = print if verbose else (lambda *a, **k: None)
  t0 = time.perf_counter()
  traj = synthetic.synthetic_trajectory(num_images, sample_shape, num_teacher_steps,
                                        noise=noise, seed=seed)
  k, n = num_teacher_steps, num_steps
  e = traj.model_outputs.reshape(k, -1)
  corr = [float(np.corrcoef(e[i, :65536], e[i + 1, :65536])[0, 1])
          for i in range(0, k - 1, max(1, k // 50))]
  say(f"data: {num_images} images x {sample_shape} x {k} teacher steps = {e.shape[1]} rows x "
      f"{k + 1} columns (float32 outputs {traj.model_outputs.nbytes / 2**30:.2f} GiB), generated "
      f"in {time.perf_counter() - t0:.1f} s; neighbouring outputs' correlation (sampled pairs) "
      f"min {min(corr):.4f}, median {float(np.median(corr)):.4f}")
  rss_data = peak_rss_gib()
  say(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other users "
      "may share it; wall times scale with the load, CPU seconds much less)", flush=True)

  # (b) olss_jax, cold (compilation included, as a user's first call)
  c0 = cpu_seconds()
  st, t_stats, _ = _time(lambda: stats_lib.trajectory_stats(traj))
  (path_b, info_b), t_search, _ = _time(lambda: search.search_path(
      st, n, num_bisection_steps=num_bisection_steps, return_info=True))
  schedule, t_fit, _ = _time(lambda: fit.fit_weights(st, path_b))
  t_b, cpu_b = t_stats + t_search + t_fit, cpu_seconds() - c0
  rss_b = peak_rss_gib()
  say(f"(b) olss_jax: {t_b:.2f} s wall, {cpu_b:.1f} CPU s (statistics {t_stats:.2f} s, search "
      f"{t_search:.2f} s over {info_b.num_walks} walks, fit {t_fit:.2f} s); peak RSS "
      f"{rss_b:.2f} GiB (after data: {rss_data:.2f} GiB)")
  say(f"    path {path_b.tolist()}  max step error {info_b.max_error:.6e}")

  # The calls each control flow makes, from (b)'s own (exact, fast) oracle.
  proj = search.ProjectionErrors(st)
  calls = []

  def fast_error(prefix, target):
    calls.append((tuple(int(p) for p in prefix), int(target)))
    q = proj.start()
    for p in prefix:
      q = proj.add(q, int(p) + 1)
    return proj.error(q, int(target))

  path_f, _, walks_f = reference_search(fast_error, k, n, num_bisection_steps=num_bisection_steps)
  assert np.array_equal(path_f, path_b), (path_f, path_b)
  calls_ours = list(calls)
  calls.clear()
  path_pf, errors_pf, _ = paper_search(fast_error, k, n, num_bisection_steps=num_bisection_steps)
  calls_paper = list(calls)
  say(f"the paper's search (same oracle as (b)) makes {len(calls_paper)} least-squares calls "
      f"and finds {path_pf.tolist()} (max step error {np.max(errors_pf):.6e}); search_path's "
      f"control flow makes {len(calls_ours)}")

  t0 = time.perf_counter()
  states = teacher_states(traj)
  say(f"teacher states in float64 for the direct oracle: {time.perf_counter() - t0:.1f} s "
      f"({states.nbytes / 2**30:.2f} GiB; the reference code stores them; not counted)",
      flush=True)
  oracle = direct_error_fn(traj.x_T.reshape(-1), e, states)
  out = dict(t_b=t_b, cpu_b=cpu_b, t_stats=t_stats, rss_b=rss_b, rss_data=rss_data,
             path_b=path_b, walks=info_b.num_walks, schedule=schedule,
             calls_paper=len(calls_paper), calls_ours=len(calls_ours))

  if reference_sample is not None:
    rng = np.random.default_rng(seed)
    for name, pool in (("(a)", calls_paper), ("(a')", calls_ours)):
      pick = rng.choice(len(pool), min(reference_sample, len(pool)), replace=False)
      rel = 0.0

      def timed_calls():
        return [oracle(list(pool[j][0]), pool[j][1]) for j in pick]

      got, t_s, cpu_s = _time(timed_calls)
      for j, value in zip(pick, got):
        want = fast_error(list(pool[j][0]), pool[j][1])
        rel = max(rel, abs(value - want) / want)
      t_a, cpu_a = t_s / len(pick) * len(pool), cpu_s / len(pick) * len(pool)
      say(f"{name} EXTRAPOLATED: timed {len(pick)} of its {len(pool)} tall least squares (uniform "
          f"random sample) in {t_s:.1f} s wall ({cpu_s:.1f} CPU s); estimate for all: "
          f"{t_a:.0f} s wall, {cpu_a:.0f} CPU s; max relative difference to (b)'s errors "
          f"{rel:.2e}")
      say(f"RATIO {name}/(b) = {t_a / t_b:.1f}x wall, {cpu_a / cpu_b:.1f}x CPU   [{name} "
          f"EXTRAPOLATED from a {len(pick)}-call sample, (b) measured]")
      key = "a" if name == "(a)" else "a_ours"
      out.update({f"t_{key}": t_a, f"cpu_{key}": cpu_a, f"rel_{key}": rel})
    out["finished"] = False
    say(f"peak RSS of the whole run (incl. the float64 states): {peak_rss_gib():.2f} GiB")
    return out

  # (a) the paper's search, measured
  (path_a, errors_a, walks_a), t_a, cpu_a = _time(
      lambda: paper_search(oracle, k, n, num_bisection_steps=num_bisection_steps))
  calls_a = oracle.calls[0]
  say(f"(a) paper's direct search: {t_a:.1f} s wall, {cpu_a:.1f} CPU s over {walks_a} walks, "
      f"{calls_a} tall least squares; path {path_a.tolist()} (max step error "
      f"{np.max(errors_a):.6e}); same path as with (b)'s oracle: "
      f"{np.array_equal(path_a, path_pf)}", flush=True)

  # (a') the same oracle in search_path's control flow, walk by walk against (b)'s
  agree = []

  def log(i, bound, result, seconds):
    other = walks_f[i - 1] if i - 1 < len(walks_f) else None
    same = other is not None and (
        (result is None and other[1] is None)
        or (result is not None and other[1] is not None
            and np.array_equal(result[0], other[1][0])))
    agree.append(same)

  oracle.calls[0] = 0
  (path_o, errors_o, walks_o), t_o, cpu_o = _time(lambda: reference_search(
      oracle, k, n, num_bisection_steps=num_bisection_steps, log=log))
  rel = float(np.max(np.abs(errors_o - info_b.step_errors) / errors_o))
  out.update(finished=True, t_a=t_a, cpu_a=cpu_a, path_a=path_a, t_a_ours=t_o, cpu_a_ours=cpu_o,
             paths_equal=bool(np.array_equal(path_o, path_b)), walks_agree=all(agree),
             max_rel_error_diff=rel)
  say(f"(a') direct oracle in search_path's control flow: {t_o:.1f} s wall, {cpu_o:.1f} CPU s "
      f"over {len(walks_o)} walks, {oracle.calls[0]} tall least squares; path "
      f"{path_o.tolist()}")
  say(f"(a') vs (b): paths equal {out['paths_equal']}, every walk equal {all(agree)}, max "
      f"relative difference of the path's step errors {rel:.2e}")
  say(f"RATIO (a)/(b) = {t_a / t_b:.1f}x wall, {cpu_a / cpu_b:.1f}x CPU   "
      f"[(a) {t_a:.1f} s, (b) {t_b:.2f} s, both measured]")
  say(f"RATIO (a')/(b) = {t_o / t_b:.1f}x wall, {cpu_o / cpu_b:.1f}x CPU   "
      f"[(a') {t_o:.1f} s, (b) {t_b:.2f} s, both measured]")
  say(f"load average at the end: {os.getloadavg()[0]:.1f}; peak RSS of the whole run (incl. "
      f"the float64 states): {peak_rss_gib():.2f} GiB")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="tiny problem, runs in seconds")
  parser.add_argument("--images", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10, help="n, model calls of the sampler")
  parser.add_argument("--teacher-steps", type=int, default=1000)
  parser.add_argument("--reference-sample", type=int, default=None,
                      help="time (a) and (a') on this many randomly drawn calls of their full "
                      "searches and extrapolate (default: run them in full)")
  args = parser.parse_args(argv)
  if args.small:
    return run(4, (4, 8, 8), 100, 5)
  return run(args.images, (4, 64, 64), args.teacher_steps, args.steps,
             reference_sample=args.reference_sample)


if __name__ == "__main__":
  main()
