"""Trainer, metrics and checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .metrics import MetricsLog, read_metrics
from .trainer import Trainer

__all__ = ["MetricsLog", "Trainer", "load_checkpoint", "read_metrics", "save_checkpoint"]
