"""olss_jax.validation: validators raise only TypeError / ValueError, named, and accept exactly
the inputs an independent oracle calls valid (hypothesis, 500 generated cases per test).
"""
import operator
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import olss_jax as oj
from olss_jax import validation

CASES = settings(max_examples=500, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALPHAS = oj.scaled_linear_alphas_cumprod()
VALIDATOR_ERRORS = (TypeError, ValueError)


def _schedule(n, seed):
  rng = np.random.default_rng(seed)
  weights = rng.standard_normal((n, n + 1))
  weights[np.triu_indices(n, 2, n + 1)] = 0.0   # above the diagonal: outputs not yet seen
  return oj.make_schedule(np.sort(rng.choice(1000, n, replace=False))[::-1], weights,
                          {"method": "olss", "n": n})


# ------------------------------------------------------------------------- validators

int_like = st.one_of(st.integers(-3, 12), st.integers(-3, 12).map(np.int16),
                     st.integers(0, 12).map(np.uint8))
weird = st.one_of(st.none(), st.booleans(), st.floats(-3, 12), st.text(max_size=3),
                  st.just(np.float32(2.0)), st.just(jnp.int32(3)), st.just([[0, 1], [2]]),
                  st.just({"a": 1}), st.just(2**80))
INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64]
OTHER_DTYPES = [np.float32, np.float64, np.bool_, np.complex64]


def _index_or_none(v):
  if isinstance(v, (bool, np.bool_)):
    return None
  try:
    return operator.index(v)
  except TypeError:
    return None


@CASES
@given(num_steps=int_like | weird, k=int_like | weird)
def test_check_num_steps_matches_oracle(num_steps, k):
  n_i, k_i = _index_or_none(num_steps), _index_or_none(k)
  event(f"valid: {n_i is not None and k_i is not None and 1 <= n_i <= k_i}")
  try:
    got = validation.check_num_steps(num_steps, k)
  except TypeError:
    assert n_i is None or k_i is None
  except ValueError as e:
    assert n_i is not None and k_i is not None and not 1 <= n_i <= k_i, e
  else:
    assert got == n_i and 1 <= n_i <= k_i and type(got) is int  # pylint: disable=unidiomatic-typecheck


@st.composite
def paths(draw):
  """A valid path for a random K with one random defect (or none), or a weird object."""
  k = draw(st.integers(1, 12))
  style = draw(st.sampled_from(["none", "none", "none", "list", "dtype", "dup", "unsorted",
                                "start", "range", "negative", "2d", "empty", "weird", "k"]))
  if style == "weird":
    return draw(weird), k
  values = [0] + sorted(draw(st.sets(st.integers(1, k - 1), max_size=k - 1))) if k > 1 else [0]
  if style == "dup":
    values = values + values[-1:]
  elif style == "unsorted" and len(values) > 2:
    values[1], values[2] = values[2], values[1]
  elif style == "start":
    values = values[1:] or [1]
  elif style == "range":
    values = values + [k + draw(st.integers(0, 3))]
  elif style == "negative":
    values = [-1] + values
  elif style == "empty":
    values = []
  elif style == "k":
    k = draw(int_like | weird)
  if style == "list":
    return values, k
  dtype = draw(st.sampled_from(INT_DTYPES * 3 + OTHER_DTYPES)) if style == "dtype" else np.int32
  with np.errstate(all="ignore"):
    arr = np.asarray(values).astype(dtype)
  return (arr.reshape(1, -1) if style == "2d" else arr), k


def _path_oracle(path, k):
  k_i = _index_or_none(k)
  if k_i is None or k_i < 1 or not isinstance(path, (list, np.ndarray)):
    return None
  arr = np.asarray(path) if isinstance(path, np.ndarray) or all(
      isinstance(v, int) for v in path) else None
  if arr is None or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
    return None
  vals = arr.tolist()
  if arr.ndim != 1 or not 1 <= len(vals) <= k_i or vals[0] != 0 or vals[-1] >= k_i:
    return None
  if any(b <= a for a, b in zip(vals, vals[1:])):
    return None
  return vals


@CASES
@given(path_and_k=paths())
def test_check_path_matches_oracle(path_and_k):
  path, k = path_and_k
  expected = _path_oracle(path, k)
  event(f"valid: {expected is not None}")
  try:
    got = validation.check_path(path, k)
  except VALIDATOR_ERRORS as e:
    assert expected is None, (path, k, e)
    assert "path" in str(e) or "num_teacher_steps" in str(e)
  else:
    assert expected is not None and got.dtype == np.int32 and got.tolist() == expected


@st.composite
def valid_schedules(draw):
  n = draw(st.integers(1, 4))
  rng = np.random.default_rng(draw(st.integers(0, 2**16)))
  ts = np.sort(rng.choice(1000, n, replace=False))[::-1].astype(np.int32)
  w = np.where(np.tril(np.ones((n, n + 1), bool), 1), rng.standard_normal((n, n + 1)), 0.0)
  return oj.Schedule(ts, w)


@st.composite
def schedules(draw):
  """A valid schedule with one random defect (or none), as numpy or jax arrays."""
  sched = draw(valid_schedules())
  ts, w = np.asarray(sched.timesteps), np.asarray(sched.weights)
  defect = draw(st.sampled_from(["none", "none", "none", "ts_2d", "ts_empty", "w_shape",
                                 "ts_float", "ts_nan", "ts_bool", "w_int", "ts_negative", "ts_big",
                                 "w_nan", "w_inf", "w_upper", "w_float32", "ts_uint16"]))
  with np.errstate(all="ignore"):
    if defect == "ts_2d":
      ts = ts[:, None]
    elif defect == "ts_empty":
      ts, w = ts[:0], w[:0, :1]
    elif defect == "w_shape":
      w = w[:, :-1] if draw(st.booleans()) else np.concatenate([w, w[:1]])
    elif defect == "ts_float":  # continuous timesteps are valid
      ts = ts.astype(np.float32) + np.float32(0.5)
    elif defect == "ts_nan":
      ts = np.where(ts == ts.max(), np.nan, ts.astype(np.float32))
    elif defect == "ts_bool":
      ts = ts > 500
    elif defect == "w_int":
      w = w.astype(np.int32)
    elif defect == "ts_negative":
      ts = ts - 999
    elif defect == "ts_big":
      ts = ts + 600
    elif defect in ("w_nan", "w_inf"):
      w = np.where(w == w[-1, 0], np.nan if defect == "w_nan" else -np.inf, w)
    elif defect == "w_upper" and w.shape[0] > 1:
      w = w.copy()
      w[0, 2] = 0.25
    elif defect == "w_float32":
      w = w.astype(np.float32)
    elif defect == "ts_uint16":
      ts = ts.astype(np.uint16)
  if draw(st.booleans()):
    return oj.Schedule(jnp.asarray(ts), jnp.asarray(w))
  return oj.Schedule(ts, w)


def _schedule_valid(s, t_max):
  ts, w = np.asarray(s.timesteps), np.asarray(s.weights)
  if ts.ndim != 1 or ts.shape[0] < 1 or w.shape != (ts.shape[0], ts.shape[0] + 1):
    return False
  if ts.dtype == np.bool_ or not (np.issubdtype(ts.dtype, np.integer)
                                  or np.issubdtype(ts.dtype, np.floating)):
    return False
  if not np.all(np.isfinite(ts.astype(np.float64))):
    return False
  if not np.issubdtype(w.dtype, np.floating) or not np.all(np.isfinite(w)):
    return False
  n = ts.shape[0]
  return (bool(np.all(ts >= 0)) and (t_max is None or bool(np.all(ts < t_max)))
          and all(w[i, j] == 0 for i in range(n) for j in range(i + 2, n + 1)))


@CASES
@given(sched=schedules(), t_max=st.none() | st.sampled_from([1000, 500]))
def test_check_schedule_matches_oracle(sched, t_max):
  event(f"valid: {_schedule_valid(sched, t_max)}")
  try:
    validation.check_schedule(sched, num_train_timesteps=t_max)
  except VALIDATOR_ERRORS as e:
    assert not _schedule_valid(sched, t_max), e
    assert "schedule" in str(e)
  else:
    assert _schedule_valid(sched, t_max)


@st.composite
def trajectories(draw):
  """A valid trajectory with one random defect (or none)."""
  k, b = draw(st.integers(1, 4)), draw(st.integers(1, 3))
  dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, ml_dtypes.bfloat16]))
  ts = oj.baselines.ddim_timesteps(k)
  alphas = np.concatenate([ALPHAS[ts], [1.0]])
  x_T = np.ones((b, 2), dtype)
  outputs = np.full((k, b, 2), 0.5, dtype)
  defect = draw(st.sampled_from(["none", "none", "none", "b0", "out_shape", "out_dtype",
                                 "x_int", "ts_up", "ts_negative", "ts_float", "al_len", "al_big",
                                 "al_zero", "al_down", "out_nan", "x_inf", "ts_2d"]))
  with np.errstate(all="ignore"):
    if defect == "b0":
      x_T, outputs = x_T[:0], outputs[:, :0]
    elif defect == "out_shape":
      outputs = outputs[:, :, :1] if draw(st.booleans()) else np.concatenate([outputs] * 2)
    elif defect == "out_dtype":
      outputs = outputs.astype(draw(st.sampled_from([np.float32, np.int32])))
    elif defect == "x_int":
      x_T = x_T.astype(np.int32)
    elif defect == "ts_up":
      ts = ts[::-1].copy()
    elif defect == "ts_negative":
      ts = ts - 1000
    elif defect == "ts_float":  # continuous teacher times are valid
      ts = ts.astype(np.float32) + np.float32(0.5)
    elif defect == "ts_2d":
      ts = ts[None]
    elif defect == "al_len":
      alphas = alphas[1:]
    elif defect == "al_big":
      alphas = alphas + 0.5
    elif defect == "al_zero":
      alphas = alphas * 0.0
    elif defect == "al_down":
      alphas = alphas[::-1].copy()
    elif defect == "out_nan":
      outputs = outputs.copy()
      outputs[draw(st.integers(0, k - 1)), draw(st.integers(0, b - 1)), 1] = np.nan
    elif defect == "x_inf":
      x_T = x_T.copy()
      x_T[-1, 0] = np.inf
  return oj.Trajectory(x_T, outputs, oj.Teacher(ts, alphas, "ddim"))


def _trajectory_valid(t):
  ts, x_T, out, al = (np.asarray(t.timesteps), t.x_T, t.model_outputs, np.asarray(t.levels))
  k = ts.shape[0] if ts.ndim == 1 else -1
  floats = ("float16", "bfloat16", "float32", "float64")
  return (k >= 1 and x_T.shape[0] >= 1 and (np.issubdtype(ts.dtype, np.integer)
                                            or np.issubdtype(ts.dtype, np.floating))
          and x_T.dtype.name in floats and out.dtype.name in floats
          and out.shape == (k,) + x_T.shape and al.shape == (k + 1,)
          and np.all((al > 0) & (al <= 1)) and np.all(np.diff(al) >= 0)
          and np.all(ts >= 0) and np.all(np.diff(ts) < 0)
          and np.all(np.isfinite(out.astype(np.float64)))
          and np.all(np.isfinite(x_T.astype(np.float64))))


@CASES
@given(traj=trajectories())
def test_check_trajectory_matches_oracle(traj):
  valid = bool(_trajectory_valid(traj))
  event(f"valid: {valid}")
  try:
    validation.check_trajectory(traj)
  except VALIDATOR_ERRORS as e:
    assert not valid, e
    assert "traj" in str(e)
  else:
    assert valid


def test_traced_inputs_get_the_checks_possible_at_trace_time():
  traj = oj.testing.random_trajectory(5, 2, (3,))

  @jax.jit
  def run(path, outputs):
    validation.check_trajectory(traj.replace(model_outputs=outputs))  # shapes and dtypes
    return validation.check_path(path, 5)

  np.testing.assert_array_equal(run(jnp.asarray([0, 2]), jnp.asarray(traj.model_outputs)), [0, 2])
  try:  # a traced path of the wrong dtype or shape is still refused by name
    run(jnp.asarray([0.0, 2.0]), jnp.asarray(traj.model_outputs))
  except TypeError as e:
    assert "path" in str(e)
  else:
    raise AssertionError("a float path was accepted under jit")
  try:
    run(jnp.asarray([0, 1]), jnp.asarray(traj.model_outputs)[:, :1])
  except ValueError as e:
    assert "model_outputs" in str(e)
  else:
    raise AssertionError("outputs of the wrong shape were accepted under jit")


@CASES
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2**16),
       n_bad=st.integers(0, 3), use_jax=st.integers(0, 4),
       dtype=st.sampled_from([np.float32, np.float64, np.float16]))
def test_find_nonfinite_finds_the_first_bad_element(shape, seed, n_bad, use_jax, dtype):
  use_jax = use_jax == 0 and dtype != np.float64  # x64 is off by default
  if use_jax:  # few distinct shapes: each new shape compiles the device-side scan
    shape = [(3,), (2, 3), (2, 2, 2)][seed % 3]
  rng = np.random.default_rng(seed)
  arr = rng.standard_normal(shape).astype(dtype)
  for _ in range(n_bad):
    arr[tuple(rng.integers(0, s) for s in shape)] = rng.choice([np.nan, np.inf, -np.inf])
  bad = np.argwhere(~np.isfinite(arr))
  expected = tuple(int(i) for i in bad[0]) if len(bad) else None
  assert validation.find_nonfinite(jnp.asarray(arr) if use_jax else arr) == expected


@CASES
@given(fitted_shape=st.none() | st.lists(st.integers(1, 3), max_size=2),
       x_shape=st.lists(st.integers(0, 3), max_size=3),
       fitted_model=st.none() | st.sampled_from(["sd14", "sd15"]),
       model=st.none() | st.sampled_from(["sd14", "sd15"]),
       fitted_g=st.none() | st.sampled_from([1.0, 7.5]), g=st.none() | st.sampled_from([1.0, 7.5]),
       num_steps=st.none() | st.integers(1, 4))
def test_check_schedule_compatible_errors_and_warnings(fitted_shape, x_shape, fitted_model, model,
                                                       fitted_g, g, num_steps):
  meta = {k: v for k, v in [("sample_shape", fitted_shape), ("model_name", fitted_model),
                            ("guidance_scale", fitted_g)] if v is not None}
  sched = _schedule(3, 0).replace(metadata=meta)
  x_T = np.zeros(x_shape, np.float32)
  impossible = (len(x_shape) < 1 or x_shape[0] < 1 or (num_steps not in (None, 3))
                or (fitted_shape is not None and list(fitted_shape) != x_shape[1:]))
  suspicious = ((model and fitted_model and model != fitted_model)
                or (g and fitted_g and g != fitted_g))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
      validation.check_schedule_compatible(sched, x_T, num_steps=num_steps, model_name=model,
                                           guidance_scale=g)
    except ValueError:
      assert impossible
      return
  assert not impossible
  kinds = {w.category for w in caught}
  assert kinds == ({validation.ScheduleMismatchWarning} if suspicious else set())


# ------------------------------------------------------------- wired into the sampler


def test_sample_checks_concrete_schedules_and_still_jits():
  denoise = oj.analytic.mixture_denoiser(oj.analytic.make_gaussian_mixture(jax.random.PRNGKey(0), 2, (3,)), ALPHAS)
  x_T = jnp.ones((2, 3))
  good = _schedule(3, 1)
  bad = oj.Schedule(good.timesteps, np.where(good.weights == good.weights[1, 1],
                                                       np.nan, good.weights))
  upper = oj.Schedule(good.timesteps, good.weights + 1.0)
  for sched, match in ((bad, "non-finite"), (upper, "above the diagonal")):
    try:
      oj.sample(denoise, sched, x_T)
    except ValueError as e:
      assert match in str(e)
    else:
      raise AssertionError(f"sample accepted a schedule with {match} weights")
  eager = oj.sample(denoise, good, x_T)
  jitted = jax.jit(oj.sample)(denoise, good, x_T)  # traced leaves: shape checks only
  np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ schedules and their model

def test_schedule_kind_reads_what_fitted_and_classical_schedules_record():
  flow = oj.flow_teacher(20)
  assert validation.schedule_kind(oj.baseline_schedule("dpm_solver_pp", ALPHAS, 4)) == "ddim"
  assert validation.schedule_kind(oj.baseline_schedule("pndm", ALPHAS, 4)) == "ddim"
  assert validation.schedule_kind(oj.baseline_schedule("unipc", flow, 4)) == "flow"
  v = oj.ddim_teacher(ALPHAS, 20, prediction_type="v_prediction")
  assert validation.schedule_kind(oj.baseline_schedule("ddim", v, 4, alphas_cumprod=ALPHAS)) \
      == "ddim_v"
  traj = oj.testing.random_trajectory(6, 3)
  assert validation.schedule_kind(oj.fit_weights(traj, np.array([0, 3]))[0]) == "ddim"
  assert validation.schedule_kind(_schedule(3, 0)) is None


def test_flow_timesteps_reach_the_time_scale_and_vp_ones_stay_below_it():
  flow_euler = oj.baseline_schedule("euler", oj.flow_teacher(20), 4)
  assert float(np.max(flow_euler.timesteps)) == 1000.0
  validation.check_schedule(flow_euler, num_train_timesteps=1000)          # kind from metadata
  plain = oj.make_schedule(np.asarray(flow_euler.timesteps), np.asarray(flow_euler.weights))
  validation.check_schedule(plain, num_train_timesteps=1000, kind="flow")
  try:
    validation.check_schedule(plain, num_train_timesteps=1000)
  except ValueError as e:
    assert "< 1000" in str(e)
  else:
    raise AssertionError("a VP schedule at t = 1000 of 1000 passed")


def test_check_schedule_compatible_with_a_teacher_refuses_another_kind():
  vp = oj.baseline_schedule("ddim", ALPHAS, 4)
  x = np.zeros((2, 16), np.float32)
  validation.check_schedule_compatible(vp, x, teacher=oj.ddim_teacher(ALPHAS, 4))
  for teacher in (oj.flow_teacher(4), oj.ddim_teacher(ALPHAS, 4, prediction_type="sample")):
    try:
      validation.check_schedule_compatible(vp, x, teacher=teacher)
    except ValueError as e:
      assert f"used with a '{teacher.kind}' teacher" in str(e)
    else:
      raise AssertionError(teacher.kind)


def test_traced_validity_flags_agree_with_the_eager_checks():
  good = _schedule(3, 1)
  assert bool(jax.jit(validation.schedule_is_valid)(good.timesteps, good.weights))
  upper = np.asarray(good.weights).copy()
  upper[0, 2] = 1.0
  assert not bool(jax.jit(validation.schedule_is_valid)(good.timesteps, upper))
  assert not bool(validation.schedule_is_valid(np.array([5000, 3, 1]), good.weights,
                                               num_train_timesteps=1000))
  assert bool(validation.schedule_is_valid(np.array([1000.0, 3, 1]), good.weights,
                                           num_train_timesteps=1000, kind="flow"))
  for path, ok in (([0, 3, 5], True), ([0, 5, 3], False), ([1, 3, 5], False), ([0, 3, 10], False)):
    assert bool(jax.jit(validation.path_is_valid, static_argnums=1)(jnp.array(path), 10)) == ok


@CASES
@given(weird)
def test_check_positive_and_check_choice_name_the_argument(value):
  oracle_positive = (not isinstance(value, (str, dict, list, bool, type(None)))
                     and np.ndim(value) == 0 and np.isfinite(float(value)) and float(value) > 0)
  try:
    out = validation.check_positive(value, "rate")
  except VALIDATOR_ERRORS as e:
    assert str(e).startswith("rate: ") and not oracle_positive, (value, e)
  else:
    assert oracle_positive and out == float(value) and isinstance(out, float)
  allowed = ("mse", "log_mse")
  try:
    assert validation.check_choice(value, "loss", allowed) == value
  except ValueError as e:
    assert str(e).startswith("loss: ") and value not in allowed
  else:
    assert value in allowed


def test_check_flow_teacher_refuses_a_vp_teacher_by_name():
  assert validation.check_flow_teacher(oj.flow_teacher(4)) == 1000.0
  try:
    validation.check_flow_teacher(oj.ddim_teacher(ALPHAS, 4), name="traj", what="DS-Solver")
  except ValueError as e:
    assert str(e).startswith("traj: DS-Solver is for rectified-flow models"), e
  else:
    raise AssertionError("a VP teacher passed")



def test_find_nonfinite_scans_a_concrete_array_without_compile_time_evaluation(monkeypatch):
  """A concrete array is scanned by the one jitted program of its shape, not evaluated at
  compile time (that compiled the array in as a constant: 50 s for the 2 GB outputs at Stable
  Diffusion's latent size); a concrete array closed over inside a caller's jit still is."""
  bad = jnp.ones((7, 3, 5)).at[2, 1, 4].set(jnp.nan)

  def inner(x):
    return x + (0.0 if validation.find_nonfinite(bad) is None else 1.0)

  assert float(jax.jit(inner)(1.0)) == 2.0

  def refuse():
    raise AssertionError("find_nonfinite evaluated a concrete array at compile time")

  monkeypatch.setattr(jax, "ensure_compile_time_eval", refuse)
  assert validation.find_nonfinite(bad) == (2, 1, 4)
  assert validation.find_nonfinite(jnp.ones((7, 3, 5))) is None
