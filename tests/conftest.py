"""Test order: the longest files first, so the two xdist workers finish together.

pytest-xdist (``--dist loadfile --no-loadscope-reorder``, pyproject.toml) hands whole files to
the workers in collection order; a long file collected last leaves one worker idle at the end
(about two minutes of the suite's wall time before this order).
"""
import os
import pathlib
import uuid

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


def _write_cache_entries_atomically() -> bool:
  """JAX's cache without a size limit writes an entry in place; write it whole instead.

  ``LRUCache.put`` checks that the entry is absent, then writes the file where readers look;
  another process reading that program meanwhile gets a truncated executable (seen here twice:
  a worker crashed in ``compilation_cache.get_executable_and_time`` and the run hung). Here
  the entry is written beside it and renamed into place, so a reader sees all of it or none.
  Returns False (and patches nothing) if JAX's private cache class is not the one we know.
  """
  try:
    from jax._src import lru_cache
  except ImportError:
    return False
  cache = getattr(lru_cache, "LRUCache", None)
  suffix = getattr(lru_cache, "_CACHE_SUFFIX", None)
  if cache is None or not isinstance(suffix, str) or not callable(getattr(cache, "put", None)):
    return False
  in_place = cache.put

  def put(self, key: str, value: bytes) -> None:
    if getattr(self, "eviction_enabled", True) or not key:
      return in_place(self, key, value)              # JAX's own locking path, or its error
    path = pathlib.Path(self.path) / f"{key}{suffix}"
    if path.exists():
      return None
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    temp.write_bytes(value)
    os.replace(temp, path)
    return None

  cache.put = put
  return True


def _use_a_persistent_compilation_cache() -> None:
  """Compiled XLA programs kept in .pytest_cache/d/jax-compilation between runs of the suite.

  Compilation is most of the suite's time (tiny models, many shapes); a developer's second run
  reads the programs back instead of compiling them again. A fresh clone starts empty (the
  README times both). ``OLSS_TEST_COMPILATION_CACHE=0`` turns it off, and a
  ``JAX_COMPILATION_CACHE_DIR`` set before the suite is respected. ``pytest --cache-clear``
  empties it (it lives in pytest's own cache folder, about 60 MB a code version).

  The xdist workers share ``jax-compilation/shared``, their entries written whole
  (`_write_cache_entries_atomically`). Subprocesses (CLI, notebooks, multi-host) do not load
  this file, so they get JAX's in-place writes; they use a folder of their worker's
  (``jax-compilation/subprocesses-gw0``, ...: they run while their worker waits), and the
  multi-host test's processes, which run side by side, one subfolder each. Without the atomic
  write, the workers fall back to a folder each.

  No size limit: JAX's LRU eviction (``jax_compilation_cache_max_size``) lists and reads every
  entry under a lock shared by all processes at each write, quadratic in the entries; with
  the suite's ~3,500 programs it made a cold run 2.7x slower (1,424 s against 528 s).
  """
  if os.environ.get("OLSS_TEST_COMPILATION_CACHE", "1") == "0":
    return
  base = os.environ.get("OLSS_TEST_COMPILATION_CACHE_BASE")   # set by this function upstream
  if base is None:
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:                # the user's own: respected
      return
    base = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        ".pytest_cache", "d", "jax-compilation")
    os.environ["OLSS_TEST_COMPILATION_CACHE_BASE"] = base
  worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
  own = os.path.join(base, "shared" if _write_cache_entries_atomically() else worker)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(base, f"subprocesses-{worker}")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  # this process (jax may have read the environment before this file ran)
  jax.config.update("jax_compilation_cache_dir", own)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))


_use_a_persistent_compilation_cache()
