"""The ``olss-jax`` command line: collect a teacher, fit a schedule, sample, compare, plot.

Subcommands (``olss-jax <command> --help`` for each):

  demo      the scheduler comparison on the embedded model (the default command)
  collect   teacher trajectories (paper Sec. 3.3) into a resumable directory
  fit       trajectories -> schedule file (`olss_jax.fit_olss`, methods `olss_jax.METHODS`)
  sample    schedule + model -> PNG (or JPEG) images
  compare   a schedule against the classical schedulers, held-out RMSE table
  figures   the paper's figures (2, 4, 5, 6 and the weight heat map) as PNGs

Errors are one line on stderr (``olss-jax: error: ...``) with exit status 1; a bad option
exits with status 2 (argparse); success is 0.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

import olss_jax as oj
from olss_jax.cli import _commands as commands

PROG = "olss-jax"
COMMANDS = ("demo", "collect", "fit", "sample", "compare", "figures")
FIGURES = commands.FIGURES
_METHODS = oj.METHODS                       # the library's one method vocabulary
_EMBEDDED = oj.compare.EMBEDDED_MODELS      # the shipped models, by name


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
  """Keeps the examples' line breaks and shows defaults."""


def _model_options(parser, *, prompts: bool = True) -> None:
  group = parser.add_argument_group("model")
  group.add_argument("--model", default="default", metavar="NAME_OR_DIR",
                     help="'default' (digits if installed, else analytic), 'digits', "
                          "'digits-flow', 'mnist', 'analytic', 'analytic-flow', 'analytic-latent', or a "
                          "local Flax Stable Diffusion directory")
  group.add_argument("--guidance-scale", type=float, default=None,
                     help="classifier-free guidance (digits: its default; Stable Diffusion: 7.0, "
                          "or the schedule's)")
  if prompts:
    group.add_argument("--prompts", metavar="FILE", default=None,
                       help="Stable Diffusion: a text file, one prompt a line")


def _demo_arguments(parser) -> None:
  parser.add_argument("--model", choices=_EMBEDDED, default="default",
                      help="embedded model: the trained digits UNet (default), the digits "
                           "rectified-flow UNet, or an analytic Gaussian mixture (VP, flow, or "
                           "at Stable Diffusion's latent size)")
  parser.add_argument("--guidance-scale", type=float, default=None,
                      help="classifier-free guidance of the digits model (its default if unset)")
  parser.add_argument("--full", action="store_true",
                      help="the complete comparison the README's tables come from: every "
                           "method, 5 / 10 / 20 steps, 256 held-out noises, the searches' full "
                           "budget (tens of minutes on a 2-core CPU; it prints its estimate). "
                           "Without it, a quick comparison: the key classical solvers, the "
                           "strongest learned peer, the paper's OLSS and the default, at 5 and "
                           "10 steps on 64 held-out noises (about two minutes)")
  parser.add_argument("--steps", type=int, nargs="+", default=None,
                      help="step counts to evaluate (quick: 5 10; --full: 5 10 20)")
  parser.add_argument("--num-fit", type=int, default=32,
                      help="fitting noises for the teacher (the paper's 32)")
  parser.add_argument("--num-eval", type=int, default=None,
                      help="held-out evaluation noises, never used in any fit (quick: 64; "
                           "--full: 256)")
  parser.add_argument("--teacher-steps", type=int, default=1000, help="teacher steps (DDIM, or flow Euler for a flow model)")
  parser.add_argument("--methods", nargs="+", default=None,
                      help="methods to compare (quick: ddim or euler, dpm_solver_pp, unipc, "
                           "tuned-unipc, olss, olss-ft; --full: every baseline, peer and OLSS "
                           "method)")
  parser.add_argument("--max-evaluations", type=int, default=None,
                      help="candidate paths of the coordinate searches (olss-ft and the tuned "
                           "peers alike; quick: 60, --full: 400)")
  parser.add_argument("--out", default="olss_jax_demo",
                      help="directory for the PNGs (sample grid, error vs steps); '' for none")


def build_parser() -> argparse.ArgumentParser:
  """The argparse parser of ``olss-jax`` (subcommands demo, collect, fit, sample, compare, figures)."""
  parser = argparse.ArgumentParser(
      prog=PROG, formatter_class=_Formatter,
      description="OLSS (Duan et al., CIKM 2023): fast diffusion sampling with least-squares "
                  "fitted linear steps. Without a command, runs 'demo'.",
      epilog="examples:\n"
             "  olss-jax                       # the comparison table on the embedded model\n"
             "  olss-jax collect teacher/ --num-images 32\n"
             "  olss-jax fit teacher/ --steps 10 -o olss10.safetensors\n"
             "  olss-jax sample olss10.safetensors -o samples.png\n"
             "  olss-jax compare olss10.safetensors\n"
             "  olss-jax figures figures/\n"
             "\n'olss-jax COMMAND --help' explains each command.")
  parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

  p = sub.add_parser("demo", parents=[common], formatter_class=_Formatter,
                     help="the scheduler comparison on the embedded model (default)",
                     description="Fits every OLSS method on the embedded model's teacher and prints "
                                 "the held-out comparison with every classical scheduler.",
                     epilog="examples:\n  olss-jax demo\n  olss-jax demo --full\n"
                            "  olss-jax demo --model mnist\n  olss-jax demo --quiet --steps 5 10")
  _demo_arguments(p)
  p.set_defaults(func=commands.demo)

  p = sub.add_parser(
      "collect", parents=[common], formatter_class=_Formatter,
      help="teacher trajectories into a resumable directory",
      description="Runs the complete DDIM generation process (the teacher, paper Sec. 3.3) on "
                  "--num-images starting noises, in chunks of --chunk-size, each chunk saved "
                  "atomically and checksummed. Rerunning the same command after an interruption "
                  "skips the finished chunks; rerunning it with a larger --num-images (the other "
                  "options the same) extends a finished store.",
      epilog="examples:\n"
             "  olss-jax collect teacher/                                   # embedded model\n"
             "  olss-jax collect sd-teacher/ --model ~/sd15-flax --prompts prompts.txt\n"
             "  olss-jax collect teacher/      # again after Ctrl-C: resumes, no chunk redone\n"
             "  olss-jax collect teacher/ --num-images 64                 # grows it to 64")
  p.add_argument("out_dir", metavar="OUT_DIR", help="the trajectory directory (created)")
  _model_options(p)
  p.add_argument("--num-images", "--num-fit", type=int, default=32, dest="num_images",
                 help="starting noises (the paper fits on 32)")
  p.add_argument("--chunk-size", type=int, default=None,
                 help=f"noises per saved chunk, the unit of resumption (default: the store's, "
                      f"or {commands.DEFAULT_CHUNK_SIZE} for a new one)")
  p.add_argument("--seed", type=int, default=1, help="seed of the noises (and labels)")
  p.add_argument("--height", type=int, default=None, help="Stable Diffusion: pixels")
  p.add_argument("--width", type=int, default=None, help="Stable Diffusion: pixels")
  adv = p.add_argument_group("advanced")
  adv.add_argument("--teacher-steps", type=int, default=1000,
                   help="teacher steps (DDIM, or flow Euler for a flow model; the paper: 1000)")
  adv.add_argument("--steps-per-chunk", type=int, default=50,
                   help="teacher steps per jitted call (the progress bar advances per call)")
  p.set_defaults(func=commands.collect)

  p = sub.add_parser(
      "fit", parents=[common], formatter_class=_Formatter,
      help="trajectories -> schedule file",
      description="Chooses n of the teacher's steps and fits the linear weights by least "
                  "squares (olss_jax.fit_olss). Methods: olss-p / olss = the paper (Eq. 12 "
                  "teacher-forced, on uniform / searched steps, Algorithms 1-3); olss-p-cl / "
                  "olss-cl = closed loop (beyond the paper: fitted on the sampler's own states; "
                  "runs the model); olss-ft = closed loop on a path tuned for the final error "
                  "(validated on held-out fitting noises). Prints the chosen timesteps and the error of every step.",
      epilog="examples:\n"
             "  olss-jax fit teacher/ --steps 10 -o ft10.safetensors            # olss-ft\n"
             "  olss-jax fit teacher/ --steps 10 --method olss -o olss10.safetensors\n"
             "  olss-jax fit teacher/ --steps 10 --method olss-p -o p10.safetensors\n"
             "  olss-jax fit sd-teacher/ --steps 10 --model ~/sd15-flax -o sd10.safetensors")
  p.add_argument("trajectories", metavar="TRAJECTORIES",
                 help="a directory from 'olss-jax collect' or a trajectory file")
  p.add_argument("-o", "--output", required=True, metavar="SCHEDULE", help="schedule file to write")
  p.add_argument("--steps", type=int, required=True, help="n, the number of model calls")
  p.add_argument("--method", choices=_METHODS, default=None,
                 help="default: olss-ft for a directory whose model can be rebuilt (the "
                      "measured best), olss (the paper) for a trajectory file")
  p.add_argument("--refine", action="store_true",
                 help="then train the weights end to end through the sampler (runs the model)")
  p.add_argument("--model", default="default", metavar="DIR",
                 help="closed-loop / refine on Stable Diffusion trajectories: the model directory")
  p.set_defaults(func=commands.fit)

  p = sub.add_parser(
      "sample", parents=[common], formatter_class=_Formatter,
      help="schedule + model -> PNG (or JPEG) images",
      description="Generates with a schedule (any: fitted, or a baseline saved by the API) and "
                  "writes the samples as one image grid (PNG, or JPEG for -o *.jpg / *.jpeg).",
      epilog="examples:\n"
             "  olss-jax sample olss10.safetensors -o samples.png\n"
             "  olss-jax sample olss10.safetensors -o sevens.png --labels 7 --num-images 8\n"
             "  olss-jax sample sd10.safetensors --model ~/sd15-flax --prompt 'a castle' -o c.png")
  p.add_argument("schedule", metavar="SCHEDULE", help="a schedule file")
  p.add_argument("-o", "--output", required=True, metavar="IMAGE",
                 help="the image grid to write (.png, .jpg or .jpeg)")
  _model_options(p)
  p.add_argument("--prompt", default=None, help="Stable Diffusion: one prompt for every image")
  p.add_argument("--labels", default=None, help="digits: class labels, comma-separated (cycled)")
  p.add_argument("--num-images", type=int, default=16, help="how many samples")
  p.add_argument("--columns", type=int, default=8, help="images per row of the grid")
  p.add_argument("--seed", type=int, default=0, help="seed of the starting noises")
  p.set_defaults(func=commands.sample)

  p = sub.add_parser(
      "compare", parents=[common], formatter_class=_Formatter,
      help="a schedule against the classical schedulers",
      description="Runs the schedule and the chosen baselines (same step count) on held-out "
                  "noises and prints each one's RMSE to the 1000-step teacher, with 95% "
                  "intervals, as a markdown table.",
      epilog="examples:\n"
             "  olss-jax compare olss10.safetensors\n"
             "  olss-jax compare olss10.safetensors --baselines ddim,dpm_solver_pp,deis "
             "--refit olss-cl")
  p.add_argument("schedule", metavar="SCHEDULE", help="a schedule file")
  _model_options(p, prompts=False)
  p.add_argument("--baselines", default=None,
                 help="comma-separated names from olss_jax.baselines.baseline_names(kind) "
                      "(default: ddim,dpm_solver_pp,unipc; euler for ddim on a flow model)")
  p.add_argument("--refit", choices=_METHODS, default=None,
                 help="also fit this OLSS method afresh on this run's fitting noises")
  p.add_argument("--num-eval", type=int, default=128, help="held-out evaluation noises")
  adv = p.add_argument_group("advanced")
  adv.add_argument("--num-fit", type=int, default=32, help="fitting noises for --refit")
  adv.add_argument("--teacher-steps", type=int, default=1000, help="teacher steps (DDIM, or flow Euler for a flow model)")
  p.set_defaults(func=commands.compare)

  p = sub.add_parser(
      "figures", parents=[common], formatter_class=_Formatter,
      help="the paper's figures as PNGs",
      description="Writes correlation.png (paper Figure 2), paths.png (Figure 5), errors.png "
                  "(Figure 4: error against steps), weights.png (OLSS's fitted weights beside "
                  "DDIM's) and grid.png (Figure 6) for the embedded model.",
      epilog="examples:\n"
             "  olss-jax figures figures/\n"
             "  olss-jax figures figures/ --only weights,grid --steps 5,10")
  p.add_argument("out_dir", metavar="OUT_DIR", help="directory for the PNGs (created)")
  _model_options(p, prompts=False)
  p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(FIGURES)}")
  p.add_argument("--steps", default="5,10,20",
                 help="step counts (errors); the weights, paths and grid use the smallest")
  adv = p.add_argument_group("advanced")
  adv.add_argument("--num-fit", type=int, default=32, help="fitting noises")
  adv.add_argument("--num-eval", type=int, default=64, help="held-out noises")
  adv.add_argument("--teacher-steps", type=int, default=1000, help="teacher steps (DDIM, or flow Euler for a flow model)")
  p.set_defaults(func=commands.figures)
  return parser


def _version() -> str:
  try:
    from importlib.metadata import version  # pylint: disable=import-outside-toplevel
    return version("olss_jax")
  except Exception:  # noqa: BLE001
    return "0.2.0"


def _one_line(error: BaseException) -> str:
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    return f"{error.strerror}: {error.filename}"
  text = " ".join(str(error).split())
  return text or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``olss-jax`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

  Returns:
    0 on success, 1 on an error (one line on stderr, no traceback), 2 on a usage error,
    130 when interrupted.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  leading = []
  while argv and argv[0] in ("-q", "--quiet"):  # global flags before the command
    leading.append(argv.pop(0))
  if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
    argv = ["demo"] + argv
  argv = argv[:1] + leading + argv[1:] if argv[0] in COMMANDS else leading + argv
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:
    return int(e.code or 0)
  with warnings.catch_warnings():
    warnings.showwarning = commands.warn_line
    try:
      return int(args.func(args) or 0)
    except KeyboardInterrupt:
      print(f"{PROG}: interrupted (rerun the same command to resume a collection)",
            file=sys.stderr)
      return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
      print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
      return 1
