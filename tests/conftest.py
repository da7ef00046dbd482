"""Test order: the longest files first, so the two xdist workers finish together.

pytest-xdist (``--dist loadfile --no-loadscope-reorder``, pyproject.toml) hands whole files to
the workers in collection order; a long file collected last leaves one worker idle at the end
(about two minutes of the suite's wall time before this order).
"""
import os

import jax

# The files whose tests take the longest in total (measured with --durations), longest first.
LONGEST_FIRST = ("test_cli.py", "test_stable_diffusion.py", "test_digits.py",
                 "test_compare.py", "test_multihost.py", "test_closed_loop_fit.py",
                 "test_closed_loop_search.py", "test_notebooks.py", "test_stats.py",
                 "test_learned.py", "test_ld3.py", "test_search.py", "test_float32.py",
                 "test_fit.py")


def pytest_collection_modifyitems(session, config, items):  # noqa: ARG001
  del session, config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest in order


def _use_a_persistent_compilation_cache() -> None:
  """Compiled XLA programs kept in .pytest_cache/d/jax-compilation between runs of the suite.

  Compilation is most of the suite's time (tiny models, many shapes); a developer's second run
  reads the programs back instead of compiling them again. A fresh clone starts empty (the
  README times both). Set in the environment, so the suite's subprocesses (CLI, notebooks,
  multi-host) share it; ``OLSS_TEST_COMPILATION_CACHE=0`` turns it off, and a
  ``JAX_COMPILATION_CACHE_DIR`` already set is respected. ``pytest --cache-clear`` empties it
  (it lives in pytest's own cache folder, about 60 MB a code version).

  No size limit: JAX's LRU eviction (``jax_compilation_cache_max_size``) lists and reads every
  entry under a lock shared by all processes at each write, quadratic in the entries; with
  the suite's ~3,500 programs it made a cold run 2.7x slower (1,424 s against 528 s).
  """
  if os.environ.get("OLSS_TEST_COMPILATION_CACHE", "1") == "0":
    return
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     ".pytest_cache", "d", "jax-compilation"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  # this process (jax may have read the environment before this file ran)
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


_use_a_persistent_compilation_cache()
