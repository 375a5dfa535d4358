"""The ``physgrad`` command line.

::

    physgrad methods                                  # registered gradient methods, one per line
    physgrad devices [--long]                         # built-in devices (module:Class is accepted too)
    physgrad train --method M [--epochs N] [--out DIR]                       # M's paper device and dataset
    physgrad train --method hge --device dnpu-time --dataset sphere --out runs/hge
    physgrad train --method pgt --device my_lab.rig:Rig --device-args '{"port": 5}' --method-options '{"num_pairs": 8}'
    physgrad train --method pgt --device tcp://127.0.0.1:5555 --token-file TOKEN --out runs/remote
    physgrad run CONFIG.json [CONFIG.json ...] --out runs/ [--epochs N --train-samples N]   # one folder per config
    physgrad check-device my_lab.rig:Rig [--device-args '{...}']          # conformance check, exit 0 = conforms
    physgrad serve --device my_lab.rig:Rig --device-args '{...}' --token-file TOKEN --port 5555
    physgrad report runs/a runs/b --out report/
    physgrad demo [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import fields
from pathlib import Path

from .errors import ConfigError, PhysgradError
from .experiments.config import TrainConfig, run
from .experiments.report import make_report
from .systems.registry import json_object

# the flags of ``train`` that are not plain config keys, or that take JSON
JSON_KEYS = ("method_options", "device_args", "model_options")
# what a flag left out means (physgrad.methods.defaults.DEFAULTS, by the method's scope)
SHIPPED_DEFAULTS = {
    "optimizer": "global scope sgd, local scope / backprop / fd adam",
    "lr": "global scope 0.6·K/(D+K) for D trainable parameters, local 3e-2, backprop / fd 1e-2, hge 0.02",
    "momentum": "0.9 with the global scope's sgd, else 0",
    "schedule": "global scope backoff (halve the rate when the windowed loss rises beyond its noise), else constant",
    "num_pairs": "global scope 4, local 2",
    "delta": "1e-2",
}


def _add_train_options(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    types = {"str": str, "int": int, "float": float, "dict": json_object}
    for f in fields(TrainConfig):
        kind = types[f.type.replace(" | None", "")]
        default = getattr(defaults, f.name)
        shown = "{}" if f.name in JSON_KEYS else default
        if default is None and f.name in SHIPPED_DEFAULTS:
            shown = f"the shipped default, {SHIPPED_DEFAULTS[f.name]}"
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None if f.name in JSON_KEYS else default,
                       help=f"(default: {shown}{'; JSON object' if f.name in JSON_KEYS else ''})")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    for key in JSON_KEYS:
        if values[key] is None:
            values[key] = {}
    return TrainConfig.from_dict(values)


def _overrides(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("epochs", "train_samples", "test_samples", "seed") if getattr(args, k) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="physgrad", description="Train physical systems with forward-only gradients.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True)

    p_demo = sub.add_parser("demo", help="train the demo network three ways and print the comparison")
    p_demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for metrics and the report")
    p_demo.add_argument("--quick", action="store_true", help="two epochs per method (a smoke test)")

    sub.add_parser("methods", help="list the registered gradient methods, one per line")
    p_devices = sub.add_parser("devices", help="list the built-in devices, one per line")
    p_devices.add_argument("--long", action="store_true", help="with each device's kind and description")

    p_train = sub.add_parser("train", help="train one configuration given as options (any config key is a flag)")
    _add_train_options(p_train)
    p_train.add_argument("--out", type=Path, default=None, help="run folder (metrics.jsonl, checkpoint.pt); default runs/LABEL")
    p_train.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    from .systems.lab.qcodes import add_station_arguments  # adding the options imports nothing from QCoDeS

    add_station_arguments(p_train)
    p_train.add_argument("--devices", type=int, default=None, help="measure on a Ray farm of N devices (physgrad[ray])")
    p_train.add_argument("--ray-address", default=None, help="Ray cluster to join (HOST:PORT; default: a local Ray)")

    p_run = sub.add_parser("run", help="train one or more JSON config files")
    p_run.add_argument("configs", nargs="+", type=Path,
                       help="config files, or names of the bundled paper configs: "
                            + ", ".join(sorted(p.stem for p in (Path(__file__).parent / "experiments" / "configs").glob("*.json"))))
    p_run.add_argument("--out", type=Path, required=True, help="parent folder; one sub-folder per config")
    for flag, kind in (("--epochs", int), ("--train-samples", int), ("--test-samples", int), ("--seed", int)):
        p_run.add_argument(flag, type=kind, default=None, help="override this key of every config (quick versions)")
    p_run.add_argument("--ray", action="store_true", help="run the configs (x seeds) as Ray tasks (physgrad[ray])")
    p_run.add_argument("--ray-address", default=None, help="Ray cluster to join (HOST:PORT; default: a local Ray)")
    p_run.add_argument("--seeds", type=int, nargs="+", default=None, help="with --ray: one run per config and seed")

    p_check = sub.add_parser("check-device", help="check that a device keeps the PhysicalSystem contract")
    p_check.add_argument("device", help="built-in name, module:Class / module:factory, or tcp://HOST:PORT")
    p_check.add_argument("--device-args", type=json_object, default={}, help="JSON object of the device's keyword arguments")
    p_check.add_argument("--token-file", type=Path, default=None, help="token of a tcp:// device server")

    p_report = sub.add_parser("report", help="plots and a Markdown table from run folders")
    p_report.add_argument("runs", nargs="+", type=Path)
    p_report.add_argument("--out", type=Path, default=Path("report"))

    from .systems.remote.server import add_arguments as add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="put a device behind a token-protected network endpoint"))

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except PhysgradError as e:
        print(f"physgrad: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from .experiments.demo import demo

        demo(args.out, quick=args.quick)
        print(f"\nmetrics, plots and report.md in {args.out}/")
    elif args.command == "methods":
        from .methods.registry import method_names

        print("\n".join(method_names()))
    elif args.command == "devices":
        from .systems.registry import BUILTINS

        for name, entry in BUILTINS.items():
            print(f"{name:<10} {entry.kind:<9} {entry.description}" if args.long else name)
    elif args.command == "train":
        try:
            cfg = _train_config(args)
        except ConfigError as e:  # name the flag the user typed
            raise ConfigError(re.sub(r"config key '(\w+)'", lambda m: f"--{m.group(1).replace('_', '-')}", str(e))) from e
        out = args.out or Path("runs") / cfg.label
        device, recorder = _station(args, cfg)  # --station: train the lab's instruments (QCoDeS)
        try:
            if args.devices:  # the Ray device farm (physgrad.experiments.sweep.farm_for_config)
                from .experiments.sweep import farm_for_config

                with farm_for_config(cfg, args.devices, args.ray_address) as farm:
                    last = run(cfg, out, resume=not args.no_resume, carrier=farm)[-1]
            else:
                last = run(cfg, out, resume=not args.no_resume, device=device, recorder=recorder)[-1]
        finally:
            if recorder is not None:
                recorder.close()
        print(f"{cfg.label}: test accuracy {100 * last['test_accuracy']:.2f} %, {last['queries']:,} device queries "
              f"-> {out}/metrics.jsonl")
    elif args.command == "run" and (args.ray or args.ray_address or args.seeds):
        from .experiments.sweep import sweep

        paths = [_config_path(c) for c in args.configs]
        for name, last in sweep(paths, args.out, seeds=args.seeds, address=args.ray_address).items():
            print(f"{name}: test accuracy {100 * last['test_accuracy']:.2f} %, {last['queries']:,} queries")
    elif args.command == "run":
        overrides = _overrides(args)
        args.configs = [_config_path(c) for c in args.configs]
        configs = [TrainConfig.from_file(c, **overrides) for c in args.configs]  # validate all before training any
        stems = [c.stem for c in args.configs]
        names = [s if stems.count(s) == 1 else f"{s}-{i}" for i, s in enumerate(stems)]
        for path, name, cfg in zip(args.configs, names, configs):
            last = run(cfg, args.out / name)[-1]
            print(f"{name} ({cfg.label}): test accuracy {100 * last['test_accuracy']:.2f} %, {last['queries']:,} queries "
                  f"-> {args.out / name}/metrics.jsonl")
    elif args.command == "check-device":
        return _check_device(args)
    elif args.command == "report":
        print(f"report: {make_report(args.runs, args.out)}")
    elif args.command == "serve":
        from .systems.remote.server import serve_from_args

        serve_from_args(args)
    return 0


CONFIGS = Path(__file__).parent / "experiments" / "configs"


def _station(args: argparse.Namespace, cfg: TrainConfig):
    """``(device, recorder)`` of ``--station`` (``(None, None)`` without it).

    The station's device replaces the config's device; with ``--record`` a QCoDeS
    :class:`~physgrad.training.record.Recorder` is attached to it, named by ``--experiment`` (default:
    the config's label) and ``--sample`` (default: the station file's name). Close it after training.
    """
    from .systems.lab.qcodes import system_from_args

    system = system_from_args(args)
    if system is None:
        if getattr(args, "record", None):
            raise ConfigError("--record needs --station (record a built-in device with physgrad.training.record.Recorder)")
        return None, None
    recorder = None
    if getattr(args, "record", None):
        from .training.record import Recorder

        recorder = Recorder.for_config(cfg, args.record, system)  # the config goes into the run's metadata
        recorder.experiment = args.experiment or recorder.experiment
        recorder.sample = args.sample or Path(args.station).stem
        recorder.attach(system)
    return system, recorder


def _config_path(path: Path) -> Path:
    """A config file, or the name of one of the bundled paper configs (``physgrad run hge_dnpu_sphere``)."""
    if path.exists():
        return path
    bundled = CONFIGS / (path.name if path.suffix == ".json" else f"{path.name}.json")
    return bundled if bundled.exists() else path


def _check_device(args: argparse.Namespace) -> int:
    from .testing import check_device

    if args.device.startswith("tcp://"):
        cfg = TrainConfig(device=args.device, device_args=args.device_args,
                          token_file=None if args.token_file is None else str(args.token_file))
        from .experiments.config import build_device

        system = build_device(cfg)
    else:
        from .systems.registry import make_device

        system = make_device(args.device, **args.device_args)
    try:
        failures = check_device(system)
    finally:
        close = getattr(system, "close", None)
        if callable(close):
            close()
    if failures:
        print(f"{args.device}: {len(failures)} check(s) failed:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print(f"{args.device}: conforms ({type(system).__name__}, inputs {system.input_shape} -> outputs {system.output_shape}, "
          f"parameters {', '.join(system.parameter_specs) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
