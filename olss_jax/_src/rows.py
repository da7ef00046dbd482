"""The tall matrix ``A = [x_T, e_0, ..., e_{K-1}]`` of a teacher run, one block of rows at a time.

Row ``r`` of A is element r of the flattened starting noises and of every model output (all B
images x D elements: ``B * D`` rows, K + 1 columns). Every reduction over A (its Gram, a
streamed QR, products ``A^T q``) and every row-wise map (teacher states ``A c``) reads it in
blocks of rows, so memory is one block whatever the image size:

* concrete arrays (host numpy, or device arrays) are sliced block by block in Python, each
  block moved to the device and handed to a jitted step (host arrays never go to the device
  whole);
* traced arrays (under the caller's `jax.jit`) are read in place: a `lax.fori_loop` over the
  full blocks takes each with `lax.dynamic_slice` (no padded or transposed copy of the K
  outputs, which at Stable Diffusion's size would be a 2 GB copy per pass), then the last,
  shorter block.
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


def _block(arrays, start, size: int):
  """Rows [start, start + size) of each flat array (rows on the last axis; None stays None)."""
  start = jnp.asarray(start, jnp.int32)  # int32 indices also in float64 code (see fold_rows)
  return tuple(None if a is None else jax.lax.dynamic_slice_in_dim(a, start, size, axis=-1)
               for a in arrays)


def _traced_blocks(x_T, outputs, extra, rows_per_block: int):
  """How to read traced input in place: ((x (N,), e (K, N), extra), the number of full blocks,
  the block size, the rows left for a last shorter block)."""
  x, e = _flat(jnp.asarray(x_T), jnp.asarray(outputs))
  total = x.shape[0]
  size = min(rows_per_block, total)
  return (x, e, extra), total // size, size, total % size


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
    arrays, blocks, size, rest = _traced_blocks(x_T, outputs, extra, rows_per_block)

    def body(i, acc):
      return step(acc, *_block(arrays, i * size, size))

    # int32 loop indices: float64 callers run under jax.enable_x64, where Python ints would
    # become int64, which a caller's jit (float32 mode) cannot lower after vmap and grad.
    acc = jax.lax.fori_loop(np.int32(0), np.int32(blocks), body, init)
    if rest:
      acc = step(acc, *_block(arrays, blocks * size, rest))
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
    arrays, blocks, size, rest = _traced_blocks(x_T, outputs, None, rows_per_block)
    out = jax.lax.map(lambda i: fn(*_block(arrays, i * size, size)[:2]),
                      jnp.arange(blocks))                                  # (nb, ..., r)
    out = jnp.moveaxis(out, 0, -2)
    out = out.reshape(out.shape[:-2] + (-1,))
    if rest:
      out = jnp.concatenate([out, fn(*_block(arrays, blocks * size, rest)[:2])], axis=-1)
    return out
  x, e = _flat(x_T, outputs)
  parts = [fn(jnp.asarray(x[s:s + rows_per_block]), jnp.asarray(e[:, s:s + rows_per_block]))
           for s in range(0, x.shape[0], rows_per_block)]
  return jnp.concatenate(parts, axis=-1)


def num_rows(x_T) -> int:
  """B * D."""
  return int(np.prod(np.shape(x_T)))
