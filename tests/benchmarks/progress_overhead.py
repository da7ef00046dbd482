"""What the teacher's progress bar costs: chunked collection with a tqdm bar vs one jitted scan.

A developer script, run from a clone (not shipped in the wheel): it measures the CLI's private
progress bar (``olss_jax._src.progress``).

The CLI collects the teacher (1000 model calls) in jitted chunks of ``--steps-per-chunk``
steps and advances a tqdm bar between chunks. This times, on the embedded default model
(digits if installed, else the analytic mixture), after a warm-up run that compiles:

  single scan     all K steps in one jitted `lax.scan` (``steps_per_chunk=K``), no callback
  chunks          ``steps_per_chunk=c`` chunks, no callback
  chunks + bar    ``steps_per_chunk=c`` chunks, a tqdm bar advanced by the callback

and reports the overhead of the bar against the single scan (the issue's bound: < 5%).

Usage:
  python tests/benchmarks/progress_overhead.py                  # K = 1000, B = 32, c = 50
  python tests/benchmarks/progress_overhead.py --model digits-random   # before the weights ship
  python tests/benchmarks/progress_overhead.py --model analytic --batch 8 --repeats 3
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import jax

import olss_jax as oj
from olss_jax._src import progress  # the CLI's bar: private, what this script measures
from olss_jax._src.digits.model import UNET_CONFIG, init_params  # random weights: private


def _digits_random():
  """The digits model's architecture with random weights (timing does not need trained ones)."""
  net = oj.digits.DigitsModel(params=init_params(jax.random.key(0)),
                              config={"unet": dict(UNET_CONFIG)})
  return oj.compare.ComparisonModel(
      name="digits-unet-architecture (random weights)", alphas_cumprod=net.alphas_cumprod,
      sample_shape=tuple(net.sample_shape),
      denoiser=lambda labels: net.denoiser(labels, guidance_scale=2.0),
      draw_conditions=lambda seed, n: jax.numpy.arange(n) % 10)


def _time(fn, repeats: int) -> list[float]:
  fn()  # warm-up: compiles
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t0)
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="default",
                      help="default, digits, analytic, or digits-random (the digits UNet "
                           "with random weights)")
  parser.add_argument("--teacher-steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=32, help="starting noises")
  parser.add_argument("--steps-per-chunk", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  model = _digits_random() if args.model == "digits-random" else oj.compare.embedded_model(args.model)
  x_T = jax.random.normal(jax.random.key(0), (args.batch,) + tuple(model.sample_shape))
  denoise = model.denoiser(model.draw_conditions(0, args.batch))
  k = args.teacher_steps

  def single():
    traj = oj.collect_trajectory(denoise, x_T, model.alphas_cumprod, k, steps_per_chunk=k)
    jax.block_until_ready(traj.model_outputs)

  def chunks():
    oj.collect_trajectory(denoise, x_T, model.alphas_cumprod, k,
                          steps_per_chunk=args.steps_per_chunk)

  sink = io.StringIO()  # a real tqdm bar, rendering into a buffer instead of the terminal

  def chunks_bar():
    with progress.progress_bar(k, "teacher", unit="step", file=sink) as bar:  # the CLI's bar
      oj.collect_trajectory(denoise, x_T, model.alphas_cumprod, k,
                            steps_per_chunk=args.steps_per_chunk,
                            callback=lambda done, _: bar.update(done - bar.n))

  results = {}
  for name, fn in (("single scan", single), ("chunks", chunks), ("chunks + bar", chunks_bar)):
    results[name] = _time(fn, args.repeats)
  base = statistics.median(results["single scan"])
  print(f"model {model.name}, K = {k} teacher steps, B = {args.batch} noises, "
        f"steps_per_chunk = {args.steps_per_chunk}, {args.repeats} repeats (median, min), "
        f"{jax.devices()[0].platform}")
  print("| variant | median s | min s | vs single scan |")
  print("|---|---|---|---|")
  for name, times in results.items():
    med = statistics.median(times)
    print(f"| {name} | {med:.3f} | {min(times):.3f} | {100 * (med / base - 1):+.1f}% |")
  bar_cost = statistics.median(results["chunks + bar"]) / base - 1
  print(f"\nprogress bar overhead vs the single scan: {100 * bar_cost:+.1f}% "
        f"({'under' if bar_cost < 0.05 else 'OVER'} the 5% bound)")
  return {name: statistics.median(t) for name, t in results.items()}


if __name__ == "__main__":
  main()
