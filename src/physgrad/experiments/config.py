"""Experiment configurations: a small, validated record that fully determines a training run.

A config is a flat JSON object (see :class:`TrainConfig` for every key). Unknown keys, wrong
types and impossible values are refused with a message naming the key, so a typo never silently
runs the default. ``build`` turns a config into (dataset, model, method, optimizer); ``run``
trains it and writes ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt`` into a folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import torch

from ..data.datasets import DATASETS, Dataset, load_dataset
from ..errors import ConfigError
from ..methods import METHODS, GradientMethod, make_method
from ..methods.base import SCOPES
from ..models.reservoir_net import ReservoirNet
from ..systems.base import PhysicalSystem
from ..systems.noise import MeasurementNoise
from ..systems.devices.reservoir import RandomReservoir
from ..systems.devices.ring import AutoOscillationRing
from ..training.trainer import Trainer
from .limits import check_limits

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def _random_reservoir(cfg: "TrainConfig") -> PhysicalSystem:
    return RandomReservoir(
        cfg.reservoir_inputs, cfg.reservoir_size, seed=cfg.device_seed, noise=MeasurementNoise(additive=cfg.noise)
    )


def _ring_reservoir(cfg: "TrainConfig") -> PhysicalSystem:
    """The PGT paper's magnonic auto-oscillation ring, one input vector held per round trip (static mode)."""
    return AutoOscillationRing(
        cfg.reservoir_inputs, cfg.reservoir_size, mode="static", seed=cfg.device_seed,
        noise=MeasurementNoise(additive=cfg.noise),
    )


# Devices a config can name; other modules register theirs with ``register_reservoir``.
RESERVOIRS: dict[str, Callable[["TrainConfig"], PhysicalSystem]] = {"random": _random_reservoir, "ring": _ring_reservoir}


def register_reservoir(name: str, factory: Callable[["TrainConfig"], PhysicalSystem]) -> None:
    """Make ``reservoir=name`` available to configs and the command line."""
    RESERVOIRS[name] = factory


@dataclass
class TrainConfig:
    """Everything that determines one run (defaults: the demo's PGT-local run on digits)."""

    method: str = "pgt"  # pgt | spsa | es | fd | backprop
    scope: str = "local"  # global (the paper: perturb everything) | local (estimated VJP per device)
    dataset: str = "digits"
    data_root: str | None = None
    train_samples: int | None = None  # a seeded subset, None: all
    test_samples: int | None = None
    epochs: int = 20
    batch_size: int = 32
    optimizer: str = "adam"  # adam | sgd | adamw
    lr: float | None = None  # None: 3e-3 for backprop and local scope, 1e-3 for global forward-only
    momentum: float = 0.0  # heavy-ball momentum of sgd (the PGT benchmarks' choice for the global scope: 0.9)
    seed: int = 0
    num_pairs: int = 32
    delta: float = 1e-2
    r: int = 1
    dropout: float = 0.0
    reservoir: str = "random"
    reservoir_inputs: int = 32
    reservoir_size: int = 256
    device_seed: int = 1
    noise: float = 0.0  # additive measurement noise (output units)
    log_every: int = 0
    checkpoint_every: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TrainConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} not found") from e
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.type.replace(" | None", "")
            ok = {
                "str": isinstance(value, str),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            }[kind]
            if not ok and not (value is None and "None" in f.type):
                raise ConfigError(f"config key {f.name!r} must be {f.type}, got {value!r}")
        check_limits(self)  # every field's bounds, named (experiments/limits.py)
        choices = {"method": METHODS, "scope": SCOPES, "dataset": DATASETS, "optimizer": tuple(OPTIMIZERS),
                   "reservoir": tuple(RESERVOIRS)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config key {key!r}: unknown value {getattr(self, key)!r}; choose one of {list(allowed)}")
        for key in ("epochs", "batch_size", "num_pairs", "r", "reservoir_inputs", "reservoir_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.delta <= 0 or (self.lr is not None and self.lr <= 0) or self.noise < 0:
            raise ConfigError("delta and lr must be > 0 and noise >= 0")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"config key 'momentum' must be in [0, 1), got {self.momentum}")
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(f"config key 'momentum' applies to optimizer 'sgd' only, not {self.optimizer!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"config key 'dropout' must be in [0, 1), got {self.dropout}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if (self.method != "backprop" and self.scope == "global") else 3e-3

    @property
    def label(self) -> str:
        return "backprop" if self.method == "backprop" else f"{self.method}-{self.scope}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build(cfg: TrainConfig, data: Dataset | None = None):
    """``(dataset, model, method, optimizer)`` for a config."""
    cfg.validate()
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_root)
        if cfg.train_samples or cfg.test_samples:
            data = data.subset(cfg.train_samples, cfg.test_samples, seed=cfg.seed)
    device = RESERVOIRS[cfg.reservoir](cfg)
    model = ReservoirNet(data.num_features, device, data.num_classes, seed=cfg.seed)
    kwargs = {"seed": cfg.seed}
    if cfg.method != "backprop":
        kwargs.update(delta=cfg.delta, num_pairs=cfg.num_pairs)
        if cfg.method == "pgt":
            kwargs.update(r=cfg.r, dropout=cfg.dropout)
    method: GradientMethod = make_method(cfg.method, cfg.scope, **kwargs)
    extra = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    optimizer = OPTIMIZERS[cfg.optimizer](model.parameters(), lr=cfg.learning_rate, **extra)
    return data, model, method, optimizer


def run(cfg: TrainConfig, out_dir: str | os.PathLike | None, *, progress: bool | None = None, data: Dataset | None = None,
        resume: bool = True) -> list[dict]:
    """Train one config; with ``out_dir``, write config.json, metrics.jsonl and checkpoint.pt there."""
    data, model, method, optimizer = build(cfg, data)
    trainer = Trainer(  # the trainer checks the config against a checkpoint, then writes config.json
        model, method, optimizer, batch_size=cfg.batch_size, seed=cfg.seed, out_dir=out_dir, progress=progress,
        log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, config=cfg.to_dict(),
    )
    return trainer.fit(data, cfg.epochs, resume=resume)


def write_json_atomic(path: Path, obj) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(f.name, path)
