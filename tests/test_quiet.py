"""Flax deprecation notices (quiet.py) through the digits model's UNet.

Tracing a digits model's denoiser (``oj.digits.load_digits_model().denoiser(...)``) is the
cheapest public call that imports diffusers' Flax UNet, whose modules log "Flax classes are
deprecated ..." at every trace (transformers logs "TensorFlow and JAX classes are deprecated
..."). After it, a logging filter on the two libraries' own loggers ("diffusers",
"transformers") and on their stream handlers drops exactly those notices: every other record
still reaches the handlers, other loggers are untouched, and no warning filter is installed.

Both libraries set ``propagate = False`` on their loggers. pytest attaches its own capture
handlers (those of the root logger) to such loggers during each test, and the filter then lands on
them too, so these tests read neither ``caplog`` nor pytest's handlers: they read the libraries'
own stream handlers, their streams swapped for a buffer, and handlers of their own.
"""
import io
import logging
import warnings

import jax
import jax.numpy as jnp
import pytest

import olss_jax as oj

LIBRARIES = ("diffusers", "transformers")
# the notices as the pinned versions word them (diffusers 0.39, transformers 4.x)
DIFFUSERS_NOTICE = ("Flax classes are deprecated and will be removed in Diffusers v0.40.0. We "
                    "recommend migrating to PyTorch classes or pinning your version of Diffusers.")
TRANSFORMERS_NOTICE = ("TensorFlow and JAX classes are deprecated and will be removed in "
                       "Transformers v5. We recommend migrating to PyTorch classes or pinning "
                       "your version of Transformers.")
NOTICES = (DIFFUSERS_NOTICE, TRANSFORMERS_NOTICE)
# A batch no other test traces the digits denoiser with: a new shape retraces the UNet, and
# every trace runs the Flax modules' setup, which logs the notice.
FRESH_BATCH = 13


class Recorder(logging.Handler):
  """Keeps every record it is handed (no filter of its own)."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.messages = []

  def emit(self, record):
    self.messages.append((record.name, record.getMessage()))


def trace_denoiser(model, batch):
  denoise_fn = model.denoiser(jnp.arange(batch) % 10, guidance_scale=None)
  x = jax.ShapeDtypeStruct((batch,) + model.sample_shape, jnp.float32)
  return jax.eval_shape(denoise_fn, x, jnp.int32(500))


def own_handlers(name):
  """The handlers a library attached to its logger (not pytest's, which are the root's too)."""
  shared = logging.getLogger().handlers
  return [h for h in logging.getLogger(name).handlers if h not in shared]


def filter_counts():
  """How many filters each library's logger and each of its own handlers hold."""
  return {name: (len(logging.getLogger(name).filters),
                 tuple(len(h.filters) for h in own_handlers(name)))
          for name in LIBRARIES}


@pytest.fixture(scope="module")
def traced():
  """The digits model after a public call that builds its UNet: (model, filters before, after)."""
  model = oj.digits.load_digits_model()
  before = list(warnings.filters)
  out = trace_denoiser(model, 1)
  after = list(warnings.filters)
  assert out.shape == (1,) + model.sample_shape
  return model, before, after


@pytest.fixture
def library_output(traced, monkeypatch):  # noqa: ARG001  (the libraries' handlers exist)
  """{library: buffer}: what each library's own stream handlers write, for this test only."""
  buffers = {}
  for name in LIBRARIES:
    handlers = own_handlers(name)
    assert handlers, f"{name} has no handler of its own to test"
    buffers[name] = io.StringIO()
    for handler in handlers:
      assert isinstance(handler, logging.StreamHandler), handler
      monkeypatch.setattr(handler, "stream", buffers[name])
      if "flush" in vars(handler):  # diffusers binds sys.stderr.flush at its import
        monkeypatch.setattr(handler, "flush", buffers[name].flush)
  return buffers


@pytest.fixture
def recorders(library_output):  # noqa: ARG001  (the libraries' own handlers found first)
  """{library: Recorder} added to each library's logger for this test only."""
  out = {name: Recorder() for name in LIBRARIES}
  for name, recorder in out.items():
    logging.getLogger(name).addHandler(recorder)
  yield out
  for name, recorder in out.items():
    logging.getLogger(name).removeHandler(recorder)


def test_building_the_unet_installs_no_warning_filter(traced):
  _, before, after = traced
  assert after == before, [f for f in after if f not in before]
  for notice in NOTICES:
    assert not any(message is not None and message.match(notice)
                   for _, message, *_ in warnings.filters), notice
    # the notice's FutureWarning, raised by the user's code, is still shown
    with warnings.catch_warnings(record=True) as caught:
      warnings.warn(notice, FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [notice]


def test_a_fresh_trace_logs_notices_that_the_diffusers_handler_drops(traced, library_output,
                                                                      recorders):
  model, _, _ = traced
  out = trace_denoiser(model, FRESH_BATCH)
  assert out.shape == (FRESH_BATCH,) + model.sample_shape
  # the trace did log the notice (from diffusers' modules, propagated to its logger) ...
  logged = [name for name, message in recorders["diffusers"].messages
            if message == DIFFUSERS_NOTICE]
  assert logged and all(name.startswith("diffusers.") for name in logged), \
      recorders["diffusers"].messages
  # ... and diffusers' own handler wrote none of it
  assert "deprecated" not in library_output["diffusers"].getvalue(), \
      library_output["diffusers"].getvalue()


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("child", ["", ".models.some_flax_module"])
def test_each_notice_is_dropped_by_the_library_handler_and_other_records_pass(
    library_output, library, child):
  logger = logging.getLogger(library + child)
  for notice in NOTICES:
    logger.warning(notice)
    logger.warning("%s", notice)              # the formatted message is what is matched
    logger.error("%s (again)", notice)
  assert library_output[library].getvalue() == "", library_output[library].getvalue()
  logger.warning("an ordinary warning %d", 7)
  logger.warning("Flax classes are fine")     # names Flax, not the notice
  logger.error("deprecated: %s", "something else")
  assert library_output[library].getvalue().splitlines() == [
      "an ordinary warning 7", "Flax classes are fine", "deprecated: something else"]


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_notice_logged_on_the_library_logger_reaches_no_handler(recorders, library_output,
                                                                  library):
  logger = logging.getLogger(library)
  for notice in NOTICES:
    logger.warning(notice)
  logger.warning("an ordinary warning")
  # the logger's own filter: even a handler added later never sees the notice
  assert recorders[library].messages == [(library, "an ordinary warning")]
  assert library_output[library].getvalue() == "an ordinary warning\n"


def test_other_loggers_keep_the_notice(traced):  # noqa: ARG001
  for name in ("olss_jax_test_other", "flax", "diffusers_lookalike", "transformers_lookalike"):
    logger, recorder = logging.getLogger(name), Recorder()
    logger.addHandler(recorder)
    try:
      logger.error(DIFFUSERS_NOTICE)
      logger.error(TRANSFORMERS_NOTICE)
    finally:
      logger.removeHandler(recorder)
    assert recorder.messages == [(name, DIFFUSERS_NOTICE), (name, TRANSFORMERS_NOTICE)], name


def test_building_another_unet_adds_no_second_filter(traced):  # noqa: ARG001
  counts = filter_counts()
  mnist = oj.digits.load_mnist_model()      # another UNet config: diffusers is imported again
  before = list(warnings.filters)
  out = trace_denoiser(mnist, 1)
  assert out.shape == (1,) + mnist.sample_shape
  assert filter_counts() == counts
  assert list(warnings.filters) == before

