"""Many hosts: every fit on a batch-sharded trajectory across two `jax.distributed` processes.

Two local CPU processes (one device each, gloo collectives) join with
``jax.distributed.initialize`` and run the same program on the same global x_T; a third
process runs it alone (one device, nothing sharded). Each method must give every process the
same schedule (bit for bit: the small reductions are replicated) and the single process's
schedule up to rounding (the two teacher runs differ in float32 rounding only), and collect
-> fit -> sample -> save must work in each process.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import chex
import numpy as np
import pytest

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
# Two processes vs one: float32 teachers that differ in rounding (measured: weights 4.3e-7 of
# their largest, samples 3.8e-6 absolute); paths must be identical.
WEIGHTS_RTOL = 1e-5
WEIGHTS_ATOL = 1e-6
TIMES_RTOL = 1e-5
SAMPLE_ATOL = 5e-5
TIMEOUT_S = 600

# OLSS's methods through `fit_olss`; then refinement and the peers; then the fits trained
# end to end (their engine, `learned.train`: olss-e2e, BNS and, on a flow mixture, DS-Solver,
# each for 5 optimisation steps).
OLSS_METHODS = ("olss-p", "olss", "olss-p-cl", "olss-cl", "olss-ft")
OTHER_METHODS = ("refine", "tuned-dpm_solver_pp", "gits-dpm_solver_pp", "ld3-dpm_solver_pp")
LEARNED_METHODS = ("olss-e2e", "bns", "ds-solver")

_WORKER = r"""
import json, os, sys, time, traceback
pid, nproc, port, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
import jax
if nproc > 1:
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc,
                             process_id=pid)
import numpy as np
import olss_jax as oj
from olss_jax import peers

alphas = oj.scaled_linear_alphas_cumprod()
mixture = oj.analytic.make_gaussian_mixture(jax.random.key(0), 6, (16,), std=0.1)
den = oj.analytic.mixture_denoiser(mixture, alphas)
x_T = jax.random.normal(jax.random.key(1), (8, 16))      # the same global x_T everywhere
n = 4
traj = oj.collect_trajectory(den, x_T, alphas, 40)        # batch-sharded over all processes
flow_den = oj.analytic.flow_mixture_denoiser(mixture)
flow_traj = oj.collect_trajectory(flow_den, x_T, oj.flow_teacher(40))   # DS-Solver's kind


def build(timesteps):
  return oj.baseline_schedule("dpm_solver_pp", alphas, timesteps=np.asarray(timesteps))


fits = {
    "olss-p": lambda: oj.fit_olss(traj, n, method="olss-p"),
    "olss": lambda: oj.fit_olss(traj, n, method="olss"),
    "olss-p-cl": lambda: oj.fit_olss(traj, n, denoise_fn=den, method="olss-p-cl"),
    "olss-cl": lambda: oj.fit_olss(traj, n, denoise_fn=den, method="olss-cl"),
    "olss-ft": lambda: oj.fit_olss(traj, n, denoise_fn=den, max_evaluations=6),
    "refine": lambda: oj.fit_olss(traj, n, denoise_fn=den, method="olss-p", refine=True,
                                  refine_kwargs={"num_iters": 3}),
    "tuned-dpm_solver_pp": lambda: peers.tuned_schedule(traj, n, build, den, max_evaluations=6),
    "gits-dpm_solver_pp": lambda: peers.gits_schedule(traj, n, build),
    "ld3-dpm_solver_pp": lambda: peers.ld3_schedule(traj, n, den, alphas_cumprod=alphas,
                                                    num_iters=3)[0],
    "olss-e2e": lambda: oj.fit_olss(traj, n, denoise_fn=den, method="olss-e2e",
                                    e2e_kwargs={"num_iters": 5}),
    "bns": lambda: peers.bns_schedule(traj, n, den, alphas_cumprod=alphas, num_iters=5)[0],
    "ds-solver": lambda: peers.ds_solver_schedule(flow_traj, n, flow_den, num_iters=5)[0],
}
out = {"devices": len(jax.devices()), "local_devices": len(jax.local_devices()),
       "traj_shards": [list(s.data.shape) for s in traj.model_outputs.addressable_shards],
       "schedules": {}, "fit": {}, "errors": {}, "seconds": {}}
fitted = {}
for name in sys.argv[5].split(","):
  start = time.time()
  try:
    sched = fitted[name] = fits[name]()
    out["schedules"][name] = {"timesteps": np.asarray(sched.timesteps, np.float64).tolist(),
                              "weights": np.asarray(sched.weights, np.float64).tolist(),
                              "path": sched.metadata.get("path")}
    out["fit"][name] = [sched.metadata.get("fit"), sched.metadata.get("learn_iterations")]
  except Exception as error:  # reported, so that every method's failure shows at once
    traceback.print_exc()
    out["errors"][name] = repr(error)[:500]
  out["seconds"][name] = round(time.time() - start, 1)
if sys.argv[6] == "sample":
  sched = fitted["olss-ft"] if "olss-ft" in fitted else fits["olss-ft"]()
  y = oj.sample(den, sched, x_T)
  out["sample"] = oj.to_numpy(y).tolist()
  out["sample_shards"] = [list(s.data.shape) for s in y.addressable_shards]
  file = os.path.join(outdir, f"schedule{pid}-{nproc}.json")
  oj.save_schedule(file, sched)
  back = oj.load_schedule(file)
  out["saved"] = bool(np.array_equal(np.asarray(back.weights), np.asarray(sched.weights))
                      and np.array_equal(np.asarray(back.timesteps), np.asarray(sched.timesteps)))
print("RESULT" + json.dumps(out), flush=True)
"""


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return int(s.getsockname()[1])


def _own_cache(env: dict, name: str) -> dict:
  """The suite's compilation cache folder, one subfolder per process running side by side
  (conftest: JAX writes entries in place, so concurrent processes must not share a folder)."""
  if "JAX_COMPILATION_CACHE_DIR" not in env:
    return env
  return dict(env, JAX_COMPILATION_CACHE_DIR=os.path.join(env["JAX_COMPILATION_CACHE_DIR"],
                                                          f"multihost-{name}"))


def _run_all(tmp_path, methods, what: str):
  """Two processes joined by `jax.distributed` and one alone, run at the same time."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device each
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  port = str(_free_port())
  runs = [("0", "2"), ("1", "2"), ("0", "1")]
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, pid, nproc, port, str(tmp_path),
                             ",".join(methods), what], env=_own_cache(env, f"{pid}-of-{nproc}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for pid, nproc in runs]
  results = []
  try:
    for proc in procs:
      stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
      lines = [l for l in stdout.splitlines() if l.startswith("RESULT")]
      assert proc.returncode == 0 and lines, stderr[-4000:]
      results.append(json.loads(lines[0][len("RESULT"):]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  return results


def _check_schedules(results, methods):
  """Each process holds the same schedules, bit for bit, and the single process's, up to rounding.

  Returns:
    The largest relative weight difference to the single process (for the record).
  """
  first, second, alone = results
  assert first["devices"] == 2 and first["local_devices"] == 1, first
  assert alone["devices"] == 1, alone
  assert first["traj_shards"] == [[40, 4, 16]], first       # each process: its 4 noises
  for result in results:
    assert not result["errors"], result["errors"]
  worst = 0.0
  for name in methods:
    one, two, ref = (r["schedules"][name] for r in results)
    chex.assert_trees_all_equal(one, two)
    assert one["path"] == ref["path"], name
    chex.assert_trees_all_close(np.asarray(one["timesteps"]), np.asarray(ref["timesteps"]),
                                rtol=TIMES_RTOL, custom_message=name)
    w, w_ref = np.asarray(one["weights"]), np.asarray(ref["weights"])
    chex.assert_trees_all_close(w, w_ref, rtol=WEIGHTS_RTOL, atol=WEIGHTS_ATOL,
                                custom_message=name)
    worst = max(worst, float(np.max(np.abs(w - w_ref)) / np.max(np.abs(w_ref))))
  print("seconds (two processes):", first["seconds"], "alone:", alone["seconds"],
        f"max relative weight difference {worst:.2e}")
  return worst


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """One launch of the three processes for every method (each launch imports the library and
  compiles the teacher anew: one launch instead of two saves a third of the file's time)."""
  return _run_all(tmp_path_factory.mktemp("multihost"),
                  OLSS_METHODS + OTHER_METHODS + LEARNED_METHODS, "sample")


def test_olss_fits_sample_and_save_across_two_processes(results):
  _check_schedules(results, OLSS_METHODS)
  first, second, alone = results
  # collect -> fit -> sample -> save in each process; `to_numpy` gathers the whole sample.
  for result in (first, second):
    assert result["sample_shards"] == [[4, 16]], result["sample_shards"]
    assert result["saved"]
  chex.assert_trees_all_equal(np.asarray(first["sample"]), np.asarray(second["sample"]))
  chex.assert_shape(np.asarray(first["sample"]), (8, 16))
  chex.assert_trees_all_close(np.asarray(first["sample"]), np.asarray(alone["sample"]),
                              atol=SAMPLE_ATOL)
  print("max sample difference to one process:",
        float(np.max(np.abs(np.asarray(first["sample"]) - np.asarray(alone["sample"])))))
  assert alone["saved"]


def test_refine_and_peers_across_two_processes(results):
  _check_schedules(results, OTHER_METHODS)


def test_fits_trained_end_to_end_across_two_processes(results):
  """Each trained in every process (5 steps per learning rate; BNS and DS-Solver moved from
  their starts: trained weights compared)."""
  _check_schedules(results, LEARNED_METHODS)
  for result in results:
    (_, e2e_iterations), (bns_fit, bns_iterations), (ds_fit, ds_iterations) = (
        result["fit"][m] for m in LEARNED_METHODS)
    assert e2e_iterations > 0 and bns_fit == "end_to_end" and bns_iterations > 0, result["fit"]
    assert ds_fit == "end_to_end" and ds_iterations > 0, result["fit"]
