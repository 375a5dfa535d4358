"""Experiment configurations: a small, validated record that fully determines a training run.

A config is a flat JSON object (see :class:`TrainConfig` for every key). Unknown keys, wrong
types and impossible values are refused with a message naming the key, so a typo never silently
runs the default. ``build`` turns a config into (dataset, model, method, optimizer); ``run``
trains it and writes ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt`` into a folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..methods.base import SCOPES, GradientMethod
from ..methods.defaults import DEFAULTS, SCHEDULES, default_lr, default_schedule, num_trainable
from ..methods.registry import make_method, method_entry, method_names
from ..systems.base import PhysicalSystem
from ..systems.registry import accepts, is_builtin, make_device
from ..training.trainer import Trainer
from .limits import check_limits
from .tasks import DATASETS, MODELS, build_model, load_task

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
RESERVOIRS = {"random": "reservoir", "ring": "ring"}  # the legacy ``reservoir`` key -> a registry device
LEGACY_METHOD_KEYS = ("num_pairs", "delta", "r", "dropout")  # top-level shorthands, given where a method takes them
DEFAULT_LR = {"hge": 0.02}  # when ``lr`` is None (else see ``learning_rate_for``)
# methods whose settings follow a row of physgrad.methods.defaults.DEFAULTS: the PGT family by its scope,
# central differences (a deterministic estimate, exact to O(δ²)) and backprop by the first-order row
DEFAULTS_ROW = {"pgt": "scope", "spsa": "scope", "es": "scope", "fd": "backprop", "backprop": "backprop"}
OTHER_LR = 3e-3  # the rate of the methods outside DEFAULTS_ROW (EqProp, Aeqprop, ...) when ``lr`` is None


@dataclass
class TrainConfig:
    """Everything that determines one run (defaults: PGT, local scope, on digits, at the shipped defaults).

    ``None`` in ``optimizer``/``lr``/``momentum``/``num_pairs``/``delta``/``schedule`` means "the
    shipped default" (:data:`physgrad.methods.defaults.DEFAULTS`, the row of the method's scope;
    see :meth:`resolved`): local scope Adam 3e-2, K = 2; global scope SGD with momentum 0.9,
    lr = 0.6·K/(D + K) for the model's D trainable parameters, K = 4, the loss back-off
    (:class:`~physgrad.methods.defaults.LossBackoff`); δ = 1e-2; backprop and ``fd`` Adam 1e-2.

    ``device``/``dataset``/``model`` left at ``None`` take the method's paper setting (see
    ``physgrad methods``'s registry): the PGT family and backprop a reservoir (``reservoir`` key:
    ``random`` or ``ring``) inside the dense network on digits, HGE the time-domain DNPU on the
    3-D sphere task, EqProp/Aeqprop a layered Hopfield network on digits.
    """

    method: str = "pgt"  # see method_names(): pgt spsa es fd backprop hge eqprop aeqprop
    scope: str = "local"  # global (the paper: perturb everything) | local (estimated VJP per device)
    method_options: dict = dataclasses.field(default_factory=dict)  # keyword options of the method (checked)
    dataset: str | None = None  # None: the method's default dataset
    data_root: str | None = None
    train_samples: int | None = None  # a seeded subset, None: all
    test_samples: int | None = None
    epochs: int = 20
    batch_size: int = DEFAULTS["batch_size"]
    optimizer: str | None = None  # adam | sgd | adamw; None: the defaults' (global: sgd, local/backprop/fd: adam)
    lr: float | None = None  # None: the defaults' rule (global: 0.6·K/(D + K); local 3e-2; backprop/fd 1e-2; HGE 0.02)
    momentum: float | None = None  # heavy-ball momentum of sgd; None: the defaults' (0.9 in the global scope, else 0)
    schedule: str | None = None  # constant | backoff (LossBackoff); None: the defaults' (global: backoff)
    seed: int = 0
    num_pairs: int | None = None  # K; None: the scope's default (global 4, local 2)
    delta: float | None = None  # δ; None: the scope's default (1e-2)
    r: int = 1
    dropout: float = 0.0
    device: str | None = None  # built-in name, module:Class, tcp://HOST:PORT; None: the method's paper device
    device_args: dict = dataclasses.field(default_factory=dict)  # keyword arguments of the device
    token_file: str | None = None  # token of a tcp:// device server
    model: str | None = None  # reservoir-net | transformer | energy | readout; None: by the device
    model_options: dict = dataclasses.field(default_factory=dict)
    reservoir: str = "random"  # the device when ``device`` is None and the method's is a reservoir
    reservoir_inputs: int = 32
    reservoir_size: int = 256
    device_seed: int = 1
    noise: float = 0.0  # additive measurement noise (output units) of built-in static devices
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
    def from_file(cls, path: str | os.PathLike, **overrides) -> "TrainConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError as e:
            raise ConfigError(f"config file {path} not found") from e
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            data = {**data, **overrides}
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from e

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            kind = f.type.replace(" | None", "")
            ok = {
                "str": isinstance(value, str),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                "dict": isinstance(value, dict),
            }[kind]
            if not ok and not (value is None and "None" in f.type):
                raise ConfigError(f"config key {f.name!r} must be {f.type}, got {value!r}")
        check_limits(self)  # every field's bounds, named (experiments/limits.py)
        choices = {"method": method_names(), "scope": SCOPES, "reservoir": tuple(RESERVOIRS)}
        if self.optimizer is not None:
            choices["optimizer"] = tuple(OPTIMIZERS)
        if self.schedule is not None:
            choices["schedule"] = SCHEDULES
        if self.dataset is not None:
            choices["dataset"] = DATASETS
        if self.model is not None:
            choices["model"] = MODELS
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config key {key!r}: unknown value {getattr(self, key)!r}; choose one of {list(allowed)}")
        for key in ("epochs", "batch_size", "num_pairs", "r", "reservoir_inputs", "reservoir_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        for key in ("train_samples", "test_samples"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"config key {key!r} must be >= 1 (or null for all), got {getattr(self, key)}")
        for key in ("delta", "lr"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"config key {key!r} must be > 0, got {value}")
        if self.noise < 0:
            raise ConfigError(f"config key 'noise' must be >= 0, got {self.noise}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ConfigError(f"config key 'momentum' must be in [0, 1), got {self.momentum}")
        if self.momentum and self.resolved_optimizer != "sgd":
            raise ConfigError(f"config key 'momentum' applies to optimizer 'sgd' only, not {self.resolved_optimizer!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"config key 'dropout' must be in [0, 1), got {self.dropout}")
        self.make_method()  # checks method_options against the method's signature and values

    # ------------------------------------------------------------------ derived settings
    @property
    def entry(self):
        return method_entry(self.method)

    @property
    def dataset_name(self) -> str:
        return self.dataset or self.entry.default_dataset

    def method_kwargs(self) -> dict:
        """The method's keyword options: seed, scope and the legacy shorthands it takes, then ``method_options``."""
        options = self.entry.options
        unknown = sorted(set(self.method_options) - set(options))
        if unknown:
            raise ConfigError(f"config key 'method_options': method {self.method!r} has no option(s) {unknown}; "
                              f"its options are {sorted(options)}")
        kwargs = {k: getattr(self, k) for k in ("seed", "scope", *LEGACY_METHOD_KEYS) if k in options}
        kwargs.update(self.method_options)
        return kwargs

    def make_method(self) -> GradientMethod:
        kwargs = self.method_kwargs()
        try:
            return make_method(self.method, **kwargs)
        except ConfigError as e:
            raise ConfigError(f"config key 'method_options' ({self.method}): {e}") from e
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config key 'method_options' ({self.method}, {kwargs}): {e}") from e

    @property
    def defaults_row(self) -> str | None:
        """The row of ``DEFAULTS`` this run's settings follow (``global``/``local``/``backprop``), or None."""
        row = DEFAULTS_ROW.get(self.method)
        return self.scope if row == "scope" else row

    @property
    def resolved_optimizer(self) -> str:
        row = self.defaults_row
        return self.optimizer or (DEFAULTS[row]["optimizer"] if row else "adam")

    @property
    def resolved_momentum(self) -> float:
        if self.momentum is not None:
            return self.momentum
        row = self.defaults_row
        return float(DEFAULTS[row].get("momentum", 0.0)) if row and self.resolved_optimizer == "sgd" else 0.0

    @property
    def resolved_schedule(self) -> str:
        row = self.defaults_row
        return self.schedule or (DEFAULTS[row].get("schedule", "constant") if row else "constant")

    @property
    def resolved_num_pairs(self) -> int | None:
        """K of the PGT family (the method's own resolution of ``None``), None for methods without one."""
        return getattr(self.make_method(), "num_pairs", None) if "num_pairs" in self.entry.options else None

    def learning_rate_for(self, model: torch.nn.Module) -> float:
        """``lr``, or the defaults' rule for this run (the global scope's needs ``D`` of ``model``)."""
        if self.lr is not None:
            return self.lr
        if self.method in DEFAULT_LR:
            return DEFAULT_LR[self.method]
        row = self.defaults_row
        if row == "global":
            return default_lr("global", num_trainable(model), self.resolved_num_pairs)
        return default_lr(row) if row else OTHER_LR

    @property
    def learning_rate(self) -> float:
        """The rate when it does not depend on the model (see :meth:`learning_rate_for`)."""
        if self.lr is None and self.defaults_row == "global" and self.method not in DEFAULT_LR:
            raise ConfigError("the global scope's default rate 0.6·K/(D + K) needs the model: "
                              "use cfg.learning_rate_for(model)")
        return self.learning_rate_for(None)  # type: ignore[arg-type]

    def resolved(self, model: torch.nn.Module | None = None) -> dict:
        """The settings this run trains with, every ``None`` replaced by its default (``lr`` needs ``model``
        in the global scope; without it, ``lr`` is left None there)."""
        method = self.make_method()
        out = {"optimizer": self.resolved_optimizer, "momentum": self.resolved_momentum,
               "schedule": self.resolved_schedule, "batch_size": self.batch_size,
               "num_pairs": getattr(method, "num_pairs", None), "delta": getattr(method, "delta", None)}
        try:
            out["lr"] = self.learning_rate_for(model) if model is not None else self.learning_rate
        except ConfigError:
            out["lr"] = None
        return out

    @property
    def label(self) -> str:
        if self.method == "backprop" or "scope" not in self.entry.options:
            return self.method
        return f"{self.method}-{self.scope}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def register_reservoir(name: str, factory) -> None:
    """Removed: devices now come from the one device registry."""
    raise ConfigError("register_reservoir was replaced by the device registry: name your device in a config as "
                      "device='module:Class' (or module:factory) with device_args, see docs/devices/write_a_device.md")


# ---------------------------------------------------------------------------------------- building
def device_spec(cfg: TrainConfig) -> tuple[str, dict]:
    """The device a config trains, as (registry spec, keyword arguments)."""
    if cfg.device is None:
        default = cfg.entry.default_device
        if default == "reservoir":  # the PGT family's dense network: the legacy reservoir keys decide
            spec = RESERVOIRS[cfg.reservoir]
            kwargs = {"input_size": cfg.reservoir_inputs, "seed": cfg.device_seed, "noise": cfg.noise}
            kwargs["nodes" if spec == "ring" else "size"] = cfg.reservoir_size
            return spec, {**kwargs, **cfg.device_args}
        spec = default
    else:
        spec = cfg.device
    kwargs = dict(cfg.device_args)
    if is_builtin(spec) and accepts(spec, "seed"):
        kwargs.setdefault("seed", cfg.device_seed)
    if cfg.noise and is_builtin(spec) and accepts(spec, "noise"):
        kwargs.setdefault("noise", cfg.noise)
    return spec, kwargs


def _sized_for(spec: str, kwargs: dict, data) -> dict:
    """Built-in devices whose shape follows the data get it from the data unless the config says."""
    f, c = data.num_features, data.num_classes
    if spec == "hopfield":
        kwargs.setdefault("sizes", [f, 64, c])
    elif spec == "resistive":
        kwargs.setdefault("num_inputs", f)
        kwargs.setdefault("layers", [32, c])
    elif spec in ("dnpu", "dnpu-time", "dnpu_time") and f in (1, 2, 3, 4, 5, 6, 7):
        kwargs.setdefault("input_electrodes", {2: [3, 4], 3: [2, 3, 4]}.get(f, list(range(7 - f, 7))))
    return kwargs


def build_device(cfg: TrainConfig, data=None) -> PhysicalSystem:
    """The config's device: a registry device, or a device server's (``tcp://``) through RemoteSystem."""
    spec, kwargs = device_spec(cfg)
    if spec.startswith("tcp://"):
        from ..systems.remote.client import RemoteSystem
        from ..systems.remote.server import read_or_create_token

        if cfg.token_file is None:
            raise ConfigError("config key 'token_file' is needed to train a device server's device (tcp://...)")
        if not Path(cfg.token_file).exists():
            raise ConfigError(f"config key 'token_file': {cfg.token_file} not found (the server writes it)")
        if cfg.entry.kind == "waveform":
            raise ConfigError(f"method {cfg.method!r} plays waveforms; a device server answers static measurements "
                              "only: choose a static method (pgt, spsa, es, fd)")
        if cfg.entry.kind == "energy":
            raise ConfigError(f"method {cfg.method!r} needs an energy device; a device server answers static "
                              "measurements only: choose a static method (pgt, spsa, es, fd)")
        return RemoteSystem(spec, read_or_create_token(cfg.token_file), **kwargs)
    if data is not None and is_builtin(spec):
        kwargs = _sized_for(spec, kwargs, data)
    device = make_device(spec, **kwargs)
    if cfg.entry.kind == "waveform":
        device = as_waveform_device(device, seed=cfg.device_seed)
    return device


def as_waveform_device(device: PhysicalSystem, seed: int = 0) -> PhysicalSystem:
    """A static device in the time domain, for a waveform method (HGE): a DNPU with the HGE paper's
    measurement settings, any other device with :class:`TimeDomainDevice`'s defaults."""
    from ..systems.devices.dnpu import DNPU, time_domain_dnpu
    from ..systems.wrappers.timedomain import TimeDomainDevice

    if isinstance(device, TimeDomainDevice):
        return device
    log.info("wrapping %s in the time domain for a waveform method", type(device).__name__)
    if isinstance(device, DNPU):
        return time_domain_dnpu(device, seed=seed)
    return TimeDomainDevice(device, seed=seed)


def default_model(device: PhysicalSystem) -> str:
    from ..systems.devices.energy.base import EnergyDevice
    from ..systems.wrappers.timedomain import TimeDomainDevice

    if isinstance(device, EnergyDevice):
        return "energy"
    if isinstance(device, TimeDomainDevice) or type(device).__name__.lower().lstrip("_").endswith("dnpu"):
        return "readout"
    if len(device.input_shape) == 1 and len(device.output_shape) == 1:
        return "reservoir-net"
    return "readout"


def load_data(cfg: TrainConfig):
    return load_task(cfg.dataset_name, cfg.data_root, train=cfg.train_samples, test=cfg.test_samples, seed=cfg.seed)


def build(cfg: TrainConfig, data=None, device: PhysicalSystem | None = None):
    """``(dataset, model, method, optimizer)`` for a config (``device``: a device built elsewhere, e.g. a QCoDeS station's)."""
    cfg.validate()
    if data is None:
        data = load_data(cfg)
    if device is None:
        device = build_device(cfg, data)
    model = build_model(cfg.model or default_model(device), data, device, seed=cfg.seed, options=cfg.model_options)
    if cfg.entry.kind == "energy":
        from ..models.energy_model import energy_model_of

        energy_model_of(model)  # EqProp/Aeqprop nudge the device itself: say so now, not at the first step
    if cfg.entry.kind == "oracle":
        from ..models.physical_layer import systems_of

        opaque = [type(s).__name__ for s in systems_of(model) if not s.differentiable]
        if opaque:
            raise ConfigError(f"method {cfg.method!r} needs a differentiable simulator; {opaque} is not one "
                              "(train it with a forward-only method: pgt, spsa, es, fd)")
    method = cfg.make_method()
    if getattr(method, "owns_update", False):  # a search baseline: the library's own step moves θ
        given = [k for k in ("optimizer", "lr", "momentum", "schedule") if getattr(cfg, k) is not None]
        if given:
            raise ConfigError(f"method {cfg.method!r} updates the parameters itself (the library's own step); "
                              f"config key(s) {given} do not apply to it: leave them out")
        # never stepped by the Trainer (it calls method.step); in a hand-written backward(); optimizer.step()
        # loop it lands exactly on the library's recommendation (backward fills p.grad with θ − θ_new)
        return data, model, method, torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
    extra = {"momentum": cfg.resolved_momentum} if cfg.resolved_optimizer == "sgd" else {}
    optimizer = OPTIMIZERS[cfg.resolved_optimizer](model.parameters(), lr=cfg.learning_rate_for(model), **extra)
    return data, model, method, optimizer


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """The config's learning-rate schedule on ``optimizer`` (None: constant; ``backoff``: LossBackoff)."""
    return default_schedule(optimizer, cfg.defaults_row or "", cfg.resolved_schedule)


def loss_function(model):
    """The energy model's nudging cost (what EqProp/Aeqprop descend); cross-entropy otherwise."""
    from ..models.energy_model import EnergyModel

    return model.loss if isinstance(model, EnergyModel) else F.cross_entropy


def run(cfg: TrainConfig, out_dir: str | os.PathLike | None, *, progress: bool | None = None, data=None,
        resume: bool = True, device: PhysicalSystem | None = None, carrier=None, recorder=None) -> list[dict]:
    """Train one config; with ``out_dir``, write config.json, metrics.jsonl and checkpoint.pt there.

    The last line of metrics.jsonl is the last epoch's record, with ``test_accuracy`` and ``queries``.
    ``device``: a device built elsewhere (e.g. a QCoDeS station's); ``carrier``: what carries the
    method's probes (e.g. a Ray ``DeviceFarm``; None: in process); ``recorder``: a
    :class:`~physgrad.training.record.Recorder` that follows the method, so every recorded setting
    carries its step and epoch.
    """
    data, model, method, optimizer = build(cfg, data, device)
    log.info("%s trains with %s", cfg.label, cfg.resolved(model))
    if carrier is not None:
        method.carrier = carrier
    if recorder is not None:
        recorder.follow(method, steps_per_epoch=math.ceil(len(data.y_train) / cfg.batch_size))
    trainer = Trainer(  # the trainer checks the config against a checkpoint, then writes config.json
        model, method, optimizer, loss_fn=loss_function(model), batch_size=cfg.batch_size, seed=cfg.seed,
        scheduler=build_scheduler(cfg, optimizer),
        out_dir=out_dir, progress=progress, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
        config=cfg.to_dict(),
    )
    try:
        return trainer.fit(data, cfg.epochs, resume=resume)
    finally:
        from ..models.physical_layer import systems_of

        for system in systems_of(model):
            close = getattr(system, "close", None)
            if callable(close):
                close()


def write_json_atomic(path: Path, obj) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(f.name, path)
