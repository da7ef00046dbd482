"""Test order: the longest files first, so the two xdist workers finish together.

pytest-xdist (``--dist loadfile --no-loadscope-reorder``, pyproject.toml) hands whole files to
the workers in collection order; a long file collected last leaves one worker idle at the end
(about two minutes of the suite's wall time before this order).
"""

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
