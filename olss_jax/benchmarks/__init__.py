"""Benchmark scripts (run as ``python -m olss_jax.benchmarks.<name>``); they print figures.

Speed and memory targets are checked here, side by side in one run, not by timed tests.
"""
