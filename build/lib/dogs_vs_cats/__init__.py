"""SqueezeNet on Kaggle's Dogs vs. Cats Redux, as a reproducible DVC pipeline."""

__version__ = "0.1.0"
