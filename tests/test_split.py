"""olss_jax.peers.holdout_split (split.py): the deterministic, interleaved fit / hold-out split.

Its contract (docstring): sorted int indices (train (B - h,), hold (h,)) that partition
range(B); h is a count or ``round(fraction * B)``; the hold-out is ``round(linspace(0, B - 1,
h))`` (spread over the batch); at least one noise is always left for training.
"""
import numpy as np
import pytest

import olss_jax as oj


def _check_partition(num_samples, train, hold):
  assert train.dtype.kind == "i" and hold.dtype.kind == "i", (train.dtype, hold.dtype)
  np.testing.assert_array_equal(train, np.sort(train))
  np.testing.assert_array_equal(hold, np.sort(hold))
  assert np.intersect1d(train, hold).size == 0, (train, hold)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, hold])), np.arange(num_samples))


@pytest.mark.parametrize("num_samples", [1, 2, 7, 16, 97])
def test_every_count_gives_a_disjoint_covering_split_of_that_size(num_samples):
  for count in range(num_samples):
    train, hold = oj.peers.holdout_split(num_samples, count)
    _check_partition(num_samples, train, hold)
    assert hold.shape == (count,) and train.shape == (num_samples - count,), (num_samples, count)


@pytest.mark.parametrize("num_samples,fraction,count", [
    (10, 0.2, 2), (10, 0.0, 0), (10, 0.94, 9), (16, 0.25, 4), (7, 0.5, 4), (100, 0.333, 33),
    (10, np.float32(0.3), 3)])
def test_a_fraction_holds_out_round_fraction_times_b(num_samples, fraction, count):
  train, hold = oj.peers.holdout_split(num_samples, fraction)
  _check_partition(num_samples, train, hold)
  assert hold.size == count, (fraction, hold)
  # a fraction and the count it rounds to give the same split
  train_c, hold_c = oj.peers.holdout_split(num_samples, count)
  np.testing.assert_array_equal(hold, hold_c)
  np.testing.assert_array_equal(train, train_c)


def test_the_hold_out_is_interleaved_over_the_whole_batch():
  np.testing.assert_array_equal(oj.peers.holdout_split(10, 3)[1], [0, 4, 9])  # not [7, 8, 9]
  np.testing.assert_array_equal(oj.peers.holdout_split(5, 1)[1], [0])
  np.testing.assert_array_equal(oj.peers.holdout_split(12, np.int64(4))[1],
                                np.round(np.linspace(0, 11, 4)).astype(int))
  # every quarter of a batch of 64 holds out a quarter of the 16
  hold = oj.peers.holdout_split(64, 16)[1]
  np.testing.assert_array_equal(np.bincount(hold // 16, minlength=4), [4, 4, 4, 4])


def test_the_split_is_deterministic():
  for args in ((37, 0.3), (37, 5), (8, 0.0)):
    first, second = oj.peers.holdout_split(*args), oj.peers.holdout_split(*args)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize("holdout", [-1, -0.1, 1.0, 1.5, 0.96, 10, 11])
def test_a_split_leaving_no_training_noise_raises_value_error_naming_holdout(holdout):
  with pytest.raises(ValueError, match="^holdout: .*10 available"):
    oj.peers.holdout_split(10, holdout)


@pytest.mark.parametrize("holdout", [True, False, "0.5", None, [1]])
def test_a_holdout_neither_fraction_nor_count_raises_type_error_naming_it(holdout):
  with pytest.raises(TypeError, match="^holdout: expected a fraction in \\[0, 1\\) or a count"):
    oj.peers.holdout_split(10, holdout)


@pytest.mark.parametrize("num_samples", [0, -3, 10.0, True, "10"])
def test_a_bad_number_of_samples_raises_value_error_naming_it(num_samples):
  with pytest.raises(ValueError, match="^num_samples: expected an int >= 1"):
    oj.peers.holdout_split(num_samples, 0)
