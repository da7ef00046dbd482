"""olss_jax._src.embedded: the models that run without a download, each with its teacher kind."""
import numpy as np
import pytest

import olss_jax as oj
from olss_jax._src import embedded


@pytest.mark.parametrize("name,kind,shape", [
    ("digits", "ddim", (1, 8, 8)), ("digits-flow", "flow", (1, 8, 8)),
    ("analytic", "ddim", (16,)), ("analytic-flow", "flow", (16,)),
    ("analytic-latent", "ddim", (4, 64, 64))])
def test_embedded_models_carry_their_teacher_kind(name, kind, shape):
  model = oj.compare.embedded_model(name)
  assert model.kind == kind and tuple(model.sample_shape) == shape
  assert embedded.resolved_name(model) == name
  teacher = model.make_teacher(10)
  assert teacher.kind == kind and teacher.num_steps == 10
  if kind == "flow":
    assert model.alphas_cumprod is None
    assert np.asarray(teacher.timesteps).dtype == np.float32 and float(teacher.levels[0]) == 1.0
  else:
    np.testing.assert_array_equal(teacher.levels[:-1],
                                  model.alphas_cumprod[np.asarray(teacher.timesteps)])
  meta = embedded.schedule_metadata(model)
  assert meta["num_train_timesteps"] == 1000 and meta["sample_shape"] == list(shape)


def test_embedded_rejects_unknown_names_and_guidance_for_analytic_models():
  with pytest.raises(ValueError, match="model"):
    oj.compare.embedded_model("imagenet")
  with pytest.raises(ValueError, match="guidance_scale"):
    oj.compare.embedded_model("analytic-flow", guidance_scale=2.0)


def test_a_flow_store_is_collected_with_its_teacher_and_fitted_closed_loop(tmp_path):
  store = tmp_path / "flow-store"
  info = embedded.collect_embedded_to_directory(store, "analytic-flow", num_images=6,
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
