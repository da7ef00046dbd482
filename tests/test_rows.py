"""rows: the tall matrix ``A = [x_T, e_0..e_{K-1}]`` read one block of rows at a time.

`fold_rows` (reductions: Grams, streamed QRs, ``extra @ A``) and `map_rows` (row-wise maps:
teacher states ``C A^T``) against the same quantity computed on the whole of A in numpy: for
concrete inputs (sliced in Python, the last block zero-padded) and traced ones (read in place
under `jax.jit`, the last block shorter), with a block size that divides the rows and one
that does not.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from olss_jax._src import rows

F64_RTOL = 1e-12     # float64 sums of the same products in another order
F32_RTOL = 1e-5      # float32 products summed in another order
B, SAMPLE, K = 3, (2, 5), 6          # 30 rows, 7 columns


def _data(dtype, seed=0):
  rng = np.random.default_rng(seed)
  x_T = rng.standard_normal((B,) + SAMPLE).astype(dtype)
  outputs = rng.standard_normal((K, B) + SAMPLE).astype(dtype)
  a = np.concatenate([x_T.reshape(1, -1), outputs.reshape(K, -1)]).T.astype(np.float64)
  return x_T, outputs, a                                      # a: (B * D, K + 1)


def _gram_step(acc, x_rows, e_rows, extra):
  """acc = (A^T A, extra @ A) over the rows of one block (zero rows add nothing)."""
  block = jnp.concatenate([x_rows[:, None], e_rows.T], axis=1)     # (r, K + 1)
  gram = acc[0] + block.T @ block
  return gram, (acc[1] if extra is None else acc[1] + extra @ block)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("rows_per_block", [7, 10, 64])   # padded last block, exact, one block
def test_rows_fold_rows_sums_every_row_once(jit, rows_per_block):
  with jax.enable_x64(True):
    x_T, outputs, a = _data(np.float64)
    extra = np.random.default_rng(1).standard_normal((2, a.shape[0]))
    init = (jnp.zeros((K + 1, K + 1)), jnp.zeros((2, K + 1)))
    step = jax.jit(_gram_step)

    def fold(x, e, ex):
      return rows.fold_rows(step, init, x, e, rows_per_block=rows_per_block, extra=ex)

    gram, projected = (jax.jit(fold) if jit else fold)(x_T, outputs, extra)
    assert gram.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(gram), a.T @ a, rtol=F64_RTOL)
    np.testing.assert_allclose(np.asarray(projected), extra @ a, rtol=F64_RTOL)
    # without extra, the step gets None
    gram_only, untouched = rows.fold_rows(step, init, x_T, outputs, rows_per_block=rows_per_block)
    np.testing.assert_allclose(np.asarray(gram_only), a.T @ a, rtol=F64_RTOL)
    np.testing.assert_array_equal(np.asarray(untouched), 0.0)


@pytest.mark.parametrize("jit", [False, True])
def test_rows_fold_rows_in_float32_mode(jit):
  x_T, outputs, a = _data(np.float32, seed=2)
  init = (jnp.zeros((K + 1, K + 1)), jnp.zeros((2, K + 1)))

  def fold(x, e):
    return rows.fold_rows(jax.jit(_gram_step), init, x, e, rows_per_block=8)[0]

  gram = (jax.jit(fold) if jit else fold)(x_T, outputs)
  assert gram.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(gram), a.T @ a, rtol=F32_RTOL, atol=F32_RTOL)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("rows_per_block", [7, 10, 64])
def test_rows_map_rows_concatenates_the_blocks_in_row_order(jit, rows_per_block):
  with jax.enable_x64(True):
    x_T, outputs, a = _data(np.float64, seed=3)
    coeffs = jnp.asarray(np.random.default_rng(4).standard_normal((3, K + 1)))

    def fn(x_rows, e_rows):                       # (3, r): three combinations of the columns
      return coeffs[:, :1] * x_rows[None] + coeffs[:, 1:] @ e_rows

    def mapped(x, e):
      return rows.map_rows(fn, x, e, rows_per_block=rows_per_block)

    got = (jax.jit(mapped) if jit else mapped)(x_T, outputs)
    assert got.shape == (3, a.shape[0])
    np.testing.assert_allclose(np.asarray(got), np.asarray(coeffs) @ a.T, rtol=F64_RTOL,
                               atol=1e-14)


def test_rows_num_rows_is_images_times_elements():
  x_T, _, a = _data(np.float32)
  assert rows.num_rows(x_T) == a.shape[0] == B * int(np.prod(SAMPLE))
  assert rows.num_rows(jnp.zeros((4, 3, 8, 8))) == 768
