"""olss_jax.refine: end-to-end refinement, monotone on the fitting set, structure kept, finite
gradients."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
K_TEACHER = 100
F32_RTOL = 1e-4          # float32 losses / weights, jit vs eager
F64_GRAD_RTOL = 1e-6     # float64 autodiff vs central differences


@functools.lru_cache(maxsize=None)
def _problem(num_noises=12, dim=8, seed=0):
  mix = oj.analytic.make_gaussian_mixture(jax.random.key(seed), 5, (dim,), std=0.1)
  den = oj.analytic.mixture_denoiser(mix, ALPHAS)
  x_T = jax.random.normal(jax.random.key(seed + 1), (num_noises, dim))
  traj = oj.collect_trajectory(den, x_T, ALPHAS, K_TEACHER)
  return den, traj


def _fitting_loss(den, traj, sched):
  target = traj.states[-1]
  return float(jnp.mean((oj.sample(den, sched, traj.x_T) - target) ** 2))


def test_refine_lowers_the_fitting_loss_of_ddim_and_keeps_the_structure():
  """DDIM on 3 steps is far from the teacher: 15 Adam steps must lower the fitting loss by
  more than 10% (measured: 36%), inside the lower-triangular structure."""
  den, traj = _problem()
  path = oj.uniform_path(traj, 3)
  sched = oj.baselines.ddim_schedule(ALPHAS, np.asarray(traj.timesteps)[path])
  out, info = oj.refine(den, traj, sched, optimizer=optax.adam(1e-2), num_iters=15,
                        holdout=0.25)
  before, after = _fitting_loss(den, traj, sched), _fitting_loss(den, traj, out)
  assert after < 0.9 * before and info.best_iteration > 0, (before, after)
  np.testing.assert_allclose(info.final_loss, after, rtol=F32_RTOL)
  mask = np.tril(np.ones((3, 4), bool), 1)    # x_T and e_0..e_i in row i
  assert np.all(np.asarray(out.weights)[~mask] == 0)
  np.testing.assert_array_equal(out.timesteps, sched.timesteps)
  meta = out.metadata
  assert meta["refine_iters"] == len(info.train_losses) - 1
  assert not meta["refine_kept_initial"] and meta["fit"] == "refined"
  assert meta["refine_holdout"] == 3
  # the hold-out curve picked the iterate: it is the minimum of the recorded curve
  assert info.best_iteration == int(np.argmin(info.holdout_losses))
  chex.assert_tree_all_finite(out.weights)


def test_refine_returns_the_initial_weights_when_nothing_improves():
  den, traj = _problem()
  sched = oj.fit_weights(traj, oj.uniform_path(traj, 3))[0]
  # A step size that can only make things worse (and non-finite).
  out, info = oj.refine(den, traj, sched, optimizer=optax.sgd(1e6), num_iters=2)
  assert info.best_iteration == 0
  np.testing.assert_array_equal(np.asarray(out.weights), np.asarray(sched.weights))
  assert out.metadata["refine_kept_initial"] and out.metadata["fit"] == "teacher_forced"
  out0, _ = oj.refine(den, traj, sched, num_iters=0)
  np.testing.assert_array_equal(np.asarray(out0.weights), np.asarray(sched.weights))


def test_refine_jit_and_eager_agree():
  den, traj = _problem()
  sched = oj.baselines.ddim_schedule(ALPHAS, np.asarray(traj.timesteps)[oj.uniform_path(traj, 2)])
  kw = dict(optimizer=optax.adam(1e-2), num_iters=1, holdout=0, patience=None)
  a, ia = oj.refine(den, traj, sched, jit=True, **kw)
  b, ib = oj.refine(den, traj, sched, jit=False, **kw)
  np.testing.assert_allclose(ia.train_losses, ib.train_losses, rtol=F32_RTOL)
  np.testing.assert_allclose(a.weights, b.weights, rtol=F32_RTOL, atol=1e-6)


def _final_sample_loss(weights, timesteps, denoise_fn, x_T, target, *, checkpoint=True):
  """What `refine` minimises: the n-step sample's MSE against the teacher's final state.

  ``checkpoint`` wraps the model call in `jax.checkpoint` (as `refine` does), so reverse mode
  keeps only the model's inputs per step and recomputes its activations.
  """
  model = jax.checkpoint(lambda x, t: denoise_fn(x, t)) if checkpoint else denoise_fn
  x = oj.sample(model, oj.Schedule(timesteps, weights), x_T)
  return jnp.mean((x.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)


def test_gradients_through_sample_are_finite_and_correct():
  den, traj = _problem()
  sched = oj.fit_weights(traj, oj.uniform_path(traj, 4))[0]
  target = traj.states[-1]
  loss = functools.partial(_final_sample_loss, timesteps=jnp.asarray(sched.timesteps),
                           denoise_fn=den, x_T=traj.x_T, target=target)
  w = jnp.asarray(sched.weights, jnp.float32)
  g_ckpt = jax.jit(jax.grad(lambda w: loss(w)))(w)
  g_plain = jax.grad(lambda w: loss(w, checkpoint=False))(w)
  chex.assert_tree_all_finite(g_ckpt)
  chex.assert_trees_all_close(g_ckpt, g_plain, rtol=F32_RTOL, atol=1e-7)
  # Entries above the diagonal do not affect the sample: their gradient is exactly 0.
  mask = np.tril(np.ones((4, 5), bool), 1)
  assert np.all(np.asarray(g_ckpt)[~mask] == 0)


def test_gradient_matches_central_differences_in_float64():
  # A float64 model affine in x (a Gaussian's exact eps): autodiff through sample vs FD.
  with jax.enable_x64(True):
    mean = jnp.linspace(-1.0, 1.0, 4)

    def den(x, t):
      ab = jnp.asarray(ALPHAS)[t]
      return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * mean) / (ab * 0.09 + 1 - ab)

    x_T = jax.random.normal(jax.random.key(3), (3, 4), jnp.float64)
    target = jax.random.normal(jax.random.key(4), (3, 4), jnp.float64)
    ts = jnp.asarray([999, 600, 200], jnp.int32)
    w = jnp.asarray(oj.baselines.ddim_schedule(ALPHAS, np.asarray(ts)).weights)

    def loss(w):
      x = oj.sample(jax.checkpoint(den), oj.Schedule(ts, w), x_T)
      return jnp.mean((x - target) ** 2)

    g = jax.grad(loss)(w)
    eps = 1e-6
    for i, j in [(0, 0), (1, 2), (2, 3), (2, 0)]:
      e = jnp.zeros_like(w).at[i, j].set(eps)
      fd = (loss(w + e) - loss(w - e)) / (2 * eps)
      np.testing.assert_allclose(g[i, j], fd, rtol=F64_GRAD_RTOL, atol=1e-9)


def test_refine_bad_arguments():
  den, traj = _problem()
  sched = oj.fit_weights(traj, oj.uniform_path(traj, 2))[0]
  with pytest.raises(ValueError, match="holdout"):
    oj.refine(den, traj, sched, holdout=0.99 + 0.01)
  with pytest.raises(ValueError, match="holdout"):
    oj.refine(den, traj, sched, holdout=12)
  with pytest.raises(ValueError, match="num_iters"):
    oj.refine(den, traj, sched, num_iters=-1)
  with pytest.raises(TypeError, match="optimizer"):
    oj.refine(den, traj, sched, optimizer="adam")
  with pytest.raises(TypeError, match="schedule"):
    oj.refine(den, traj, np.zeros((2, 3)))
