"""The shipped digits diffusion model, its evaluation classifier and data (scikit-learn's digits)."""
from olss_jax._src.digits.classifier import DigitsClassifier, load_digits_classifier
from olss_jax._src.digits.data import images_to_grid, images_to_uint8, load_digits_dataset
from olss_jax._src.digits.model import DigitsModel, load_digits_model
from olss_jax._src.frechet import frechet_distance

__all__ = ["DigitsClassifier", "DigitsModel", "frechet_distance", "images_to_grid",
           "images_to_uint8", "load_digits_classifier", "load_digits_dataset",
           "load_digits_model"]
