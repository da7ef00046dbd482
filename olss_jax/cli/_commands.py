"""The ``olss-jax`` commands: each parses nothing and decides nothing the library does not.

Every command is a few calls into the library (`olss_jax.store`, `olss_jax.fit_olss`,
`olss_jax.sample`, `olss_jax.compare`, `olss_jax.figures`, `olss_jax.stable_diffusion`), plus
printing.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import olss_jax as oj
from olss_jax import stable_diffusion
from olss_jax import store
from olss_jax._src import demo as demo_lib
from olss_jax._src import figures as figures_lib
from olss_jax._src import fit_olss as fit_olss_lib
from olss_jax._src import progress
from olss_jax._src import shipped_models

FIGURES = ("correlation", "paths", "errors", "weights", "grid")
# Noises per chunk of 'olss-jax collect': an interrupted collection loses at most this many
# noises' teacher runs (a chunk is the unit of resumption).
DEFAULT_CHUNK_SIZE = 4
# The baselines 'olss-jax compare' runs by default, per noise process of the model.
DEFAULT_BASELINES = {"vp": ("ddim", "dpm_solver_pp", "unipc"),
                     "flow": ("euler", "dpm_solver_pp", "unipc")}


def is_stable_diffusion(spec: str) -> bool:
  """``--model`` names a Stable Diffusion directory rather than an embedded model."""
  return spec not in shipped_models.EMBEDDED_MODELS


def load_sd(spec: str):
  """The Stable Diffusion of a ``--model DIR`` (diffusers' notices silenced)."""
  if not os.path.isdir(spec):
    raise FileNotFoundError(f"--model: {spec!r} is neither an embedded model (default, digits, "
                            "analytic) nor a Stable Diffusion directory")
  return stable_diffusion.load_stable_diffusion(spec)


def read_prompts(path: str | None, prompt: str | None = None) -> list[str]:
  """``--prompt TEXT`` or the non-empty lines of ``--prompts FILE``."""
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


def progress_messages(bar):
  """A ``say(message)`` callback advancing a progress bar by one task per message."""
  def say(message: str) -> None:
    bar.set_postfix_str(message[:60], refresh=False)
    bar.update(1)
  return say


@contextlib.contextmanager
def stage_bar(desc: str, *, enabled: bool):
  """A ``say(message)`` callback whose bar (one stage a message, total unknown) opens at the
  first message: an error at the library's door, before any stage, stays one line."""
  bars = []

  def say(message: str) -> None:
    if not bars:
      bars.append(progress.progress_bar(None, desc, enabled=enabled, unit="stage"))
    progress_messages(bars[0])(message)

  try:
    yield say
  finally:
    for bar in bars:
      bar.close()


def int_list(text: str, name: str) -> list[int]:
  """Comma-separated positive integers (each checked by `validation.check_count`)."""
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
  if not values:
    raise ValueError(f"{name}: expected comma-separated integers, got {text!r}")
  return [oj.validation.check_count(v, name) for v in values]


@contextlib.contextmanager
def _naming_option(argument: str, option: str):
  """Names the command-line ``option`` in the library's error about its ``argument``: the
  library checks the value (once, at its door); the command line only says where it came from."""
  try:
    yield
  except (ValueError, TypeError) as error:
    text = str(error)
    if not text.startswith(f"{argument}:"):
      raise
    raise type(error)(text.replace(argument, option)) from None


# ---------------------------------------------------------------------------------------------


def demo(args) -> int:
  """The main job: the scheduler comparison on an embedded model (`olss_jax._src.demo`)."""
  return int(demo_lib.main(args) or 0)


def collect(args) -> int:
  """The teacher into a resumable store (`collect_embedded_to_directory` / `collect_sd_to_directory`)."""
  if args.chunk_size is None:  # resuming or growing a store: its own chunk size
    args.chunk_size = _store_chunk_size(args.out_dir) or DEFAULT_CHUNK_SIZE
  for name, value in (("--num-images", args.num_images), ("--chunk-size", args.chunk_size),
                      ("--teacher-steps", args.teacher_steps)):
    oj.validation.check_count(value, name)
  num_chunks = -(-args.num_images // args.chunk_size)
  total = num_chunks * args.teacher_steps
  t0 = time.perf_counter()
  with progress.progress_bar(total, f"teacher ({args.teacher_steps} steps x {args.num_images} "
                             "noises)", enabled=not args.quiet, unit="step") as bar:
    callback = progress.store_callback(bar)
    with _naming_store_options(args.out_dir):
      info, name = _collect(args, callback)
  print(f"{args.out_dir}: {num_chunks} chunks of {name} teacher trajectories "
        f"({args.num_images} noises x {args.teacher_steps} steps); collected "
        f"{len(info.collected) + len(info.recovered)}, already done {len(info.skipped)} "
        f"({time.perf_counter() - t0:.1f} s)")
  return 0


# The store's config keys (`store.config_differences`) and the option of 'olss-jax collect'
# that sets each, to name the option when a store was collected with other settings.
_STORE_OPTIONS = (("num_teacher_steps", "--teacher-steps"), ("teacher.", "--teacher-steps"),
                  ("user.images_per_chunk", "--chunk-size"), ("user.seed", "--seed"),
                  ("user.latent_key", "--seed"), ("user.model.guidance_scale", "--guidance-scale"),
                  ("user.model.", "--model"), ("user.schedule_metadata.guidance_scale",
                                               "--guidance-scale"),
                  ("user.schedule_metadata.prompts_sha256", "--prompts"),
                  ("user.schedule_metadata.negative_prompts", "--prompts"),
                  ("user.schedule_metadata.num_prompts", "--prompts"),
                  ("user.schedule_metadata.resolution", "--height/--width"),
                  ("user.schedule_metadata.latent_shape", "--height/--width"),
                  ("user.schedule_metadata.", "--model"), ("num_chunks", "--num-images"),
                  ("user.num_images", "--num-images"))


def _store_option(key: str) -> str | None:
  for prefix, option in _STORE_OPTIONS:
    if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
      return option
  return None


@contextlib.contextmanager
def _naming_store_options(directory: str):
  """Turns a store's `ConfigMismatchError` into one line naming the option that differs."""
  try:
    yield
  except store.ConfigMismatchError as error:
    for key, found, wanted in error.differences:
      option = _store_option(key)
      if option is None:
        continue
      grow = "a store grows but never shrinks; " if option == "--num-images" else ""
      raise ValueError(f"{option}: {directory!r} was collected with another configuration "
                       f"({key} = {_short(found)} there, {_short(wanted)} here); {grow}use the "
                       f"same {option} to resume it, or a new directory") from None
    raise


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _store_chunk_size(directory: str) -> int | None:
  """The ``--chunk-size`` an existing store was collected with (None: no store there)."""
  if not os.path.isfile(os.path.join(directory, "manifest.json")):
    return None
  try:
    size = (store.read_manifest(directory)["config"].get("user") or {}).get("images_per_chunk")
  except ValueError:
    return None
  return size if isinstance(size, int) and size >= 1 else None


def _collect(args, callback):
  """Runs the collection of ``collect``: (CollectInfo, the model's name)."""
  if is_stable_diffusion(args.model):
    sd = load_sd(args.model)
    info = stable_diffusion.collect_sd_to_directory(
        args.out_dir, sd, read_prompts(args.prompts), key=jax.random.key(args.seed),
        num_images=args.num_images, images_per_chunk=args.chunk_size,
        num_teacher_steps=args.teacher_steps,
        guidance_scale=7.0 if args.guidance_scale is None else args.guidance_scale,
        height=args.height, width=args.width, steps_per_chunk=args.steps_per_chunk,
        callback=callback)
    return info, sd.name
  info = store.collect_embedded_to_directory(
      args.out_dir, args.model, num_images=args.num_images, images_per_chunk=args.chunk_size,
      seed=args.seed, guidance_scale=args.guidance_scale,
      num_teacher_steps=args.teacher_steps, steps_per_chunk=args.steps_per_chunk,
      callback=callback)
  return info, store.model_record(args.out_dir)["model_name"]


def _load_teacher(path: str):
  """A store or a trajectory file -> (Trajectory, schedule metadata to record, the store's
  manifest or None for a file). A store's manifest is read once, here, and passed on."""
  if os.path.isdir(path):
    manifest = store.read_manifest(path)
    return (store.load_store(path, manifest=manifest),
            store.schedule_metadata(path, manifest=manifest), manifest)
  if os.path.exists(path):
    meta = oj.read_metadata(path)
    return oj.load_trajectory(path), dict(meta.get("schedule_metadata") or {}), None
  raise FileNotFoundError(f"trajectories: {path!r} does not exist (expected a directory "
                          "written by 'olss-jax collect' or a trajectory file)")


def fit(args) -> int:
  """A store (or trajectory file) -> a schedule file, by `fit_olss` with the method named.

  The method (named, or the recipe's default for having the model or not:
  `fit_olss.resolve_method`) and the step count are the library's to check and choose; a store
  whose manifest records its model has the model (`store.store_denoiser`).
  """
  traj, meta, manifest = _load_teacher(args.trajectories)
  no_model = None            # why the teacher's model cannot be rebuilt (None: it can)
  if manifest is None:
    no_model = ValueError(f"{'--refine' if args.method is None else '--method ' + args.method}"
                          ": needs the teacher's model and conditions; pass a directory "
                          "written by 'olss-jax collect', not a single trajectory file")
  else:
    try:
      store.model_record(args.trajectories, manifest=manifest)
    except ValueError as error:
      no_model = error
  if no_model is not None and (args.method in fit_olss_lib.MODEL_METHODS or args.refine):
    raise no_model
  method = fit_olss_lib.resolve_method(args.method, has_model=no_model is None)
  denoise = None
  if method in fit_olss_lib.MODEL_METHODS or args.refine:
    sd = load_sd(args.model) if is_stable_diffusion(args.model) else None
    denoise = store.store_denoiser(args.trajectories, sd=sd, manifest=manifest)
  # The bar advances at each stage and at every candidate path olss-ft fits (total unknown).
  with _naming_option("num_steps", "--steps"), stage_bar(
      f"fit {method}, {args.steps} steps", enabled=not args.quiet) as say:
    t0 = time.perf_counter()
    schedule = oj.fit_olss(traj, args.steps, denoise_fn=denoise, method=method,
                           refine=args.refine, progress=say)
    seconds = time.perf_counter() - t0
  schedule = schedule.with_metadata(**meta)
  oj.save_schedule(args.output, schedule)
  timesteps = np.asarray(schedule.timesteps)
  errors = np.asarray(schedule.metadata["step_errors"], np.float64)
  teacher_index = {int(t): k for k, t in enumerate(np.asarray(traj.timesteps))}
  note = " (the uniform path beat the search)" if schedule.metadata.get(
      "search_chose_uniform") else ""
  print(f"{schedule.metadata['method']}: {args.steps} steps fitted on {traj.batch_size} teacher "
        f"runs of {traj.num_teacher_steps} steps ({seconds:.1f} s){note}")
  print(f"timesteps: {' '.join(str(int(t)) for t in timesteps)}")
  print("step  timestep  teacher step  error (MSE per element)")
  for i, (t, e) in enumerate(zip(timesteps, errors)):
    print(f"{i + 1:4d}  {int(t):8d}  {teacher_index.get(int(t), -1):12d}  {e:.4e}")
  print(f"max error {np.max(errors):.4e}; schedule written to {args.output}")
  return 0


def sample(args) -> int:
  """A schedule + a model -> a PNG (or JPEG) grid of samples."""
  oj.validation.check_count(args.num_images, "--num-images")
  figures_lib.image_format(args.output, "-o")  # .png or .jpg/.jpeg, before any work
  schedule = oj.load_schedule(args.schedule)
  key = jax.random.key(args.seed)
  if is_stable_diffusion(args.model):
    sd = load_sd(args.model)
    prompts = read_prompts(args.prompts, args.prompt)
    prompts = [prompts[i % len(prompts)] for i in range(args.num_images)]
    g = schedule.metadata.get("guidance_scale", 7.0) if args.guidance_scale is None else (
        args.guidance_scale)
    images = np.asarray(oj.stable_diffusion.generate(sd, schedule, prompts, key=key,
                                                     guidance_scale=float(g)))
  else:
    model = oj.compare.embedded_model(args.model, guidance_scale=args.guidance_scale)
    if args.labels is not None and model.draw_conditions(0, 1) is None:
      raise ValueError(f"--labels: the model {model.name!r} is unconditional")
    if args.labels is not None:
      labels = _labels(args.labels)
      conditions = np.asarray([labels[i % len(labels)] for i in range(args.num_images)], np.int32)
    else:
      conditions = model.draw_conditions(args.seed, args.num_images)
    x_T = jax.random.normal(key, (args.num_images,) + tuple(model.sample_shape), jnp.float32)
    teacher = model.make_teacher(2)  # its kind and time scale (VP table or rectified flow)
    oj.validation.check_schedule_compatible(
        schedule, x_T, model_name=model.name, guidance_scale=model.guidance_scale,
        teacher=teacher)
    images = np.asarray(jax.jit(oj.sample)(model.denoiser(conditions), schedule, x_T,
                                           teacher=teacher))
  oj.figures.save_image_grid(images, args.output, ncols=args.columns)
  print(f"{args.output}: {args.num_images} samples, {schedule.num_steps} steps "
        f"({schedule.metadata.get('method', '?')})")
  return 0


def _labels(text: str) -> list[int]:
  try:
    return [int(v) for v in text.split(",")]
  except ValueError:
    raise ValueError(f"--labels: expected comma-separated integers, got {text!r}") from None


def compare(args) -> int:
  """A schedule against the chosen baselines on held-out noises (`olss_jax.compare`)."""
  if is_stable_diffusion(args.model):
    raise ValueError("--model: compare runs on the embedded models (default, digits, analytic); "
                     "for Stable Diffusion use the stable_diffusion notebook")
  names = ([n.strip() for n in args.baselines.split(",") if n.strip()]
           if args.baselines is not None else None)
  unknown = [n for n in names or () if n not in oj.baselines.BASELINES]
  if unknown:
    raise ValueError(f"--baselines: unknown {unknown}; expected names from "
                     f"{sorted(oj.baselines.BASELINES)}")
  schedule = oj.load_schedule(args.schedule)
  model = oj.compare.embedded_model(args.model, guidance_scale=args.guidance_scale)
  teacher = model.make_teacher(2)
  offered = oj.baselines.baseline_names(teacher.kind)
  if names is None:
    names = list(DEFAULT_BASELINES[teacher.parametrisation.process])
  unavailable = [n for n in names if n not in offered]
  if unavailable:
    raise ValueError(f"--baselines: {unavailable} not available for the {teacher.kind!r} "
                     f"model {model.name!r}; expected names from {list(offered)}")
  oj.validation.check_schedule_compatible(
      schedule, jnp.zeros((1,) + tuple(model.sample_shape)), model_name=model.name,
      guidance_scale=model.guidance_scale, teacher=teacher)
  label = f"{os.path.basename(args.schedule)} ({schedule.metadata.get('method', '?')})"
  methods = {label: lambda ctx, n: schedule}
  available = oj.compare.default_methods(baselines=names, kind=teacher.kind)
  refit = [args.refit] if args.refit else []
  methods.update({name: fn for name, fn in available.items() if name in names + refit})
  with progress.progress_bar(2 + len(methods), "compare", enabled=not args.quiet,
                             unit="task") as bar:
    result = oj.compare.run_comparison(
        model, steps=(schedule.num_steps,), num_fit=args.num_fit, num_eval=args.num_eval,
        num_teacher_steps=args.teacher_steps, methods=methods, keep_samples=False,
        progress=progress_messages(bar))
  print(f"model {model.name}: RMSE to the {args.teacher_steps}-step teacher on {args.num_eval} "
        f"held-out noises (mean [95% interval])")
  print(oj.compare.format_markdown(result))
  return 0


def figures(args) -> int:
  """The paper's figures as PNGs (`olss_jax.figures.paper_figures`)."""
  if is_stable_diffusion(args.model):
    raise ValueError("--model: figures run on the embedded models (default, digits, analytic)")
  which = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else list(FIGURES)
  unknown = [w for w in which if w not in FIGURES]
  if unknown:
    raise ValueError(f"--only: unknown figures {unknown}; expected names from {list(FIGURES)}")
  model = oj.compare.embedded_model(args.model, guidance_scale=args.guidance_scale)
  written = oj.figures.paper_figures(model, args.out_dir, which=which,
                                     steps=int_list(args.steps, "--steps"), num_fit=args.num_fit,
                                     num_eval=args.num_eval,
                                     num_teacher_steps=args.teacher_steps, quiet=args.quiet)
  for path in written:
    print(path)
  return 0


def warn_line(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
  """Warnings as one ``olss-jax: warning: ...`` line on stderr."""
  del category, filename, lineno, line
  print(f"olss-jax: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
