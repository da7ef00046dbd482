"""The tall matrix ``A = [x_T, e_0, ..., e_{K-1}]`` of a teacher run, one block of rows at a time.

Row ``r`` of A is element r of the flattened starting noises and of every model output (all B
images x D elements: ``B * D`` rows, K + 1 columns). Every reduction over A (its Gram, a
streamed QR, products ``A^T q``) and every row-wise map (teacher states ``A c``) reads it in
blocks of rows, so memory is one block whatever the image size:

* concrete arrays (host numpy, or device arrays) are sliced block by block in Python, each
  block moved to the device and handed to a jitted step (host arrays never go to the device
  whole);
* traced arrays (under the caller's `jax.jit`) are reshaped into equal blocks, zero-padded,
  and scanned with `lax.scan` / `lax.map` (zero rows change no Gram, factor or product).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from olss_jax._src import noise

ROWS_PER_BLOCK = 4096  # rows per step (measured best for the float64 Gram on 2 CPU cores)


def _flat(x_T, outputs):
  k = outputs.shape[0]
  return x_T.reshape(-1), outputs.reshape(k, -1)


def _padded_blocks(x_T, outputs, rows_per_block: int):
  """(x (nb, r), e (nb, K, r)) zero-padded blocks of traced arrays."""
  x, e = _flat(jnp.asarray(x_T), jnp.asarray(outputs))
  total = x.shape[0]
  blocks = -(-total // rows_per_block)
  pad = blocks * rows_per_block - total
  x = jnp.pad(x, (0, pad)).reshape(blocks, rows_per_block)
  e = jnp.pad(e, ((0, 0), (0, pad)))
  e = jnp.moveaxis(e.reshape(e.shape[0], blocks, rows_per_block), 1, 0)
  return x, e, pad


def fold_rows(step: Callable, init, x_T, outputs, *, rows_per_block: int = ROWS_PER_BLOCK,
              extra=None):
  """``acc = step(acc, x_rows (r,), e_rows (K, r), extra_rows)`` over the blocks of A.

  Args:
    step: the reduction step (jit it for concrete inputs); must give the same result for a
      zero-padded block as for the block itself.
    init: the initial accumulator (a pytree).
    x_T: (B, ...) starting noises; outputs: (K, B, ...) model outputs.
    rows_per_block: r.
    extra: optional (..., B * D) array sliced along its last axis with the rows (None: the
      step gets None).

  Returns:
    The final accumulator.
  """
  if noise.is_traced(x_T) or noise.is_traced(outputs) or noise.is_traced(extra):
    x, e, pad = _padded_blocks(x_T, outputs, rows_per_block)
    xs = (x, e)
    if extra is not None:
      ex = jnp.pad(extra, [(0, 0)] * (extra.ndim - 1) + [(0, pad)])
      ex = ex.reshape(extra.shape[:-1] + (x.shape[0], rows_per_block))
      xs = xs + (jnp.moveaxis(ex, -2, 0),)

    def body(acc, blk):
      return step(acc, blk[0], blk[1], blk[2] if extra is not None else None), None

    acc, _ = jax.lax.scan(body, init, xs)
    return acc
  x, e = _flat(x_T, outputs)
  acc = init
  total = x.shape[0]
  for start in range(0, total, rows_per_block):
    stop = min(start + rows_per_block, total)
    x_rows, e_rows = jnp.asarray(x[start:stop]), jnp.asarray(e[:, start:stop])
    ex = None if extra is None else jnp.asarray(extra[..., start:stop])
    if stop - start < rows_per_block and total > rows_per_block:  # one compiled block shape
      pad = rows_per_block - (stop - start)
      x_rows = jnp.pad(x_rows, (0, pad))
      e_rows = jnp.pad(e_rows, ((0, 0), (0, pad)))
      ex = None if ex is None else jnp.pad(ex, [(0, 0)] * (ex.ndim - 1) + [(0, pad)])
    acc = step(acc, x_rows, e_rows, ex)
  return acc


def map_rows(fn: Callable, x_T, outputs, *, rows_per_block: int = ROWS_PER_BLOCK):
  """``concatenate([fn(x_rows (r,), e_rows (K, r)) for blocks], axis=-1)``: (..., B * D).

  ``fn`` maps a block of rows to an array whose last axis is the block's rows.
  """
  if noise.is_traced(x_T) or noise.is_traced(outputs):
    x, e, pad = _padded_blocks(x_T, outputs, rows_per_block)
    out = jax.lax.map(lambda blk: fn(blk[0], blk[1]), (x, e))   # (nb, ..., r)
    out = jnp.moveaxis(out, 0, -2)
    out = out.reshape(out.shape[:-2] + (-1,))
    return out[..., :out.shape[-1] - pad] if pad else out
  x, e = _flat(x_T, outputs)
  parts = [fn(jnp.asarray(x[s:s + rows_per_block]), jnp.asarray(e[:, s:s + rows_per_block]))
           for s in range(0, x.shape[0], rows_per_block)]
  return jnp.concatenate(parts, axis=-1)


def num_rows(x_T) -> int:
  """B * D."""
  return int(np.prod(np.shape(x_T)))
