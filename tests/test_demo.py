"""olss_jax._src.demo: the main job's quick and full comparisons, its cost estimate and grids."""
import pytest

import olss_jax as oj
from olss_jax._src import demo


def test_the_quick_run_is_the_headline_methods_at_5_and_10_steps():
  steps, num_eval, budget, names = demo.run_settings("ddim")
  assert steps == [5, 10] and num_eval == 64 and budget == 60
  assert names == ["ddim", "dpm_solver_pp", "unipc", "tuned-unipc", "olss", "olss-ft"]
  # a flow model's first-order solver is flow Euler
  assert demo.run_settings("flow")[3][0] == "euler"


def test_the_full_run_is_every_method_at_5_10_20_steps_on_256_noises():
  steps, num_eval, budget, names = demo.run_settings("ddim", full=True)
  assert steps == [5, 10, 20] and num_eval == 256 and budget == 400
  assert names == list(oj.compare.default_methods(kind="ddim"))
  assert "ld3-dpm_solver_pp" in names and "olss-ft" in names


def test_options_replace_the_preset_and_unknown_methods_name_the_option():
  steps, num_eval, budget, names = demo.run_settings("ddim", full=True, steps=[7], num_eval=9,
                                                     max_evaluations=3, methods=["olss"])
  assert (steps, num_eval, budget, names) == ([7], 9, 3, ["olss"])
  with pytest.raises(ValueError, match="--methods"):
    demo.run_settings("flow", methods=["ddim"])  # DDIM is not offered for a flow model


def test_task_costs_order_the_methods_by_their_model_calls():
  cost = lambda m, n: demo.task_cost(m, n, num_fit=32, num_eval=64, max_evaluations=60)  # noqa: E731
  assert 0 < cost("ddim", 5) < cost("ddim", 10) < cost("olss-cl", 10) < cost("olss-ft", 10)
  assert cost("tuned-unipc", 10) < cost("ld3-dpm_solver_pp", 10)


def test_the_headline_grid_picks_the_best_peer_by_held_out_rmse():
  rows = [{"method": m, "steps": 5, "rmse": r} for m, r in
          (("ddim", 0.3), ("dpm_solver_pp", 0.2), ("tuned-unipc", 0.09),
           ("ld3-dpm_solver_pp", 0.05), ("olss", 0.4), ("olss-ft", 0.04))]
  result = oj.compare.Comparison(rows=rows, schedules={}, samples={}, eval_conditions=None,
                                 info={})
  assert demo.headline_methods(result, 5) == [
      ("classical", "ddim"), ("classical", "dpm_solver_pp"),
      ("best peer", "ld3-dpm_solver_pp"), ("default", "olss-ft")]
  assert demo.headline_methods(result, 10) == []
