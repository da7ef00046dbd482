"""Progress bars (tqdm) for the long steps: the teacher, the fit, the evaluation.

The teacher stays jitted: `collect_trajectory(..., steps_per_chunk=c, callback=...)` runs
jitted chunks of c steps and the bar advances once per chunk, on the host, between chunks.
Every bar writes to stderr and can be turned off (``enabled=False``, the CLI's ``--quiet``).
"""
from __future__ import annotations

import sys
from typing import Callable

from olss_jax._src import model as model_lib


class _NullBar:
  """A do-nothing stand-in for a tqdm bar (``--quiet``)."""

  n = 0
  total = 0

  def update(self, n: int = 1) -> None:
    self.n += n

  def set_description_str(self, *args, **kwargs) -> None:
    pass

  def set_postfix_str(self, *args, **kwargs) -> None:
    pass

  def refresh(self) -> None:
    pass

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress_bar(total: int | None, desc: str, *, enabled: bool = True, unit: str = "it",
                 file=None):
  """A tqdm bar on stderr, or a silent stand-in when ``enabled`` is False.

  Args:
    total: the number of units (None: unknown).
    desc: the label shown left of the bar.
    enabled: False returns a bar that prints nothing.
    unit: the unit's name ("step", "image-step", "method", ...).
    file: where the bar is drawn (default: stderr).

  Returns:
    A context manager with ``update(n)``, ``n``, ``set_postfix_str`` and ``close()``.
  """
  if not enabled:
    return _NullBar()
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=desc, unit=unit, file=file or sys.stderr, dynamic_ncols=True,
              leave=True, mininterval=0.2)


def _advance_to(bar, position: int) -> None:
  if position > bar.n:
    bar.update(position - bar.n)


def store_callback(bar) -> Callable[[model_lib.StoreProgress], None]:
  """A `collect_to_directory` callback: the bar counts teacher steps over all chunks.

  Skipped (already finished) chunks jump the bar forward at once; the bar's total should be
  ``num_chunks * num_teacher_steps``.
  """
  def callback(event: model_lib.StoreProgress) -> None:
    position = event.chunk_index * event.num_teacher_steps + event.steps_done
    _advance_to(bar, position)
    if event.status == "skipped":
      bar.set_postfix_str(f"chunk {event.chunk_index} already done", refresh=False)
    elif event.status == "done":
      bar.set_postfix_str(f"chunk {event.chunk_index + 1}/{event.num_chunks} saved",
                          refresh=False)
  return callback
