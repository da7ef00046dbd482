"""olss_jax.Teacher: the teacher as data (kind, timesteps, levels), its coefficients (Eq. 8-9)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import olss_jax as oj

ALPHAS = oj.scaled_linear_alphas_cumprod()
F64_RTOL = 1e-13


def _ddim_reference(alphas):
  """Eq. 2 in plain numpy: x' = sqrt(ab') (x - sqrt(1 - ab) e) / sqrt(ab) + sqrt(1 - ab') e."""
  cur, nxt = alphas[:-1], alphas[1:]
  return np.sqrt(nxt / cur), np.sqrt(1 - nxt) - np.sqrt(nxt) * np.sqrt(1 - cur) / np.sqrt(cur)


def test_ddim_teacher_levels_and_step_coefficients():
  teacher = oj.ddim_teacher(ALPHAS, 50, steps_offset=1, final_alpha_cumprod=float(ALPHAS[0]))
  ts = np.asarray(teacher.timesteps)
  np.testing.assert_array_equal(ts, oj.baselines.ddim_timesteps(50, steps_offset=1))
  levels = np.asarray(teacher.levels)
  assert teacher.levels.dtype == jnp.float64
  np.testing.assert_array_equal(levels, np.append(ALPHAS[ts], ALPHAS[0]))
  a, b = teacher.step_coefficients()
  ra, rb = _ddim_reference(levels)
  np.testing.assert_allclose(a, ra, rtol=F64_RTOL)
  np.testing.assert_allclose(b, rb, rtol=F64_RTOL)
  assert teacher.config == {"num_train_timesteps": 1000, "steps_offset": 1,
                            "final_alpha_cumprod": float(ALPHAS[0])}


def test_state_coefficients_unroll_the_recurrence():
  # Random VP levels, in no order: steps with a in (0.2, 4.4) and b of either sign.
  rng = np.random.default_rng(0)
  teacher = oj.Teacher(np.arange(7, 0, -1).astype(np.int32), rng.uniform(0.05, 0.95, 8))
  a, b = (np.asarray(v) for v in teacher.step_coefficients())
  c = np.asarray(teacher.state_coefficients())
  # x_{k+1} = a_k x_k + b_k e_k applied to the basis vectors directly.
  x = np.eye(8)[0]
  for k in range(7):
    np.testing.assert_allclose(c[k], x, rtol=F64_RTOL, atol=1e-15)
    x = a[k] * x + b[k] * np.eye(8)[k + 1]
  np.testing.assert_allclose(c[7], x, rtol=F64_RTOL)
  assert np.all(np.triu(c, 1) == 0)


def test_path_weights_are_the_classical_solver_on_the_path():
  teacher = oj.ddim_teacher(ALPHAS, 1000)
  path = np.array([0, 200, 400, 600, 800])
  ours = np.asarray(teacher.path_weights(path))
  ddim = oj.baselines.ddim_schedule(ALPHAS, np.asarray(teacher.timesteps)[path])
  np.testing.assert_allclose(ours, ddim.weights, rtol=F64_RTOL, atol=1e-15)
  # The full path is the teacher itself.
  full = np.asarray(oj.ddim_teacher(ALPHAS, 20).path_weights(np.arange(20)))
  np.testing.assert_allclose(full, np.asarray(oj.ddim_teacher(ALPHAS, 20).state_coefficients())[1:],
                             rtol=F64_RTOL, atol=1e-15)


def test_teacher_is_a_pytree_with_static_kind_and_traced_levels():
  teacher = oj.ddim_teacher(ALPHAS, 10)
  leaves, treedef = jax.tree_util.tree_flatten(teacher)
  assert len(leaves) == 2
  again = jax.tree_util.tree_unflatten(treedef, leaves)
  assert again.kind == "ddim" and again.config == teacher.config

  @jax.jit
  def last_b(t):
    return t.step_coefficients()[1][-1]

  chex.assert_trees_all_close(last_b(teacher), teacher.step_coefficients()[1][-1], rtol=0)


def test_ddim_teacher_under_jit_with_a_traced_table():
  f = jax.jit(lambda ab: oj.ddim_teacher(ab, 100).levels)
  with jax.enable_x64(True):
    table = jnp.asarray(ALPHAS, jnp.float64)   # a float64 jax array keeps every bit
  levels = f(table)
  np.testing.assert_array_equal(np.asarray(levels), np.asarray(oj.ddim_teacher(ALPHAS, 100).levels))


def test_check_teacher_names_every_defect():
  good = oj.ddim_teacher(ALPHAS, 5)
  ts, lv = np.asarray(good.timesteps), np.asarray(good.levels)
  cases = [
      (oj.Teacher(ts[::-1].copy(), lv, "ddim"), ValueError, "strictly decreasing"),
      (oj.Teacher(ts - 1000, lv, "ddim"), ValueError, "non-negative"),
      (oj.Teacher(ts, lv[:-1], "ddim"), ValueError, r"levels: expected shape \(6,\)"),
      (oj.Teacher(ts, lv[::-1].copy(), "ddim"), ValueError, "non-decreasing"),
      (oj.Teacher(ts, np.where(lv == lv[0], 2.0, lv), "ddim"), ValueError, r"\(0, 1\]"),
      (oj.Teacher(ts.astype(bool), lv, "ddim"), TypeError, "timesteps"),
      (oj.Teacher(ts, lv.astype(np.int32), "ddim"), TypeError, "levels"),
      (oj.Teacher(ts.astype(np.float32) + 0.5, lv, "ddim"), None, None),  # float times are fine
  ]
  for teacher, error, match in cases:
    if error is None:
      oj.validation.check_teacher(teacher)
    else:
      with pytest.raises(error, match=match):
        oj.validation.check_teacher(teacher)
  with pytest.raises(ValueError, match="kind"):
    oj.Teacher(ts, lv, "heun")
  with pytest.raises(TypeError, match="teacher"):
    oj.validation.check_teacher("ddim")
  with pytest.raises(ValueError, match="final_alpha_cumprod"):
    oj.ddim_teacher(ALPHAS, 5, final_alpha_cumprod=0.0)
