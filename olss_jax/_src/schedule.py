"""The `Schedule`: a fitted (or classical) n-step sampler as a lower-triangular weight matrix."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np


class _Metadata:
  """Read-only mapping that every jit cache sees as the same static value.

  A schedule's metadata (what it was fitted for, how) is not traced. It is carried as pytree
  auxiliary data, but compares equal to any other `_Metadata` so that `jax.jit(sample)` does not
  retrace for every fitted schedule of the same step count. Consequence: a *jitted* function that
  returns a `Schedule` returns the metadata of its first trace; set metadata outside jit.
  """

  __slots__ = ("_items",)

  def __init__(self, items: Mapping[str, Any] | None = None):
    self._items = dict(items or {})

  def as_dict(self) -> dict[str, Any]:
    return dict(self._items)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Metadata)

  def __hash__(self) -> int:
    return hash(_Metadata)

  def __repr__(self) -> str:
    return repr(self._items)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """An n-step linear sampler over the basis {x_T, e_1, ..., e_n} (paper Eq. 12).

  Attributes:
    timesteps: (n,) model-call times in call order: int32 training timesteps, or float32
      continuous ones (learned timesteps, flow-matching times ``1000 s``); passed to the model
      as ``denoise_fn(x, timesteps[i])``.
    weights: (n, n + 1) float. Row i gives the state after step i,
      ``x_{i+1} = weights[i, 0] * x_T + sum_j weights[i, j + 1] * e_j``, where e_j is the
      model output of step j. Entries for outputs not yet seen (j > i) are zero. The last
      row produces the final sample.
    metadata: static, untraced description (method, fitted-for model, guidance, ...). A plain
      dict of JSON-serialisable values; the keys `sample` and
      `validation.check_schedule_compatible` read are listed in `olss_jax.validation`
      (``sample_shape``, ``model_name``, ``guidance_scale``, ``num_train_timesteps``, and the
      teacher kind, `validation.schedule_kind`).
  """

  timesteps: jax.Array
  weights: jax.Array
  _meta: _Metadata = dataclasses.field(default_factory=_Metadata, repr=False)

  def __init__(self, timesteps, weights, metadata: Mapping[str, Any] | None = None):
    object.__setattr__(self, "timesteps", timesteps)
    object.__setattr__(self, "weights", weights)
    meta = metadata if isinstance(metadata, _Metadata) else _Metadata(metadata)
    object.__setattr__(self, "_meta", meta)

  @property
  def metadata(self) -> dict[str, Any]:
    """A copy of the static metadata dict."""
    return self._meta.as_dict()

  @property
  def num_steps(self) -> int:
    """n, the number of model calls."""
    return int(np.shape(self.timesteps)[0])

  def replace(self, **changes) -> "Schedule":
    """A copy with fields replaced; ``metadata=`` replaces the whole dict."""
    timesteps = changes.pop("timesteps", self.timesteps)
    weights = changes.pop("weights", self.weights)
    metadata = changes.pop("metadata", self._meta)
    if changes:
      raise TypeError(f"Schedule.replace got unknown fields: {sorted(changes)}")
    return Schedule(timesteps, weights, metadata)

  def with_metadata(self, **entries) -> "Schedule":
    """A copy whose metadata is updated with ``entries``."""
    meta = self.metadata
    meta.update(entries)
    return self.replace(metadata=meta)

  def tree_flatten(self):
    return (self.timesteps, self.weights), self._meta

  @classmethod
  def tree_unflatten(cls, meta, children):
    return cls(children[0], children[1], meta)

  def __repr__(self) -> str:
    shape = np.shape(self.weights)
    method = self._meta.as_dict().get("method", "?")
    return f"Schedule(num_steps={shape[0] if shape else '?'}, method={method!r})"


def lower_triangular_mask(num_steps: int) -> np.ndarray:
  """(n, n + 1) bool mask of the entries a schedule may use: row i sees x_T and e_0..e_i."""
  rows = np.arange(num_steps)[:, None]
  cols = np.arange(num_steps + 1)[None, :]
  return cols <= rows + 1


def make_schedule(timesteps, weights, metadata: Mapping[str, Any] | None = None) -> Schedule:
  """Builds a `Schedule` from array-likes, checking shapes and the lower-triangular structure.

  Args:
    timesteps: (n,) model-call times: integers (training timesteps) or floats (continuous).
    weights: (n, n + 1) weights over [x_T, e_0, ..., e_{n-1}].
    metadata: optional JSON-serialisable dict.

  Returns:
    A `Schedule` whose leaves are host numpy arrays: int32 (integer input) or float32 (float
    input) timesteps and float64 weights (kept in full precision for saving; `sample` casts
    them to the computation dtype).
  """
  timesteps = np.asarray(timesteps)
  weights = np.asarray(weights)
  if timesteps.ndim != 1 or timesteps.shape[0] < 1:
    raise ValueError(f"timesteps: expected shape (n,) with n >= 1, got {timesteps.shape}")
  if timesteps.dtype == np.bool_ or not (np.issubdtype(timesteps.dtype, np.integer)
                                         or np.issubdtype(timesteps.dtype, np.floating)):
    raise TypeError(f"timesteps: expected an integer or float dtype, got {timesteps.dtype}")
  if np.issubdtype(timesteps.dtype, np.floating) and not np.all(np.isfinite(timesteps)):
    raise ValueError("timesteps: contains non-finite values")
  n = timesteps.shape[0]
  if weights.shape != (n, n + 1):
    raise ValueError(f"weights: expected shape ({n}, {n + 1}) for {n} timesteps, got {weights.shape}")
  if not np.issubdtype(weights.dtype, np.floating):
    raise TypeError(f"weights: expected a float dtype, got {weights.dtype}")
  if not np.all(np.isfinite(weights)):
    raise ValueError("weights: contains non-finite values")
  if np.any(weights[~lower_triangular_mask(n)] != 0):
    raise ValueError("weights: entries for model outputs not yet seen (above the diagonal) must be 0")
  return Schedule(timesteps.astype(timestep_dtype(timesteps.dtype)), weights.astype(np.float64),
                  metadata)


def timestep_dtype(dtype) -> np.dtype:
  """The stored dtype of timesteps of ``dtype``: int32 for integers, float32 for floats."""
  return np.dtype(np.int32 if np.issubdtype(np.dtype(dtype), np.integer) else np.float32)
