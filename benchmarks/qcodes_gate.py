"""A Boolean gate trained through QCoDeS instruments, every command recorded in a QCoDeS dataset (issue 15)

The DNPU (built-in synthetic, or ``--device`` a surrogate file) sits behind simulated QCoDeS
instruments (``physgrad.systems.lab.sim``): a 7-channel DAC (per-channel ``Numbers`` limits, a
``step`` ramp limit) and a DMM whose reading is the device's output current, for PGT; an AWG and
a digitizer (``ParameterWithSetpoints`` trace at 10 kHz, the paper's time-domain chain and noise),
for HGE. Each method trains the gate twice with the same seed: through QCoDeS
(:class:`~physgrad.systems.lab.QCoDeSSystem` / :class:`~physgrad.systems.lab.QCoDeSWaveformSystem`,
recorded by :class:`~physgrad.training.record.Recorder` into a SQLite database) and on the
in-process device. Figures:

* ``recorded_settings`` / ``device_queries``: settings in the QCoDeS datasets (read back with
  ``load_by_run_spec``) and queries the devices counted (both methods, read-outs included);
* ``out_of_range_recorded``: recorded control or input values outside the instruments' validators (0);
* ``same_as_in_process``: both methods' final controls equal (bit for bit) the in-process runs';
* ``gate_found_pgt`` / ``gate_found_hge``: the read-out through QCoDeS separates the classes
  (lowest "1" above highest "0" by more than 3 read-out noise deviations).

    python -m benchmarks.qcodes_gate [--gate and] [--steps N] [--device PATH.npz] [--db DIR] [--quick] [--out F.json]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._common import markdown_table, parse_args, write_json
from benchmarks.hge_gates import GATES, corr_sig_loss, gate_inputs
from physgrad.methods import HGE, PGT
from physgrad.models import PhysicalLayer, clamp_to_safe_range_
from physgrad.systems.devices.dnpu import load_dnpu, time_domain_dnpu

CHANNELS = [f"ch{i + 1}" for i in range(7)]


# ===================================================================================== rigs
def static_rig(device: str | None = None, *, step: float = 0.05, inter_delay: float = 0.0, prefix: str = "",
               settle_s: float = 0.0):
    """DAC + DMM around a DNPU; returns ``(system, dac, dmm, in_process_twin)``."""
    from physgrad.systems.lab import QCoDeSSystem
    from physgrad.systems.lab.sim import SimDAC, SimDMM

    dnpu = load_dnpu(device)
    controls = [CHANNELS[i] for i in dnpu.control_electrodes]
    inputs = [CHANNELS[i] for i in dnpu.input_electrodes]
    dac = SimDAC(f"{prefix}dac", 7, dnpu.voltage_min.tolist(), dnpu.voltage_max.tolist(), step=step, inter_delay=inter_delay)
    dmm = SimDMM(f"{prefix}dmm", dac, controls, inputs, dnpu)
    system = QCoDeSSystem([dac.parameters[c] for c in controls], [dac.parameters[c] for c in inputs], [dmm.v],
                          settle_s=settle_s)
    return system, dac, dmm, load_dnpu(device)


def waveform_rig(device: str | None = None, *, seed: int = 7, prefix: str = "", max_slew: float = 5000.0):
    """AWG + digitizer around a time-domain DNPU; returns ``(system, awg, digitizer, in_process_twin)``."""
    from physgrad.systems.lab import QCoDeSWaveformSystem
    from physgrad.systems.lab.sim import SimAWG, SimDigitizer

    td = time_domain_dnpu(device, seed=seed)
    dnpu = td.static
    controls = [CHANNELS[i] for i in dnpu.control_electrodes]
    inputs = [CHANNELS[i] for i in dnpu.input_electrodes]
    awg = SimAWG(f"{prefix}awg", 7, dnpu.voltage_min.tolist(), dnpu.voltage_max.tolist(), max_slew=max_slew)
    dig = SimDigitizer(f"{prefix}digitizer", awg, controls, inputs, td)
    system = QCoDeSWaveformSystem([awg.parameters[c] for c in controls], [awg.parameters[c] for c in inputs], dig.trace,
                                  settle_s=td.settle_s, bandwidth_hz=dig.bandwidth(), clip=td.clip,
                                  dac_ramp_s=td.dac_ramp_s, sample_s=td.sample_s)
    return system, awg, dig, time_domain_dnpu(device, seed=seed)


# ===================================================================================== training
def train(system, method, target: torch.Tensor, seed: int, steps: int, lr: float, recorder=None) -> tuple[torch.Tensor, list[float]]:
    """Train the controls of ``system`` for one gate from a seeded random start (Adam); return controls, losses."""
    layer = PhysicalLayer(system)
    g = torch.Generator().manual_seed(seed)
    low, high = system.parameter_bounds()["controls"]
    with torch.no_grad():
        layer.params["controls"].copy_(low + (high - low) * torch.rand(low.shape, generator=g))
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    x = gate_inputs(system)
    curve = []
    if recorder is not None:
        recorder.follow(method)  # each backward() is a step; its loss goes into the record
    for _ in range(steps):
        opt.zero_grad()
        loss = method.backward(layer, corr_sig_loss, x, target)
        opt.step()
        clamp_to_safe_range_(layer)
        curve.append(float(loss))
    return layer.params["controls"].detach().clone(), curve


def readout(system, controls: torch.Tensor, target: torch.Tensor, repeats: int = 4) -> tuple[float, float, bool]:
    """Separation of the mean static read-out, its noise, and whether the gate is found (sep > 3 noise)."""
    x = gate_inputs(system)
    reads = torch.stack([system.measure({"controls": controls}, x)[0, :, 0] for _ in range(repeats)])
    mean = reads.mean(0)
    sep = float(mean[target > 0.5].min() - mean[target < 0.5].max())
    noise = float(reads.std(0).mean())
    return sep, noise, sep > 3 * noise


def pgt(seed: int) -> PGT:
    return PGT(num_pairs=4, delta=0.05, seed=seed)


def hge(seed: int) -> HGE:
    return HGE(0.1, seed=seed)


def out_of_range(dataset, params) -> int:
    """Recorded values of the QCoDeS parameters ``params`` outside their validators' bounds."""
    data = dataset.get_parameter_data()
    bad = 0
    for p in params:
        if p.full_name not in data:
            continue
        values = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in data[p.full_name][p.full_name]])
        lo, hi = p.vals.min_value, p.vals.max_value
        bad += int(((values < lo) | (values > hi)).sum())
    return bad


def settings_in(dataset) -> int:
    """Distinct settings (queries) recorded in a dataset."""
    data = dataset.get_parameter_data()
    key = next(iter(data))
    return len(np.unique(np.concatenate([np.asarray(v).reshape(-1) for v in data["query"]["query"]])))


def run_method(name: str, args, folder: Path, target: torch.Tensor, seed: int, steps: int) -> dict:
    from physgrad.training.record import Recorder

    rig = static_rig if name == "pgt" else waveform_rig
    system, source, reader, twin = rig(args.device, prefix=f"{name}_")
    make = pgt if name == "pgt" else hge
    lr = 0.1 if name == "pgt" else 0.03
    t0 = time.perf_counter()
    with Recorder(folder, experiment=f"qcodes_gate_{args.gate}", sample=f"dnpu_{name}") as rec:
        rec.attach(system)
        controls, curve = train(system, make(seed), target, seed, steps, lr, recorder=rec)
        sep, noise, found = readout(system, controls, target)
    seconds = time.perf_counter() - t0
    ds = rec.load()
    params = list(system.controls.params) + list(system.inputs.params)
    twin_controls, twin_curve = train(twin, make(seed), target, seed, steps, lr)
    figures = {
        "recorded": settings_in(ds), "queries": system.queries, "out_of_range": out_of_range(ds, params),
        "same": bool(torch.equal(controls, twin_controls)) and curve == twin_curve,
        "max_difference": float((controls - twin_controls).abs().max()),
        "found": found, "separation": sep, "noise": noise, "loss_first": curve[0], "loss_last": curve[-1],
        "device_seconds": system.device_seconds, "wall_seconds": getattr(system, "wall_seconds", 0.0),
        "seconds": seconds, "run_id": ds.captured_run_id, "rows": rec.recorded_rows,
        "curve": curve, "twin_curve": twin_curve,
    }
    source.close()
    reader.close()
    return figures


def main(argv=None) -> dict:
    def extra(parser) -> None:
        parser.add_argument("--device", default=None, help="surrogate .npz (default: built-in synthetic DNPU)")
        parser.add_argument("--gate", default="and", choices=sorted(GATES))
        parser.add_argument("--steps", type=int, default=None, help="training steps per method (default 80; 40 with --quick)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--db", type=Path, default=None, help="keep the QCoDeS database in this folder (default: temporary)")

    args = parse_args(__doc__.splitlines()[0], extra, argv)
    torch.set_num_threads(args.threads or 1)
    steps = args.steps if args.steps is not None else (40 if args.quick else 80)
    target = torch.tensor(GATES[args.gate], dtype=torch.float32)
    folder = args.db or Path(tempfile.mkdtemp(prefix="physgrad-qcodes-"))
    try:
        results = {m: run_method(m, args, folder, target, args.seed, steps) for m in ("pgt", "hge")}
    finally:
        if args.db is None:
            shutil.rmtree(folder, ignore_errors=True)
    p, h = results["pgt"], results["hge"]
    figures = {
        "recorded_settings": p["recorded"] + h["recorded"],
        "device_queries": p["queries"] + h["queries"],
        "out_of_range_recorded": p["out_of_range"] + h["out_of_range"],
        "same_as_in_process": p["same"] and h["same"],
        "gate_found_pgt": p["found"], "gate_found_hge": h["found"],
        "gate": args.gate, "steps": steps, "seed": args.seed,
    }
    for m, r in results.items():
        for key in ("recorded", "queries", "out_of_range", "same", "max_difference", "separation", "noise", "loss_first",
                    "loss_last", "device_seconds", "wall_seconds", "seconds", "rows"):
            figures[f"{m}_{key}"] = r[key]
    rows = [[m.upper(), r["queries"], r["recorded"], r["rows"], r["out_of_range"], r["same"], r["max_difference"],
             r["loss_first"], r["loss_last"], r["separation"], r["found"], r["device_seconds"], r["wall_seconds"],
             r["seconds"]]
            for m, r in results.items()]
    print(f"## {args.gate.upper()} gate through QCoDeS instruments ({steps} steps, seed {args.seed})\n")
    print(markdown_table(rows, ["method", "device queries", "recorded settings", "recorded rows", "out of range",
                                "same as in-process", "max |Δcontrols| (V)", "first loss", "last loss",
                                "separation (nA)", "gate found", "device s (cost)", "instrument wall s",
                                "run wall s (both runs, record)"]))
    print("\ndevice s: PGT's is the wall-clock time spent setting, settling and reading the instruments; HGE's is "
          "the signal time played (as the in-process device counts it), its wall-clock in 'instrument wall s'.")
    _plot(args, results)
    write_json(args.out, figures)
    return figures


def _plot(args, results: dict) -> None:
    import matplotlib.pyplot as plt

    from benchmarks._common import plot_path, save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (m, r) in zip(axes, results.items()):
        ax.semilogy(r["curve"], lw=2.5, alpha=0.6, label="through QCoDeS (recorded)")
        ax.semilogy(r["twin_curve"], "k--", lw=1, label="in-process device, same seed")
        ax.set_title(f"{m.upper()}: {args.gate.upper()} gate, {r['queries']} queries = {r['recorded']} recorded")
        ax.set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, plot_path(args, "qcodes_gate"))


if __name__ == "__main__":
    main()
