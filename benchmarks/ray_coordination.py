"""Where a Ray farm call's time goes at N devices: the farm call against bare round trips.

Question (issue 14, the efficiency at N = 16 in docs/results/scaling.md): is the per-device cost
``c₁`` of a farm call a serialisation point inside the farm (something to fix), or the cost of
scheduling N actor processes (the machine)? One farm of ``max(N)`` **zero-latency** devices
(``latency_reservoir``, 16 → 64, no wait) answers one PGT-local gradient (``--pairs`` ± pairs on a
batch of 16) at N = 1, 2, 4, 8, 16 (``farm.active``), timed against N bare round trips to the same
actors (``info``) and N round trips to the farm's ledger, interleaved, ``--rounds`` rounds; medians
and minima with the load average. ``c₁`` = slope of the farm call's minimum against N.

``python -m benchmarks.ray_coordination [--quick] --out F.json`` writes ``c1_ms``, ``c0_ms``,
``call_N_ms`` (minima), ``round_trip_N_ms``, ``ledger_N_ms`` and ``in_process_ms``.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json

DEVICE = "physgrad.systems.wrappers.latency:latency_reservoir"


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--sizes", type=int, nargs="+", default=None, help="farm sizes (default 1 2 4 8 16; quick 1 2 4)")
        p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 20; quick 3)")
        p.add_argument("--pairs", type=int, default=64, help="± pairs of the gradient (default 64)")

    args = parse_args(__doc__.splitlines()[0], extra, argv)
    torch.set_num_threads(args.threads or 1)
    sizes = args.sizes or ([1, 2, 4] if args.quick else [1, 2, 4, 8, 16])
    rounds = args.rounds or (3 if args.quick else 20)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from physgrad.carriers.ray_farm import RAY_SYSTEM_CONFIG, DeviceFarm
    from physgrad.methods.registry import make_method
    from physgrad.systems.wrappers.latency import latency_reservoir

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", object_store_memory=200 * 2**20,
                 _system_config={**RAY_SYSTEM_CONFIG, "memory_monitor_refresh_ms": 0})
    kwargs = {"input_size": 16, "size": 64, "seed": 1, "seconds_per_setting": 0.0}
    dev = latency_reservoir(**kwargs)
    method = make_method("pgt", scope="local", num_pairs=args.pairs, delta=1e-2, seed=0)
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    probes = method.ask(dev.initial_parameters(), x, bounds=dev.parameter_bounds(), system=dev)
    times = {n: {"call": [], "round_trip": [], "ledger": []} for n in sizes}
    load = [os.getloadavg()[0]]
    try:
        farm = DeviceFarm(DEVICE, max(sizes), device_kwargs=kwargs)
        try:
            for n in sizes:  # warm-up: every actor has answered once
                farm.active = n
                farm(dev, probes)
            for _ in range(rounds):
                for n in sizes:
                    farm.active = n
                    actors = farm.actors[:n]
                    t = time.perf_counter()
                    farm(dev, probes)
                    times[n]["call"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    ray.get([a.info.remote() for a in actors])
                    times[n]["round_trip"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    ray.get([farm._ledger.in_flight.remote() for _ in actors])
                    times[n]["ledger"].append(time.perf_counter() - t)
                load.append(os.getloadavg()[0])
        finally:
            farm.close()
    finally:
        if started:
            ray.shutdown()
    t = time.perf_counter()
    for _ in range(rounds):
        probes.answer(dev)
    in_process = (time.perf_counter() - t) / rounds

    figures = {"pairs": args.pairs, "rounds": rounds, "in_process_ms": 1e3 * in_process,
               "load_average_min": min(load), "load_average_max": max(load)}
    rows = []
    for n in sizes:
        row = [str(n)]
        for key in ("call", "round_trip", "ledger"):
            ts = times[n][key]
            figures[f"{key}_{n}_ms"] = 1e3 * min(ts)
            figures[f"{key}_{n}_median_ms"] = 1e3 * statistics.median(ts)
            row += [f"{1e3 * statistics.median(ts):.2f}", f"{1e3 * min(ts):.2f}"]
        rows.append(row)
    lo, hi = sizes[0], sizes[-1]
    figures["c1_ms"] = (figures[f"call_{hi}_ms"] - figures[f"call_{lo}_ms"]) / max(1, hi - lo)
    figures["c0_ms"] = figures[f"call_{lo}_ms"] - lo * figures["c1_ms"]
    print(f"\nOne PGT-local gradient ({2 * args.pairs} probes) on zero-latency devices, {rounds} interleaved rounds; "
          f"load average {min(load):.1f}-{max(load):.1f}; in-process answer {1e3 * in_process:.2f} ms\n")
    print(markdown_table(rows, ["N", "farm call, median (ms)", "min", "N bare actor round trips, median (ms)", "min",
                                "N ledger round trips, median (ms)", "min"]))
    print(f"\nc1 (slope of the farm call's minimum) = {figures['c1_ms']:.2f} ms per device; c0 = {figures['c0_ms']:.2f} ms")

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key, label in (("call", "farm call"), ("round_trip", "bare actor round trips"), ("ledger", "ledger round trips")):
        ax.plot(sizes, [figures[f"{key}_{n}_ms"] for n in sizes], "o-", label=f"{label} (min)")
    ax.set_xlabel("devices N")
    ax.set_ylabel("ms per gradient call")
    ax.legend(fontsize=8)
    ax.set_title("Where a farm call's time goes (zero-latency devices)", fontsize=9)
    fig.tight_layout()
    print(f"plot: {save_figure(fig, plot_path(args, 'ray_coordination'))}")
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
