"""Datasets: embedded, generated, and loaders for standard ones."""

from . import sequences
from .datasets import DATASETS, Dataset, load_dataset, read_idx

__all__ = ["DATASETS", "Dataset", "load_dataset", "read_idx", "sequences"]
