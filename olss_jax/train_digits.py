"""Retrains the shipped digits and MNIST models: ``python -m olss_jax.train_digits``.

`train_unet` (the epsilon or rectified-flow UNet) and `train_classifier` (the evaluation
classifier) are the recipes the command runs; each writes its msgpack file and returns its
config. With their defaults they reproduce the shipped assets byte for byte on CPU.
"""
from olss_jax._src.digits.train import main, train_classifier, train_unet

__all__ = ["main", "train_classifier", "train_unet"]

if __name__ == "__main__":
  main()
