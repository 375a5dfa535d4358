"""How a Ray farm of devices scales: throughput, wall time and parallel efficiency at N devices.

Question: when each measurement takes real time (a latency-bound device: ``Latency`` waits
``--latency`` seconds per applied setting, settle plus acquisition, the way an instrument does), how
much faster does training go with N devices measuring one gradient's probes at once, what does
the Ray carrier cost at N = 1 against measuring in process, and what does Ray cost when the device
is *not* slow (a CPU-bound simulator, N = 1, 2 on this machine's cores)?

Protocol. One Ray farm of ``max(N)`` identical devices; its size is set per run with
``farm.active`` (the other actors idle), so every size and the in-process reference are timed in
one process, interleaved (in-process, N=1, N=2, ... then again), ``--rounds`` rounds; medians and
minima reported with the load average. Each run is the same short training (``--steps`` steps of
PGT-local, ``--pairs`` ± pairs, one hybrid digital → device → digital network, Adam) from the same
seed: the final parameters of every run are compared bit for bit. Throughput = device queries /
wall time; parallel efficiency(N) = throughput(N) / (N · throughput(1)), both on the farm. The
device time is fixed (a sleep), so load from other processes only adds time: the contract figures
use each variant's minimum over the rounds (the farm's own cost); the medians (``*_median``) are
what it cost on the machine as loaded.
A last step on the farm at N = 2 kills one device's process mid-measurement: it must complete, with
the same gradient as in process and the killed share counted.

HGE. The same protocol for homodyne gradient extraction (local scope) on the registry's time-domain
DNPU whose waveforms take wall time (:func:`~physgrad.systems.wrappers.latency.latency_dnpu_time`:
``--hge-time-scale`` wall seconds per device second, default 0.2: a 0.1 s window takes 20 ms),
noiseless, a digital → DNPU → digital network on a batch of 16 points, ``--steps`` SGD steps. The
device's transfer calibration is measured once beforehand and every run resumes from that state
(a lab calibrates once; the per-step cost is the gradient's). One gradient's 16 windows are split
along the data points over the N devices (N ≤ 16). Throughput = windows (samples) / wall time;
figures ``hge_*``; final parameters compared bit for bit, device seconds counted compared exactly.

``python -m benchmarks.ray_scaling [--quick] --out F.json`` writes ``efficiency_8``, ``overhead_1``,
``identical_parameters``, ``killed_actor_step_completed``, the per-N figures and the HGE figures
(``hge_efficiency_N``, ``hge_overhead_1``, ``hge_identical_parameters``, ...).
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json

LATENCY_DEVICE = "physgrad.systems.wrappers.latency:latency_reservoir"
FEATURES, CLASSES, BATCH = 16, 4, 16


def _data(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, BATCH, FEATURES, generator=g)
    w = torch.randn(FEATURES, CLASSES, generator=g)
    return x, (x @ w).argmax(-1)


def _train(device_kwargs: dict, carrier, steps: int, pairs: int):
    """The short training: ``(wall seconds, queries, final parameters, method)``."""
    from physgrad.methods.registry import make_method
    from physgrad.models.physical_layer import clamp_to_safe_range_
    from physgrad.models.reservoir_net import ReservoirNet
    from physgrad.systems.wrappers.latency import latency_reservoir

    model = ReservoirNet(FEATURES, latency_reservoir(**device_kwargs), CLASSES, seed=0)
    method = make_method("pgt", scope="local", num_pairs=pairs, delta=1e-2, seed=0)
    if carrier is not None:
        method.carrier = carrier
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xs, ys = _data(steps)
    start = time.perf_counter()
    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        method.backward(model, F.cross_entropy, x, y)
        opt.step()
        clamp_to_safe_range_(model)
    wall = time.perf_counter() - start
    return wall, method.total_cost.queries, [p.detach().clone() for p in model.parameters()], method


def _kill_mid_step(farm, device_kwargs: dict, pairs: int) -> dict:
    """One step at N = 2 with device 0's process killed mid-measurement: completed, same, counted?"""
    from physgrad.methods.registry import make_method
    from physgrad.models.reservoir_net import ReservoirNet
    from physgrad.systems.wrappers.latency import latency_reservoir

    quiet = dict(device_kwargs, seconds_per_setting=0.0)
    x, y = (t[0] for t in _data(1, seed=1))
    ref_model = ReservoirNet(FEATURES, latency_reservoir(**quiet), CLASSES, seed=0)
    ref = make_method("pgt", scope="local", num_pairs=pairs, delta=1e-2, seed=3)
    ref.backward(ref_model, F.cross_entropy, x, y)

    farm.active = 2
    model = ReservoirNet(FEATURES, latency_reservoir(**quiet), CLASSES, seed=0)
    method = make_method("pgt", scope="local", num_pairs=pairs, delta=1e-2, seed=3)
    method.carrier = farm
    lost_before = farm.lost_cost
    done, failure = threading.Event(), []

    def step():
        try:
            method.backward(model, F.cross_entropy, x, y)
        except BaseException as e:  # reported in the figures
            failure.append(repr(e))
        done.set()

    thread = threading.Thread(target=step)
    thread.start()
    deadline = time.monotonic() + 60
    while farm.in_flight() < 2 and time.monotonic() < deadline and not done.is_set():
        time.sleep(0.005)
    killed = False
    if not done.is_set():
        os.kill(farm.pids[0], signal.SIGKILL)
        killed = True
    thread.join(300)
    lost = (farm.lost_cost - lost_before).queries
    same = done.is_set() and not failure and all(
        torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), ref_model.parameters())
    )
    counted = method.last_cost.queries == ref.last_cost.queries + lost
    return {
        "killed_actor_step_completed": bool(killed and same and counted and lost > 0),
        "killed_step_queries": method.last_cost.queries,
        "killed_step_queries_without_kill": ref.last_cost.queries,
        "killed_share_queries": lost,
        "killed_step_error": failure[0] if failure else "",
    }


def _scaling(times: dict, counts: dict, sizes, prefix: str = "") -> tuple[list[list], dict, dict, dict]:
    """Rows and per-N figures (``{prefix}wall_N_s``, ``throughput_N``, ``efficiency_N``, ``speedup_N`` ...) of
    interleaved timings ``times[variant] = [wall s, ...]`` of runs that each measured ``counts[variant]``.

    Throughput = counts / wall; efficiency(N) = throughput(N) / (N · throughput(1)); by minima (the contract
    figures: the farm's own cost) and by medians (``*_median``: as loaded). Returns rows, figures and the
    median and minimum throughputs by variant.
    """
    med = {n: statistics.median(ts) for n, ts in times.items()}
    best = {n: min(ts) for n, ts in times.items()}
    thr = {n: counts[n] / med[n] for n in times}
    thr_best = {n: counts[n] / best[n] for n in times}
    figures = {f"{prefix}overhead_1": best[1] / best["in-process"] - 1,
               f"{prefix}overhead_1_median": med[1] / med["in-process"] - 1,
               f"{prefix}wall_in_process_s": med["in-process"]}
    rows = [["in-process", "1", f"{med['in-process']:.3f}", f"{best['in-process']:.3f}",
             f"{thr_best['in-process']:.1f}", "-", "-", "-"]]
    for n in sizes:
        eff, eff_med = thr_best[n] / (n * thr_best[1]), thr[n] / (n * thr[1])
        figures.update({f"{prefix}wall_{n}_s": med[n], f"{prefix}wall_{n}_min_s": best[n],
                        f"{prefix}throughput_{n}": thr_best[n], f"{prefix}throughput_{n}_median": thr[n],
                        f"{prefix}efficiency_{n}": eff, f"{prefix}efficiency_{n}_median": eff_med,
                        f"{prefix}speedup_{n}": best[1] / best[n]})
        rows.append(["Ray farm", str(n), f"{med[n]:.3f}", f"{best[n]:.3f}", f"{thr_best[n]:.1f}",
                     f"{best[1] / best[n]:.2f}", f"{eff:.2f}", f"{eff_med:.2f}"])
    return rows, figures, thr, thr_best


def _header(unit: str) -> list[str]:
    return ["carrier", "devices N", "wall median (s)", "wall min (s)", f"{unit}/s (min)", "speed-up (min)",
            "efficiency (min)", "efficiency (median)"]


HGE_DEVICE = "physgrad.systems.wrappers.latency:latency_dnpu_time"
HGE_BATCH = 16


def _hge_net(device):
    """digital (3 -> 2) -> time-domain DNPU -> digital (1 -> 1), and a fixed batch of ``HGE_BATCH`` points."""
    from torch import nn

    from physgrad.models import PhysicalLayer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), PhysicalLayer(device), nn.Linear(1, 1))
    with torch.no_grad():  # keep the device's inputs inside its electrode ranges
        model[0].weight.mul_(0.3)
        model[0].bias.mul_(0.3)
        model[-1].weight.fill_(0.05)
        model[-1].bias.fill_(0.1)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(HGE_BATCH, 3, generator=g) * 0.5, torch.randn(HGE_BATCH, 1, generator=g)


def _hge_calibrated_state(device_kwargs: dict) -> dict:
    """HGE's state with the device's transfer calibration, measured once (a lab calibrates once; every run resumes)."""
    from physgrad.methods import HGE
    from physgrad.systems.wrappers.latency import latency_dnpu_time

    method = HGE(0.1, scope="local")
    method.calibrate(latency_dnpu_time(**dict(device_kwargs, time_scale=0.0)))
    return method.state_dict()


def _train_hge(device_kwargs: dict, carrier, steps: int, state: dict):
    """HGE-local training from the calibrated state: ``(wall s, windows, device s, final parameters)``."""
    from physgrad.methods import HGE
    from physgrad.systems.wrappers.latency import latency_dnpu_time

    model, x, y = _hge_net(latency_dnpu_time(**device_kwargs))
    method = HGE(0.1, scope="local")
    method.load_state_dict(state)
    if carrier is not None:
        method.carrier = carrier
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = torch.nn.MSELoss()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        method.backward(model, loss_fn, x, y)
        opt.step()
    wall = time.perf_counter() - start
    cost = method.total_cost
    if cost.queries <= 0 or method.calibration_cost != method.calibration_cost.__class__(**state["calibration_cost"]):
        raise RuntimeError("HGE recalibrated or measured nothing: the benchmark's protocol is broken")
    return wall, cost.samples, cost.device_seconds, [p.detach().clone() for p in model.parameters()]


def _hge_scaling(sizes, rounds: int, steps: int, time_scale: float, load: list) -> tuple[list[list], dict, dict, dict]:
    """HGE-local on a time-domain DNPU whose windows take wall time, in process and on N = ``sizes`` devices."""
    from physgrad.carriers.ray_farm import DeviceFarm

    device = {"time_scale": time_scale, "white_psd": 0.0, "seed": 1}  # noiseless: bit-identical at every N
    quiet = dict(device, time_scale=0.0)  # the farm runs' stand-in: never plays a waveform
    state = _hge_calibrated_state(device)
    farm = DeviceFarm(HGE_DEVICE, max(sizes), device_kwargs=device)
    times = {"in-process": [], **{n: [] for n in sizes}}
    windows, seconds, finals = {}, {}, {}
    try:
        for _ in range(rounds):
            for n in ["in-process", *sizes]:
                if n == "in-process":
                    wall, w, ds, final = _train_hge(device, None, steps, state)
                else:
                    farm.active = n
                    wall, w, ds, final = _train_hge(quiet, farm, steps, state)
                times[n].append(wall)
                windows[n], seconds[n], finals[n] = w, ds, final
            load.append(os.getloadavg()[0])
    finally:
        farm.close()
    rows, figures, thr, thr_best = _scaling(times, windows, sizes, "hge_")
    figures.update({
        "hge_time_scale": time_scale, "hge_batch": HGE_BATCH, "hge_steps": steps, "hge_rounds": rounds,
        "hge_windows_per_run": windows[sizes[0]], "hge_device_seconds_per_run": seconds[sizes[0]],
        "hge_identical_parameters": all(all(torch.equal(a, b) for a, b in zip(f, finals["in-process"]))
                                        for f in finals.values()),
        # the same windows and ramps at every N; a split gradient's device seconds are a sum over its parts, so
        # they may differ from the in-process product in the last bits (queries: one per device call)
        "hge_same_device_seconds": all(abs(ds - seconds["in-process"]) <= 1e-12 * seconds["in-process"]
                                       for ds in seconds.values()),
        "hge_same_windows": len(set(windows.values())) == 1,
    })
    curves = {"thr": thr, "thr_best": thr_best}
    return rows, figures, thr, thr_best


def _cpu_bound(farm_factory, sizes, rounds: int, steps: int, pairs: int, kwargs: dict) -> tuple[list[list], dict]:
    """The same short training on a device with no latency: what Ray costs when the device is fast."""
    farm = farm_factory(max(sizes), kwargs)
    times: dict = {"in-process": []}
    times.update({n: [] for n in sizes})
    finals = {}
    try:
        for _ in range(rounds):
            for n in ["in-process", *sizes]:
                farm.active = None if n == "in-process" else n
                wall, queries, final, _ = _train(kwargs, None if n == "in-process" else farm, steps, pairs)
                times[n].append(wall)
                finals[n] = final
    finally:
        farm.close()
    base = statistics.median(times["in-process"])
    rows, figures = [], {}
    for n, ts in times.items():
        med = statistics.median(ts)
        rows.append([f"cpu-bound, {n}" if n == "in-process" else f"cpu-bound, N={n}", f"{med:.3f}", f"{min(ts):.3f}",
                     f"{med / base:.2f}"])
        if n != "in-process":
            figures[f"cpu_time_ratio_{n}"] = med / base
    figures["cpu_identical_parameters"] = all(
        all(torch.equal(a, b) for a, b in zip(f, finals["in-process"])) for f in finals.values()
    )
    return rows, figures


def _throughput_panel(ax, sizes, best: dict, median: dict, color: str, ylabel: str, title: str) -> None:
    """Throughput against N on the farm (minima, medians), the ideal line and the in-process level."""
    ax.plot(sizes, [best[n] for n in sizes], "o-", color=color, label="Ray farm (min)")
    ax.plot(sizes, [median[n] for n in sizes], "s:", ms=4, color=color, label="Ray farm (median)")
    ax.plot(sizes, [n * best[1] for n in sizes], "k--", lw=0.8, label="ideal (N × N=1)")
    ax.axhline(best["in-process"], color="grey", lw=0.8, label="in process")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices N")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--latency", type=float, default=0.02, help="seconds per applied setting (default 0.02)")
        p.add_argument("--sizes", type=int, nargs="+", default=None, help="farm sizes (default 1 2 4 8 16; quick 1 2 8)")
        p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 20; quick 2)")
        p.add_argument("--steps", type=int, default=None, help="training steps per run (default 2; quick 1)")
        p.add_argument("--pairs", type=int, default=64, help="± pairs per gradient (PGT-local; default 64)")
        p.add_argument("--address", default=None, help="Ray cluster to join (default: a local Ray on 127.0.0.1)")
        p.add_argument("--hge-time-scale", type=float, default=0.2,
                       help="HGE device: wall seconds per device second of each waveform (default 0.2: a 0.1 s "
                            "window takes 20 ms)")
        p.add_argument("--hge-sizes", type=int, nargs="+", default=None,
                       help="farm sizes for HGE (default: --sizes' default 1 2 4 8 16; quick 1 2)")

    args = parse_args(__doc__.splitlines()[0], extra, argv)
    torch.set_num_threads(args.threads or 1)
    sizes = args.sizes or ([1, 2, 8] if args.quick else [1, 2, 4, 8, 16])
    rounds = args.rounds or (3 if args.quick else 20)
    steps = args.steps or (1 if args.quick else 2)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from physgrad.carriers.ray_farm import RAY_SYSTEM_CONFIG, DeviceFarm

    started = not ray.is_initialized()
    if started:
        if args.address:
            ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1", object_store_memory=200 * 2**20,
                     # a shared machine: the OS, not Ray's memory monitor, polices memory
                     _system_config={**RAY_SYSTEM_CONFIG, "memory_monitor_refresh_ms": 0})
    load = [os.getloadavg()[0]]
    device = {"input_size": 16, "size": 64, "seed": 1, "seconds_per_setting": args.latency}
    quiet = dict(device, seconds_per_setting=0.0)  # the model's stand-in: never measured during a step
    try:
        t0 = time.perf_counter()
        farm = DeviceFarm(LATENCY_DEVICE, max(sizes), device_kwargs=device)
        startup = time.perf_counter() - t0
        times = {"in-process": [], **{n: [] for n in sizes}}
        queries, finals = {}, {}
        for _ in range(rounds):
            for n in ["in-process", *sizes]:
                if n == "in-process":
                    wall, q, final, _ = _train(device, None, steps, args.pairs)
                else:
                    farm.active = n
                    wall, q, final, _ = _train(quiet, farm, steps, args.pairs)
                times[n].append(wall)
                queries[n] = q
                finals[n] = final
            load.append(os.getloadavg()[0])
        killed = _kill_mid_step(farm, device, args.pairs)
        farm.close()
        hge_sizes = args.hge_sizes or ([1, 2] if args.quick else sizes)  # quick: two DNPU actors to start, not 8
        hge_rows, hge_figures, hge_thr, hge_thr_best = _hge_scaling(hge_sizes, rounds, steps, args.hge_time_scale, load)

        def cpu_farm(n, kwargs):
            return DeviceFarm(LATENCY_DEVICE, n, device_kwargs=kwargs)

        cpu_kwargs = {"input_size": 64, "size": 512, "seed": 1, "seconds_per_setting": 0.0}
        cpu_rows, cpu_figures = _cpu_bound(cpu_farm, [1, 2], max(2, rounds // 4), steps, args.pairs, cpu_kwargs)
        load.append(os.getloadavg()[0])
    finally:
        if started:
            ray.shutdown()

    # The device time is fixed (it sleeps), so other processes on a shared machine only ever add time:
    # the minimum over the interleaved rounds is the farm's own cost (the contract figures), the
    # median what it cost on this machine as loaded (``*_median``). Both are reported.
    rows, per_n, thr, thr_best = _scaling(times, queries, sizes)
    med = {n: statistics.median(ts) for n, ts in times.items()}
    best = {n: min(ts) for n, ts in times.items()}
    identical = all(all(torch.equal(a, b) for a, b in zip(f, finals["in-process"])) for f in finals.values())
    figures = {
        "latency_s": args.latency, "pairs": args.pairs, "steps": steps, "rounds": rounds, "sizes": " ".join(map(str, sizes)),
        "queries_per_run": queries[sizes[0]], "farm_startup_s": startup,
        **per_n,
        "identical_parameters": identical,
        "load_average_min": min(load), "load_average_max": max(load),
        **killed, **cpu_figures, **hge_figures,
    }
    # per-probe overhead of the carrier (what the extrapolation uses): (farm N=1 - in-process) per query
    figures["overhead_per_query_ms"] = 1e3 * (best[1] - best["in-process"]) / queries[1]
    figures["overhead_per_query_ms_median"] = 1e3 * (med[1] - med["in-process"]) / queries[1]
    figures["calls_per_run"] = steps * 2

    print(f"\nLatency-bound device ({args.latency * 1e3:g} ms per setting), PGT-local, {args.pairs} pairs, "
          f"{steps} steps, {rounds} interleaved rounds; load average {min(load):.1f}-{max(load):.1f}\n")
    print(markdown_table(rows, _header("queries")))
    print(f"\noverhead of the Ray carrier at N=1: {100 * figures['overhead_1']:+.1f} % by minima, "
          f"{100 * figures['overhead_1_median']:+.1f} % by medians "
          f"({figures['overhead_per_query_ms']:.2f} ms per query); identical parameters at every N: {identical}; "
          f"killed actor step completed and counted: {killed['killed_actor_step_completed']} "
          f"({killed['killed_step_queries']} queries = {killed['killed_step_queries_without_kill']} + "
          f"{killed['killed_share_queries']} re-measured)\n")
    print(f"\nHGE-local on a time-domain DNPU whose waveforms take {args.hge_time_scale:g} × their device time "
          f"(a 0.1 s window: {100 * args.hge_time_scale:g} ms), batch {HGE_BATCH}, {steps} steps, {rounds} interleaved "
          f"rounds, calibrated once beforehand (every run resumes its state)\n")
    print(markdown_table(hge_rows, _header("windows")))
    print(f"\nHGE: overhead of the Ray carrier at N=1: {100 * figures['hge_overhead_1']:+.1f} % by minima, "
          f"{100 * figures['hge_overhead_1_median']:+.1f} % by medians; identical parameters at every N: "
          f"{figures['hge_identical_parameters']}; same device seconds counted at every N: "
          f"{figures['hge_same_device_seconds']}\n")
    print(markdown_table(cpu_rows, ["CPU-bound device", "wall median (s)", "wall min (s)", "÷ in-process"]))

    import matplotlib.pyplot as plt

    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(13, 3.6))
    _throughput_panel(a1, sizes, thr_best, thr, "C0", "device queries / s", f"PGT-local, {args.latency * 1e3:g} ms/setting")
    _throughput_panel(a3, hge_sizes, hge_thr_best, hge_thr, "C2", "windows / s",
                      f"HGE-local, DNPU windows at {args.hge_time_scale:g}x real time")
    a2.plot(sizes, [figures[f"efficiency_{n}"] for n in sizes], "o-", label="PGT, by minima")
    a2.plot(sizes, [figures[f"efficiency_{n}_median"] for n in sizes], "s:", ms=4, label="PGT, by medians")
    a2.plot(hge_sizes, [figures[f"hge_efficiency_{n}"] for n in hge_sizes], "o-", color="C2", label="HGE, by minima")
    a2.plot(hge_sizes, [figures[f"hge_efficiency_{n}_median"] for n in hge_sizes], "s:", ms=4, color="C2",
            label="HGE, by medians")
    a2.axhline(0.8, color="r", lw=0.8, ls=":", label="floor 0.8")
    a2.set_xscale("log", base=2)
    a2.set_ylim(0, 1.1)
    a2.set_xlabel("devices N")
    a2.set_ylabel("parallel efficiency")
    a2.legend(fontsize=8)
    fig.suptitle("Ray farm of N devices: throughput and parallel efficiency", fontsize=10)
    fig.tight_layout()
    print(f"plot: {save_figure(fig, plot_path(args, 'ray_scaling'))}")
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
