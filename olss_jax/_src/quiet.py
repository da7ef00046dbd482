"""Silences the Flax deprecation notices of diffusers 0.39 and transformers 4.x.

Both libraries log (not warn) that their Flax classes will be removed; olss_jax pins the last
versions that have them (see pyproject.toml), so the notice is noise for our users. Only that
notice is dropped: every other log record passes.

The libraries attach their stream handler when they are first imported, and importing them is
slow (diffusers imports torch when it is installed), so nothing is imported by ``import
olss_jax``: every olss_jax module that imports diffusers or transformers calls
`silence_before_import` first. Nothing here installs a global warning filter.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

_MARKERS = (
    "Flax classes are deprecated",
    "TensorFlow and JAX classes are deprecated",
)


class _DropFlaxDeprecation(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pragma: no cover - malformed records pass untouched
      return True
    return not any(marker in message for marker in _MARKERS)


_DROP = _DropFlaxDeprecation()


def _attach(target) -> None:
  if _DROP not in target.filters:
    target.addFilter(_DROP)


def silence_flax_deprecations() -> None:
  """Drops the deprecation notice from the diffusers/transformers loggers and handlers (idempotent).

  A logging filter on those two libraries' own loggers, matching only their Flax notice: no
  warning filter is installed and no other log record is touched.
  """
  for name in ("diffusers", "transformers"):
    logger = logging.getLogger(name)
    _attach(logger)
    for handler in logger.handlers:
      _attach(handler)


def silence_before_import() -> None:
  """Creates diffusers' and transformers' log handlers now, then filters them.

  diffusers logs its notice while its Flax modules are being imported (class bodies), so the
  filter must be on the handler before ``from diffusers import Flax...``: call this first.
  Importing the two libraries' logging utilities is what creates their handlers; their
  ``FutureWarning``s of the same notice are ignored only while they are imported.
  """
  with warnings.catch_warnings():
    for marker in _MARKERS:
      warnings.filterwarnings("ignore", message=f".*{marker}.*")
    from diffusers.utils import logging as diffusers_logging  # noqa: PLC0415
    from transformers.utils import logging as transformers_logging  # noqa: PLC0415

    diffusers_logging.get_verbosity()
    transformers_logging.get_verbosity()
  silence_flax_deprecations()


@contextlib.contextmanager
def flax_imports():
  """``with flax_imports(): from diffusers import Flax...``: the import without its notices.

  Filters the libraries' loggers (`silence_before_import`) and ignores the notice's warnings
  for the duration of the block only.
  """
  silence_before_import()
  with warnings.catch_warnings():
    for marker in _MARKERS:
      warnings.filterwarnings("ignore", message=f".*{marker}.*")
    yield
