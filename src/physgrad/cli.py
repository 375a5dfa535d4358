"""The ``physgrad`` command line.

::

    physgrad demo [--out DIR] [--quick]
    physgrad train --method pgt --scope local --dataset digits --epochs 20 --seed 0 --out runs/pgt
    physgrad run CONFIG.json [CONFIG.json ...] --out runs/   # one folder per config
    physgrad report runs/a runs/b --out report/
    physgrad serve --device reservoir --address tcp://127.0.0.1:5555 --token-file TOKEN   # a device server
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from .errors import PhysgradError
from .experiments.config import TrainConfig, run
from .experiments.report import make_report


def _add_train_options(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    types = {"str": str, "int": int, "float": float}
    for f in fields(TrainConfig):
        kind = types[f.type.replace(" | None", "")]
        p.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=getattr(defaults, f.name),
                       help=f"(default: {getattr(defaults, f.name)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="physgrad", description="Train physical systems with forward-only gradients.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO level)")
    sub = parser.add_subparsers(dest="command", required=True)

    p_demo = sub.add_parser("demo", help="train the demo network three ways and print the comparison")
    p_demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for metrics and the report")
    p_demo.add_argument("--quick", action="store_true", help="two epochs per method (a smoke test)")

    p_train = sub.add_parser("train", help="train one configuration given as options")
    _add_train_options(p_train)
    p_train.add_argument("--out", type=Path, required=True, help="run folder (metrics.jsonl, checkpoint.pt)")
    p_train.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    p_train.add_argument("--devices", type=int, default=None, help="measure on a Ray farm of N devices (physgrad[ray])")
    p_train.add_argument("--ray-address", default=None, help="Ray cluster to join (HOST:PORT; default: a local Ray)")

    p_run = sub.add_parser("run", help="train one or more JSON config files")
    p_run.add_argument("configs", nargs="+", type=Path)
    p_run.add_argument("--out", type=Path, required=True, help="parent folder; one sub-folder per config")
    p_run.add_argument("--ray", action="store_true", help="run the configs (x seeds) as Ray tasks (physgrad[ray])")
    p_run.add_argument("--ray-address", default=None, help="Ray cluster to join (HOST:PORT; default: a local Ray)")
    p_run.add_argument("--seeds", type=int, nargs="+", default=None, help="with --ray: one run per config and seed")

    p_report = sub.add_parser("report", help="plots and a Markdown table from run folders")
    p_report.add_argument("runs", nargs="+", type=Path)
    p_report.add_argument("--out", type=Path, default=Path("report"))

    from .systems.remote.server import add_arguments as add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="put a (simulated) device behind a token-protected network endpoint"))

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            from .experiments.demo import demo

            demo(args.out, quick=args.quick)
            print(f"\nmetrics, plots and report.md in {args.out}/")
        elif args.command == "train":
            values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
            cfg = TrainConfig.from_dict(values)
            if args.devices:  # the Ray device farm (physgrad.experiments.sweep.farm_for_config)
                from .experiments.sweep import farm_for_config

                with farm_for_config(cfg, args.devices, args.ray_address) as farm:
                    last = run(cfg, args.out, resume=not args.no_resume, carrier=farm)[-1]
            else:
                last = run(cfg, args.out, resume=not args.no_resume)[-1]
            print(f"{cfg.label}: test accuracy {100 * last['test_accuracy']:.2f} %, {last['queries']:,} device queries "
                  f"-> {args.out}/metrics.jsonl")
        elif args.command == "run" and (args.ray or args.ray_address or args.seeds):
            from .experiments.sweep import sweep

            for name, last in sweep(args.configs, args.out, seeds=args.seeds, address=args.ray_address).items():
                print(f"{name}: test accuracy {100 * last['test_accuracy']:.2f} %, {last['queries']:,} queries")
        elif args.command == "run":
            configs = [TrainConfig.from_file(c) for c in args.configs]  # validate all before training any
            for path, cfg in zip(args.configs, configs):
                last = run(cfg, args.out / path.stem)[-1]
                print(f"{path.stem} ({cfg.label}): test accuracy {100 * last['test_accuracy']:.2f} %, {last['queries']:,} queries")
        elif args.command == "report":
            print(f"report: {make_report(args.runs, args.out)}")
        elif args.command == "serve":
            from .systems.remote.server import serve_from_args

            serve_from_args(args)
    except PhysgradError as e:
        print(f"physgrad: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
