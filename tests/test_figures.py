"""Every figure function writes a non-empty PNG of the requested size, on tiny inputs."""
import jax
import numpy as np
import pytest

import figure_helpers
import olss_jax as oj

K = 20      # teacher steps: tiny but a real teacher
B = 3       # noises
DIM = 16


@pytest.fixture(scope="module")
def model():
  return oj.compare.analytic_comparison_model()


@pytest.fixture(scope="module")
def traj(model):
  x_T = jax.random.normal(jax.random.key(0), (B, DIM))
  return oj.collect_trajectory(model.denoiser(None), x_T, model.alphas_cumprod, K)


def test_correlation_matrix_is_a_correlation(traj):
  corr, steps = oj.figures.correlation_matrix(traj, num_points=5)
  assert corr.shape == (2 * steps.size, 2 * steps.size)
  np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-6)
  np.testing.assert_allclose(corr, corr.T, atol=1e-12)
  assert np.all(np.abs(corr) <= 1 + 1e-9)
  # x_T (state 0) is the first noise: its correlation with itself is 1, with e_0 close to 1
  # (at t = T the model output is nearly the noise itself).
  assert corr[0, steps.size] > 0.9


def test_correlation_figure_png(traj, tmp_path):
  path = tmp_path / "corr.png"
  oj.figures.correlation_figure(traj, num_points=8, path=path, figsize=(4, 3), dpi=50)
  assert figure_helpers.png_size(path) == (200, 150)
  assert path.stat().st_size > 1000


def test_generation_paths_figure_png(model, traj, tmp_path):
  denoise = model.denoiser(None)
  sched = oj.baselines.ddim_schedule(model.alphas_cumprod, [999, 500, 0])
  hist = oj.sample_states(denoise, sched, traj.x_T)
  path = tmp_path / "paths.png"
  oj.figures.generation_paths_figure({"ddim": hist}, traj.states, samples=(0, 1), path=path,
                             figsize=(6, 3), dpi=40)
  assert figure_helpers.png_size(path) == (240, 120)
  with pytest.raises(ValueError, match="histories"):
    oj.figures.generation_paths_figure({}, traj.states)


def test_error_vs_steps_figure_png(tmp_path):
  rows = [{"method": m, "steps": n, "rmse": r, "rmse_lo": r * 0.9, "rmse_hi": r * 1.1}
          for m, scale in (("ddim", 1.0), ("olss", 0.3)) for n, r in ((5, scale), (10, scale / 3))]
  comparison = oj.compare.Comparison(rows=rows, schedules={}, samples={}, eval_conditions=None,
                                     info={})
  path = tmp_path / "errors.png"
  oj.figures.error_vs_steps_figure(comparison, path=path, figsize=(5, 4), dpi=30)
  assert figure_helpers.png_size(path) == (150, 120)
  with pytest.raises(ValueError, match="metric"):
    oj.figures.error_vs_steps_figure(rows, metric="fid")


def test_weights_figure_png(model, traj, tmp_path):
  fitted, _ = oj.fit_weights(traj, oj.uniform_path(traj, 4))
  ddim = oj.baselines.ddim_baseline_schedule(model.alphas_cumprod, 4)
  path = tmp_path / "weights.png"
  oj.figures.weights_figure({"olss": fitted, "ddim": ddim}, path=path, figsize=(6, 3), dpi=40)
  assert figure_helpers.png_size(path) == (240, 120)


def test_image_grid_figure_and_mosaic(tmp_path):
  rng = np.random.default_rng(0)
  rows = {"teacher": rng.uniform(-1, 1, (4, 1, 8, 8)), "olss": rng.uniform(-1, 1, (4, 1, 8, 8))}
  path = tmp_path / "grid.png"
  oj.figures.image_grid_figure(rows, path=path, cell_inches=0.5, dpi=40)
  width, height = figure_helpers.png_size(path)
  assert (width, height) == (round((4 + 1.4) * 0.5 * 40), round((2 + 0.5) * 0.5 * 40))
  mosaic = tmp_path / "mosaic.png"
  grid = oj.figures.save_image_grid(rng.uniform(-1, 1, (5, 1, 8, 8)), mosaic, ncols=3, scale=2)
  assert figure_helpers.png_size(mosaic) == (grid.shape[1], grid.shape[0]) == ((3 * 9 + 1) * 2, (2 * 9 + 1) * 2)
  rgb = oj.figures.to_display_images(np.zeros((2, 16, 16, 3), np.uint8))
  assert rgb.shape == (2, 16, 16, 3) and rgb.max() == 0
  vectors = oj.figures.to_display_images(np.arange(10.0).reshape(2, 5))
  assert vectors.shape == (2, 3, 3) and vectors.max() == 1.0


def test_bad_inputs_name_the_argument(tmp_path):
  with pytest.raises(ValueError, match="images"):
    oj.figures.to_display_images(np.zeros(3))
  with pytest.raises(ValueError, match="ncols"):
    oj.figures.save_image_grid(np.zeros((2, 4)), tmp_path / "x.png", ncols=0)
  with pytest.raises(ValueError, match="rows"):
    oj.figures.image_grid_figure({})


def test_image_grids_are_png_or_real_jpeg_by_extension(tmp_path):
  images = np.random.default_rng(1).uniform(-1, 1, (3, 1, 8, 8))
  for name, magic in (("g.png", b"\x89PNG"), ("g", b"\x89PNG"), ("g.jpg", b"\xff\xd8\xff"),
                      ("g.JPEG", b"\xff\xd8\xff")):
    oj.figures.save_image_grid(images, tmp_path / name)
    assert (tmp_path / name).read_bytes()[:len(magic)] == magic, name
  with pytest.raises(ValueError, match=r"path: expected a \.png, \.jpg or \.jpeg"):
    oj.figures.save_image_grid(images, tmp_path / "g.gif")
  assert not (tmp_path / "g.gif").exists()
