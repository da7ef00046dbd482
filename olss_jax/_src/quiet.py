"""Silences the Flax deprecation notices of diffusers 0.39 and transformers 4.x, once.

Both libraries log (not warn) that their Flax classes will be removed; olss_jax pins the last
versions that have them (see pyproject.toml), so the notice is noise for our users. Only that
notice is dropped: every other log record passes.
"""
from __future__ import annotations

import logging
import warnings

_MARKERS = (
    "Flax classes are deprecated",
    "TensorFlow and JAX classes are deprecated",
)
_installed = False


class _DropFlaxDeprecation(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    try:
      message = record.getMessage()
    except Exception:  # pragma: no cover - malformed records pass untouched
      return True
    return not any(marker in message for marker in _MARKERS)


def silence_flax_deprecations() -> None:
  """Installs the filter on the diffusers and transformers loggers (idempotent)."""
  global _installed
  if _installed:
    return
  _installed = True
  drop = _DropFlaxDeprecation()
  for name in ("diffusers", "transformers"):
    logger = logging.getLogger(name)
    logger.addFilter(drop)
    for handler in logger.handlers:
      handler.addFilter(drop)
  # Records logged on child loggers propagate to the library root's handlers; the libraries
  # create those handlers lazily, so filter the last-resort handler and future handlers too.
  if logging.lastResort is not None:
    logging.lastResort.addFilter(drop)
  try:  # diffusers and transformers configure their root handler on first use.
    from diffusers.utils import logging as dlogging  # noqa: PLC0415

    for handler in dlogging._get_library_root_logger().handlers:  # pylint: disable=protected-access
      handler.addFilter(drop)
  except Exception:  # pragma: no cover - diffusers missing or changed
    pass
  try:
    from transformers.utils import logging as tlogging  # noqa: PLC0415

    for handler in tlogging._get_library_root_logger().handlers:  # pylint: disable=protected-access
      handler.addFilter(drop)
  except Exception:  # pragma: no cover
    pass
  warnings.filterwarnings("ignore", message=".*Flax classes are deprecated.*")
  warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes are deprecated.*")
