"""The GPU figures in one run: SD 1.5 generation, the SD-sized fit on the device, the main job.

Three parts, each printed as it finishes (``--parts`` picks a subset):

* ``generate``: builds the real Stable Diffusion 1.5 architecture at 512 px (its published
  configs, written below; random bfloat16 weights, since timing does not depend on their
  values) and times `olss_jax.stable_diffusion.generate` (text encoding, the n-step sampler
  with classifier-free guidance, VAE decode, all under one jit) for 5, 10 and 20 steps at batch
  1 and 8: seconds per image, compile time separately, the parts alone (the UNet's share and
  the sampler's own overhead) and the peak device memory. The text-encoder seconds are those
  of `olss_jax.stable_diffusion.encode_prompts` (host tokenisation of the prompts and of the
  empty negative prompts, then one jitted CLIP encoder call on both halves), the VAE seconds
  those of a jitted `decode_latents`, the UNet seconds n guided UNet calls alone; what is
  left of the total is the sampler's overhead. The sampler is the same for every
  schedule (OLSS and DDIM differ only in the weight values), so a DDIM schedule of n steps
  stands in for a fitted one.
* ``fit``: a synthetic Stable-Diffusion-sized teacher (32 x 4x64x64 latents, 1000 steps) ->
  `trajectory_stats` + `search_path` + `fit_weights` (n = 10) on the default device and on
  the host CPU, same data, same run; cold (with compilation) and warm.
* ``main-job``: the wall time of the main job (`olss-jax demo` on the digits model) on the
  default device.

Usage:
  python -m olss_jax.benchmarks.sd_gpu_benchmark                     # everything, full size
  python -m olss_jax.benchmarks.sd_gpu_benchmark --model /path/sd15  # real Flax weights from disk
  python -m olss_jax.benchmarks.sd_gpu_benchmark --tiny              # toy size on the CPU (tests)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

import olss_jax as oj
from olss_jax.cli import main as cli_main

# Stable Diffusion 1.5 (stable-diffusion-v1-5/stable-diffusion-v1-5), published configs.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"))
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    bos_token_id=49406, eos_token_id=49407, pad_token_id=1)
SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, steps_offset=1, clip_sample=False, prediction_type="epsilon")

# Toy size for the CPU (the test suite runs it so the script never rots).
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32,),
    attention_head_dim=8, cross_attention_dim=32, down_block_types=("CrossAttnDownBlock2D",),
    up_block_types=("CrossAttnUpBlock2D",))
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=16,
    block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2)
TINY_TEXT = dict(
    vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
    pad_token_id=1)

PROMPT = "a photograph of an astronaut riding a horse"


def _tokenizer(directory: str, max_length: int, bos: int, eos: int):
  """A CLIP tokenizer over a small vocabulary (tokenisation is host-side and cheap; the real
  vocabulary cannot be downloaded here). Token ids stay below every vocabulary size used."""
  from transformers import CLIPTokenizer  # pylint: disable=import-outside-toplevel
  specials = {bos: "<|startoftext|>", eos: "<|endoftext|>"}
  letters = list("abcdefghijklmnopqrstuvwxyz")
  tokens = ["<unk>"] + letters + [c + "</w>" for c in letters]
  vocab = {tok: i + 2 for i, tok in enumerate(tokens)}
  vocab.update({tok: i for i, tok in specials.items()})
  with open(os.path.join(directory, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  with open(os.path.join(directory, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n")
  return CLIPTokenizer(os.path.join(directory, "vocab.json"),
                       os.path.join(directory, "merges.txt"), model_max_length=max_length)


def _drop_flax_notice(record: logging.LogRecord) -> bool:
  """A logging filter: drops diffusers' / transformers' notice that their Flax classes go."""
  message = record.getMessage()
  return ("Flax classes are deprecated" not in message
          and "TensorFlow and JAX classes are deprecated" not in message)


def _silence_flax_notice() -> None:
  """Filters the notice on the two libraries' loggers and handlers (idempotent)."""
  for name in ("diffusers", "transformers"):
    logger = logging.getLogger(name)
    for target in (logger, *logger.handlers):
      target.addFilter(_drop_flax_notice)


def _random_params(shapes, seed: int, dtype):
  """Random weights (values do not affect timing): ones for norm scales, fan-in scaled
  normals for kernels, small normals elsewhere. Drawn on the host with numpy (no per-shape
  compilation; about a second per 100M values) and put on the device in ``dtype``."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flatten_dict(dict(shapes)).items():
    if path[-1] == "scale":
      value = np.ones(leaf.shape, np.float32)
    else:
      std = 1.0 / np.sqrt(max(1, int(np.prod(leaf.shape[:-1])))) if path[-1] == "kernel" else 0.02
      value = rng.standard_normal(leaf.shape, np.float32) * np.float32(std)
    out[path] = jax.device_put(value.astype(dtype))
  return unflatten_dict(out)


def build_random_sd(*, tiny: bool, dtype) -> oj.stable_diffusion.StableDiffusion:
  """The SD 1.5 architecture (or the toy one) with random weights, built in memory."""
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel  # pylint: disable=import-outside-toplevel
  from transformers import CLIPTextConfig, FlaxCLIPTextModel  # pylint: disable=import-outside-toplevel
  _silence_flax_notice()
  unet_cfg, vae_cfg, text_cfg = (TINY_UNET, TINY_VAE, TINY_TEXT) if tiny else (
      SD15_UNET, SD15_VAE, SD15_TEXT)
  unet = FlaxUNet2DConditionModel(dtype=dtype, **unet_cfg)
  vae = FlaxAutoencoderKL(dtype=dtype, **vae_cfg)
  text_encoder = FlaxCLIPTextModel(CLIPTextConfig(**text_cfg), dtype=dtype, _do_init=False)
  max_length = text_cfg["max_position_embeddings"]
  key = jax.random.PRNGKey(0)
  params = {
      "unet": _random_params(jax.eval_shape(unet.init_weights, key), 1, dtype),
      "vae": _random_params(jax.eval_shape(vae.init_weights, key), 2, dtype),
      "text_encoder": _random_params(
          jax.eval_shape(lambda k: text_encoder.init_weights(k, (1, max_length)), key), 3,
          dtype),
  }
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = _tokenizer(tmp, max_length, text_cfg["bos_token_id"], text_cfg["eos_token_id"])
  info = oj.stable_diffusion.ModelInfo(
      name="sd15-architecture-random" if not tiny else "tiny-random", path="",
      noise=oj.stable_diffusion.noise_config_from_dict(SD15_SCHEDULER),
      dtype=jnp.dtype(dtype).name, latent_channels=unet_cfg["in_channels"],
      vae_scale_factor=2 ** (len(vae_cfg["block_out_channels"]) - 1),
      sample_size=unet_cfg["sample_size"], scaling_factor=vae_cfg.get("scaling_factor", 0.18215),
      max_length=max_length)
  return oj.stable_diffusion.StableDiffusion(unet, vae, text_encoder, tokenizer, params, info)


def _timed(fn, repeats: int, *, first=None) -> float:
  """Median wall seconds of ``fn()`` (which blocks), after one warm-up (compile) call.

  ``first`` (a list) receives the seconds of the warm-up call (compilation plus one run).
  """
  start = time.perf_counter()
  jax.block_until_ready(fn())
  if first is not None:
    first.append(time.perf_counter() - start)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _unet_loop(sd, embeds, negative, latents, num_steps):
  """n guided UNet calls alone (no sampler weights), with a data dependency between calls."""
  denoise = oj.stable_diffusion.sd_denoiser(sd, embeds, negative_embeds=negative)
  t = jnp.asarray(oj.baselines.ddim_timesteps(num_steps, steps_offset=1))

  def body(i, x):
    return 0.9 * x + 0.1 * denoise(x, t[i])

  return jax.lax.fori_loop(0, num_steps, body, latents)


_unet_loop_jit = jax.jit(_unet_loop, static_argnums=4)


def peak_memory_gib() -> float | None:
  """Peak bytes in use on device 0 (None where the backend has no memory stats, e.g. CPU)."""
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**30


def benchmark(sd, *, steps, batches, repeats: int):
  """Times generate and its parts for each (steps, batch). Returns a list of row dicts."""
  rows = []
  noise = sd.info.noise
  for batch in batches:
    prompts = [PROMPT] * batch
    latents = jax.random.normal(jax.random.PRNGKey(batch), sd.latent_shape(batch), jnp.float32)
    encode = oj.stable_diffusion.encode_prompts  # tokenises, then one jitted encoder call
    text_s = _timed(lambda: encode(sd, prompts), repeats)
    embeds, negative = encode(sd, prompts)
    decode = jax.jit(oj.stable_diffusion.decode_latents)
    vae_s = _timed(lambda: decode(sd, latents), repeats)
    for num_steps in steps:
      schedule = oj.baselines.ddim_schedule(sd.alphas_cumprod,
                                  oj.baselines.ddim_timesteps(num_steps, steps_offset=noise.steps_offset),
                                  final_alpha_cumprod=noise.final_alpha_cumprod)
      first = []
      total_s = _timed(lambda: oj.stable_diffusion.generate(sd, schedule, prompts,
                                                            latents=latents), repeats, first=first)
      unet_s = _timed(lambda: _unet_loop_jit(sd, embeds, negative, latents, num_steps), repeats)
      overhead_s = total_s - unet_s - text_s - vae_s
      rows.append({
          "steps": num_steps, "batch": batch, "seconds_per_image": total_s / batch,
          "total_s": total_s, "unet_s": unet_s, "text_s": text_s, "vae_s": vae_s,
          "overhead_s": overhead_s, "unet_share": unet_s / total_s,
          "overhead_share": overhead_s / total_s, "peak_gib": peak_memory_gib(),
          "compile_s": first[0] - total_s,
      })
  return rows


def markdown(rows, device: str, dtype: str, title: str) -> str:
  """The rows as a markdown table."""
  lines = [f"{title} on {device} ({dtype}); median of the timed repeats, after compilation.",
           "",
           "| steps | batch | s / image | total s | UNet s (share) | text s | VAE s "
           "| sampler overhead s (share) | peak GiB | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    peak = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
    lines.append(
        f"| {r['steps']} | {r['batch']} | {r['seconds_per_image']:.4f} | {r['total_s']:.4f} "
        f"| {r['unet_s']:.4f} ({100 * r['unet_share']:.1f}%) | {r['text_s']:.4f} "
        f"| {r['vae_s']:.4f} | {r['overhead_s']:.4f} ({100 * r['overhead_share']:.1f}%) "
        f"| {peak} | {r['compile_s']:.1f} |")
  return "\n".join(lines)


def fit_benchmark(*, num_images: int, sample_shape, num_teacher_steps: int, num_steps: int,
                  devices) -> list[dict]:
  """Statistics + search + fit of one synthetic teacher on each device; cold and warm seconds."""
  traj = oj.testing.synthetic_trajectory(num_images, sample_shape, num_teacher_steps)
  rows = []
  for device in devices:
    with jax.default_device(device):
      on_device = traj.replace(x_T=jax.device_put(traj.x_T, device),
                               model_outputs=jax.device_put(traj.model_outputs, device))
      jax.block_until_ready(on_device.model_outputs)
      row = {"device": f"{device.platform}:{device.device_kind}"}
      for label in ("cold", "warm"):
        start = time.perf_counter()
        stats = oj.trajectory_stats(on_device)
        jax.block_until_ready(stats.factor)
        t_stats = time.perf_counter() - start
        path, info = oj.search_path(stats, num_steps)
        t_search = time.perf_counter() - start - t_stats
        schedule, _ = oj.fit_weights(stats, path)
        total = time.perf_counter() - start
        row[label] = {"stats_s": t_stats, "search_s": t_search,
                      "fit_s": total - t_stats - t_search, "total_s": total}
      row.update(path=np.asarray(path).tolist(), max_error=float(info.max_error),
                 weights=np.asarray(schedule.weights))
      rows.append(row)
  return rows


def fit_markdown(rows, title: str) -> str:
  """The fit rows as a markdown table (and whether every device found the same path)."""
  lines = [title, "", "| device | run | statistics s | search s | fit s | total s |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    for label in ("cold", "warm"):
      t = r[label]
      lines.append(f"| {r['device']} | {label} | {t['stats_s']:.3f} | {t['search_s']:.3f} | "
                   f"{t['fit_s']:.3f} | {t['total_s']:.3f} |")
  same = all(r["path"] == rows[0]["path"] for r in rows)
  diff = max(float(np.max(np.abs(r["weights"] - rows[0]["weights"]))) for r in rows)
  lines += ["", f"same path on every device: {same} ({rows[0]['path']}); max weight "
            f"difference {diff:.2e}"]
  return "\n".join(lines)


def main_job_seconds(*, tiny: bool) -> float:
  """Wall seconds of the main job (`olss-jax demo`, digits) on the default device."""
  argv = ["demo", "-q", "--out", ""]
  if tiny:
    argv += ["--model", "analytic", "--steps", "3", "--num-fit", "4", "--num-eval", "4",
             "--teacher-steps", "20", "--methods", "ddim", "olss"]
  start = time.perf_counter()
  if cli_main(argv) != 0:
    raise RuntimeError("the main job failed")
  return time.perf_counter() - start


PARTS = ("generate", "fit", "main-job")


def main(argv=None):
  """Runs the chosen parts and prints their tables; returns {part: rows or seconds}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="toy size (CPU smoke test)")
  parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
  parser.add_argument("--model", help="load real Flax weights from this directory instead")
  parser.add_argument("--steps", type=int, nargs="+", default=None)
  parser.add_argument("--batch", type=int, nargs="+", default=None)
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"],
                      help="default bfloat16; float32 with --tiny (bfloat16 is slow on CPUs)")
  args = parser.parse_args(argv)
  out = {}
  device = jax.devices()[0]
  print(f"JAX {jax.__version__}, default device {device.platform}:{device.device_kind}, "
        f"{len(jax.devices())} device(s)", flush=True)
  if "generate" in args.parts:
    out["generate"] = _generate_part(args)
  if "fit" in args.parts:
    size = dict(num_images=2, sample_shape=(4, 8, 8), num_teacher_steps=50, num_steps=4) \
        if args.tiny else dict(num_images=32, sample_shape=(4, 64, 64), num_teacher_steps=1000,
                               num_steps=10)
    devices = [device] if device.platform == "cpu" else [device, jax.devices("cpu")[0]]
    rows = fit_benchmark(devices=devices, **size)
    print(fit_markdown(rows, f"Statistics + search + fit of a synthetic teacher {size}"),
          flush=True)
    out["fit"] = rows
  if "main-job" in args.parts:
    seconds = main_job_seconds(tiny=args.tiny)
    print(f"main job (olss-jax demo{' at toy size' if args.tiny else ''}) on "
          f"{device.platform}: {seconds:.1f} s wall", flush=True)
    out["main-job"] = seconds
  return out


def _generate_part(args):
  """The generation part: builds (or loads) the model, times it, prints the table."""
  steps = args.steps or ([2] if args.tiny else [5, 10, 20])
  batches = args.batch or ([1] if args.tiny else [1, 8])
  repeats = args.repeats or (1 if args.tiny else 5)
  dtype = jnp.dtype(args.dtype or ("float32" if args.tiny else "bfloat16"))
  if args.model:
    sd = oj.stable_diffusion.load_stable_diffusion(args.model, dtype=dtype)
    title = f"OLSS generation with {sd.name}"
  else:
    sd = build_random_sd(tiny=args.tiny, dtype=dtype)
    title = ("OLSS generation, toy model" if args.tiny else
             "OLSS generation, Stable Diffusion 1.5 architecture (random weights)")
  height, width = sd.default_resolution
  title += f" at {height}x{width} px, text encoding and VAE decode included,"
  device = jax.devices()[0]
  rows = benchmark(sd, steps=steps, batches=batches, repeats=repeats)
  print(markdown(rows, f"{device.platform}:{device.device_kind}", dtype.name, title), flush=True)
  return rows


if __name__ == "__main__":
  main()
