"""HGE vs PGT, SPSA and finite differences at equal device time (issue 4, task 2)

The gradient of a DNPU's output current with respect to its five controls, at random settings, the
paper's noise level. HGE spends one window of ``T`` seconds (plus settling and the DAC ramp) per
gradient; the static methods spend the same device time on their queries, each query costing DAC
ramp + settling + averaging (``seconds_per_query`` of the time-domain device), the averaging time
chosen so that the total matches HGE's. Figures: median relative error and cosine to the exact
gradient (autograd through the surrogate) per method and budget, and the ratio of each method's
error to HGE's.

    python -m benchmarks.hge_equal_time [--device PATH.npz] [--quick] [--out F.json]
"""

from __future__ import annotations

import time

import torch

from benchmarks._common import markdown_table, parse_args, write_json
from benchmarks.hge_fidelity import device_argument, exact_gradients, random_settings, save_plot, scores
from physgrad.methods import HGE, PGT, FiniteDifference
from physgrad.models import PhysicalLayer
from physgrad.systems import time_domain_dnpu

DELTA = 0.03  # V: the static methods' step, close to HGE's amplitudes (2 % of 1.0-1.8 V ranges)
PAIRS = 5  # PGT/SPSA probe pairs: as many queries as central differences over 5 controls


def gradients(method, device, controls: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``method.backward`` on a one-layer model whose loss is the output current; ``[n, 5]``, s/gradient."""
    layer = PhysicalLayer(device)
    out = []
    spent = 0.0
    for c, x in zip(controls, inputs):
        with torch.no_grad():
            layer.params["controls"].copy_(c)
        layer.zero_grad()
        method.backward(layer, lambda current, _: current.sum(), x, None)
        spent += method.last_cost.device_seconds
        out.append(layer.params["controls"].grad.detach().clone())
    calibration = getattr(method, "calibration_cost", None)
    if calibration is not None:  # once per plan, not per gradient
        spent -= calibration.device_seconds
    return torch.stack(out), spent / len(controls)


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], device_argument, argv)
    torch.set_num_threads(args.threads or 1)
    n = 10 if args.quick else 100
    windows = [0.02, 0.05, 0.1, 0.2] if args.quick else [0.02, 0.05, 0.1, 0.2, 0.4]
    t_start = time.time()
    base = time_domain_dnpu(args.device, seed=3)
    dnpu = base.static
    controls, inputs = random_settings(dnpu, n, seed=0)
    exact = exact_gradients(dnpu, controls, inputs)
    static_methods = {
        "fd": (lambda: FiniteDifference(delta=DELTA), 2 * 5 + 1),
        "spsa": (lambda: PGT.spsa(PAIRS, DELTA, seed=1), 2 * PAIRS + 1),
        "pgt": (lambda: PGT(PAIRS, DELTA, seed=1), 2 * PAIRS + 1),
    }
    rows, figures, curves = [], {}, {name: ([], []) for name in ["hge", *static_methods]}
    for w in windows:
        est, budget = gradients(HGE(w), base, controls, inputs)
        cos, rel = scores(est, exact)
        hge_err = float(rel.median())
        rows.append([f"{w:g}", "hge", budget, hge_err, float(cos.median()), 1.0])
        figures[f"hge_rel_error_T{w:g}"] = hge_err
        curves["hge"][0].append(budget)
        curves["hge"][1].append(hge_err)
        for name, (make, queries) in static_methods.items():
            overhead = base.dac_ramp_s + base.settle_s
            sample_s = budget / queries - overhead
            if sample_s <= 1.0 / base.fs:
                rows.append([f"{w:g}", name, budget, float("nan"), float("nan"), float("nan")])
                continue
            device = time_domain_dnpu(dnpu, sample_s=sample_s, seed=3)
            est, secs = gradients(make(), device, controls, inputs)
            cos, rel = scores(est, exact)
            err = float(rel.median())
            rows.append([f"{w:g}", name, secs, err, float(cos.median()), err / hge_err])
            figures[f"{name}_rel_error_T{w:g}"] = err
            figures[f"{name}_over_hge_T{w:g}"] = err / hge_err
            curves[name][0].append(secs)
            curves[name][1].append(err)
    figures["settings"] = n
    figures["seconds"] = time.time() - t_start
    print(f"## Equal device time on {dnpu.name}: gradient of the output current w.r.t. 5 controls ({n} settings)\n")
    print(markdown_table(rows, ["HGE window (s)", "method", "device s / gradient", "median rel. error",
                                "median cosine", "error / HGE error"]))
    _plot(args, dnpu.name, curves)
    write_json(args.out, figures)
    return figures


def _plot(args, name, curves) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (secs, errs) in curves.items():
        if secs:
            ax.loglog(secs, errs, "o-", label=label)
    ax.set_xlabel("device seconds per gradient")
    ax.set_ylabel("median relative error")
    ax.legend()
    ax.set_title(f"equal device time ({name})")
    save_plot(args, fig, "hge_equal_time", name)


if __name__ == "__main__":
    main()
