"""The main job: the scheduler comparison on the embedded default model (`python -m olss_jax`)."""
from __future__ import annotations

import argparse
import sys
import time

from olss_jax._src import compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the demo's options to an argparse parser."""
  parser.add_argument("--model", choices=("analytic",), default="analytic",
                      help="the model to compare on (default: %(default)s)")
  parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20],
                      help="step counts to evaluate (default: 5 10 20)")
  parser.add_argument("--num-fit", type=int, default=32,
                      help="fitting noises for the teacher (default: %(default)s, the paper's)")
  parser.add_argument("--num-eval", type=int, default=256,
                      help="held-out evaluation noises (default: %(default)s)")
  parser.add_argument("--teacher-steps", type=int, default=1000,
                      help="teacher DDIM steps (default: %(default)s)")
  parser.add_argument("--methods", nargs="+", default=None,
                      help="methods to compare (default: every baseline, OLSS-P and OLSS)")
  parser.add_argument("--quiet", action="store_true", help="no progress messages")


def build_model(name: str) -> compare.ComparisonModel:
  """The comparison model for a ``--model`` choice."""
  if name == "analytic":
    return compare.analytic_comparison_model()
  raise ValueError(f"--model: unknown model {name!r}")


def main(args: argparse.Namespace) -> int:
  """Runs the comparison and prints markdown tables. Returns the exit code."""
  start = time.perf_counter()
  model = build_model(args.model)
  methods = compare.default_methods()
  if args.methods:
    unknown = sorted(set(args.methods) - set(methods))
    if unknown:
      raise ValueError(f"--methods: unknown {unknown}; choose from {sorted(methods)}")
    methods = {name: methods[name] for name in args.methods}
  progress = None if args.quiet else (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
  result = compare.run_comparison(model, steps=args.steps, num_fit=args.num_fit,
                                  num_eval=args.num_eval, num_teacher_steps=args.teacher_steps,
                                  methods=methods, progress=progress)
  info = result.info
  print(f"# OLSS comparison on {info['model']}")
  print(f"teacher: {info['num_teacher_steps']}-step DDIM; fit on {info['num_fit']} noises "
        f"(seed {info['fit_seed']}), evaluated on {info['num_eval']} held-out noises "
        f"(seed {info['eval_seed']})\n")
  print("RMSE of the final sample against the teacher's on the same noise "
        "(mean [95% interval]):\n")
  print(compare.format_markdown(result))
  print(f"\ntotal {time.perf_counter() - start:.1f} s")
  return 0


def run(argv=None) -> int:
  """Stand-alone entry: parses ``argv`` and runs `main`."""
  parser = argparse.ArgumentParser(prog="olss-jax demo", description=__doc__)
  add_arguments(parser)
  return main(parser.parse_args(argv))
