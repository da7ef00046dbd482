"""Path search + fit at Stable Diffusion's size: the published code's cost vs olss_jax's, one run.

On one synthetic trajectory with a real teacher's correlations (`olss_jax.testing.
synthetic_trajectory`: 32 images of 4x64x64 latents, 1000 teacher steps, neighbouring outputs
correlated > 0.99), it measures side by side:

  (b)  olss_jax, pure JAX: `trajectory_stats` (the float64 Gram, a jitted symmetric product in
       XLA over blocks of rows), `search_path(stats, n)` and `fit_weights(stats, path)`;
  (a)  the published reference code's search and fit (alibaba/EasyNLP olss.py, re-implemented
       here to cost what it costs): the teacher's states x and outputs e held as float32
       tensors; every candidate of Algorithm 1 builds its basis [x_current, e_path...] and
       target, casts them to float64 and solves `torch.linalg.lstsq` (gelsy on the CPU),
       predicts and takes the MSE; Algorithm 3 bisects D on [0, 10] 30 times; then the n fits.
       It runs in a child process (torch with as many threads as this machine has cores) so
       its CPU seconds and peak RSS are its own.
  (a') the same torch oracle driven by `search_path`'s control flow (reference_search) with the
       paper's Eq. 12 basis [x_T, e_path...]: it must give (b)'s path and step errors to 1e-6
       relative (`--verify`, on by default; also in the child).

It prints wall seconds, CPU seconds and peak RSS of each, and the ratio (a)/(b).

  python -m olss_jax.benchmarks.search_benchmark           # full size (a few minutes)
  python -m olss_jax.benchmarks.search_benchmark --small   # seconds; run by the tests
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def cpu_seconds(children: bool = False) -> float:
  """User + system CPU time of this process (or of its finished children) so far."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def peak_rss_gib() -> float:
  """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reference_search(error_fn, num_teacher_steps: int, num_steps: int, *,
                     num_bisection_steps: int = 30, log=None):
  """`search_path`'s control flow (Algorithms 1-3 with its changes), plainly, on any oracle.

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
  The path of the final upper bound is then fitted: its step errors are more solves.

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


def torch_oracle(x_path, e_path, *, published_basis: bool):
  """The published code's candidate error: a float64 `torch.linalg.lstsq` per call.

  Args:
    x_path: (K + 1, N) torch tensor of the teacher's states (float32 as the code stores them;
      float64 exact states to check step errors).
    e_path: (K, N) float32 torch tensor of the model outputs.
    published_basis: True: the reference code's basis [x at the current node, e_path...]
      (its search); False: the paper's Eq. 12 basis [x_T, e_path...].

  Returns:
    ``error(prefix list[int], target int) -> float`` counting its calls in ``error.calls``.
  """
  import torch  # pylint: disable=import-outside-toplevel

  calls = [0]

  def error(prefix, target):
    calls[0] += 1
    first = x_path[prefix[-1]:prefix[-1] + 1] if published_basis else x_path[0:1]
    xe = torch.concat([first.to(e_path.dtype), e_path[list(prefix)]], dim=0)  # (1 + len, N)
    x = x_path[target]
    coef = torch.linalg.lstsq(xe.T.to(torch.float64), x.to(torch.float64)).solution
    pred = torch.matmul(coef.unsqueeze(0), xe.to(torch.float64)).squeeze(0)
    return float(torch.nn.functional.mse_loss(pred, x.to(torch.float64)))

  error.calls = calls
  return error


def run_reference(data_path: str, num_steps: int, num_bisection_steps: int, verify: bool):
  """(a) and (a') on the saved data, in this process; returns their measurements."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count() or 1)
  data = np.load(data_path)
  x_path = torch.from_numpy(data["states"])         # (K + 1, N) float32, as the code stores
  e_path = torch.from_numpy(data["outputs"])        # (K, N) float32
  k = e_path.shape[0]
  out = {}
  oracle = torch_oracle(x_path, e_path, published_basis=True)
  c0, t0 = cpu_seconds(), time.perf_counter()
  path, errors, walks = paper_search(oracle, k, num_steps,
                                     num_bisection_steps=num_bisection_steps)
  fit_oracle = torch_oracle(x_path, e_path, published_basis=False)  # its fit uses x_T
  fit_errors = [fit_oracle(list(path[:i + 1]), int(t))
                for i, t in enumerate(list(path[1:]) + [k])]
  out["a"] = dict(wall=time.perf_counter() - t0, cpu=cpu_seconds() - c0,
                  calls=oracle.calls[0] + fit_oracle.calls[0], walks=walks,
                  path=path.tolist(), errors=[float(e) for e in fit_errors])
  if verify:
    # The exact float64 teacher states (the paper's targets; the code above keeps float32).
    a_k, b_k = data["step_a"], data["step_b"]
    states64 = np.empty((k + 1, e_path.shape[1]), np.float64)
    states64[0] = data["states"][0]
    for i in range(k):
      states64[i + 1] = a_k[i] * states64[i] + b_k[i] * data["outputs"][i]
    oracle = torch_oracle(torch.from_numpy(states64), e_path, published_basis=False)
    c0, t0 = cpu_seconds(), time.perf_counter()
    path, errors, walks = reference_search(oracle, k, num_steps,
                                           num_bisection_steps=num_bisection_steps)
    out["a_ours"] = dict(wall=time.perf_counter() - t0, cpu=cpu_seconds() - c0,
                         calls=oracle.calls[0], walks=len(walks), path=path.tolist(),
                         errors=[float(e) for e in errors])
  out["rss"] = peak_rss_gib()
  return out


def run(num_images, sample_shape, num_teacher_steps, num_steps, *, num_bisection_steps=30,
        noise=0.002, seed=0, verify=True, verbose=True):
  """Runs (b) here and (a), (a') in a child process on the same data; returns the figures."""
  import jax  # pylint: disable=import-outside-toplevel
  # Not at the top: the torch child process runs this file as a script and must not load JAX.
  import olss_jax as oj  # pylint: disable=import-outside-toplevel

  say = print if verbose else (lambda *a, **k: None)
  t0 = time.perf_counter()
  traj = oj.testing.synthetic_trajectory(num_images, sample_shape, num_teacher_steps,
                                         noise=noise, seed=seed)
  k, n = num_teacher_steps, num_steps
  e = traj.model_outputs.reshape(k, -1)
  corr = [float(np.corrcoef(e[i, :65536], e[i + 1, :65536])[0, 1])
          for i in range(0, k - 1, max(1, k // 50))]
  say(f"data: {num_images} images x {sample_shape} x {k} teacher steps = {e.shape[1]} rows x "
      f"{k + 1} columns (float32 outputs {traj.model_outputs.nbytes / 2**30:.2f} GiB), generated "
      f"in {time.perf_counter() - t0:.1f} s; neighbouring outputs' correlation (sampled pairs) "
      f"min {min(corr):.4f}, median {float(np.median(corr)):.4f}")
  say(f"machine: {os.cpu_count()} CPUs, JAX {jax.__version__} on {jax.default_backend()}, load "
      f"average {os.getloadavg()[0]:.1f} (other users may share it)", flush=True)
  rss_data = peak_rss_gib()

  # (b) olss_jax, cold (compilation included, as a user's first call)
  c0 = cpu_seconds()
  t0 = time.perf_counter()
  st = oj.trajectory_stats(traj)
  jax.block_until_ready(st.factor)
  t_stats = time.perf_counter() - t0
  t0 = time.perf_counter()
  path_b, info_b = oj.search_path(st, n, num_bisection_steps=num_bisection_steps)
  t_search = time.perf_counter() - t0
  t0 = time.perf_counter()
  schedule, fit_info = oj.fit_weights(st, path_b)
  t_fit = time.perf_counter() - t0
  t_b, cpu_b = t_stats + t_search + t_fit, cpu_seconds() - c0
  rss_b = peak_rss_gib()
  say(f"(b) olss_jax: {t_b:.2f} s wall, {cpu_b:.1f} CPU s (statistics {t_stats:.2f} s, search "
      f"{t_search:.2f} s over {int(info_b.num_walks)} walks, fit {t_fit:.2f} s); peak RSS "
      f"{rss_b:.2f} GiB ({rss_data:.2f} GiB of it the data)")
  say(f"    path {path_b.tolist()}  max step error {float(info_b.max_error):.6e}", flush=True)

  # (a), (a') in a child: the teacher's states and outputs as the published code holds them
  states = np.asarray(traj.states, np.float32).reshape(k + 1, -1)
  with tempfile.TemporaryDirectory() as tmp:
    data_path = os.path.join(tmp, "teacher.npz")
    a_k, b_k = (np.asarray(c) for c in traj.step_coefficients())
    np.savez(data_path, states=states, outputs=e, step_a=a_k, step_b=b_k)
    del states
    c_children = cpu_seconds(children=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__),  # no JAX in the child
                           "--reference", data_path, "--steps", str(n), "--bisection",
                           str(num_bisection_steps)] + ([] if verify else ["--no-verify"]),
                          capture_output=True, text=True, check=False)
    child_wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise RuntimeError(f"reference run failed: {proc.stderr[-3000:]}")
  ref = json.loads(proc.stdout.strip().splitlines()[-1])
  a = ref["a"]
  say(f"(a) the published code's search and fit (torch.linalg.lstsq float64 per candidate, "
      f"{os.cpu_count()} threads): {a['wall']:.1f} s wall, {a['cpu']:.1f} CPU s, "
      f"{a['calls']} tall least squares; path {a['path']}; child peak RSS {ref['rss']:.2f} GiB "
      f"(the states and outputs it holds: {2 * e.nbytes / 2**30:.2f} GiB)")
  out = dict(t_b=t_b, cpu_b=cpu_b, t_stats=t_stats, t_search=t_search, t_fit=t_fit, rss_b=rss_b,
             rss_data=rss_data, path_b=path_b, walks=int(info_b.num_walks), schedule=schedule,
             t_a=a["wall"], cpu_a=a["cpu"], calls_a=a["calls"], path_a=a["path"],
             rss_a=ref["rss"], child_wall=child_wall,
             child_cpu=cpu_seconds(children=True) - c_children)
  if verify:
    ao = ref["a_ours"]
    rel = float(np.max(np.abs(np.asarray(ao["errors"]) - np.asarray(fit_info.step_errors))
                       / np.asarray(ao["errors"])))
    out.update(paths_equal=ao["path"] == path_b.tolist(), max_rel_error_diff=rel,
               t_a_ours=ao["wall"], calls_a_ours=ao["calls"])
    say(f"(a') the torch oracle in search_path's control flow: {ao['wall']:.1f} s wall, "
        f"{ao['calls']} tall least squares; path equal to (b)'s: {out['paths_equal']}; max "
        f"relative difference of the step errors {rel:.2e}")
  say(f"RATIO (a)/(b) = {a['wall'] / t_b:.1f}x wall, {a['cpu'] / cpu_b:.1f}x CPU   "
      f"[(a) {a['wall']:.1f} s, (b) {t_b:.2f} s, both measured in this run]")
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="tiny problem, runs in seconds")
  parser.add_argument("--images", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10, help="n, model calls of the sampler")
  parser.add_argument("--teacher-steps", type=int, default=1000)
  parser.add_argument("--bisection", type=int, default=30, help="bisection rounds")
  parser.add_argument("--no-verify", action="store_true", help="skip (a')")
  parser.add_argument("--reference", default=None, help=argparse.SUPPRESS)  # the child's mode
  args = parser.parse_args(argv)
  if args.reference:
    print(json.dumps(run_reference(args.reference, args.steps, args.bisection,
                                   not args.no_verify)))
    return None
  if args.small:
    return run(4, (4, 8, 8), 100, 5, verify=not args.no_verify)
  return run(args.images, (4, 64, 64), args.teacher_steps, args.steps,
             num_bisection_steps=args.bisection, verify=not args.no_verify)


if __name__ == "__main__":
  main()
