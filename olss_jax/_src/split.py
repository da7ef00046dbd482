"""The deterministic fit / validation split of the fitting noises (never the evaluation ones)."""
from __future__ import annotations

import numpy as np


def holdout_split(num_samples: int, holdout) -> tuple[np.ndarray, np.ndarray]:
  """Interleaved split of B fitting noises: every k-th goes to the hold-out.

  Args:
    num_samples: B.
    holdout: a fraction in [0, 1) or a count (int) of noises to hold out.

  Returns:
    (train (B - h,), hold (h,)) sorted int indices; the hold-out spreads evenly over the batch
    (``round(linspace(0, B - 1, h))``), so it samples every part of it (labels, prompts).
  """
  if (isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer))
      or num_samples < 1):
    raise ValueError(f"num_samples: expected an int >= 1, got {num_samples!r}")
  if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)):
    raise TypeError(f"holdout: expected a fraction in [0, 1) or a count, got {holdout!r}")
  count = int(round(holdout * num_samples)) if isinstance(holdout, (float, np.floating)) else int(holdout)
  if holdout < 0 or (isinstance(holdout, (float, np.floating)) and holdout >= 1) or count >= num_samples:
    raise ValueError(f"holdout: must leave at least one fitting noise for training "
                     f"({num_samples} available), got {holdout!r}")
  if count == 0:
    return np.arange(num_samples), np.arange(0)
  hold = np.unique(np.linspace(0, num_samples - 1, count).round().astype(int))
  train = np.setdiff1d(np.arange(num_samples), hold)
  return train, hold
