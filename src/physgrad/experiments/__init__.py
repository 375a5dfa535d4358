"""Experiment configs, runners that reproduce the papers, and the report."""

from .config import RESERVOIRS, TrainConfig, build, register_reservoir, run
from .report import make_report

__all__ = ["RESERVOIRS", "TrainConfig", "build", "make_report", "register_reservoir", "run"]
