"""Datasets: embedded, generated, and loaders for standard ones."""

from .datasets import DATASETS, Dataset, load_dataset, read_idx

__all__ = ["DATASETS", "Dataset", "load_dataset", "read_idx"]
