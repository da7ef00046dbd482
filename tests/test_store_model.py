"""olss_jax.store.model_record / schedule_metadata / store_denoiser (store_model.py): the model
a store's teacher ran, read back from its manifest and rebuilt for closed-loop fits.

Ground truth: a store of the closed-form ``analytic`` model collected by
`olss_jax.store.collect_embedded_to_directory` (its noises and outputs on disk), and the
model itself (`olss_jax.compare.embedded_model`).
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

F32_REPLAY_RTOL = 1e-5   # the rebuilt model re-run eagerly vs the teacher's jitted scan (float32)
F32_REPLAY_ATOL = 1e-5
K = 20


@pytest.fixture(scope="module")
def analytic_store(tmp_path_factory):
  store = tmp_path_factory.mktemp("store-model") / "analytic"
  oj.store.collect_embedded_to_directory(store, "analytic", num_images=5, images_per_chunk=2,
                                         num_teacher_steps=K, steps_per_chunk=None)
  return store


def test_store_model_records_the_embedded_model_and_its_schedule_facts(analytic_store):
  model = oj.compare.embedded_model("analytic")
  record = oj.store.model_record(analytic_store)
  assert record == {"source": "embedded", "name": "analytic", "model_name": model.name,
                    "guidance_scale": None}
  meta = oj.store.schedule_metadata(analytic_store)
  assert meta == {"model_name": model.name, "sample_shape": list(model.sample_shape),
                  "num_train_timesteps": 1000}
  # a manifest read once is passed on instead of read again: the same answers
  manifest = oj.store.read_manifest(analytic_store)
  assert oj.store.model_record(analytic_store, manifest=manifest) == record
  assert oj.store.schedule_metadata(analytic_store, manifest=manifest) == meta


def test_store_model_store_denoiser_replays_the_teacher(analytic_store):
  traj = oj.store.load_store(analytic_store)
  assert traj.batch_size == 5 and traj.num_teacher_steps == K
  denoise_fn = oj.store.store_denoiser(analytic_store)
  again = oj.collect_trajectory(denoise_fn, traj.x_T, traj.teacher)
  chex.assert_trees_all_close(np.asarray(again.model_outputs), np.asarray(traj.model_outputs),
                              rtol=F32_REPLAY_RTOL, atol=F32_REPLAY_ATOL)
  # the store's model is the embedded one (unconditional: one denoiser for every noise)
  model = oj.compare.embedded_model("analytic")
  x, t = jnp.asarray(traj.x_T), traj.timesteps[3]
  chex.assert_trees_all_close(denoise_fn(x, t), model.denoiser(None)(x, t), rtol=0)


def test_store_model_schedule_metadata_follows_the_store_layouts(tmp_path):
  # olss_jax 0.1's Stable Diffusion stores: the whole user config is the schedule's record
  old = {"config": {"user": {"model": "sd-tiny", "resolution": 16, "guidance_scale": 7.5}}}
  assert oj.store.schedule_metadata(tmp_path, manifest=old) == old["config"]["user"]
  with pytest.raises(ValueError, match="does not record the model"):
    oj.store.model_record(tmp_path, manifest=old)
  # a config of one's own: no schedule facts, no model
  mine = {"config": {"user": {"model_name": "mixture", "seed": 1}}}
  assert oj.store.schedule_metadata(tmp_path, manifest=mine) == {}
  with pytest.raises(ValueError, match="does not record the model"):
    oj.store.model_record(tmp_path, manifest=mine)


def test_store_model_refuses_what_it_cannot_rebuild_by_name(analytic_store, tmp_path):
  # a store collected with a config of one's own records no model
  alphas = oj.scaled_linear_alphas_cumprod()
  den = oj.analytic.mixture_denoiser(
      oj.analytic.make_gaussian_mixture(jax.random.key(0), 3, (4,)), alphas)
  own = tmp_path / "own"
  oj.store.collect_to_directory(own, lambda i: den,
                                lambda i: jax.random.normal(jax.random.key(i), (2, 4)), alphas,
                                num_chunks=1, num_teacher_steps=10,
                                config={"model_name": "mixture-3"})
  for read in (oj.store.model_record, oj.store.store_denoiser):
    with pytest.raises(ValueError, match=r"^directory: .*does not record the model"):
      read(own)
  assert oj.store.schedule_metadata(own) == {}
  # unfinished chunks: resume first
  manifest = oj.store.read_manifest(analytic_store)
  del manifest["chunks"]["1"]
  with pytest.raises(ValueError, match=r"directory: .*missing chunks \[1\]"):
    oj.store.store_denoiser(analytic_store, manifest=manifest)
  # an embedded model cannot be replaced by a Stable Diffusion one, nor the other way round
  with pytest.raises(ValueError, match="sd: the store holds the embedded model 'analytic'"):
    oj.store.store_denoiser(analytic_store, sd=object())
  sd_manifest = oj.store.read_manifest(analytic_store)
  sd_manifest["config"]["user"]["model"] = {"source": "stable_diffusion", "name": "sd-tiny",
                                            "guidance_scale": 7.5}
  with pytest.raises(ValueError, match=r"sd: the store holds Stable Diffusion \('sd-tiny'\)"):
    oj.store.store_denoiser(analytic_store, manifest=sd_manifest)
