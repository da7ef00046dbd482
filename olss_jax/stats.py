"""Streaming over teacher runs, one chunk at a time: the Gram of [x_T, e_0..e_{K-1}] merged chunk
by chunk, and the closed-loop fit of a path on noises streamed in chunks."""
from olss_jax._src.stats import (
    TrajectoryStats,
    accumulate_stats,
    gram_of,
    merge_stats,
    stats_from_chunks,
    trajectory_stats,
)
from olss_jax._src.closed_loop_stream import StreamedFitInfo, closed_loop_fit_chunks
from olss_jax._src.sharding import batch_mesh

__all__ = ["StreamedFitInfo", "TrajectoryStats", "accumulate_stats", "batch_mesh",
           "closed_loop_fit_chunks", "gram_of", "merge_stats", "stats_from_chunks",
           "trajectory_stats"]
