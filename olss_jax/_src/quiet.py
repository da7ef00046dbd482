"""Silences the Flax deprecation notices of diffusers 0.39 and transformers 4.x.

Both libraries log (not warn) that their Flax classes will be removed; olss_jax pins the last
versions that have them (see pyproject.toml), so the notice is noise for our users. Only that
notice is dropped: every other log record passes.

The libraries attach their stream handler when they are first imported, and importing them is
slow (diffusers imports torch when it is installed), so nothing is imported here: the package
calls `silence_flax_deprecations` on import (covering handlers that already exist), and every
olss_jax module that imports diffusers or transformers calls it again right after the import.
"""
from __future__ import annotations

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
_warnings_installed = False


def _attach(target) -> None:
  if _DROP not in target.filters:
    target.addFilter(_DROP)


def silence_flax_deprecations() -> None:
  """Drops the deprecation notice from the diffusers/transformers log handlers (idempotent)."""
  global _warnings_installed
  for name in ("diffusers", "transformers"):
    logger = logging.getLogger(name)
    _attach(logger)
    for handler in logger.handlers:
      _attach(handler)
  if logging.lastResort is not None:
    _attach(logging.lastResort)
  if not _warnings_installed:
    _warnings_installed = True
    warnings.filterwarnings("ignore", message=".*Flax classes are deprecated.*")
    warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes are deprecated.*")


def silence_before_import() -> None:
  """Creates diffusers' and transformers' log handlers now, then filters them.

  diffusers logs its notice while its Flax modules are being imported (class bodies), so the
  filter must be on the handler before ``from diffusers import Flax...``: call this first.
  Importing the two libraries' logging utilities is what creates their handlers.
  """
  from diffusers.utils import logging as diffusers_logging  # noqa: PLC0415
  from transformers.utils import logging as transformers_logging  # noqa: PLC0415

  diffusers_logging.get_verbosity()
  transformers_logging.get_verbosity()
  silence_flax_deprecations()
