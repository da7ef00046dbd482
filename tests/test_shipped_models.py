"""olss_jax.compare.embedded_model (shipped_models.py): the models that run without a download,
each with its teacher, and the stores collected from them."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj


@pytest.mark.parametrize("name,kind,shape", [
    ("digits", "ddim", (1, 8, 8)), ("digits-flow", "flow", (1, 8, 8)),
    ("mnist", "ddim", (1, 28, 28)), ("analytic", "ddim", (16,)), ("analytic-flow", "flow", (16,)),
    ("analytic-latent", "ddim", (4, 64, 64))])
def test_embedded_models_carry_their_teacher_kind(name, kind, shape, tmp_path):
  model = oj.compare.embedded_model(name)
  assert model.kind == kind and tuple(model.sample_shape) == shape
  teacher = model.make_teacher(10)
  assert teacher.kind == kind and teacher.num_steps == 10
  if kind == "flow":
    assert model.alphas_cumprod is None
    assert np.asarray(teacher.timesteps).dtype == np.float32 and float(teacher.levels[0]) == 1.0
  else:
    np.testing.assert_array_equal(teacher.levels[:-1],
                                  model.alphas_cumprod[np.asarray(teacher.timesteps)])
  # a store of the model records the name that rebuilds it and what a schedule fitted on it
  # records (a one-image, two-step store: the records, not the teacher, are under test)
  store = tmp_path / name
  oj.store.collect_embedded_to_directory(store, name, num_images=1, images_per_chunk=1,
                                         num_teacher_steps=2)
  assert oj.store.model_record(store)["name"] == name
  meta = oj.store.schedule_metadata(store)
  assert meta["num_train_timesteps"] == 1000 and meta["sample_shape"] == list(shape)


def test_embedded_rejects_unknown_names_and_guidance_for_analytic_models():
  with pytest.raises(ValueError, match="model"):
    oj.compare.embedded_model("imagenet")
  with pytest.raises(ValueError, match="guidance_scale"):
    oj.compare.embedded_model("analytic-flow", guidance_scale=2.0)


def test_a_flow_store_is_collected_with_its_teacher_and_fitted_closed_loop(tmp_path):
  store = tmp_path / "flow-store"
  info = oj.store.collect_embedded_to_directory(store, "analytic-flow", num_images=6,
                                                images_per_chunk=3, num_teacher_steps=40)
  del info
  traj = oj.store.load_store(store)
  assert traj.teacher.kind == "flow" and traj.num_teacher_steps == 40
  denoise_fn = oj.store.store_denoiser(store)
  sched = oj.fit_olss(traj, 4, denoise_fn=denoise_fn, method="olss-cl")
  # the rebuilt model is the one the teacher ran: its closed-loop fit reproduces the teacher's
  # own fitted states to the fit's residual, and the flow baselines run on the same teacher
  ref = np.asarray(traj.states[-1])
  out = np.asarray(oj.sample(denoise_fn, sched, traj.x_T))
  euler = oj.baseline_schedule("euler", traj.teacher, 4)
  out_euler = np.asarray(oj.sample(denoise_fn, euler, traj.x_T))
  assert np.sqrt(np.mean((out - ref) ** 2)) < 0.5 * np.sqrt(np.mean((out_euler - ref) ** 2))


# A model that uses its time input changes its output by a sizeable fraction of its scale
# between an early and a late teacher time; the 0.2 digits models (blind to t) changed it by
# 3e-7 of their scale. Float32 central differences in t (step FD_STEP on the 0..1000 scale;
# the UNets' sinusoidal time embedding has frequencies up to 1 per unit of t, so a step of 0.5
# would be off by ~4% on its fastest component)
# agree with jax.grad to FD_RTOL_FLOAT32: truncation O(h^2) and rounding ~1e-7 * |g| / h are
# both far below it.
MIN_RELATIVE_TIME_DEPENDENCE = 0.05
FD_STEP = 0.05
FD_RTOL_FLOAT32 = 2e-2


@pytest.mark.parametrize("name", [n for n in oj.compare.EMBEDDED_MODELS if n != "default"])
def test_every_embedded_model_depends_on_its_time_input(name):
  """A blind model cannot ship again: the output moves with t, and d/dt matches its differences."""
  model = oj.compare.embedded_model(name)
  x = jax.random.normal(jax.random.PRNGKey(3), (2,) + tuple(model.sample_shape), jnp.float32)
  f = model.denoiser(model.draw_conditions(0, 2))
  times = np.asarray(model.make_teacher(20).timesteps, np.float32)
  early, late = float(times[-3]), float(times[2])  # about 0.1 and 0.9 of the time range
  out_early, out_late = np.asarray(f(x, jnp.float32(early))), np.asarray(f(x, jnp.float32(late)))
  scale = max(np.max(np.abs(out_early)), np.max(np.abs(out_late)))
  change = np.max(np.abs(out_early - out_late))
  assert change > MIN_RELATIVE_TIME_DEPENDENCE * scale, (name, change, scale)
  probe = jax.random.normal(jax.random.PRNGKey(4), x.shape, jnp.float32)

  def g(t):
    return jnp.sum(f(x, t).astype(jnp.float32) * probe)

  t0 = jnp.float32(0.5 * (early + late))
  grad = float(jax.grad(g)(t0))
  fd = float((g(t0 + FD_STEP) - g(t0 - FD_STEP)) / (2 * FD_STEP))
  assert abs(grad) > 0, name
  np.testing.assert_allclose(grad, fd, rtol=FD_RTOL_FLOAT32, err_msg=name)
