"""Sufficient statistics of a teacher run: fit and search without the images (paper Sec. 3.3-3.4).

Every least-squares question of OLSS (Eq. 12's fit, Eq. 13's step errors, Algorithms 1-3's
candidates) is about the columns of one tall matrix

    A = [x_T, e_0, ..., e_{K-1}]        (rows: every image and element, B * D of them)

because every teacher state is ``A c_k`` with the DDIM coefficients ``c_k`` (Eq. 9). The
float64 Gram matrix ``G = A^T A`` ((K + 1, K + 1)) therefore answers all of them: any factor
``R`` with ``R^T R = G`` gives ``||A w - A c|| = ||R w - R c||`` for every w and c. G is a sum
over images, so it is accumulated chunk by chunk (`accumulate_stats`), merged across
processes (`merge_stats`: a sum, associative and commutative), and reduced across devices
(`trajectory_stats` on a batch-sharded trajectory: per-device partial Grams, then a `psum`).

Why the Gram and not a streamed Householder QR: at Stable Diffusion's size (32 images x 16384
elements = 524288 rows, 1001 columns) a float64 ``A^T A`` is ``m n^2`` flops done by a
symmetric rank-k update (BLAS ``syrk``), half of Householder QR's ``2 m n^2``, and at a far
higher rate: on the 2-core CPU used for development the Gram runs at ~60 GFLOP/s and the
streamed Householder QR (`jnp.linalg.qr`) at 3-4 (32768 x 1001: 1.8 s against 18 s), so at
Stable Diffusion's size the Gram takes about 9 s and the QR about 5 minutes. `search_path`
therefore goes through the Gram by itself for large trajectories (`search.QR_FLOPS_LIMIT`).

Exactness: the inputs are float32 (or narrower), so each product is exact in float64 and only
the sums round; the factor is a pivoted Cholesky of the equilibrated Gram (LAPACK ``pstrf``),
whose rounding is componentwise. A Gram squares the condition number, so a step error's
relative accuracy is about ``eps * cond(A)^2`` times the ratio of the target's energy to the
error: the tests check 1e-6 relative agreement with the per-candidate tall least squares and
the same path on outputs with neighbouring correlations above 0.99 and cond(A) > 1e4
(measured: 2e-8 at cond(A) = 5e4, 4e-12 at cond(A) = 7e2). The solves that fit the weights
are still `jnp.linalg.qr` (of the small matrix ``[R_basis, R c_targets]``).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from olss_jax._src import ddim
from olss_jax._src import lstsq
from olss_jax._src import trajectory as trajectory_lib

# Images per host block are chosen so one float64 block of all K + 1 columns stays near this.
_BLOCK_BYTES = 1 << 28


class TrajectoryStats(NamedTuple):
  """The float64 Gram matrix of a teacher run plus what is needed to read it (a pytree).

  Accepted in place of a `Trajectory` by `fit_weights`, `search_path`, `path_errors` and
  `uniform_path`.

  Attributes:
    gram: (K + 1, K + 1) float64 ``A^T A`` with ``A = [x_T, e_0, ..., e_{K-1}]`` (columns,
      flattened over images and elements).
    timesteps: (K,) int32 the teacher's timesteps.
    alphas: (K + 1,) float64 alpha_bar of the teacher's states.
    num_images: B, the images accumulated so far.
    sample_shape: the shape of one sample (D = prod(sample_shape) elements).
  """

  gram: np.ndarray
  timesteps: np.ndarray
  alphas: np.ndarray
  num_images: int
  sample_shape: tuple

  @property
  def num_teacher_steps(self) -> int:
    """K."""
    return int(np.shape(self.timesteps)[0])

  @property
  def batch_size(self) -> int:
    """B (same name as `Trajectory.batch_size`)."""
    return int(self.num_images)

  @property
  def num_elements(self) -> int:
    """B * D, the number of rows of A (the denominator of the per-element MSE)."""
    return int(self.num_images) * int(np.prod(self.sample_shape))

  def state_coefficients(self) -> np.ndarray:
    """(K + 1, K + 1) float64 C with ``states[k] = C[k] @ [x_T, e_0, ..., e_{K-1}]`` (Eq. 9)."""
    return ddim.state_coefficients(*ddim.ddim_step_coefficients(np.asarray(self.alphas)))

  def factor(self) -> np.ndarray:
    """(K + 1, K + 1) float64 R with ``R^T R = gram`` (columns in A's order; see `gram_factor`).

    The last factor is cached (keyed by the identity of ``gram``), so a search followed by a
    fit factors once.
    """
    cached = _FACTOR_CACHE.get("last")
    if cached is not None and cached[0] is self.gram:
      return cached[1]
    r = gram_factor(self.gram)
    _FACTOR_CACHE["last"] = (self.gram, r)
    return r


_FACTOR_CACHE: dict = {}


def gram_factor(gram: np.ndarray) -> np.ndarray:
  """A square root of a Gram matrix by pivoted Cholesky of its equilibrated form.

  Columns are scaled to unit norm, LAPACK ``pstrf`` factors ``P^T G P = U^T U`` with
  complete pivoting and stops at the numerical rank (remaining pivots below ``n * eps``),
  and the result is unscaled and unpermuted. Zero columns and columns in the span of others
  (repeated model outputs) get exactly zero new directions, so rank deficiency stays
  detectable downstream.

  Args:
    gram: (m, m) symmetric positive semidefinite float64.

  Returns:
    (m, m) float64 R with ``R^T R = gram`` to rounding; not triangular in general (it is
    triangular up to the pivot permutation of its columns).
  """
  g = np.asarray(gram, np.float64)
  if g.ndim != 2 or g.shape[0] != g.shape[1]:
    raise ValueError(f"gram: expected a square matrix, got shape {g.shape}")
  m = g.shape[0]
  diag = np.diag(g).copy()
  if np.any(~np.isfinite(g)):
    raise ValueError("gram: contains non-finite values (the trajectory has NaN or inf)")
  scale = np.sqrt(np.where(diag > 0, diag, 0.0))
  live = np.flatnonzero(scale > 0)
  r = np.zeros((m, m), np.float64)
  if live.size == 0:
    return r
  s = scale[live]
  sub = g[np.ix_(live, live)] / s[:, None] / s[None, :]
  sub = 0.5 * (sub + sub.T)
  u, piv, rank, info = scipy.linalg.lapack.dpstrf(sub, lower=0)
  if info < 0:  # pragma: no cover - LAPACK argument error
    raise RuntimeError(f"gram_factor: LAPACK dpstrf failed with info={info}")
  u = np.triu(u)[:rank]
  piv = piv - 1  # Fortran indices
  block = np.zeros((rank, live.size), np.float64)
  block[:, piv] = u[:, :live.size]
  r[:rank][:, live] = block * s[None, :]
  return r


def _check_trajectory(traj, name: str = "traj") -> None:
  if not isinstance(traj, trajectory_lib.Trajectory):
    raise TypeError(f"{name}: expected a Trajectory, got {type(traj).__name__}")


def _batch_axes(x_T, outputs):
  """The mesh and batch partition of a batch-sharded trajectory, or None for host blocks."""
  if not isinstance(outputs, jax.Array) or not isinstance(x_T, jax.Array):
    return None
  sharding = outputs.sharding
  if not isinstance(sharding, jax.sharding.NamedSharding) or len(sharding.device_set) < 2:
    return None
  spec = tuple(sharding.spec) + (None,) * (outputs.ndim - len(sharding.spec))
  if any(p is not None for i, p in enumerate(spec) if i != 1) or spec[1] is None:
    return None
  return sharding.mesh, spec[1]


def trajectory_stats(traj: trajectory_lib.Trajectory, *,
                     images_per_block: int | None = None) -> TrajectoryStats:
  """The Gram statistics of a teacher run (the data of Eq. 12 and Eq. 13, compressed).

  Host arrays (and single-device arrays) are read in blocks of images: each block becomes a
  float64 (K + 1, b * D) matrix M and adds ``M M^T`` (a BLAS ``syrk``) to the sum, so memory is
  one block. A trajectory whose ``x_T`` and ``model_outputs`` are sharded over the batch axis
  (a `jax.sharding.NamedSharding` over two or more devices, as `collect_trajectory` makes)
  is reduced where it lives: each device sums the Grams of its own images, then a `psum`
  over the batch mesh axes adds them, so no device ever sees another's images. This also
  holds on many hosts after ``jax.distributed.initialize()``: every process calls
  `trajectory_stats` on the same global array and gets the same replicated Gram.

  Args:
    traj: the teacher `Trajectory` (x_T (B, ...), model_outputs (K, B, ...)).
    images_per_block: images per host block (default: about 256 MiB of float64 per block).

  Returns:
    A `TrajectoryStats` with gram (K + 1, K + 1) float64 and num_images = B.
  """
  _check_trajectory(traj)
  if images_per_block is not None and (
      isinstance(images_per_block, bool) or not isinstance(images_per_block, (int, np.integer))
      or images_per_block < 1):
    raise ValueError(f"images_per_block: expected a positive int or None, got "
                     f"{images_per_block!r}")
  sharded = _batch_axes(traj.x_T, traj.model_outputs)
  if sharded is not None:
    gram = _sharded_gram(traj.x_T, traj.model_outputs, *sharded)
  else:
    gram = _host_gram(traj.x_T, traj.model_outputs, images_per_block)
  if not np.all(np.isfinite(gram)):
    raise ValueError("traj: the trajectory contains non-finite values (NaN or inf)")
  return TrajectoryStats(gram=gram, timesteps=np.asarray(traj.timesteps, np.int32),
                         alphas=np.asarray(traj.alphas, np.float64),
                         num_images=traj.batch_size, sample_shape=tuple(traj.sample_shape))


def _host_gram(x_T, outputs, images_per_block):
  k = int(outputs.shape[0])
  batch = int(x_T.shape[0])
  d = int(np.prod(x_T.shape[1:]))
  if images_per_block is None:
    images_per_block = max(1, _BLOCK_BYTES // max(1, (k + 1) * d * 8))
  step = int(min(batch, images_per_block))
  gram = np.zeros((k + 1, k + 1), np.float64)
  buf = np.empty((k + 1, step * d), np.float64)
  for start in range(0, batch, step):
    b = min(step, batch - start)
    m = buf if b == step else np.empty((k + 1, b * d), np.float64)
    m[0] = np.asarray(x_T[start:start + b]).reshape(-1)
    m[1:] = np.asarray(outputs[:, start:start + b]).reshape(k, -1)
    gram += m @ m.T  # numpy dispatches a @ a.T to BLAS syrk
  return gram


def _sharded_gram(x_T, outputs, mesh, axes):
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  axis_names = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)

  def local(x, e):
    b = x.shape[0]
    x = x.reshape(b, -1)
    e = e.reshape(e.shape[0], b, -1)

    def body(i, g):
      cols = jnp.concatenate([x[i][None], e[:, i]], axis=0).astype(jnp.float64)  # (K + 1, D)
      return g + cols @ cols.T

    init = jnp.zeros((e.shape[0] + 1,) * 2, jnp.float64)
    init = jax.lax.pcast(init, axis_names, to="varying")  # per-device partial sums
    g = jax.lax.fori_loop(0, b, body, init)
    return jax.lax.psum(g, axis_names)

  fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(None, axes)),
                             out_specs=P()))
  with jax.enable_x64(True):
    gram = fn(x_T, outputs)
    return np.asarray(gram.addressable_shards[0].data, np.float64)


def merge_stats(a: TrajectoryStats, b: TrajectoryStats) -> TrajectoryStats:
  """Statistics of the union of two disjoint sets of images (the Grams add).

  Associative and commutative, so chunks, processes or hosts can be merged in any order.

  Raises:
    ValueError: the two runs have different teacher timesteps, alphas or sample shapes.
  """
  for name, s in (("a", a), ("b", b)):
    if not isinstance(s, TrajectoryStats):
      raise TypeError(f"{name}: expected TrajectoryStats, got {type(s).__name__}")
  if not (np.array_equal(a.timesteps, b.timesteps) and np.array_equal(a.alphas, b.alphas)):
    raise ValueError("b: teacher timesteps or alphas differ from a's; statistics of different "
                     "teachers cannot be merged")
  if tuple(a.sample_shape) != tuple(b.sample_shape):
    raise ValueError(f"b: sample shape {tuple(b.sample_shape)} differs from a's "
                     f"{tuple(a.sample_shape)}")
  return a._replace(gram=a.gram + b.gram, num_images=a.num_images + b.num_images)


def accumulate_stats(stats: TrajectoryStats | None,
                     traj: trajectory_lib.Trajectory) -> TrajectoryStats:
  """Adds a chunk of images to running statistics (``stats=None`` starts them).

  Returns:
    ``merge_stats(stats, trajectory_stats(traj))``.
  """
  new = trajectory_stats(traj)
  return new if stats is None else merge_stats(stats, new)


def stats_from_chunks(chunks: Iterable[trajectory_lib.Trajectory]) -> TrajectoryStats:
  """Statistics of a stream of trajectory chunks, holding one chunk at a time.

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
  return stats


def stats_from_store(directory) -> TrajectoryStats:
  """Statistics of a `collect_to_directory` store, loading one verified chunk at a time.

  Memory is one chunk plus the (K + 1)^2 Gram, whatever the number of images in the store.
  Every chunk is checked against the manifest's SHA-256, as `load_store` does.
  """
  import os  # pylint: disable=import-outside-toplevel
  from olss_jax._src import io as io_lib  # pylint: disable=import-outside-toplevel
  from olss_jax._src import store  # pylint: disable=import-outside-toplevel

  directory = os.fspath(directory)
  manifest = store.read_manifest(directory)
  finished = sorted(int(k) for k in manifest["chunks"])
  if not finished:
    raise ValueError(f"directory: {directory!r} holds no finished chunks")

  def chunks():
    for index in finished:
      path = os.path.join(directory, store.chunk_file_name(index))
      traj, meta, digest = io_lib._load_trajectory(path)  # pylint: disable=protected-access
      if digest != manifest["chunks"][str(index)].get("sha256") or \
          meta.get("chunk_index") != index:
        raise ValueError(f"{path!r}: does not match the manifest's record of chunk {index}")
      yield traj

  return stats_from_chunks(chunks())


def solve_path(stats: TrajectoryStats, path: np.ndarray):
  """Eq. 12 for every step of a path, from the statistics (same contract as `fit.solve_path`).

  With R a square root of the Gram (`gram_factor`), the tall regression of the teacher state
  ``A c`` on columns S of A is the regression of ``R c`` on the columns S of R: the same
  normal equations. The (K + 1, 2n + 1) matrix ``[R_{x_T}, R_{e_path}, R c_targets]`` is
  factored by `jnp.linalg.qr` (float64) and the nested solves read off its triangle.

  Args:
    stats: the `TrajectoryStats`.
    path: (n,) validated int path.

  Returns:
    weights (n, n + 1) float64, errors (n,) float64 per-element MSE, rank_deficient bool.
  """
  from olss_jax._src import fit  # pylint: disable=import-outside-toplevel

  n = path.shape[0]
  r = stats.factor()
  coeffs = stats.state_coefficients()[fit.path_targets(path, stats.num_teacher_steps)]
  small = np.concatenate([r[:, :1], r[:, path + 1], r @ coeffs.T], axis=1)  # (K + 1, 2n + 1)
  with jax.enable_x64(True):
    rr = np.asarray(jnp.linalg.qr(jnp.asarray(small), mode="r"))
  if rr.shape[0] < 2 * n + 1:
    rr = np.concatenate([rr, np.zeros((2 * n + 1 - rr.shape[0], 2 * n + 1))], axis=0)
  targets = [(n + 1 + i, i + 2) for i in range(n)]
  ws, residuals, deficient = lstsq.nested_solves(rr, n + 1, targets)
  weights = np.zeros((n, n + 1))
  for i, w in enumerate(ws):
    weights[i, : i + 2] = w
  return weights, residuals / stats.num_elements, any(deficient)
