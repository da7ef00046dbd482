"""The paper's figures end to end (workbench.py): `paper_figures` and Figure 5's data,
`generation_paths`, on the analytic comparison model at toy size."""
import chex
import numpy as np
import pytest

import figure_helpers
import olss_jax as oj

K = 20        # teacher steps: tiny but a real teacher
N = 2         # the step count drawn
NUM_FIT, NUM_EVAL, SHOWN = 4, 5, 3
FIT_SEED, EVAL_SEED = 1, 2
# float32: the jitted `sample_states` against eager `sample` (same schedule, same noises)
F32_RTOL, F32_ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def model():
  return oj.compare.analytic_comparison_model()


@pytest.fixture(scope="module")
def comparison(model):
  methods = oj.compare.default_methods(baselines=list(oj.figures.FIGURE_BASELINES), peers=False,
                                       kind=model.kind, max_evaluations=20)
  return oj.compare.run_comparison(model, steps=[N], num_fit=NUM_FIT, num_eval=NUM_EVAL,
                                   num_teacher_steps=K, methods=methods, fit_seed=FIT_SEED,
                                   eval_seed=EVAL_SEED)


def test_generation_paths_start_from_held_out_noises_with_their_own_teacher(model, comparison):
  histories, teacher = oj.figures.generation_paths(model, comparison, N, num_shown=SHOWN)
  held_out = np.asarray(oj.compare.draw_noises(model, EVAL_SEED, NUM_EVAL))[:SHOWN]
  fitting = np.asarray(oj.compare.draw_noises(model, FIT_SEED, NUM_FIT))
  chex.assert_shape(teacher, (K + 1, SHOWN) + tuple(model.sample_shape))
  np.testing.assert_array_equal(teacher[0], held_out)  # evaluation noises, never fitting ones
  assert not np.any(np.all(np.isclose(teacher[0][:, None], fitting[None]), axis=-1))
  want = oj.collect_trajectory(model.denoiser(None), held_out, model.alphas_cumprod, K)
  np.testing.assert_array_equal(teacher, np.asarray(want.states))  # the same teacher run
  assert set(histories) == set(oj.figures.PATH_METHODS)
  for method, hist in histories.items():
    chex.assert_shape(hist, (N + 1, SHOWN) + tuple(model.sample_shape))
    np.testing.assert_array_equal(hist[0], held_out)  # every sampler starts from the same noise
    final = oj.sample(model.denoiser(None), comparison.schedules[(method, N)], held_out)
    np.testing.assert_allclose(hist[-1], np.asarray(final), rtol=F32_RTOL, atol=F32_ATOL)
  only, _ = oj.figures.generation_paths(model, comparison, N, num_shown=1, methods=["ddim", "x"])
  assert list(only) == ["ddim"] and only["ddim"].shape[1] == 1
  for bad in (0, NUM_EVAL + 1):
    with pytest.raises(ValueError, match="num_shown"):
      oj.figures.generation_paths(model, comparison, N, num_shown=bad)


def test_paper_figures_writes_the_paths_and_weights_pngs(model, tmp_path):
  written = oj.figures.paper_figures(model, tmp_path, which=["paths", "weights"], steps=[N],
                                     num_fit=NUM_FIT, num_eval=NUM_EVAL, num_teacher_steps=K,
                                     fit_seed=FIT_SEED, eval_seed=EVAL_SEED, peers=False,
                                     max_evaluations=20, quiet=True)
  assert [p.rsplit("/", 1)[1] for p in written] == ["paths.png", "weights.png"]
  assert all(figure_helpers.png_size(p)[0] > 0 for p in written)
  with pytest.raises(ValueError, match="which: unknown figures"):
    oj.figures.paper_figures(model, tmp_path, which=["heatmap"])
  with pytest.raises(ValueError, match="steps"):
    oj.figures.paper_figures(model, tmp_path, steps=[0])
