"""``python -m olss_jax``: the ``olss-jax`` command line (see `olss_jax.cli`)."""
import sys

from olss_jax.cli import main

if __name__ == "__main__":
  sys.exit(main())
