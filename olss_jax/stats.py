"""Streaming statistics of teacher runs: the Gram of [x_T, e_0..e_{K-1}], merged chunk by chunk."""
from olss_jax._src.stats import (
    TrajectoryStats,
    accumulate_stats,
    gram_of,
    merge_stats,
    stats_from_chunks,
    trajectory_stats,
)
from olss_jax._src.sharding import batch_mesh

__all__ = ["TrajectoryStats", "accumulate_stats", "batch_mesh", "gram_of", "merge_stats",
           "stats_from_chunks", "trajectory_stats"]
