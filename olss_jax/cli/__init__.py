"""The ``olss-jax`` command line, a thin layer over the library (see `olss_jax.cli._main`)."""
from olss_jax.cli._main import COMMANDS, FIGURES, PROG, build_parser, main

__all__ = ["COMMANDS", "FIGURES", "PROG", "build_parser", "main"]
