"""olss_jax.closed_loop_fit: Eq. 12 on the sampler's own states, in pure JAX."""
import importlib.util
import pathlib
import re
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj
from olss_jax import testing

ALPHAS = oj.scaled_linear_alphas_cumprod()
F64_WEIGHTS_ATOL = 1e-7     # float64 trajectories: the two fits' weights
F64_STATE_ATOL = 1e-9       # float64: predicted states / samples
F32_SAMPLE_ATOL = 2e-4      # float32 analytic models: samples of equivalent schedules


@pytest.mark.parametrize("num_steps", [1, 3, 5])
def test_closed_loop_equals_teacher_forced_for_a_linear_model(num_steps):
  # eps is affine in x_t: the closed-loop states are exact projections, so its basis is the
  # teacher's and both least-squares problems coincide.
  with jax.enable_x64(True):
    den, traj = testing.gaussian_problem()
    path = oj.uniform_path(traj, num_steps)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # rank-deficient basis: min-norm both
      paper, _ = oj.fit_weights(traj, path)
      closed, info = oj.closed_loop_fit(traj, path, den, regularization=0.0)
      default, _ = oj.closed_loop_fit(traj, path, den)
    assert paper.metadata["fit"] == "teacher_forced"
    assert closed.metadata["fit"] == "closed_loop" and int(info.num_model_calls) == num_steps
    chex.assert_trees_all_close(closed.weights, paper.weights, atol=F64_WEIGHTS_ATOL)
    np.testing.assert_array_equal(closed.timesteps, paper.timesteps)
    x_new = jax.random.normal(jax.random.key(7), (5, 6), jnp.float64)
    ref = oj.sample(den, paper, x_new)
    chex.assert_trees_all_close(oj.sample(den, closed, x_new), ref, atol=F64_STATE_ATOL)
    chex.assert_trees_all_close(oj.sample(den, default, x_new), ref, atol=F64_STATE_ATOL)
    teacher_final = oj.collect_trajectory(den, x_new, ALPHAS, 100).states[-1]
    chex.assert_trees_all_close(ref, teacher_final, atol=1e-6)


def test_closed_loop_fit_reproduces_its_own_sampler_eagerly_and_under_jit():
  den, traj = testing.mixture_problem()
  path = oj.uniform_path(traj, 4)
  sched, info = oj.closed_loop_fit(traj, path, den)
  states = oj.sample_states(den, sched, traj.x_T)
  chex.assert_trees_all_close(states, info.states, atol=F32_SAMPLE_ATOL)
  chex.assert_shape(info.states, (5,) + traj.x_T.shape)
  j_sched, j_info = jax.jit(oj.closed_loop_fit)(traj, jnp.asarray(path), den)
  chex.assert_trees_all_close(j_sched.weights, sched.weights, rtol=1e-9, atol=1e-9)
  np.testing.assert_array_equal(np.asarray(j_info.ridge), info.ridge)
  chex.assert_tree_all_finite(sched.weights)


def test_cv_ridge_generalises_where_plain_least_squares_blows_up():
  """20 steps on the sharp 16-dim mixture (200-step teacher, 32 fitting noises): plain
  closed-loop least squares finds huge cancelling weights (1e4) that fail on held-out noises
  (RMSE 2.5, 16x worse than DDIM); the cross-validated ridge is 8x better than DDIM."""
  mix = oj.analytic.make_gaussian_mixture(jax.random.key(0), 8, (16,), std=0.1)
  den = oj.analytic.mixture_denoiser(mix, ALPHAS)
  traj = oj.collect_trajectory(den, jax.random.normal(jax.random.key(1), (32, 16)), ALPHAS, 200)
  x_eval = jax.random.normal(jax.random.key(2), (128, 16))
  ref = oj.collect_trajectory(den, x_eval, ALPHAS, 200).states[-1]
  path = oj.uniform_path(traj, 20)

  def rmse(schedule):
    return float(jnp.sqrt(jnp.mean((oj.sample(den, schedule, x_eval) - ref) ** 2)))

  cv, info = oj.closed_loop_fit(traj, path, den)
  plain, _ = oj.closed_loop_fit(traj, path, den, regularization=0.0)
  ddim = oj.Schedule(np.asarray(traj.timesteps)[path], np.asarray(traj.teacher.path_weights(path)))
  r_cv, r_plain, r_ddim = rmse(cv), rmse(plain), rmse(ddim)
  assert np.max(np.abs(plain.weights)) > 1e3 > np.max(np.abs(cv.weights))
  assert r_cv < r_ddim / 5 and r_plain > 10 * r_ddim, (r_cv, r_plain, r_ddim)
  assert np.any(info.ridge > 0)  # the ridge did the work


WEIGHT_BOUND = 10.0  # closed_loop_fit's documented guard: 10x the teacher's largest weight


def test_cv_ridge_refuses_amplifying_weights():
  """`testing.amplifying_problem`: recovering the teacher's final state from the sampler's
  basis needs weights of 1e4 to 1e12, which generalise exactly (the model is linear), so the
  cross-validation alone would keep them; the guard holds every row to 10x the teacher's own
  largest step weight (at least 1)."""
  with jax.enable_x64(True):
    den, traj, path = testing.amplifying_problem()
    guarded, info = oj.closed_loop_fit(traj, path, den)
    plain, _ = oj.closed_loop_fit(traj, path, den, regularization=0.0)
  bound = WEIGHT_BOUND * np.maximum(1.0, np.abs(traj.teacher.path_weights(path)).max(axis=1))
  assert np.all(np.abs(plain.weights).max(axis=1) > 1e3)          # least squares amplifies
  np.testing.assert_array_less(np.abs(guarded.weights).max(axis=1), bound * (1 + 1e-12))
  assert np.all(info.ridge > 0) and np.all(info.guarded)         # the guard did the holding
  chex.assert_tree_all_finite(guarded.weights)
  # searches score paths without the guard (it bounds the returned fit only): here the
  # unguarded fit's final MSE on the fitting noises is half the held one's (3.4 against 7.3)
  with jax.enable_x64(True):
    fit_split = np.arange(24)
    scored, _ = oj.peers.final_errors_fn(traj, den, fit_noises=fit_split)(path)
    _, held = oj.closed_loop_fit(traj, path, den, fit_noises=fit_split)
  assert np.all(held.guarded) and scored < 0.6 * float(held.step_errors[-1])
  mix_den, mix_traj = testing.mixture_problem()
  _, benign = oj.closed_loop_fit(mix_traj, oj.uniform_path(mix_traj, 4), mix_den)
  assert not np.any(benign.guarded)                               # a benign model: untouched


RIDGE_GRID = (0.0,) + tuple(10.0 ** p for p in range(-12, 0))   # closed_loop_fit's documented grid
CV_RTOL_F64 = 1e-6   # float64: a chosen strength's oracle CV error against the oracle's best


def _oracle_rows(den, traj, path, info, fit_noises):
  """Each closed-loop row's regression from the fit's own states, in numpy (the oracles' data).

  Row i regresses the teacher's state at ``path[i + 1]`` (the final state for the last row)
  on ``[x_T, eps(states_0, t_0), ..., eps(states_i, t_i)]``.

  Returns:
    A list of (cols (S, D, i + 2), y (S, D), ref (i + 2,) the teacher's step) per row, over
    the fitting noises ``fit_noises``.
  """
  n, k = len(path), traj.num_teacher_steps
  x_T = np.asarray(traj.x_T, np.float64)
  b = x_T.shape[0]
  outputs = np.stack([np.asarray(den(info.states[i], traj.timesteps[path[i]]), np.float64)
                      for i in range(n)])
  stacked = np.concatenate([x_T[None], np.asarray(traj.model_outputs, np.float64)])
  teacher = np.einsum("mk,kbd->mbd", np.asarray(traj.state_coefficients(), np.float64),
                      stacked.reshape(k + 1, b, -1))
  refs = np.asarray(traj.teacher.path_weights(path), np.float64)
  rows = []
  for i in range(n):
    cols = np.concatenate([x_T.reshape(b, -1, 1), np.moveaxis(
        outputs[:i + 1].reshape(i + 1, b, -1), 0, 2)], axis=2)[fit_noises]
    rows.append((cols, teacher[list(path[1:]) + [k]][i][fit_noises], refs[i, :i + 2]))
  return rows


def _cv_oracle(den, traj, path, info, fit_noises, criterion):
  """Numpy oracle of the cross-validated ridge: each row's CV error at every grid strength.

  Row i regresses the teacher's state at ``path[i + 1]`` (the final state for the last row)
  on ``[x_T, eps(states_0, t_0), ..., eps(states_i, t_i)]`` (the fit's own states), with the
  documented ridge towards the teacher's step; fold f holds fitting noises ``b % 4 == f``.
  "mse": the held-out folds' summed squared error; "rmse": their summed per-noise RMSE.

  Returns:
    (n, len(RIDGE_GRID)) CV errors.
  """
  n = len(path)
  fold = np.arange(len(fit_noises)) % 4
  curves = np.zeros((n, len(RIDGE_GRID)))
  for i, (cols, y, ref) in enumerate(_oracle_rows(den, traj, path, info, fit_noises)):
    scale = np.mean(cols.reshape(-1, i + 2) ** 2, axis=0)
    for g, lam in enumerate(RIDGE_GRID):
      for f in range(4):
        a, t = cols[fold != f].reshape(-1, i + 2), y[fold != f].reshape(-1)
        d = np.sqrt(lam * a.shape[0] * scale)
        w = np.linalg.lstsq(np.concatenate([a, np.diag(d)]),
                            np.concatenate([t, d * ref]), rcond=None)[0]
        sq = np.sum((cols[fold == f] @ w - y[fold == f]) ** 2, axis=1)         # per noise
        curves[i, g] += np.sum(sq) if criterion == "mse" else np.sum(np.sqrt(sq))
  return curves


def test_cv_rmse_picks_the_strength_with_the_lowest_summed_per_noise_rmse():
  """``regularization="cv-rmse"``: each row's strength minimises the held-out folds' summed
  per-noise RMSE (a numpy oracle from the raw rows), ``"cv"`` their summed squared error; in
  memory and on a held-out split; and on these sharp mixtures the two criteria disagree on
  some rows (the option changes fits)."""
  chosen = {}
  with jax.enable_x64(True):
    for seed, steps in ((0, 4), (3, 5), (5, 5)):
      den, traj = testing.mixture_problem((8,), num_noises=24, seed=seed, std=0.05)
      path = oj.uniform_path(traj, steps)
      for fit_noises in (None, np.arange(20)):
        for reg, criterion in (("cv", "mse"), ("cv-rmse", "rmse")):
          sched, info = oj.closed_loop_fit(traj, path, den, regularization=reg,
                                           fit_noises=fit_noises)
          assert sched.metadata["regularization"] == reg
          assert not np.any(info.guarded), (seed, reg)     # the guard leaves the CV's pick
          idx = np.arange(traj.batch_size) if fit_noises is None else fit_noises
          curves = _cv_oracle(den, traj, path, info, idx, criterion)
          picked = [RIDGE_GRID.index(float(lam)) for lam in info.ridge]
          at_pick = curves[np.arange(steps), picked]
          np.testing.assert_array_less(at_pick, curves.min(axis=1) * (1 + CV_RTOL_F64) + 1e-300,
                                       err_msg=f"seed {seed}, {reg}")
          chosen[seed, fit_noises is None, reg] = np.asarray(info.ridge)
  assert any(np.any(chosen[key] != chosen[key[:2] + ("cv-rmse",)])
             for key in chosen if key[2] == "cv"), chosen


# closed_loop_fit's documented Huber rule: 3x the median residual, a tenth of the median
# target norm, 3 passes
ROBUST_THRESHOLD, ROBUST_FLOOR, ROBUST_ITERATIONS = 3.0, 0.1, 3


def _robust_oracle(den, traj, path, info, fit_noises):
  """Numpy oracle of ``regularization="cv-robust"``: each row's weights by the documented IRLS.

  Per row, from the fit's own states: first ``"cv"``'s fit (the strength minimising the
  held-out folds' summed squared error); then 3 times: each noise's residual norm ``r_s``, the
  bound ``k = max(3 median(r), 0.1 median_s ||y_s||)``, weights ``a_s = min(1, k / r_s)``
  rescaled to mean 1, and the strength minimising the held-out folds' summed Huber loss
  (``r^2`` up to ``k``, ``2 k r - k^2`` beyond), each fold's fit the ridge on the other folds'
  noises weighted by ``a`` (``lam * rows(a) * sum_j s_j (w_j - ref_j)^2``, ``rows(a)`` the
  weighted row count, ``s`` the unweighted mean squares), and the weighted fit on all.

  Returns:
    (n, n + 1) weights.
  """
  n = len(path)
  fold = np.arange(len(fit_noises)) % 4
  weights = np.zeros((n, n + 1))
  for i, (cols, y, ref) in enumerate(_oracle_rows(den, traj, path, info, fit_noises)):
    elements = y.shape[1]
    scale = np.mean(cols.reshape(-1, i + 2) ** 2, axis=0)

    def ridge(keep, a, lam, cols=cols, y=y, scale=scale, ref=ref, elements=elements):
      sa = np.sqrt(a[keep])[:, None, None]
      aa = (cols[keep] * sa).reshape(-1, cols.shape[2])
      t = (y[keep] * sa[:, :, 0]).reshape(-1)
      d = np.sqrt(lam * elements * np.sum(a[keep]) * scale)
      return np.linalg.lstsq(np.concatenate([aa, np.diag(d)]), np.concatenate([t, d * ref]),
                             rcond=None)[0]

    def fit(a, bound, cols=cols, y=y):
      cv = []
      for lam in RIDGE_GRID:
        total = 0.0
        for f in range(4):
          r = np.sqrt(np.sum((cols[fold == f] @ ridge(fold != f, a, lam) - y[fold == f]) ** 2,
                             axis=1))
          total += np.sum(r**2 if bound == np.inf else
                          np.where(r <= bound, r**2, 2 * bound * r - bound**2))
        cv.append(total)
      cv = np.asarray(cv)
      lam = RIDGE_GRID[int(np.flatnonzero(cv <= cv.min() * (1 + 1e-9))[0])]
      return ridge(np.ones(len(fit_noises), bool), a, lam)

    a = np.ones(len(fit_noises))
    w = fit(a, np.inf)
    size = np.median(np.sqrt(np.sum(y**2, axis=1)))
    for _ in range(ROBUST_ITERATIONS):
      r = np.sqrt(np.sum((cols @ w - y) ** 2, axis=1))
      bound = max(ROBUST_THRESHOLD * np.median(r), ROBUST_FLOOR * size)
      a = np.minimum(1.0, bound / r)
      a = a * len(a) / np.sum(a)
      w = fit(a, bound)
    weights[i, :i + 2] = w
  return weights


def test_cv_robust_is_the_documented_huber_irls():
  """``regularization="cv-robust"``: each row's weights equal a numpy oracle of the documented
  rule (`_robust_oracle`), in memory and on a held-out split; the noises it down-weights change
  the fit (its weights differ from "cv"'s on these sharp mixtures) and lower the typical
  noise's error (the fitting noises' median final error)."""
  changed, median_ratio = [], []
  with jax.enable_x64(True):
    for seed, steps in ((0, 4), (3, 5), (5, 5)):
      den, traj = testing.mixture_problem((8,), num_noises=24, seed=seed, std=0.05)
      path = oj.uniform_path(traj, steps)
      for fit_noises in (None, np.arange(20)):
        sched, info = oj.closed_loop_fit(traj, path, den, regularization="cv-robust",
                                         fit_noises=fit_noises)
        assert sched.metadata["regularization"] == "cv-robust"
        assert not np.any(info.guarded), seed
        idx = np.arange(traj.batch_size) if fit_noises is None else fit_noises
        oracle = _robust_oracle(den, traj, path, info, idx)
        np.testing.assert_allclose(sched.weights, oracle, rtol=1e-6, atol=F64_WEIGHTS_ATOL,
                                   err_msg=f"seed {seed}")
        plain, plain_info = oj.closed_loop_fit(traj, path, den, regularization="cv",
                                               fit_noises=fit_noises)
        changed.append(not np.allclose(sched.weights, plain.weights, atol=F64_WEIGHTS_ATOL))
        final = traj.states[-1][idx]
        def median_error(states):
          return np.median(np.sqrt(np.mean((np.asarray(states[-1][idx]) - final) ** 2,
                                           axis=-1)))
        median_ratio.append(median_error(info.states) / median_error(plain_info.states))
  assert any(changed), changed
  assert np.median(median_ratio) < 0.9, median_ratio     # measured 0.72


def test_the_fit_compiles_no_batched_lapack_call():
  """Every LAPACK call of the compiled fit is on one matrix (rank <= 2 results): jaxlib 0.10's
  batched CPU kernels wait on XLA's intra-op pool for their batch's chunks, and two of them at
  once on a 2-thread pool deadlocked (the MNIST fit hung with one batched QR and one batched
  SVD waiting); the CV's strengths and the noises' factors are `lax.map` loops instead."""
  den, traj = testing.mixture_problem()
  path = jnp.asarray(oj.uniform_path(traj, 4))
  for reg in ("cv", "cv-rmse", "cv-robust"):
    hlo = jax.jit(lambda t, p, reg=reg: oj.closed_loop_fit(t, p, den, regularization=reg)).lower(
        traj, path).compile().as_text()
    calls = [line.split("custom-call(")[0] for line in hlo.splitlines()
             if 'custom_call_target="lapack_' in line]
    assert len(calls) >= 5, (reg, len(calls))
    for result in calls:
      ranks = [len(dims.split(",")) for dims in re.findall(r"\w+\[([\d,]+)\]", result)]
      assert max(ranks) <= 2, (reg, result)


def test_bad_arguments_are_named():
  den, traj = testing.mixture_problem()
  with pytest.raises(ValueError, match="regularization"):
    oj.closed_loop_fit(traj, [0, 50], den, regularization="lots")
  with pytest.raises(ValueError, match="regularization"):
    oj.closed_loop_fit(traj, [0, 50], den, regularization=-1.0)
  with pytest.raises(ValueError, match="regularization: expected 'cv', 'cv-rmse', 'cv-robust'"):
    oj.closed_loop_fit(traj, [0, 50], den, regularization="rmse")
  with pytest.raises(TypeError, match="denoise_fn"):
    oj.closed_loop_fit(traj, [0, 50], "not a model")
  with pytest.raises(ValueError, match="path"):
    oj.closed_loop_fit(traj, [1, 50], den)
  with pytest.raises(TypeError, match="traj"):
    oj.closed_loop_fit(oj.trajectory_stats(traj), [0, 50], den)


def test_closed_loop_table_small_runs(capsys):
  path = pathlib.Path(__file__).parents[1] / "olss_jax" / "benchmarks" / "closed_loop_table.py"
  spec = importlib.util.spec_from_file_location("closed_loop_table", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # The methods asserted below (the benchmark's other methods have their own test files).
  rows = module.run(small=True, only=("ddim", "olss-p", "olss-p-cl", "gits-dpm_solver_pp",
                                      "tuned-unipc", "olss-ft"))
  out = capsys.readouterr().out
  assert "| method | 3 steps |" in out and "fit model calls" in out
  by = {r["method"]: r["rmse"] for r in rows}
  assert list(by)[0] == "ddim" and {"gits-dpm_solver_pp", "tuned-unipc", "olss-ft"} <= set(by)
  assert all(np.isfinite(v) for v in by.values())
  # even in the tiny configuration (50-step teacher, 8 fitting noises, 3 steps) the
  # closed-loop fit is ahead of DDIM (measured 0.77x) and of the paper's fit (0.53x)
  assert by["olss-p-cl"] < 0.85 * by["ddim"], by
  assert by["olss-p-cl"] < 0.6 * by["olss-p"], by
  # the default's safeguards: paired against the uniform-path fit and the best classical solver
  assert "the default against what it must not lose to" in out
  assert "| 3 | olss-p-cl |" in out and "| 3 | best classical (ddim) |" in out
  calls = {r["method"]: r["fit_model_calls"] for r in rows}
  assert calls["ddim"] == 0 and 0 < calls["tuned-unipc"] <= 20 * 3 and calls["olss-p-cl"] == 3
  models = module.mixture_models([31])                   # the unseen mixtures' models
  assert [m.kind for m in models] == ["ddim", "flow"]
  assert all(m.sample_shape == (3, 8, 8) and m.name.endswith("-seed31") for m in models)
  rows = module.run(small=True, models=models[1:], only=("euler",))
  assert [(r["model"], r["method"]) for r in rows] == [(models[1].name, "euler")]


