"""Server overhead: probes per second and latency, in-process vs over loopback (issue 6).

The same simulated device is measured two ways: directly (``device.measure``) and through a
device server in a separate process (``python -m physgrad.systems.remote.server``) reached by
:class:`~physgrad.systems.remote.client.RemoteSystem` over TCP on 127.0.0.1. Two device sizes:

* ``dnpu`` — the synthetic DNPU (7 electrodes: 2 inputs, 5 controls, 1 output);
* ``reservoir`` — the demo's reservoir (32 inputs → 256 nodes, 257 controls).

Each call measures ``K`` probes (parameter settings) on a batch of 32 inputs (the demo's batch):
``K = 1`` is a plain forward pass, ``K = 16`` one PGT-local gradient of the demo (8 pairs),
``K = 64`` a 32-pair gradient. Reported per device and ``K``: median latency per call and
probes/s ``= K / latency``, and the loopback/in-process ratio. The contract figures
``inprocess_probes_per_s`` and ``loopback_probes_per_s`` are the reservoir at ``K = 16``.

Absolute times depend on the machine (and on what else runs on it); the ratio is the figure to
compare. Simulated devices answer in microseconds to milliseconds; a real device's settling and
sampling time (milliseconds to seconds per query) dwarfs the server's overhead.

    python -m benchmarks.server_overhead [--quick] [--out FILE.json]
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from physgrad.systems.remote.client import RemoteSystem
from physgrad.systems.remote.server import build_device

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json

DEVICES = ("dnpu", "reservoir")
PROBES = (1, 16, 64)
BATCH = 32
CONTRACT = ("reservoir", 16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workload(device, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, value in device.initial_parameters().items():
        low, high = device.parameter_bounds()[name]
        span = torch.where(torch.isfinite(high - low), high - low, torch.ones_like(low))
        params[name] = (value + 1e-3 * span * torch.randn(k, *value.shape, generator=g)).clamp(low, high)
    if hasattr(device, "input_electrodes"):  # DNPU: inputs inside each electrode's voltage range
        lo, hi = device.voltage_min[device.input_electrodes], device.voltage_max[device.input_electrodes]
        x = lo + (hi - lo) * torch.rand(BATCH, len(lo), generator=g)
    else:
        x = torch.rand(BATCH, *device.input_shape, generator=g)
    return params, x


def _time(device, k: int, reps: int) -> list[float]:
    params, x = _workload(device, k)
    for _ in range(3):  # warm up
        device.measure(params, x)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        device.measure(params, x)
        times.append(time.perf_counter() - t)
    return times


def _serve(name: str, token_file: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "physgrad.systems.remote.server", "--device", name, "--address", f"tcp://127.0.0.1:{port}",
           "--token-file", str(token_file)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def run(reps: int) -> tuple[list[list], dict]:
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text("bench-" + os.urandom(16).hex())
        token_file.chmod(0o600)
        token = token_file.read_text().strip()
        for name in DEVICES:
            port = _free_port()
            proc = _serve(name, token_file, port)
            try:
                remote = RemoteSystem(f"tcp://127.0.0.1:{port}", token, timeout=30.0, retries=5, backoff=0.5)
                local = build_device(name)
                for k in PROBES:
                    t_in = statistics.median(_time(local, k, reps))
                    t_net = statistics.median(_time(remote, k, reps))
                    rows.append([name, k, 1e3 * t_in, 1e3 * t_net, k / t_in, k / t_net, t_net / t_in])
                    key = f"{name}_k{k}"
                    figures.update({f"{key}_inprocess_ms": 1e3 * t_in, f"{key}_loopback_ms": 1e3 * t_net,
                                    f"{key}_inprocess_probes_per_s": k / t_in, f"{key}_loopback_probes_per_s": k / t_net,
                                    f"{key}_loopback_over_inprocess": t_net / t_in})
                    if (name, k) == CONTRACT:
                        figures["inprocess_probes_per_s"] = k / t_in
                        figures["loopback_probes_per_s"] = k / t_net
                remote.close()
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    return rows, figures


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__.splitlines()[0], argv=argv)
    torch.set_num_threads(args.threads or 1)  # the server process uses one thread too: compare like with like
    reps = 20 if args.quick else 300
    rows, figures = run(reps)
    headers = ["device", "probes/call", "in-process ms", "loopback ms", "in-process probes/s", "loopback probes/s", "loopback/in-process"]
    print(markdown_table(rows, headers))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, DEVICES):
        sub = [r for r in rows if r[0] == name]
        ks = [r[1] for r in sub]
        ax.plot(ks, [r[4] for r in sub], "o-", label="in-process")
        ax.plot(ks, [r[5] for r in sub], "s-", label="loopback server")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"probes per call (batch {BATCH})")
        ax.set_ylabel("probes / s")
        ax.set_title(f"{name}")
        ax.legend()
    save_figure(fig, plot_path(args, "server_overhead"))
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
