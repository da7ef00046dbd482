"""Resumable chunked collection: kill it, resume it, get exactly the uninterrupted result."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from olss_jax._src import atomic
from olss_jax._src import store

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "olss_jax")

# One definition of the collection, shared by the test process and the child it kills.
# Chunks have 3 or 4 noises (sizes may differ); the noises depend only on the chunk index.
SETUP = textwrap.dedent("""
    import jax
    from olss_jax._src import analytic, noise, store

    ALPHAS = noise.scaled_linear_alphas_cumprod()
    DENOISE = analytic.mixture_denoiser(
        analytic.make_gaussian_mixture(jax.random.PRNGKey(0), 4, (8,)), ALPHAS)
    KEY = jax.random.PRNGKey(42)
    NUM_CHUNKS, K = 6, 40

    def noises(i):
      return jax.random.normal(jax.random.fold_in(KEY, i), (3 + i % 2, 8))

    def collect(directory, calls, callback=None, **kw):
      def denoise_for(i):
        calls.append(i)
        return DENOISE
      kw.setdefault("config", {"model_name": "mixture-4", "seed": 42})
      return store.collect_to_directory(directory, denoise_for, noises, ALPHAS,
                                        num_chunks=NUM_CHUNKS, num_teacher_steps=K,
                                        steps_per_chunk=10, callback=callback, **kw)
""")

# The child skips olss_jax/__init__ (which imports diffusers: slow) by registering a bare
# package, then collects and SIGKILLs itself halfway through chunk 3.
CHILD = SETUP + textwrap.dedent("""
    import os, signal, sys

    def on_progress(p):
      if p.status == "done":
        print("done", p.chunk_index, flush=True)
      if p.chunk_index == 3 and p.status == "step" and p.steps_done == 20:
        os.kill(os.getpid(), signal.SIGKILL)

    calls = []
    collect(sys.argv[1], calls, on_progress)
""")
BOOT = ("import sys, types; pkg = types.ModuleType('olss_jax'); pkg.__path__ = [sys.argv.pop(1)];"
        " sys.modules['olss_jax'] = pkg; exec(open(sys.argv.pop(1)).read())")

ENV = {}
exec(SETUP, ENV)  # pylint: disable=exec-used


def _assert_same_trajectory(a, b):
  assert a.teacher.kind == b.teacher.kind and a.teacher.config == b.teacher.config
  for field in ("timesteps", "x_T", "model_outputs", "levels"):
    x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
    assert x.dtype == y.dtype and x.shape == y.shape, field
    np.testing.assert_array_equal(x, y, err_msg=field)


def _fingerprints(directory, chunks):
  out = {}
  for i in chunks:
    st = os.stat(os.path.join(directory, store.chunk_file_name(i)))
    out[i] = (st.st_ino, st.st_mtime_ns, st.st_size)
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  directory = tmp_path_factory.mktemp("reference")
  calls = []
  info = ENV["collect"](directory, calls)
  assert calls == list(range(6)) and info.collected == tuple(range(6))
  return store.load_store(directory)


def test_reference_matches_one_collect_trajectory_per_chunk(reference):
  # Ground truth independent of the store: collect_trajectory on each chunk's noises.
  start = 0
  for i in range(ENV["NUM_CHUNKS"]):
    x_T = ENV["noises"](i)
    traj = oj.collect_trajectory(ENV["DENOISE"], x_T, ENV["ALPHAS"], ENV["K"], steps_per_chunk=10)
    b = x_T.shape[0]
    np.testing.assert_array_equal(reference.x_T[start:start + b], np.asarray(x_T))
    np.testing.assert_array_equal(reference.model_outputs[:, start:start + b],
                                  np.asarray(traj.model_outputs))
    start += b
  assert reference.x_T.shape == (start, 8) and reference.model_outputs.shape == (40, start, 8)
  np.testing.assert_array_equal(reference.timesteps, oj.baselines.ddim_timesteps(40))


def test_killed_collection_resumes_without_recomputing(tmp_path, reference):
  directory = tmp_path / "store"
  child_src = tmp_path / "child.py"
  child_src.write_text(CHILD)
  proc = subprocess.run([sys.executable, "-c", BOOT, PKG, str(child_src), str(directory)],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert proc.stdout.split("\n")[:-1] == ["done 0", "done 1", "done 2"]
  manifest = store.read_manifest(directory)
  assert sorted(manifest["chunks"]) == ["0", "1", "2"]
  before = _fingerprints(directory, range(3))

  calls, events = [], []
  info = ENV["collect"](directory, calls, events.append)
  assert calls == [3, 4, 5]  # the model was never called for finished chunks
  assert info.skipped == (0, 1, 2) and info.collected == (3, 4, 5) and info.recovered == ()
  assert _fingerprints(directory, range(3)) == before  # same inode, mtime, size: untouched
  assert [e.chunk_index for e in events if e.status == "skipped"] == [0, 1, 2]
  assert [e.chunk_index for e in events if e.status == "done"] == [3, 4, 5]
  _assert_same_trajectory(store.load_store(directory), reference)
  assert not [n for n in os.listdir(directory) if atomic.is_temp_name(n)]


def test_keyboard_interrupt_then_resume(tmp_path, reference):
  def interrupt(p):
    if p.chunk_index == 2 and p.status == "step" and p.steps_done == 30:
      raise KeyboardInterrupt

  calls = []
  with pytest.raises(KeyboardInterrupt):
    ENV["collect"](tmp_path, calls, interrupt)
  assert calls == [0, 1, 2]
  assert sorted(store.read_manifest(tmp_path)["chunks"]) == ["0", "1"]
  assert not os.path.exists(tmp_path / store.chunk_file_name(2))
  calls = []
  info = ENV["collect"](tmp_path, calls)  # the lock was released
  assert calls == [2, 3, 4, 5] and info.skipped == (0, 1)
  _assert_same_trajectory(store.load_store(tmp_path), reference)


def test_chunk_written_but_not_recorded_is_adopted(tmp_path, reference):
  ENV["collect"](tmp_path, [])
  manifest = store.read_manifest(tmp_path)
  del manifest["chunks"]["4"]  # as if killed between the chunk's rename and the manifest's
  (tmp_path / store.MANIFEST).write_text(json.dumps(manifest))
  calls = []
  info = ENV["collect"](tmp_path, calls)
  assert calls == [] and info.skipped == tuple(range(6))
  assert "4" in store.read_manifest(tmp_path)["chunks"]
  _assert_same_trajectory(store.load_store(tmp_path), reference)


def test_corrupted_chunk_is_moved_aside_and_recomputed(tmp_path, reference):
  ENV["collect"](tmp_path, [])
  path = tmp_path / store.chunk_file_name(1)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 1
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match="checksum"):
    store.load_store(tmp_path)
  calls = []
  with pytest.warns(UserWarning, match="chunk 1: .*checksum"):
    info = ENV["collect"](tmp_path, calls)
  assert calls == [1] and info.recovered == (1,) and info.collected == ()
  assert len([n for n in os.listdir(tmp_path) if ".corrupt-" in n]) == 1
  _assert_same_trajectory(store.load_store(tmp_path), reference)


def test_config_mismatch_raises_and_touches_nothing(tmp_path):
  ENV["collect"](tmp_path, [])
  before = _fingerprints(tmp_path, range(6))
  manifest_before = (tmp_path / store.MANIFEST).read_bytes()
  alphas, noises, denoise = ENV["ALPHAS"], ENV["noises"], ENV["DENOISE"]
  cases = [
      (dict(config={"model_name": "other", "seed": 42}), "model_name"),
      (dict(alphas_cumprod=oj.linear_alphas_cumprod()), "levels_sha256"),
      (dict(num_teacher_steps=50), "num_teacher_steps"),
      (dict(num_chunks=7), "num_chunks"),
      (dict(final_alpha_cumprod=float(alphas[0])), "final_alpha_cumprod"),
      (dict(noises_for_chunk=lambda i: noises(i) + 1.0), "seed change"),
      (dict(noises_for_chunk=lambda i: jnp.zeros((3, 9))), "sample shape"),
  ]
  for change, match in cases:
    kw = dict(alphas_cumprod=alphas, noises_for_chunk=noises, num_chunks=6, num_teacher_steps=40,
              config={"model_name": "mixture-4", "seed": 42})
    kw.update(change)
    calls = []

    def denoise_for(i, calls=calls):
      calls.append(i)
      return denoise

    with pytest.raises(ValueError, match=match):
      store.collect_to_directory(tmp_path, denoise_for, kw.pop("noises_for_chunk"),
                                 kw.pop("alphas_cumprod"), steps_per_chunk=10, **kw)
    assert calls == []
  assert _fingerprints(tmp_path, range(6)) == before
  assert (tmp_path / store.MANIFEST).read_bytes() == manifest_before


def test_non_finite_model_output_names_chunk_step_and_sample(tmp_path):
  def nan_at_500(x, t):
    return jnp.where((t == 500) & (jnp.arange(x.shape[0]) == 1)[:, None], jnp.nan, 0.1 * x)

  with pytest.raises(ValueError, match=r"chunk 0: .*first at step 19, sample 1"):
    store.collect_to_directory(tmp_path, lambda i: nan_at_500, ENV["noises"], ENV["ALPHAS"],
                               num_chunks=2, num_teacher_steps=40)
  assert store.read_manifest(tmp_path)["chunks"] == {}
  assert not os.path.exists(tmp_path / store.chunk_file_name(0))


def test_partial_and_missing_stores(tmp_path):
  with pytest.raises(ValueError, match="no manifest.json"):
    store.load_store(tmp_path)

  def stop_at_chunk_3(p):
    if p.chunk_index == 3:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    ENV["collect"](tmp_path, [], stop_at_chunk_3)
  with pytest.raises(ValueError, match=r"missing chunks \[3, 4, 5\]"):
    store.load_store(tmp_path)
  partial = store.load_store(tmp_path, allow_partial=True)
  assert partial.x_T.shape == (3 + 4 + 3, 8)
  (tmp_path / store.MANIFEST).write_text("{not json")
  with pytest.raises(ValueError, match="corrupted manifest"):
    store.load_store(tmp_path)


def test_stray_files_locks_and_foreign_directories(tmp_path):
  ENV["collect"](tmp_path, [])
  stray = tmp_path / (atomic.temp_name(store.chunk_file_name(0)))
  stray.write_bytes(b"half a chunk")
  calls = []
  ENV["collect"](tmp_path, calls)
  assert calls == [] and not stray.exists()  # removed under the lock, never loaded
  fd = os.open(tmp_path / ".lock", os.O_RDWR)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(RuntimeError, match="another process"):
      ENV["collect"](tmp_path, [])
  finally:
    os.close(fd)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / store.chunk_file_name(0)).write_bytes(b"x")
  with pytest.raises(ValueError, match="no manifest.json"):
    ENV["collect"](foreign, [])
  with pytest.raises(TypeError, match="callables"):
    store.collect_to_directory(tmp_path, ENV["DENOISE"], None, ENV["ALPHAS"], num_chunks=1)


def test_store_to_fit_to_file_to_sampler(tmp_path, reference):
  # The whole pipeline through files: loaded teacher -> fit -> saved schedule -> sample.
  schedule, _ = oj.fit_weights(reference, oj.uniform_path(reference, 5))
  oj.save_schedule(tmp_path / "olss5.safetensors", schedule)
  loaded = oj.load_schedule(tmp_path / "olss5.safetensors")
  assert loaded.metadata == schedule.metadata
  x_T = jax.random.normal(jax.random.PRNGKey(7), (5, 8))  # held-out noises
  for run in (oj.sample, jax.jit(oj.sample)):
    np.testing.assert_array_equal(np.asarray(run(ENV["DENOISE"], loaded, x_T)),
                                  np.asarray(run(ENV["DENOISE"], schedule, x_T)))


def test_statistics_of_a_store_equal_those_of_the_loaded_trajectory(tmp_path, reference):
  ENV["collect"](tmp_path, [])
  streamed = store.stats_from_store(tmp_path)
  whole = oj.trajectory_stats(reference)
  np.testing.assert_allclose(streamed.gram, whole.gram, rtol=1e-12)
  assert streamed.num_images == reference.batch_size and streamed.factor is not None


def test_version_1_stores_load_and_are_not_appended_to(tmp_path, reference):
  """A store of olss_jax 0.1 (v1 manifest, v1 container chunks) still loads."""
  from olss_jax._src import container  # pylint: disable=import-outside-toplevel
  sizes = [3 + i % 2 for i in range(2)]
  chunks, start = {}, 0
  for i, b in enumerate(sizes):
    arrays = [("timesteps", np.asarray(reference.timesteps, np.int32)),
              ("x_T", np.asarray(reference.x_T[start:start + b])),
              ("model_outputs", np.asarray(reference.model_outputs[:, start:start + b])),
              ("alphas", np.asarray(reference.levels, np.float64))]
    with open(tmp_path / f"chunk-{i:05d}.olss", "wb") as f:
      digest = container.write_container(f, "olss_jax.trajectory", arrays,
                                         {"chunk_index": i, "store_config": {"v": 1}})
    chunks[str(i)] = {"file": f"chunk-{i:05d}.olss", "sha256": digest, "batch_size": b,
                      "size": os.path.getsize(tmp_path / f"chunk-{i:05d}.olss")}
    start += b
  manifest = {"format": "olss_jax.store", "version": 1,
              "config": {"v": 1, "num_chunks": 2, "num_teacher_steps": 40},
              "data": {"dtype": "float32", "sample_shape": [8]}, "chunks": chunks}
  (tmp_path / store.MANIFEST).write_text(json.dumps(manifest))
  loaded = store.load_store(tmp_path)
  np.testing.assert_array_equal(loaded.model_outputs, reference.model_outputs[:, :7])
  assert loaded.teacher.kind == "ddim"
  np.testing.assert_allclose(store.stats_from_store(tmp_path).gram,
                             oj.trajectory_stats(loaded).gram, rtol=1e-12)
  with pytest.raises(ValueError, match="version 1 store"):
    ENV["collect"](tmp_path, [])


def _sized(directory, num_images, per_chunk=3, **config):
  """A collection of ``num_images`` noises in chunks of ``per_chunk`` (config records it)."""
  def noises(i):
    return jax.random.normal(jax.random.fold_in(ENV["KEY"], i),
                             (min(per_chunk, num_images - i * per_chunk), 8))
  calls = []

  def denoise_for(i):
    calls.append(i)
    return ENV["DENOISE"]

  config = {"model_name": "mixture-4", "num_images": num_images, **config}
  info = store.collect_to_directory(directory, denoise_for, noises, ENV["ALPHAS"],
                                    num_chunks=-(-num_images // per_chunk), num_teacher_steps=20,
                                    steps_per_chunk=10, config=config)
  return info, calls


def test_a_finished_store_grows_to_more_images_and_never_shrinks(tmp_path):
  info, calls = _sized(tmp_path, 5)                  # chunks of 3 and 2 noises
  assert info.collected == (0, 1) and calls == [0, 1]
  first = store.load_store(tmp_path)
  before = _fingerprints(tmp_path, [0])
  info, calls = _sized(tmp_path, 8)                  # 3 + 3 + 2: the partial chunk 1 is redone
  assert info.skipped == (0,) and info.collected == (1, 2) and calls == [1, 2]
  assert _fingerprints(tmp_path, [0]) == before      # the full chunk was kept as it was
  grown = store.load_store(tmp_path)
  assert grown.batch_size == 8
  np.testing.assert_array_equal(grown.x_T[:3], first.x_T[:3])
  again, calls = _sized(tmp_path, 8)
  assert again.skipped == (0, 1, 2) and calls == []
  with pytest.raises(store.ConfigMismatchError, match="never shrinks"):
    _sized(tmp_path, 5)
  assert store.load_store(tmp_path).batch_size == 8


def test_a_config_mismatch_is_one_short_line_naming_the_setting(tmp_path):
  _sized(tmp_path, 3, seed=1)
  with pytest.raises(store.ConfigMismatchError) as info:
    _sized(tmp_path, 3, seed=2)
  message = str(info.value)
  assert "\n" not in message and len(message) < 300, message
  assert "user.seed=1 there, 2 here" in message
  assert info.value.differences == [("user.seed", 1, 2)]
  with pytest.raises(store.ConfigMismatchError, match="num_teacher_steps=20 there, 30 here"):
    store.collect_to_directory(tmp_path, lambda i: ENV["DENOISE"], ENV["noises"], ENV["ALPHAS"],
                               num_chunks=1, num_teacher_steps=30,
                               config={"model_name": "mixture-4", "num_images": 3, "seed": 1})
