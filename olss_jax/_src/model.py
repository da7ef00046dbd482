"""The shared types every layer uses: a model (`ComparisonModel`) and a store's progress event.

A bottom module: it imports jax, numpy and the teacher (itself on `noise` only), so that the
comparison harness (`compare`), the shipped models (`shipped_models`), the store (`store`), the
progress bars (`progress`) and the CLI all import it downwards.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np

from olss_jax._src import teacher as teacher_lib


@dataclasses.dataclass(frozen=True)
class ComparisonModel:
  """A model under comparison.

  Attributes:
    name: shown in tables and recorded in schedules.
    alphas_cumprod: (T,) training alpha_bar of a VP model (None for a rectified flow).
    sample_shape: shape of one sample.
    denoiser: ``conditions -> denoise_fn``; conditions is (B,) (e.g. class labels) or None.
    draw_conditions: ``(seed, B) -> conditions`` for B noises (None: unconditional).
    guidance_scale: recorded in metadata when the model uses classifier-free guidance.
    metrics: optional ``(samples, teacher_samples, conditions) -> {name: value}`` extra metrics
      (e.g. Frechet distance and class accuracy).
    teacher: optional ``K -> Teacher``, the model's K-step reference solver (default: the
      paper's DDIM teacher on ``alphas_cumprod``, for an epsilon model); e.g.
      ``oj.flow_teacher`` for a flow model or ``partial(oj.ddim_teacher, alphas,
      prediction_type="v_prediction")``.
  """

  name: str
  alphas_cumprod: np.ndarray | None
  sample_shape: tuple[int, ...]
  # conditions -> denoise_fn(x_t, t) (`trajectory.DenoiseFn`)
  denoiser: Callable[[Any], Callable[[jax.Array, jax.Array], jax.Array]]
  draw_conditions: Callable[[int, int], Any] = lambda seed, n: None
  guidance_scale: float | None = None
  metrics: Callable[..., Mapping[str, float]] | None = None
  teacher: Callable[[int], teacher_lib.Teacher] | None = None

  def make_teacher(self, num_teacher_steps: int) -> teacher_lib.Teacher:
    """The K-step teacher: ``teacher(K)``, or ``ddim_teacher(alphas_cumprod, K)``."""
    if self.teacher is not None:
      return self.teacher(num_teacher_steps)
    if self.alphas_cumprod is None:
      raise ValueError(f"model: {self.name!r} has neither alphas_cumprod nor a teacher")
    return teacher_lib.ddim_teacher(self.alphas_cumprod, num_teacher_steps)

  @property
  def kind(self) -> str:
    """The teacher kind (`teacher.KINDS` key): what the model predicts, which baselines run."""
    return self.make_teacher(2).kind


class StoreProgress(NamedTuple):
  """What `collect_to_directory` passes to its ``callback``.

  Attributes:
    chunk_index: the chunk concerned.
    num_chunks: the total number of chunks.
    steps_done: teacher steps done in this chunk (== num_teacher_steps when finished).
    num_teacher_steps: K.
    status: ``"skipped"`` (already finished and verified), ``"step"`` (teacher progress within
      the chunk, after every ``steps_per_chunk`` steps or once at the end) or ``"done"`` (the
      chunk file is written and recorded).
  """

  chunk_index: int
  num_chunks: int
  steps_done: int
  num_teacher_steps: int
  status: str
