"""Sufficient statistics of a teacher run: fit and search without the images (paper Sec. 3.3-3.4).

Every least-squares question of OLSS (Eq. 12's fit, Eq. 13's step errors, Algorithms 1-3's
candidates) is about the columns of one tall matrix

    A = [x_T, e_0, ..., e_{K-1}]        (rows: every image and element, B * D of them)

because every teacher state is ``A c_k`` with the teacher's coefficients ``c_k`` (Eq. 9). The
float64 Gram matrix ``G = A^T A`` ((K + 1, K + 1)) therefore answers all of them: any R with
``R^T R = G`` gives ``||A w - A c|| = ||R w - R c||`` for every w and c. G is a sum over rows,
so it is accumulated block by block (`accumulate_stats`), merged across processes
(`merge_stats`: a sum, associative and commutative), and reduced across devices
(`trajectory_stats` on a batch-sharded trajectory: per-device partial Grams, then a `psum`).

The accumulation is a jitted float64 symmetric rank-k update in XLA: only the blocks on and
below the diagonal are multiplied (8 column blocks: 36 of 64 products), over blocks of 4096
rows. The inputs are float32 (or narrower), so each product is exact in float64 and only the
sums round. A Gram squares the condition number, so a step error's relative accuracy is about
``eps * cond(A)^2`` times the ratio of the target's energy to the error: the tests check 1e-6
relative agreement with the per-candidate tall least squares and the same path on outputs
with neighbouring correlations above 0.99 and cond(A) > 1e4.
"""
from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import linalg
from olss_jax._src import noise
from olss_jax._src import rows
from olss_jax._src import teacher as teacher_lib
from olss_jax._src import trajectory as trajectory_lib

GRAM_COLUMN_BLOCKS = 8  # the symmetric product's column blocks


@jax.tree_util.register_pytree_node_class
class TrajectoryStats:
  """The float64 Gram matrix of a teacher run plus what is needed to read it (a pytree).

  Accepted in place of a `Trajectory` by `search_path`, `fit_weights` and `path_errors`.

  Attributes:
    gram: (K + 1, K + 1) float64 ``A^T A`` with ``A = [x_T, e_0, ..., e_{K-1}]`` (columns,
      flattened over images and elements).
    factor: (K + 1, K + 1) float64 R with ``R^T R = gram`` (`linalg.gram_sqrt`), or None
      when not computed yet (`with_factor`).
    teacher: the `Teacher` of the run.
    num_images: B, the images accumulated (static).
    sample_shape: the shape of one sample (static).
  """

  def __init__(self, gram, factor, teacher, num_images: int, sample_shape):
    self.gram = gram
    self.factor = factor
    self.teacher = teacher
    self.num_images = int(num_images)
    self.sample_shape = tuple(int(d) for d in sample_shape)

  def tree_flatten(self):
    return (self.gram, self.factor, self.teacher), (self.num_images, self.sample_shape)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.gram, obj.factor, obj.teacher = children
    obj.num_images, obj.sample_shape = aux
    return obj

  @property
  def timesteps(self):
    """(K,) the teacher's model-call times."""
    return self.teacher.timesteps

  @property
  def num_teacher_steps(self) -> int:
    """K."""
    return self.teacher.num_steps

  @property
  def batch_size(self) -> int:
    """B (the name `Trajectory` uses)."""
    return self.num_images

  @property
  def num_elements(self) -> int:
    """B * D, the number of rows of A (the denominator of the per-element MSE)."""
    return self.num_images * int(np.prod(self.sample_shape))

  def state_coefficients(self) -> jax.Array:
    """(K + 1, K + 1) float64 C with ``states[k] = C[k] @ [x_T, e_0, ..., e_{K-1}]`` (Eq. 9)."""
    return self.teacher.state_coefficients()

  def with_factor(self) -> "TrajectoryStats":
    """These statistics with `factor` computed (a no-op when it is already there)."""
    if self.factor is not None:
      return self
    factor = linalg.x64_call(linalg.gram_sqrt, self.gram)   # grad from float32 mode too
    return TrajectoryStats(self.gram, factor, self.teacher, self.num_images, self.sample_shape)

  def __repr__(self) -> str:
    return (f"TrajectoryStats(num_images={self.num_images}, sample_shape={self.sample_shape}, "
            f"teacher={self.teacher!r})")


def _lower_gram(m, column_blocks: int):
  """The lower triangle of ``m m^T`` for m (c, rows) float64, block by block."""
  c = m.shape[0]
  width = -(-c // column_blocks)
  edges = [min(i * width, c) for i in range(column_blocks + 1)]
  row_blocks = []
  for i in range(column_blocks):
    lo_i, hi_i = edges[i], edges[i + 1]
    if hi_i <= lo_i:
      continue
    parts = []
    for j in range(column_blocks):
      lo_j, hi_j = edges[j], edges[j + 1]
      if hi_j <= lo_j:
        continue
      if j <= i:
        parts.append(jax.lax.dot_general(m[lo_i:hi_i], m[lo_j:hi_j], (((1,), (1,)), ((), ()))))
      else:
        parts.append(jnp.zeros((hi_i - lo_i, hi_j - lo_j), m.dtype))
    row_blocks.append(jnp.concatenate(parts, axis=1))
  return jnp.concatenate(row_blocks, axis=0)


@jax.jit
def _accumulate(lower, x_rows, e_rows, extra=None):
  """lower + tril([x; e] [x; e]^T) for one block of rows: x (r,), e (K, r)."""
  del extra
  with jax.enable_x64(True):
    m = jnp.concatenate([linalg.f64(x_rows)[None], linalg.f64(e_rows)], axis=0)
    return lower + _lower_gram(m, GRAM_COLUMN_BLOCKS)


def gram_of(x_T, outputs, *, rows_per_block: int = rows.ROWS_PER_BLOCK,
            varying_axes: tuple = ()) -> jax.Array:
  """The float64 Gram ``A^T A`` of ``A = [x_T, e_0, ..., e_{K-1}]`` (flattened), traceable.

  Read one block of rows at a time (`rows.fold_rows`): memory is one block plus the Gram.
  ``varying_axes`` names the `shard_map` axes over which the per-device sums differ.

  Returns:
    (K + 1, K + 1) float64.
  """
  k = outputs.shape[0]
  with jax.enable_x64(True):
    lower = jnp.zeros((k + 1, k + 1), jnp.float64)
    if varying_axes:
      lower = jax.lax.pcast(lower, varying_axes, to="varying")
    lower = rows.fold_rows(_accumulate, lower, x_T, outputs, rows_per_block=rows_per_block)
    return jnp.tril(lower) + jnp.tril(lower, -1).T


def _batch_axes(x_T, outputs):
  """The mesh and batch partition of a batch-sharded trajectory, or None."""
  if not isinstance(outputs, jax.Array) or not isinstance(x_T, jax.Array):
    return None
  if noise.is_traced(outputs) or noise.is_traced(x_T):
    return None
  sharding = outputs.sharding
  if not isinstance(sharding, jax.sharding.NamedSharding) or len(sharding.device_set) < 2:
    return None
  spec = tuple(sharding.spec) + (None,) * (outputs.ndim - len(sharding.spec))
  if any(p is not None for i, p in enumerate(spec) if i != 1) or spec[1] is None:
    return None
  return sharding.mesh, spec[1]


def _sharded_gram(x_T, outputs, mesh, axes):
  """Per-device partial Grams of each device's own images, then a `psum` over the batch axes."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  axis_names = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)

  def local(x, e):
    with jax.enable_x64(True):
      return jax.lax.psum(gram_of(x, e, varying_axes=axis_names), axis_names)

  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(None, axes)),
                             out_specs=P()))
  with jax.enable_x64(True):
    return fn(x_T, outputs)


def trajectory_stats(traj: trajectory_lib.Trajectory, *, factor: bool = True,
                     rows_per_block: int = rows.ROWS_PER_BLOCK) -> TrajectoryStats:
  """The Gram statistics of a teacher run (the data of Eq. 12 and Eq. 13, compressed).

  ``G = A^T A`` for ``A = [x_T, e_0, ..., e_{K-1}]``, accumulated in float64 one block of
  rows at a time (`gram_of`: host arrays are read block by block, so memory is one block
  plus G), and its square root R (`linalg.gram_sqrt`). A trajectory whose x_T and
  model_outputs are sharded over the batch axis (a `jax.sharding.NamedSharding` over two or
  more devices, as `collect_trajectory` makes) is reduced where it lives: each device sums the
  Gram of its own images, then a `psum` adds them. This also holds on many hosts after
  ``jax.distributed.initialize()``: every process calls `trajectory_stats` on the same global
  array and gets the same replicated Gram. Works under `jax.jit`.

  Args:
    traj: the teacher `Trajectory` (x_T (B, ...), model_outputs (K, B, ...)).
    factor: also compute the square root R (needed by the search and the fit; leave it
      False when merging many chunks, `stats_from_chunks` factors once at the end).
    rows_per_block: rows of A per accumulation step.

  Returns:
    A `TrajectoryStats` with gram (K + 1, K + 1) float64 and num_images = B.

  Raises:
    ValueError: the trajectory holds a NaN or infinity (concrete input).
  """
  if not isinstance(traj, trajectory_lib.Trajectory):
    raise TypeError(f"traj: expected a Trajectory, got {type(traj).__name__}")
  rows_per_block = noise.check_count(rows_per_block, "rows_per_block")
  teacher_lib.check_teacher(traj.teacher, name="traj.teacher")
  sharded = _batch_axes(traj.x_T, traj.model_outputs)
  if sharded is not None:
    gram = _sharded_gram(traj.x_T, traj.model_outputs, *sharded)
  else:
    gram = linalg.x64_call(lambda x, e: gram_of(x, e, rows_per_block=rows_per_block),
                           traj.x_T, traj.model_outputs)   # grad from float32 mode too
  if not noise.is_traced(gram) and not _all_finite(gram):
    raise ValueError("traj: the trajectory contains non-finite values (NaN or inf)")
  stats = TrajectoryStats(gram, None, traj.teacher, traj.batch_size, traj.sample_shape)
  return stats.with_factor() if factor else stats


def _all_finite(x) -> bool:
  with jax.enable_x64(True):
    return bool(jnp.all(jnp.isfinite(x)))


def merge_stats(a: TrajectoryStats, b: TrajectoryStats) -> TrajectoryStats:
  """Statistics of the union of two disjoint sets of images (the Grams add; not factored).

  Associative and commutative, so chunks, processes or hosts can be merged in any order.

  Raises:
    ValueError: the two runs have different teachers or sample shapes.
  """
  for name, s in (("a", a), ("b", b)):
    if not isinstance(s, TrajectoryStats):
      raise TypeError(f"{name}: expected TrajectoryStats, got {type(s).__name__}")
  if not teacher_lib.same_teacher(a.teacher, b.teacher):
    raise ValueError("b: teacher timesteps or levels differ from a's; statistics of different "
                     "teachers cannot be merged")
  if tuple(a.sample_shape) != tuple(b.sample_shape):
    raise ValueError(f"b: sample shape {tuple(b.sample_shape)} differs from a's "
                     f"{tuple(a.sample_shape)}")
  with jax.enable_x64(True):
    gram = a.gram + b.gram
  return TrajectoryStats(gram, None, a.teacher, a.num_images + b.num_images, a.sample_shape)


def accumulate_stats(stats: TrajectoryStats | None,
                     traj: trajectory_lib.Trajectory) -> TrajectoryStats:
  """Adds a chunk of images to running statistics (``stats=None`` starts them; not factored).

  Returns:
    ``merge_stats(stats, trajectory_stats(traj, factor=False))``.
  """
  new = trajectory_stats(traj, factor=False)
  return new if stats is None else merge_stats(stats, new)


def stats_from_chunks(chunks: Iterable[trajectory_lib.Trajectory]) -> TrajectoryStats:
  """Statistics of a stream of trajectory chunks, holding one chunk at a time (factored).

  Args:
    chunks: iterable of `Trajectory` of the same teacher (e.g. a generator that collects or
      loads one chunk of starting noises at a time).

  Raises:
    ValueError: the iterable is empty, or the chunks disagree on the teacher.
  """
  stats = None
  for chunk in chunks:
    stats = accumulate_stats(stats, chunk)
  if stats is None:
    raise ValueError("chunks: expected at least one Trajectory, got none")
  return stats.with_factor()
