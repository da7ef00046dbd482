"""olss_jax: Optimal Linear Subspace Search (Duan et al., CIKM 2023) in pure JAX.

The verbs of the paper, each a JAX function (``jax.jit`` / ``vmap`` / ``grad`` compose with
them): `collect_trajectory` (the teacher), `trajectory_stats` (its compressed statistics),
`search_path` (Algorithms 1-3), `fit_weights` (Eq. 12 by least squares) and `sample` (the
n-step sampler); beyond the paper, `closed_loop_search` / `closed_loop_fit` (the same on the
sampler's own states), `tune_path` (the path moved to lower the final error), `refine` and
`learn_schedule` (weights and continuous times trained on the final error); `fit_olss` is the one recipe that chooses among them.

Sub-namespaces: `olss_jax.baselines` (every classical scheduler as a `Schedule`),
`olss_jax.stable_diffusion`, `olss_jax.digits` (the shipped model), `olss_jax.analytic`
(closed-form models), `olss_jax.stats` (streaming statistics, the streamed closed-loop fit), `olss_jax.store` (resumable
collection), `olss_jax.peers` (learned-timestep peers: GITS, tuned solvers), `olss_jax.figures`, `olss_jax.compare`, `olss_jax.validation` and
`olss_jax.testing` (fixtures for tests).
"""
from olss_jax._src.noise import linear_alphas_cumprod, scaled_linear_alphas_cumprod
from olss_jax._src.schedule import Schedule, make_schedule
from olss_jax._src.teacher import Teacher, ddim_teacher, flow_teacher, karras_teacher
from olss_jax._src.trajectory import Trajectory, collect_trajectory
from olss_jax._src.stats import TrajectoryStats, trajectory_stats
from olss_jax._src.sampler import sample, sample_states
from olss_jax._src.sharding import to_numpy
from olss_jax._src.search import SearchInfo, path_errors, search_path, uniform_path
from olss_jax._src.fit import FitInfo, fit_weights
from olss_jax._src.closed_loop_search import ClosedLoopSearchInfo, closed_loop_search
from olss_jax._src.closed_loop_fit import ClosedLoopFitInfo, closed_loop_fit
from olss_jax._src.refine import RefineInfo, refine
from olss_jax._src.learned import LearnInfo, learn_schedule
from olss_jax._src.path_tuning import TuneInfo, tune_path
from olss_jax._src.fit_olss import METHODS, fit_olss
from olss_jax._src.files import (
    load_schedule,
    load_trajectory,
    read_metadata,
    save_schedule,
    save_trajectory,
)
from olss_jax._src.baselines.registry import baseline_schedule
from olss_jax._src.validation import ScheduleMismatchWarning

from olss_jax import analytic
from olss_jax import baselines
from olss_jax import compare
from olss_jax import digits
from olss_jax import figures
from olss_jax import peers
from olss_jax import stable_diffusion
from olss_jax import stats
from olss_jax import store
from olss_jax import testing
from olss_jax import validation

__all__ = [
    # the verbs
    "collect_trajectory",
    "trajectory_stats",
    "search_path",
    "fit_weights",
    "sample",
    "sample_states",
    "to_numpy",
    "closed_loop_search",
    "closed_loop_fit",
    "refine",
    "learn_schedule",
    "tune_path",
    "fit_olss",
    "METHODS",
    "uniform_path",
    "path_errors",
    # the data
    "Schedule",
    "make_schedule",
    "Teacher",
    "ddim_teacher",
    "karras_teacher",
    "flow_teacher",
    "Trajectory",
    "TrajectoryStats",
    "SearchInfo",
    "FitInfo",
    "ClosedLoopSearchInfo",
    "ClosedLoopFitInfo",
    "RefineInfo",
    "LearnInfo",
    "TuneInfo",
    # files
    "save_schedule",
    "load_schedule",
    "save_trajectory",
    "load_trajectory",
    "read_metadata",
    # noise schedules and the classical schedulers
    "scaled_linear_alphas_cumprod",
    "linear_alphas_cumprod",
    "baseline_schedule",
    "ScheduleMismatchWarning",
]

__version__ = "0.2.0"
