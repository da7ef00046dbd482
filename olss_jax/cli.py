"""The ``olss-jax`` command line: collect a teacher, fit a schedule, sample, compare, plot.

Subcommands (``olss-jax <command> --help`` for each):

  demo      the scheduler comparison on the embedded model (the default command)
  collect   teacher trajectories (paper Sec. 3.3) into a resumable directory
  fit       trajectories -> schedule file (path search, Algorithms 1-3, and Eq. 12)
  sample    schedule + model -> PNG images
  compare   a schedule against the classical schedulers, held-out RMSE table
  figures   the paper's figures (2, 4, 5, 6 and the weight heat map) as PNGs

Errors are one line on stderr (``olss-jax: error: ...``) with exit status 1; a bad option
exits with status 2 (argparse); success is 0.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from typing import Sequence

PROG = "olss-jax"
COMMANDS = ("demo", "collect", "fit", "sample", "compare", "figures")
FIGURES = ("correlation", "paths", "errors", "weights", "grid")
_DEFAULT_BASELINES = "ddim,dpm_solver_pp,unipc"


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
  """Keeps the examples' line breaks and shows defaults."""


# ---------------------------------------------------------------------------------------------
# Models: the embedded ones, or a local Flax Stable Diffusion directory.


def _is_sd(spec: str) -> bool:
  from olss_jax._src import embedded  # pylint: disable=import-outside-toplevel
  return spec not in embedded.EMBEDDED_MODELS


def silence_sd_libraries() -> None:
  """Drops diffusers' and transformers' Flax deprecation notices (see `quiet`)."""
  from olss_jax._src import quiet  # pylint: disable=import-outside-toplevel
  quiet.silence_before_import()


def _load_sd(spec: str):
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(spec):
    raise FileNotFoundError(f"--model: {spec!r} is neither an embedded model (default, digits, "
                            "analytic) nor a Stable Diffusion directory")
  silence_sd_libraries()
  return oj.load_stable_diffusion(spec)


def _embedded(args):
  from olss_jax._src import embedded  # pylint: disable=import-outside-toplevel
  model = embedded.embedded_model(args.model, guidance_scale=args.guidance_scale)
  if model.name == "digits-unet":  # diffusers' UNet: its deprecation notice comes on first use
    silence_sd_libraries()
  return model


def _read_prompts(path: str | None, prompt: str | None = None) -> list[str]:
  if prompt is not None:
    return [prompt]
  if path is None:
    raise ValueError("--prompts: a Stable Diffusion model needs a prompt file (one prompt a "
                     "line) or --prompt TEXT")
  with open(path, encoding="utf-8") as f:
    prompts = [line.strip() for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"--prompts: {path!r} holds no prompts (one prompt a line)")
  return prompts


def _sha256_text(items) -> str:
  return hashlib.sha256(json.dumps(list(items)).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# collect


def _cmd_collect(args) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  from olss_jax._src import progress  # pylint: disable=import-outside-toplevel

  if args.num_images < 1 or args.chunk_size < 1 or args.teacher_steps < 1:
    raise ValueError("--num-images, --chunk-size and --teacher-steps: expected positive "
                     f"integers, got {args.num_images}, {args.chunk_size}, {args.teacher_steps}")
  num_chunks = -(-args.num_images // args.chunk_size)
  sizes = [min(args.chunk_size, args.num_images - i * args.chunk_size) for i in range(num_chunks)]
  key = jax.random.key(args.seed)
  collect_kwargs = {}
  if _is_sd(args.model):
    sd = _load_sd(args.model)
    prompts = _read_prompts(args.prompts)
    g = 7.0 if args.guidance_scale is None else float(args.guidance_scale)
    height, width = sd.default_resolution
    height, width = args.height or height, args.width or width
    image_prompts = [prompts[i % len(prompts)] for i in range(args.num_images)]
    from olss_jax._src.stable_diffusion import provenance  # pylint: disable=import-outside-toplevel
    sched_meta = provenance.sd_metadata(sd, guidance_scale=g, height=height, width=width)
    sched_meta.update({"teacher_steps": args.teacher_steps, "num_fit_images": args.num_images,
                       "num_prompts": len(prompts), "prompts_sha256": _sha256_text(prompts)})
    name, alphas = sd.name, sd.alphas_cumprod
    collect_kwargs = {"steps_offset": sd.info.noise.steps_offset,
                      "final_alpha_cumprod": sd.info.noise.final_alpha_cumprod}

    def chunk_prompts(i):
      start = i * args.chunk_size
      return image_prompts[start:start + sizes[i]]

    def denoise_for(i):
      embeds, negative = oj.encode_prompts(sd, chunk_prompts(i))
      return oj.sd_denoiser(sd, embeds, guidance_scale=g, negative_embeds=negative)

    def noises_for(i):
      return jax.random.normal(jax.random.fold_in(key, i), sd.latent_shape(sizes[i], height, width),
                               jnp.float32)

    def meta_for(i):
      return {"prompts": chunk_prompts(i)}
  else:
    model = _embedded(args)
    name, alphas = model.name, model.alphas_cumprod
    sched_meta = {"model_name": model.name, "sample_shape": list(model.sample_shape),
                  "num_train_timesteps": int(np.shape(alphas)[0])}
    if model.guidance_scale is not None:
      sched_meta["guidance_scale"] = float(model.guidance_scale)

    def conditions_for(i):
      return model.draw_conditions(args.seed * 100_003 + i, sizes[i])

    def denoise_for(i):
      return model.denoiser(conditions_for(i))

    def noises_for(i):
      return jax.random.normal(jax.random.fold_in(key, i), (sizes[i],) + tuple(model.sample_shape),
                               jnp.float32)

    def meta_for(i):
      conditions = conditions_for(i)
      return {} if conditions is None else {"conditions": np.asarray(conditions).tolist()}

  config = {"model": name, "seed": args.seed, "chunk_size": args.chunk_size,
            "num_images": args.num_images, "schedule_metadata": sched_meta}
  total = num_chunks * args.teacher_steps
  t0 = time.perf_counter()
  with progress.progress_bar(total, f"teacher ({args.teacher_steps} steps x {args.num_images} "
                             "noises)", enabled=not args.quiet, unit="step") as bar:
    info = oj.collect_to_directory(
        args.out_dir, denoise_for, noises_for, alphas, num_chunks=num_chunks,
        num_teacher_steps=args.teacher_steps, steps_per_chunk=args.steps_per_chunk,
        config=config, chunk_metadata=meta_for, callback=progress.store_callback(bar),
        **collect_kwargs)
  seconds = time.perf_counter() - t0
  print(f"{args.out_dir}: {num_chunks} chunks of {name} teacher trajectories "
        f"({args.num_images} noises x {args.teacher_steps} steps); collected "
        f"{len(info.collected) + len(info.recovered)}, already done {len(info.skipped)} "
        f"({seconds:.1f} s)")
  return 0


# ---------------------------------------------------------------------------------------------
# fit


def _load_teacher(path: str):
  """A trajectory directory (store) or file -> (Trajectory, schedule metadata to record)."""
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  if os.path.isdir(path):
    traj = oj.load_store(path)
    user = oj.read_manifest(path)["config"].get("user") or {}
  elif os.path.exists(path):
    traj = oj.load_trajectory(path)
    user = oj.read_metadata(path)
  else:
    raise FileNotFoundError(f"trajectories: {path!r} does not exist (expected a directory "
                            "written by 'olss-jax collect' or a trajectory file)")
  meta = user.get("schedule_metadata") if isinstance(user, dict) else None
  return traj, dict(meta or {})


def _teacher_denoiser(args, path: str):
  """The model the teacher of a store ran, on the store's noises in order (for closed-loop fits)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  from olss_jax._src import embedded  # pylint: disable=import-outside-toplevel
  if not os.path.isdir(path):
    raise ValueError(f"--method {args.method}: needs the teacher's model and conditions; pass a "
                     "directory written by 'olss-jax collect', not a single trajectory file")
  config = oj.read_manifest(path)["config"]
  user = config.get("user") or {}
  meta = user.get("schedule_metadata") or {}
  chunks = [oj.read_metadata(os.path.join(path, f"chunk-{i:05d}.olss"))
            for i in range(int(config["num_chunks"]))]
  if "prompts" in chunks[0]:
    if not _is_sd(args.model):
      raise ValueError(f"--model: the trajectories are Stable Diffusion's ({user.get('model')!r}); "
                       "pass its directory with --model for a closed-loop fit")
    sd = _load_sd(args.model)
    prompts = [p for chunk in chunks for p in chunk["prompts"]]
    embeds, negative = oj.encode_prompts(sd, prompts)
    return oj.sd_denoiser(sd, embeds, guidance_scale=float(meta.get("guidance_scale", 7.0)),
                          negative_embeds=negative)
  name = "digits" if user.get("model") == "digits-unet" else "analytic"
  model = embedded.embedded_model(name, guidance_scale=meta.get("guidance_scale"))
  if name == "digits":
    silence_sd_libraries()
  if model.name != user.get("model"):
    raise ValueError(f"trajectories: collected with model {user.get('model')!r}, which this "
                     "olss_jax cannot rebuild for a closed-loop fit")
  conditions = None
  if "conditions" in chunks[0]:
    conditions = np.concatenate([np.asarray(c["conditions"], np.int32) for c in chunks])
  return model.denoiser(conditions)


def _cmd_fit(args) -> int:
  import numpy as np  # pylint: disable=import-outside-toplevel
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  from olss_jax._src import progress  # pylint: disable=import-outside-toplevel

  method = args.method
  if method is None:  # the measured best where the model can be rebuilt, else the paper's fit
    method = "closed-loop" if os.path.isdir(args.trajectories) else "olss"
  if args.uniform and method == "olss":
    method = "olss-p"
  traj, meta = _load_teacher(args.trajectories)
  oj.check_num_steps(args.steps, traj.num_teacher_steps, name="--steps")
  note = ""
  stages = 2 + int(args.refine)
  with progress.progress_bar(stages, f"fit {method}, {args.steps} steps", enabled=not args.quiet,
                             unit="stage") as bar:
    t0 = time.perf_counter()
    if method in ("olss", "olss-p") and not args.refine:
      bar.set_postfix_str("choosing the path")
      if method == "olss":
        from olss_jax._src import search  # pylint: disable=import-outside-toplevel
        traj = search.compress_if_large(traj)  # at SD size one Gram serves search and fit
        path, info = oj.search_path(traj, args.steps, return_info=True)
        note = " (the uniform path beat the search)" if info.chose_uniform else ""
      else:
        path = oj.uniform_path(traj, args.steps)
      bar.update(1)
      bar.set_postfix_str("least squares")
      schedule = oj.fit_weights(traj, path)
      bar.update(1)
    else:
      bar.set_postfix_str("closed-loop search and fit" if method == "closed-loop" else "fit")
      denoise = _teacher_denoiser(args, args.trajectories) if (
          method == "closed-loop" or args.refine) else None
      schedule = oj.fit_olss(traj, args.steps, denoise_fn=denoise,
                             method="closed_loop" if method == "closed-loop" else "paper",
                             uniform=args.uniform or method == "olss-p", refine=args.refine)
      bar.update(stages - bar.n)
    seconds = time.perf_counter() - t0
  if args.refine:
    method += "+refine"
  schedule = schedule.with_metadata(**meta, method=method)
  oj.save_schedule(args.output, schedule)
  timesteps = np.asarray(schedule.timesteps)
  errors = schedule.metadata.get("step_errors")
  errors = np.full(timesteps.shape, np.nan) if errors is None else np.asarray(errors, np.float64)
  teacher_index = {int(t): k for k, t in enumerate(np.asarray(traj.timesteps))}
  print(f"{method}: {args.steps} steps fitted on {traj.batch_size} teacher runs of "
        f"{traj.num_teacher_steps} steps ({seconds:.1f} s){note}")
  print(f"timesteps: {' '.join(str(int(t)) for t in timesteps)}")
  print("step  timestep  teacher step  error (MSE per element)")
  for i, (t, e) in enumerate(zip(timesteps, errors)):
    print(f"{i + 1:4d}  {int(t):8d}  {teacher_index.get(int(t), -1):12d}  {e:.4e}")
  print(f"max error {np.nanmax(errors) if np.isfinite(errors).any() else float('nan'):.4e}; "
        f"schedule written to {args.output}")
  return 0


# ---------------------------------------------------------------------------------------------
# sample


def _warn_line(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
  del filename, lineno, line
  print(f"{PROG}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def _cmd_sample(args) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  from olss_jax._src import figures  # pylint: disable=import-outside-toplevel

  if args.num_images < 1:
    raise ValueError(f"--num-images: expected a positive integer, got {args.num_images}")
  schedule = oj.load_schedule(args.schedule)
  key = jax.random.key(args.seed)
  if _is_sd(args.model):
    sd = _load_sd(args.model)
    prompts = _read_prompts(args.prompts, args.prompt)
    prompts = [prompts[i % len(prompts)] for i in range(args.num_images)]
    g = schedule.metadata.get("guidance_scale", 7.0) if args.guidance_scale is None else (
        args.guidance_scale)
    images = np.asarray(oj.generate(sd, schedule, prompts, key=key, guidance_scale=float(g)))
  else:
    model = _embedded(args)
    if args.labels is not None and model.draw_conditions(0, 1) is None:
      raise ValueError(f"--labels: the model {model.name!r} is unconditional")
    if args.labels is not None:
      try:
        labels = [int(v) for v in args.labels.split(",")]
      except ValueError:
        raise ValueError(f"--labels: expected comma-separated integers, got {args.labels!r}") from None
      conditions = np.asarray([labels[i % len(labels)] for i in range(args.num_images)], np.int32)
    else:
      conditions = model.draw_conditions(args.seed, args.num_images)
    x_T = jax.random.normal(key, (args.num_images,) + tuple(model.sample_shape), jnp.float32)
    oj.check_schedule_compatible(schedule, x_T, model_name=model.name,
                                 guidance_scale=model.guidance_scale,
                                 num_train_timesteps=int(np.shape(model.alphas_cumprod)[0]))
    images = np.asarray(jax.jit(oj.sample)(model.denoiser(conditions), schedule, x_T))
  figures.save_image_grid(images, args.output, ncols=args.columns)
  print(f"{args.output}: {args.num_images} samples, {schedule.num_steps} steps "
        f"({schedule.metadata.get('method', '?')})")
  return 0


# ---------------------------------------------------------------------------------------------
# compare


def _baseline_names(text: str) -> list[str]:
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  names = [n.strip() for n in text.split(",") if n.strip()] if text else []
  unknown = [n for n in names if n not in oj.BASELINES]
  if unknown:
    raise ValueError(f"--baselines: unknown {unknown}; expected names from {sorted(oj.BASELINES)}")
  return names


def _progress_messages(bar):
  def say(message: str) -> None:
    bar.set_postfix_str(message[:60], refresh=False)
    bar.update(1)
  return say


def _cmd_compare(args) -> int:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import olss_jax as oj  # pylint: disable=import-outside-toplevel
  from olss_jax._src import compare  # pylint: disable=import-outside-toplevel
  from olss_jax._src import progress  # pylint: disable=import-outside-toplevel

  if _is_sd(args.model):
    raise ValueError("--model: compare runs on the embedded models (default, digits, analytic); "
                     "for Stable Diffusion use the stable_diffusion notebook")
  schedule = oj.load_schedule(args.schedule)
  model = _embedded(args)
  oj.check_schedule_compatible(schedule, jnp.zeros((1,) + tuple(model.sample_shape)),
                               model_name=model.name, guidance_scale=model.guidance_scale,
                               num_train_timesteps=int(np.shape(model.alphas_cumprod)[0]))
  label = f"{os.path.basename(args.schedule)} ({schedule.metadata.get('method', '?')})"
  methods = {label: lambda ctx, n: schedule}
  baselines = _baseline_names(args.baselines)
  methods.update({name: fn for name, fn in compare.default_methods(baselines=baselines).items()
                  if name in baselines or (args.refit and name == "olss")})
  total = 2 + len(methods)
  with progress.progress_bar(total, "compare", enabled=not args.quiet, unit="task") as bar:
    result = compare.run_comparison(
        model, steps=(schedule.num_steps,), num_fit=args.num_fit, num_eval=args.num_eval,
        num_teacher_steps=args.teacher_steps, methods=methods, keep_samples=False,
        progress=_progress_messages(bar))
  print(f"model {model.name}: RMSE to the {args.teacher_steps}-step teacher on {args.num_eval} "
        f"held-out noises (mean [95% interval])")
  print(compare.format_markdown(result))
  return 0


# ---------------------------------------------------------------------------------------------
# figures


def _cmd_figures(args) -> int:
  from olss_jax._src import workbench  # pylint: disable=import-outside-toplevel
  if _is_sd(args.model):
    raise ValueError("--model: figures run on the embedded models (default, digits, analytic)")
  which = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else list(FIGURES)
  unknown = [w for w in which if w not in FIGURES]
  if unknown:
    raise ValueError(f"--only: unknown figures {unknown}; expected names from {list(FIGURES)}")
  steps = _int_list(args.steps, "--steps")
  model = _embedded(args)
  written = workbench.paper_figures(model, args.out_dir, which=which, steps=steps,
                                    num_fit=args.num_fit, num_eval=args.num_eval,
                                    num_teacher_steps=args.teacher_steps, quiet=args.quiet)
  for path in written:
    print(path)
  return 0


def _int_list(text: str, name: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
  if not values or min(values) < 1:
    raise ValueError(f"{name}: expected positive integers, got {text!r}")
  return values


# ---------------------------------------------------------------------------------------------
# demo


def _demo_module():
  try:
    from olss_jax._src import demo  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  if not (hasattr(demo, "add_arguments") and hasattr(demo, "main")):
    return None
  return demo


def _fallback_demo_arguments(parser) -> None:
  parser.add_argument("--steps", default="5,10,20", help="step counts, comma-separated")
  parser.add_argument("--num-fit", type=int, default=32, help="fitting noises (paper: 32)")
  parser.add_argument("--num-eval", type=int, default=128, help="held-out evaluation noises")
  parser.add_argument("--teacher-steps", type=int, default=1000, help="teacher DDIM steps")


def _fallback_demo(args) -> int:
  from olss_jax._src import compare  # pylint: disable=import-outside-toplevel
  from olss_jax._src import progress  # pylint: disable=import-outside-toplevel
  args.model, args.guidance_scale = "default", None
  model = _embedded(args)
  steps = _int_list(args.steps, "--steps")
  methods = compare.default_methods()
  with progress.progress_bar(2 + len(steps) * len(methods), "demo", enabled=not args.quiet,
                             unit="task") as bar:
    result = compare.run_comparison(model, steps=steps, num_fit=args.num_fit,
                                    num_eval=args.num_eval, num_teacher_steps=args.teacher_steps,
                                    methods=methods, keep_samples=False,
                                    progress=_progress_messages(bar))
  print(f"model {model.name}: RMSE to the teacher on {args.num_eval} held-out noises")
  print(compare.format_markdown(result))
  return 0


def _cmd_demo(args) -> int:
  demo = _demo_module()
  if demo is None:
    return _fallback_demo(args)
  from olss_jax._src import embedded  # pylint: disable=import-outside-toplevel
  if embedded.digits_available():
    silence_sd_libraries()
  return int(demo.main(args) or 0)


# ---------------------------------------------------------------------------------------------
# the parser


def _common(quiet_default=argparse.SUPPRESS) -> argparse.ArgumentParser:
  parent = argparse.ArgumentParser(add_help=False)
  parent.add_argument("-q", "--quiet", action="store_true", default=quiet_default,
                      help="no progress bars")
  return parent


def _model_options(parser, *, prompts: bool = True) -> None:
  group = parser.add_argument_group("model")
  group.add_argument("--model", default="default", metavar="NAME_OR_DIR",
                     help="'default' (digits if installed, else analytic), 'digits', "
                          "'analytic', or a local Flax Stable Diffusion directory")
  group.add_argument("--guidance-scale", type=float, default=None,
                     help="classifier-free guidance (digits: its default; Stable Diffusion: 7.0, "
                          "or the schedule's)")
  if prompts:
    group.add_argument("--prompts", metavar="FILE", default=None,
                       help="Stable Diffusion: a text file, one prompt a line")


def build_parser() -> argparse.ArgumentParser:
  """The argparse parser of ``olss-jax`` (subcommands demo, collect, fit, sample, compare, figures)."""
  parser = argparse.ArgumentParser(
      prog=PROG, formatter_class=_Formatter,
      description="OLSS (Duan et al., CIKM 2023): fast diffusion sampling with least-squares "
                  "fitted linear steps. Without a command, runs 'demo'.",
      epilog="examples:\n"
             "  olss-jax                       # the comparison table on the embedded model\n"
             "  olss-jax collect teacher/ --num-images 32\n"
             "  olss-jax fit teacher/ --steps 10 -o olss10.olss\n"
             "  olss-jax sample olss10.olss -o samples.png\n"
             "  olss-jax compare olss10.olss\n"
             "  olss-jax figures figures/\n"
             "\n'olss-jax COMMAND --help' explains each command.")
  parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
  parser.add_argument("-q", "--quiet", action="store_true", default=False, help="no progress bars")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
  common = _common()

  demo = _demo_module()
  p = sub.add_parser("demo", parents=[] if demo is not None else [common],
                     formatter_class=_Formatter,
                     help="the scheduler comparison on the embedded model (default)",
                     description="Fits OLSS and OLSS-P on the embedded model's teacher and prints "
                                 "the held-out comparison with every classical scheduler.",
                     epilog="examples:\n  olss-jax demo\n  olss-jax demo --quiet")
  if demo is not None:
    demo.add_arguments(p)
    if "--quiet" not in p._option_string_actions:  # pylint: disable=protected-access
      p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                     help="no progress bars")
  else:
    _fallback_demo_arguments(p)
  p.set_defaults(func=_cmd_demo)

  p = sub.add_parser(
      "collect", parents=[common], formatter_class=_Formatter,
      help="teacher trajectories into a resumable directory",
      description="Runs the complete DDIM generation process (the teacher, paper Sec. 3.3) on "
                  "--num-images starting noises, in chunks of --chunk-size, each chunk saved "
                  "atomically and checksummed. Rerunning the same command after an interruption "
                  "skips the finished chunks.",
      epilog="examples:\n"
             "  olss-jax collect teacher/                                   # embedded model\n"
             "  olss-jax collect sd-teacher/ --model ~/sd15-flax --prompts prompts.txt\n"
             "  olss-jax collect teacher/      # again after Ctrl-C: resumes, no chunk redone")
  p.add_argument("out_dir", metavar="OUT_DIR", help="the trajectory directory (created)")
  _model_options(p)
  p.add_argument("--num-images", "--num-fit", type=int, default=32, dest="num_images",
                 help="starting noises (the paper fits on 32)")
  p.add_argument("--chunk-size", type=int, default=8, help="noises per saved chunk")
  p.add_argument("--seed", type=int, default=1, help="seed of the noises (and labels)")
  p.add_argument("--height", type=int, default=None, help="Stable Diffusion: pixels")
  p.add_argument("--width", type=int, default=None, help="Stable Diffusion: pixels")
  adv = p.add_argument_group("advanced")
  adv.add_argument("--teacher-steps", type=int, default=1000,
                   help="teacher DDIM steps (the paper: 1000)")
  adv.add_argument("--steps-per-chunk", type=int, default=50,
                   help="teacher steps per jitted call (the progress bar advances per call)")
  p.set_defaults(func=_cmd_collect)

  p = sub.add_parser(
      "fit", parents=[common], formatter_class=_Formatter,
      help="trajectories -> schedule file",
      description="Chooses n of the teacher's steps (path search, paper Algorithms 1-3; "
                  "--uniform: equally spaced, OLSS-P) and fits the linear weights by least "
                  "squares (Eq. 12). Prints the chosen timesteps and the error of every step.",
      epilog="examples:\n"
             "  olss-jax fit teacher/ --steps 10 -o cl10.olss          # closed loop\n"
             "  olss-jax fit teacher/ --steps 10 --method olss -o olss10.olss   # the paper\n"
             "  olss-jax fit teacher/ --steps 10 --method olss --uniform -o olssp10.olss")
  p.add_argument("trajectories", metavar="TRAJECTORIES",
                 help="a directory from 'olss-jax collect' or a trajectory file")
  p.add_argument("-o", "--output", required=True, metavar="SCHEDULE", help="schedule file to write")
  p.add_argument("--steps", type=int, required=True, help="n, the number of model calls")
  p.add_argument("--method", choices=("olss", "olss-p", "closed-loop"), default=None,
                 help="closed-loop (the default for a directory written by 'collect'): search "
                      "and fit on the sampler's own states (beyond the paper; runs the model, "
                      "measured best); olss: the paper's fit (searched path, teacher-forced "
                      "least squares; the default for a single trajectory file); olss-p: the "
                      "paper's fit on the uniform path")
  p.add_argument("--uniform", action="store_true",
                 help="equally spaced path (with --method olss: the same as olss-p)")
  p.add_argument("--refine", action="store_true",
                 help="then train the weights end to end through the sampler (runs the model)")
  p.add_argument("--model", default="default", metavar="DIR",
                 help="closed-loop / refine on Stable Diffusion trajectories: the model directory")
  p.set_defaults(func=_cmd_fit)

  p = sub.add_parser(
      "sample", parents=[common], formatter_class=_Formatter,
      help="schedule + model -> PNG images",
      description="Generates with a schedule (any: fitted, or a baseline saved by the API) and "
                  "writes the samples as one PNG grid.",
      epilog="examples:\n"
             "  olss-jax sample olss10.olss -o samples.png\n"
             "  olss-jax sample olss10.olss -o sevens.png --labels 7 --num-images 8\n"
             "  olss-jax sample sd10.olss --model ~/sd15-flax --prompt 'a castle' -o castle.png")
  p.add_argument("schedule", metavar="SCHEDULE", help="a schedule file")
  p.add_argument("-o", "--output", required=True, metavar="PNG", help="the image grid to write")
  _model_options(p)
  p.add_argument("--prompt", default=None, help="Stable Diffusion: one prompt for every image")
  p.add_argument("--labels", default=None, help="digits: class labels, comma-separated (cycled)")
  p.add_argument("--num-images", type=int, default=16, help="how many samples")
  p.add_argument("--columns", type=int, default=8, help="images per row of the grid")
  p.add_argument("--seed", type=int, default=0, help="seed of the starting noises")
  p.set_defaults(func=_cmd_sample)

  p = sub.add_parser(
      "compare", parents=[common], formatter_class=_Formatter,
      help="a schedule against the classical schedulers",
      description="Runs the schedule and the chosen baselines (same step count) on held-out "
                  "noises and prints each one's RMSE to the 1000-step teacher, with 95% "
                  "intervals, as a markdown table.",
      epilog="examples:\n"
             "  olss-jax compare olss10.olss\n"
             "  olss-jax compare olss10.olss --baselines ddim,dpm_solver_pp,unipc,deis --refit")
  p.add_argument("schedule", metavar="SCHEDULE", help="a schedule file")
  _model_options(p, prompts=False)
  p.add_argument("--baselines", default=_DEFAULT_BASELINES,
                 help="comma-separated names from olss_jax.BASELINES")
  p.add_argument("--refit", action="store_true",
                 help="also fit OLSS afresh on this run's fitting noises")
  p.add_argument("--num-eval", type=int, default=128, help="held-out evaluation noises")
  adv = p.add_argument_group("advanced")
  adv.add_argument("--num-fit", type=int, default=32, help="fitting noises for --refit")
  adv.add_argument("--teacher-steps", type=int, default=1000, help="teacher DDIM steps")
  p.set_defaults(func=_cmd_compare)

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
  adv.add_argument("--teacher-steps", type=int, default=1000, help="teacher DDIM steps")
  p.set_defaults(func=_cmd_figures)
  return parser


def _version() -> str:
  try:
    from importlib.metadata import version  # pylint: disable=import-outside-toplevel
    return version("olss_jax")
  except Exception:  # noqa: BLE001
    return "0.1.0"


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
  if argv[0] == "demo":  # the demo's own parser may spell it only --quiet
    argv = [("--quiet" if a == "-q" else a) for a in argv]
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:
    return int(e.code or 0)
  if not hasattr(args, "quiet"):
    args.quiet = False
  from olss_jax._src import quiet  # pylint: disable=import-outside-toplevel
  quiet.silence_flax_deprecations()
  with warnings.catch_warnings():
    warnings.showwarning = _warn_line
    try:
      return int(args.func(args) or 0)
    except KeyboardInterrupt:
      print(f"{PROG}: interrupted (rerun the same command to resume a collection)",
            file=sys.stderr)
      return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
      print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
      return 1
