"""The learned-timestep peers of OLSS, each a `Schedule` for the one `olss_jax.sample`.

`gits_path` / `gits_schedule`: GITS (Chen et al., ICML 2024), timesteps by dynamic
programming on a one-step cost matrix from the teacher's warm-up trajectories.
`tuned_schedule`: a classical solver's timesteps tuned by `coordinate_search` for its final
error on the fitting noises. Align Your Steps' published schedules are baselines
(`olss_jax.baselines.ays_timesteps`, ``baseline_schedule("ays_dpm_solver_pp", ...)``).
"""
from olss_jax._src.peers.gits import GitsInfo, gits_path, polynomial_grid
from olss_jax._src.peers.tuned import gits_schedule, nearest_path, tuned_schedule
from olss_jax._src.tune import SearchResult, coordinate_search

__all__ = ["GitsInfo", "SearchResult", "coordinate_search", "gits_path", "gits_schedule",
           "nearest_path", "polynomial_grid", "tuned_schedule"]
