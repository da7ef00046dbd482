"""The JAX contract of the verbs in JAX's default float32 mode and under ``jax.enable_x64``.

Every differentiable verb runs as ``jax.jit(jax.vmap(jax.value_and_grad(loss)))`` in both
modes on a tiny Gaussian mixture (exact, nonlinear noise predictions); the search, which is
discrete, under ``jax.jit``. The library solves its least squares in float64 inside scoped
`jax.enable_x64` blocks, while `jax.grad` transposes (and a caller's `jax.jit` lowers)
outside them; in float32 mode that used to fail (``lax.scatter requires arguments to have
the same dtypes, got float32, float64``). Gradients are checked against central finite
differences in float64 (x64 mode), and in float32 mode for finiteness and agreement with
that float64 gradient; the returned dtypes are asserted: what a caller in each mode gets
back. The float32 mode's inputs are float32 values, the x64 mode's the same values in
float64, so one float64 reference (cached) serves both modes, and the eager results of the
float32 mode are the ground truth of the jitted and vmapped forward passes.
"""
import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
K, B, DIM = 8, 3, 4
PATH = np.array([0, 3, 6], np.int32)
MODES = ["float32", "x64"]
MIXTURE = jax.tree_util.tree_map(np.asarray, oj.analytic.make_gaussian_mixture(
    jax.random.key(0), 3, (DIM,), std=0.5))   # float32; the model computes in x_t's dtype
X_T = np.asarray(jax.random.normal(jax.random.key(1), (B, DIM), jnp.float32))
PROBE = np.random.default_rng(0).standard_normal((3, 4))

FD_STEP_F64 = 1e-5          # central differences in float64
FD_RTOL_F64 = 1e-6          # autodiff vs central differences, float64
GRAD_RTOL_F32 = 1e-3        # float32-mode gradient of a float32 computation vs float64 (of |g|)
FIT_GRAD_RTOL_F32 = 1e-5    # the same for the fits: float64 inside, the cotangent rounds
RTOL_F32 = 1e-5             # jitted / vmapped float32 computations vs eager (collect, sample)
FIT_RTOL = 1e-10            # the same for fits and Grams (float64 inside), x64 mode included


def _mode(mode):
  return jax.enable_x64(mode == "x64")


def _dtype(mode):
  """The caller's inputs: float32 in float32 mode, the same values in float64 under x64."""
  return np.float32 if mode == "float32" else np.float64


class Setup(NamedTuple):
  den: Any                 # the mixture's exact noise prediction (a Partial)
  alphas: np.ndarray       # its alphas_cumprod (host float64)
  traj: oj.Trajectory      # the float32 teacher run (K steps), in the mode's dtype
  schedule: oj.Schedule    # fitted on PATH (float32 mode): host float64 weights


@functools.lru_cache(maxsize=None)
def _setup(x64: bool) -> Setup:
  """The data of one mode, none of it shared with the other: JAX 0.10 cannot trace a function
  in both modes when it closes over the same host float64 array (traced under x64 first, it
  then fails to lower in float32 mode: "operand type mismatch ... f32 ... f64")."""
  with jax.enable_x64(x64), jax.ensure_compile_time_eval():   # concrete, even when first
    alphas = np.array(ALPHAS)                                   # asked for inside a trace
    den = oj.analytic.mixture_denoiser(jax.tree_util.tree_map(np.array, MIXTURE), alphas)
    if not x64:
      traj = oj.collect_trajectory(den, X_T, alphas, K)
      traj = traj.replace(model_outputs=np.asarray(traj.model_outputs))
      return Setup(den, alphas, traj, oj.fit_weights(traj, PATH)[0])
    f32 = _setup(False)   # its values in float64, copies of its schedule
    traj = oj.Trajectory(X_T.astype(np.float64), f32.traj.model_outputs.astype(np.float64),
                         oj.ddim_teacher(alphas, K))
    schedule = oj.Schedule(np.array(f32.schedule.timesteps), np.array(f32.schedule.weights),
                           f32.schedule.metadata)
    return Setup(den, alphas, traj, schedule)


def _get(dtype=None) -> Setup:
  """The current mode's data (or that of the inputs' dtype: float64 only under x64)."""
  return _setup(bool(jax.config.jax_enable_x64) if dtype is None else dtype == np.float64)


def _collect_loss(x):
  s = _get()
  return jnp.sum(oj.collect_trajectory(s.den, x, s.alphas, K).states[-1] ** 2)


def _fit_objective(schedule, errors, dtype):
  """Of a fit's schedule (float64 weights) and step errors, cast to the caller's dtype before
  float32 math (float32 mode: JAX would warn and truncate float64 operands), plus the sum of
  squares of the schedule's samples: the fit's float64 weights feed `sample`."""
  s = _get(dtype)
  samples = oj.sample(s.den, schedule, jnp.asarray(X_T, dtype))
  return (jnp.sum(jnp.asarray(PROBE, dtype) * schedule.weights.astype(dtype) ** 2)
          + jnp.sum(errors.astype(dtype)) + jnp.sum(samples ** 2))


def _fit_loss(o):
  traj = _get(o.dtype).traj.replace(model_outputs=o)
  return _fit_objective(oj.fit_weights(traj, PATH)[0], oj.path_errors(traj, PATH), o.dtype)


def _stats_fit_loss(o):  # the weights through the statistics (the Gram's eigenvectors)
  stats = oj.trajectory_stats(_get(o.dtype).traj.replace(model_outputs=o))
  weights = oj.fit_weights(stats, PATH)[0].weights
  return jnp.sum(jnp.asarray(PROBE, o.dtype) * weights.astype(o.dtype) ** 2)


def _sample_loss(x_and_weights):
  x, w = x_and_weights
  s = _get()
  return jnp.sum(oj.sample(s.den, s.schedule.replace(weights=w), x) ** 2)


LOSS_INPUTS = {  # the float32 point of each loss (an array or a tuple of arrays)
    _collect_loss: lambda: X_T,
    _fit_loss: lambda: _setup(False).traj.model_outputs,
    _stats_fit_loss: lambda: _setup(False).traj.model_outputs,
    _sample_loss: lambda: (X_T, np.asarray(_setup(False).schedule.weights, np.float32)),
}


def _inputs(loss, dtype):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), LOSS_INPUTS[loss]())


@functools.lru_cache(maxsize=None)
def _value_and_grad(loss, x64: bool):
  """jit(vmap(value_and_grad(loss))), one jitted function per loss and mode."""
  del x64
  return jax.jit(jax.vmap(jax.value_and_grad(loss)))


def _batched(loss, *xs):
  """Values and gradients of ``loss`` at each of ``xs`` (one batch); values and gradients
  are in the inputs' dtype (the caller's: every verb returns it, or is cast to it here)."""
  dtype = jax.tree_util.tree_leaves(xs[0])[0].dtype
  stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
  value, grad = _value_and_grad(loss, jax.config.jax_enable_x64)(stacked)
  chex.assert_type([value] + jax.tree_util.tree_leaves(grad), dtype)
  chex.assert_tree_all_finite([value, grad])
  return value, grad


def _row(tree, i):
  return jax.tree_util.tree_map(lambda a: np.asarray(a[i], np.float64), tree)


@functools.lru_cache(maxsize=None)
def _grad_f64(loss):
  """The float64 gradient of ``loss`` at its float32 point (upcast) under jit(vmap(grad)),
  checked against central differences along a random direction v, the values at x +- h v
  coming from the same batch (cached: the float32 mode compares to it)."""
  with jax.enable_x64(True):
    x = _inputs(loss, np.float64)
    rng = np.random.default_rng(7)
    v = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape), x)
    if loss is _sample_loss:   # schedules are lower triangular: perturb those weights only
      v = (v[0], np.tril(v[1], 1))   # row i: x_T and e_0..e_i
    h = FD_STEP_F64
    value, grad = _batched(loss, x, x, *(jax.tree_util.tree_map(lambda a, d: a + s * h * d,
                                                                 x, v) for s in (1, -1)))
    chex.assert_trees_all_equal(_row(grad, 0), _row(grad, 1))
    fd = (value[2] - value[3]) / (2 * h)
    directional = sum(np.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(_row(grad, 0)),
                                                    jax.tree_util.tree_leaves(v)))
    np.testing.assert_allclose(directional, float(fd), rtol=FD_RTOL_F64, atol=1e-9)
    return _row(grad, 0)


def _check_grad(mode, loss, *, rtol_f32=GRAD_RTOL_F32):
  """jit(vmap(grad)) in ``mode``: x64, the float64 gradient against central differences;
  float32, float32 gradients, finite, each equal to the float64 one to ``rtol_f32`` of its
  norm."""
  ref = _grad_f64(loss)
  if mode == "x64":
    return ref
  x = _inputs(loss, np.float32)
  _, grad = _batched(loss, x, x)
  chex.assert_trees_all_equal(_row(grad, 0), _row(grad, 1))
  for got, want in zip(jax.tree_util.tree_leaves(_row(grad, 0)),
                       jax.tree_util.tree_leaves(ref)):
    chex.assert_trees_all_close(got, want, rtol=0, atol=rtol_f32 * float(np.linalg.norm(want)))
  return _row(grad, 0)


@functools.lru_cache(maxsize=None)
def _eager32():
  """The float32 mode's eager results (the ground truth of the jitted and vmapped runs)."""
  s = _setup(False)
  with jax.enable_x64(False):
    collect = [s.traj, oj.collect_trajectory(s.den, -X_T, s.alphas, K)]
    scaled = s.traj.replace(model_outputs=2 * s.traj.model_outputs)   # exact
    return {"collect": collect,
            "fit": [oj.fit_weights(t, PATH) for t in (s.traj, scaled)],
            "stats": oj.trajectory_stats(s.traj),
            "path_errors": oj.path_errors(s.traj, PATH),
            "search": oj.search_path(s.traj, 3),
            "sample": oj.sample(s.den, s.schedule, X_T)}


# Each verb: its forward pass under jit(vmap) on distinct batch members against the eager
# float32 results, with the dtypes a float32 caller gets back (float32 mode); and
# jit(vmap(value_and_grad)) in both modes (`_check_grad`; under x64 its batch holds the
# distinct points x +- h v of the finite differences).


def test_float32_collect_trajectory_jit_and_vmap():
  eager = _eager32()["collect"]
  chex.assert_type(eager[0].model_outputs, jnp.float32)   # x_T's dtype
  s = _setup(False)
  x = jnp.asarray(X_T)
  collect = functools.partial(oj.collect_trajectory, s.den, teacher=s.alphas,
                              num_teacher_steps=K)
  batched = jax.jit(jax.vmap(lambda x: collect(x).model_outputs))(jnp.stack([x, -x]))
  chex.assert_type(batched, jnp.float32)
  chex.assert_shape(batched, (2, K, B, DIM))
  for got, ref in zip(batched, eager):
    chex.assert_trees_all_close(got, ref.model_outputs, rtol=RTOL_F32, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_float32_collect_trajectory_grad(mode):
  with _mode(mode):
    _check_grad(mode, _collect_loss)


def test_float32_fit_weights_jit_and_vmap():
  eager = _eager32()["fit"]
  # float64 weights and step errors: host numpy eagerly, float64 jax arrays from jit and vmap
  assert isinstance(eager[0][0].weights, np.ndarray)
  chex.assert_type([eager[0][0].weights, eager[0][1].step_errors], np.float64)
  traj = _setup(False).traj
  o = jnp.asarray(traj.model_outputs)

  def weights(o):
    return oj.fit_weights(traj.replace(model_outputs=o), PATH)[0].weights

  batched = jax.jit(jax.vmap(weights))(jnp.stack([o, 2 * o]))
  chex.assert_type(batched, jnp.float64)
  chex.assert_shape(batched, (2, 3, 4))
  for got, (schedule, _) in zip(batched, eager):
    chex.assert_trees_all_close(got, schedule.weights, rtol=FIT_RTOL, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_float32_fit_weights_grad(mode):
  """In the model outputs, also through `path_errors` and through `sample` of the fitted
  schedule: the fit's float64 weights under the caller's jit, vmap and grad (float32 mode:
  rounded once to float32 inside `sample`)."""
  with _mode(mode):
    _check_grad(mode, _fit_loss, rtol_f32=FIT_GRAD_RTOL_F32)


def test_float32_fit_weights_grad_of_the_issue_reproduction():
  """The reported call in float32 mode: works; JAX warns that the caller's sum of the float64
  weights is computed in float32."""
  traj = _setup(False).traj
  path = jnp.asarray(PATH)
  with pytest.warns(UserWarning, match="Explicitly requested dtype float64"):
    grad = jax.grad(lambda o: jnp.sum(
        oj.fit_weights(traj.replace(model_outputs=o), path)[0].weights ** 2))(
            traj.model_outputs)
  chex.assert_type(grad, jnp.float32)
  chex.assert_tree_all_finite(grad)


def test_float32_trajectory_stats_and_path_errors_jit_and_vmap():
  eager = _eager32()
  # float64: the statistics as jax arrays, path_errors as host numpy
  chex.assert_type([eager["stats"].gram, eager["stats"].factor], jnp.float64)
  chex.assert_type(eager["path_errors"], np.float64)
  np.testing.assert_allclose(eager["path_errors"], eager["fit"][0][1].step_errors, rtol=1e-12)
  gram = np.asarray(eager["stats"].gram)
  traj = _setup(False).traj
  o = jnp.asarray(traj.model_outputs)
  grams = jax.jit(jax.vmap(lambda o: oj.trajectory_stats(traj.replace(model_outputs=o)).gram))(
      jnp.stack([o, 2 * o]))
  chex.assert_type(grams, jnp.float64)
  chex.assert_trees_all_close(grams[0], gram, rtol=FIT_RTOL)
  chex.assert_trees_all_close(grams[1][1:, 1:], 4 * gram[1:, 1:], rtol=FIT_RTOL)


@pytest.mark.parametrize("mode", MODES)
def test_float32_trajectory_stats_grad(mode):
  """The fit on the statistics, differentiated through the Gram and its eigendecomposition."""
  with _mode(mode):
    _check_grad(mode, _stats_fit_loss, rtol_f32=FIT_GRAD_RTOL_F32)


@pytest.mark.parametrize("mode", MODES)
def test_float32_search_path_jit(mode):
  """A discrete search: ``jax.jit(search_path, static_argnums=1)`` in both modes gives the
  eager path; its int32 path has no gradient (differentiate `path_errors` or `fit_weights`
  on the path it returns)."""
  path, info = _eager32()["search"]
  assert isinstance(path, np.ndarray)   # host numpy: int32 path, float64 diagnostics
  chex.assert_type([path, info.step_errors], [np.int32, np.float64])
  with _mode(mode):
    jitted, jinfo = jax.jit(oj.search_path, static_argnums=1)(_get().traj, 3)
    chex.assert_type([jitted, jinfo.step_errors], [jnp.int32, jnp.float64])
    np.testing.assert_array_equal(jitted, path)
    chex.assert_trees_all_close(jinfo.step_errors, info.step_errors, rtol=1e-8)


def test_float32_sample_jit_and_vmap():
  eager = _eager32()["sample"]
  chex.assert_type(eager, jnp.float32)    # x_T's dtype
  s = _setup(False)
  per_noise = jax.jit(jax.vmap(lambda x: oj.sample(s.den, s.schedule, x[None])[0]))(X_T)
  chex.assert_type(per_noise, jnp.float32)
  chex.assert_trees_all_close(per_noise, eager, rtol=RTOL_F32, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_float32_sample_grad(mode):
  """In x_T and in the weights: these, as a differentiable argument, are JAX's float32 copy of
  the host float64 weights in float32 mode and float64 under x64; each gradient comes back
  in its argument's dtype (`_batched`)."""
  with _mode(mode):
    chex.assert_type(jnp.asarray(_get().schedule.weights), _dtype(mode))
    _check_grad(mode, _sample_loss)
