"""olss_jax.Schedule / make_schedule: the n-step sampler as a lower-triangular weight matrix.

Construction and its dtypes, the checks `make_schedule` runs (each error names its argument),
the lower-triangular structure (row i sees x_T and e_0..e_i), the static metadata, and the
pytree contract under `jax.jit` (metadata never retraces).
"""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

F64_RTOL = 1e-15     # float64 weights round-tripped through jit (no arithmetic)


def _weights(n, seed=0):
  """Random weights on exactly the entries a schedule may use: column j <= row i + 1."""
  rng = np.random.default_rng(seed)
  return np.tril(rng.standard_normal((n, n + 1)), 1)


def test_schedule_make_schedule_stores_host_arrays_in_their_dtypes():
  sched = oj.make_schedule([900, 500, 100], _weights(3), {"method": "mine"})
  assert isinstance(sched.timesteps, np.ndarray) and sched.timesteps.dtype == np.int32
  assert isinstance(sched.weights, np.ndarray) and sched.weights.dtype == np.float64
  np.testing.assert_array_equal(sched.timesteps, [900, 500, 100])
  np.testing.assert_array_equal(sched.weights, _weights(3))
  assert sched.num_steps == 3 and sched.metadata == {"method": "mine"}
  assert repr(sched) == "Schedule(num_steps=3, method='mine')"
  floats = oj.make_schedule(np.array([900.5, 100.25]), _weights(2).astype(np.float32))
  assert floats.timesteps.dtype == np.float32 and floats.weights.dtype == np.float64
  np.testing.assert_array_equal(floats.timesteps, [900.5, 100.25])
  assert floats.metadata == {} and repr(floats) == "Schedule(num_steps=2, method='?')"


def test_schedule_make_schedule_names_the_bad_argument():
  w = _weights(2)
  cases = [
      ((np.array([[5, 3]]), w), ValueError, "timesteps: expected shape"),
      ((np.array([], np.int32), np.zeros((0, 1))), ValueError, "timesteps: expected shape"),
      ((np.array([True, False]), w), TypeError, "timesteps: expected an integer or float"),
      ((np.array(["5", "3"]), w), TypeError, "timesteps: expected an integer or float"),
      ((np.array([5.0, np.nan]), w), ValueError, "timesteps: contains non-finite"),
      ((np.array([5, 3]), np.zeros((2, 2))), ValueError, r"weights: expected shape \(2, 3\)"),
      ((np.array([5, 3]), np.zeros((3, 3))), ValueError, r"weights: expected shape \(2, 3\)"),
      ((np.array([5, 3]), np.zeros((2, 3), np.int32)), TypeError, "weights: expected a float"),
      ((np.array([5, 3]), np.where(w != 0, np.inf, 0.0)), ValueError,
       "weights: contains non-finite"),
  ]
  for args, error, match in cases:
    with pytest.raises(error, match=match):
      oj.make_schedule(*args)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_schedule_row_i_may_use_x_T_and_the_outputs_up_to_step_i_only(n):
  timesteps = np.arange(n, 0, -1) * 100
  full = np.ones((n, n + 1))
  for i in range(n):
    for j in range(n + 1):
      one = np.zeros((n, n + 1))
      one[i, j] = 1.0
      if j <= i + 1:                      # x_T (column 0) and e_0..e_i (columns 1..i + 1)
        oj.make_schedule(timesteps, one)
      else:
        with pytest.raises(ValueError, match="weights: entries for model outputs not yet seen"):
          oj.make_schedule(timesteps, one)
  sched = oj.make_schedule(timesteps, np.tril(full, 1))
  np.testing.assert_array_equal(sched.weights != 0, np.tril(full, 1) != 0)
  assert bool(oj.validation.schedule_is_valid(sched.timesteps, sched.weights))
  # the same structure as the traced check `sample` runs under jit sees it
  unchecked = oj.Schedule(sched.timesteps, full)          # `Schedule` itself checks nothing
  assert bool(oj.validation.schedule_is_valid(unchecked.timesteps, unchecked.weights)) == (n == 1)


def test_schedule_metadata_is_a_copy_and_replace_names_unknown_fields():
  sched = oj.make_schedule([800, 200], _weights(2), {"method": "a", "path": [0, 6]})
  meta = sched.metadata
  meta["method"] = "changed"
  meta["path"].append(9)                 # a copy of the dict: the schedule's keys stay
  assert sched.metadata["method"] == "a"
  more = sched.with_metadata(model_name="m", method="b")
  assert more.metadata["method"] == "b" and more.metadata["model_name"] == "m"
  assert sched.metadata["method"] == "a" and "model_name" not in sched.metadata
  assert more.timesteps is sched.timesteps and more.weights is sched.weights
  replaced = sched.replace(metadata={"method": "c"})
  assert replaced.metadata == {"method": "c"}
  halved = sched.replace(weights=sched.weights / 2)
  np.testing.assert_array_equal(halved.weights, sched.weights / 2)
  assert halved.metadata["method"] == "a"
  with pytest.raises(TypeError, match=r"unknown fields: \['num_steps'\]"):
    sched.replace(num_steps=3)


def test_schedule_is_a_pytree_of_two_leaves_with_static_metadata():
  sched = oj.make_schedule([700, 300], _weights(2, seed=1), {"method": "m", "ridge": [0.1]})
  leaves, treedef = jax.tree_util.tree_flatten(sched)
  assert len(leaves) == 2
  again = jax.tree_util.tree_unflatten(treedef, leaves)
  assert again.metadata == sched.metadata
  chex.assert_trees_all_equal(again.timesteps, sched.timesteps)
  doubled = jax.tree_util.tree_map(lambda v: v * 2, sched)
  np.testing.assert_array_equal(doubled.weights, 2 * sched.weights)
  assert doubled.metadata == sched.metadata


def test_schedule_through_jit_keeps_its_values_and_metadata_never_retraces():
  with jax.enable_x64(True):          # the float64 weights stay float64 through jit
    traces = []

    @jax.jit
    def identity(s):
      traces.append(1)
      return s

    first = oj.make_schedule([900, 400, 50], _weights(3, seed=2), {"method": "first"})
    out = identity(first)
    assert out.metadata == {"method": "first"}
    assert out.weights.dtype == jnp.float64 and out.timesteps.dtype == jnp.int32
    chex.assert_trees_all_close(out.weights, first.weights, rtol=F64_RTOL)
    chex.assert_trees_all_equal(out.timesteps, first.timesteps)
    # Another schedule of the same shapes but other metadata: the same trace. A jitted
    # function returns the metadata of its first trace (documented on `Schedule`).
    second = oj.make_schedule([901, 401, 51], _weights(3, seed=3), {"method": "second"})
    out2 = identity(second)
    assert len(traces) == 1
    chex.assert_trees_all_close(out2.weights, second.weights, rtol=F64_RTOL)
    assert out2.metadata == {"method": "first"}
    identity(oj.make_schedule([900, 50], _weights(2)))      # another step count: retraces
    assert len(traces) == 2


def test_schedule_samples_the_same_with_and_without_jit():
  alphas = oj.scaled_linear_alphas_cumprod()
  den = oj.analytic.mixture_denoiser(
      oj.analytic.make_gaussian_mixture(jax.random.key(0), 4, (6,)), alphas)
  x_T = jax.random.normal(jax.random.key(1), (5, 6))
  sched = oj.baselines.ddim_schedule(alphas, oj.baselines.ddim_timesteps(4))
  eager = oj.sample(den, sched, x_T)
  jitted = jax.jit(oj.sample)(den, sched.with_metadata(method="relabelled"), x_T)
  chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-6)
