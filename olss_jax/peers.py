"""The learned-timestep peers of OLSS, each a `Schedule` for the one `olss_jax.sample`.

`gits_path` / `gits_schedule`: GITS (Chen et al., ICML 2024), timesteps by dynamic
programming on a one-step cost matrix from the teacher's warm-up trajectories.
`tuned_schedule`: a classical solver's timesteps tuned by `coordinate_search` for its final
error on the fitting noises. `ld3_schedule`: LD3 (Tong et al., ICLR 2025), DPM-Solver++'s
continuous timesteps (and decoupled model-input times) learned by backpropagation through the
solver with the soft-teacher loss (optax). `bns_schedule`: BNS (Shaul et al., ICML 2024),
every coefficient of a non-stationary solver and its times trained on the final error (PSNR
loss), from Euler or midpoint. `ds_solver_schedule`: DS-Solver (arXiv 2505.21114) for flow
models, softmax time increments and constrained coefficients over all previous velocities.
Both run on the engine of ``fit_olss(..., method="olss-e2e")`` (`olss_jax._src.learned`);
`bns_parametrisation` / `ds_solver_parametrisation` are what they hand it (the differentiable
``build(params, data) -> (times, weights)``, the start's parameters and `Schedule`), and
`ds_solver_weights` is DS-Solver's update as Schedule weights. `holdout_split`: the
deterministic fit / held-out split of the fitting noises (LD3, BNS, DS-Solver, `tune_path` and
`refine` validate on it); `final_errors_fn`: a path's closed-loop (fit, held-out) final MSE, a
score for `coordinate_search`. `level_fn`: a teacher's continuous t -> level map, what
`dpm_solver_pp_2m` reads its levels with.
Align Your Steps' published schedules are baselines (`olss_jax.baselines.ays_timesteps`,
``baseline_schedule("ays_dpm_solver_pp", ...)``).
"""
from olss_jax._src.learned import LearnInfo
from olss_jax._src.closed_loop_fit import final_errors_fn
from olss_jax._src.peers.bns import bns_init, bns_parametrisation, bns_schedule
from olss_jax._src.peers.ds_solver import (
    ds_solver_parametrisation,
    ds_solver_schedule,
    ds_solver_weights,
)
from olss_jax._src.peers.gits import GitsInfo, gits_path, polynomial_grid
from olss_jax._src.peers.ld3 import Ld3Info, dpm_solver_pp_2m, ld3_schedule, level_fn
from olss_jax._src.peers.tuned import gits_schedule, nearest_path, tuned_schedule
from olss_jax._src.path_tuning import SearchResult, coordinate_search
from olss_jax._src.split import holdout_split

__all__ = ["GitsInfo", "LearnInfo", "Ld3Info", "SearchResult", "bns_init", "bns_parametrisation",
           "bns_schedule", "ds_solver_parametrisation", "ds_solver_schedule", "ds_solver_weights",
           "dpm_solver_pp_2m", "final_errors_fn", "holdout_split", "ld3_schedule", "level_fn",
           "coordinate_search", "gits_path", "gits_schedule", "nearest_path", "polynomial_grid",
           "tuned_schedule"]
