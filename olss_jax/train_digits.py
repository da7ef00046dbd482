"""Entry point: ``python -m olss_jax.train_digits`` retrains the shipped digits models."""
from olss_jax._src.digits.train import main

if __name__ == "__main__":
  main()
