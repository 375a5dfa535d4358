"""HGE vs PGT, SPSA and finite differences at equal device time, each static method at its best K (issue 11 §4)

The gradient of a DNPU's output current with respect to its five controls, at random settings, the
paper's noise level. HGE spends one window of ``T`` seconds (plus its measured settling and the DAC
ramp) per gradient, and once per device a transfer calibration. The static methods spend the same
device time on their queries, each query costing DAC ramp + settling + averaging
(``seconds_per_query`` of the time-domain device), the averaging time chosen so that the total
matches HGE's. **K per budget**: PGT and SPSA try K ∈ {1, 2, 5, 10, 20, 40, 80} direction pairs
(2K + 1 queries; fewer, longer-averaged queries or more, shorter ones) and keep, for each budget,
the K with the lowest median error on a *validation* set of settings (another seed); the table
reports that K's error on the test settings (finite differences have no K: 11 queries). Figures:
median relative error per method and budget, the K chosen, and the ratio of the best static
method's error to HGE's, without HGE's calibration time (amortised over many gradients) and with
it (charged to every gradient: the static methods then get the calibration's seconds too).

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
KS = (1, 2, 5, 10, 20, 40, 80)


def gradients(method, device, controls: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``method.backward`` on a one-layer model whose loss is the output current.

    Returns ``[n, 5]``, device seconds per gradient (calibration excluded) and the calibration's seconds.
    """
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
    cal = 0.0 if calibration is None else calibration.device_seconds
    return torch.stack(out), (spent - cal) / len(controls), cal


def static_error(dnpu, make, queries: int, budget: float, overhead: float, fs: float, controls, inputs, exact):
    """Median relative error of a static method whose ``queries`` share ``budget`` seconds (None: cannot fit)."""
    sample_s = budget / queries - overhead
    if sample_s <= 1.0 / fs:
        return None, None
    device = time_domain_dnpu(dnpu, sample_s=sample_s, seed=3)
    est, secs, _ = gradients(make(), device, controls, inputs)
    _, rel = scores(est, exact)
    return float(rel.median()), secs


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], device_argument, argv)
    torch.set_num_threads(args.threads or 1)
    n = 10 if args.quick else 100
    n_val = 10 if args.quick else 40
    windows = [0.05, 0.2] if args.quick else [0.02, 0.05, 0.1, 0.2, 0.4]
    ks = (1, 5, 20) if args.quick else KS
    t_start = time.time()
    base = time_domain_dnpu(args.device, seed=3)
    dnpu = base.static
    controls, inputs = random_settings(dnpu, n, seed=0)
    exact = exact_gradients(dnpu, controls, inputs)
    v_controls, v_inputs = random_settings(dnpu, n_val, seed=1)
    v_exact = exact_gradients(dnpu, v_controls, v_inputs)
    overhead = base.dac_ramp_s + base.settle_s  # the static measurement's own ramp and settling (the device's)
    families = {
        "spsa": lambda k: (lambda: PGT.spsa(k, DELTA, seed=1), 2 * k + 1),
        "pgt": lambda k: (lambda: PGT(k, DELTA, seed=1), 2 * k + 1),
    }
    rows, figures = [], {}
    curves = {name: ([], []) for name in ["hge", "fd", *families]}
    calibration_s = 0.0
    best_ratio = best_ratio_cal = float("nan")
    for w in windows:
        est, budget, cal = gradients(HGE(w), base, controls, inputs)
        calibration_s = max(calibration_s, cal)
        cos, rel = scores(est, exact)
        hge_err = float(rel.median())
        rows.append([f"{w:g}", "hge", "-", budget, hge_err, float(cos.median()), 1.0, "-"])
        figures[f"hge_rel_error_T{w:g}"] = hge_err
        figures[f"hge_seconds_T{w:g}"] = budget
        curves["hge"][0].append(budget)
        curves["hge"][1].append(hge_err)
        best = {}
        for charged, label in ((0.0, ""), (cal, "_with_calibration")):
            total = budget + charged
            err_fd, secs = static_error(dnpu, lambda: FiniteDifference(delta=DELTA), 11, total, overhead, base.fs,
                                        controls, inputs, exact)
            results = {"fd": (err_fd, "-", secs)}
            for name, family in families.items():
                sweep = []
                for k in ks:  # choose K on the validation settings
                    make, queries = family(k)
                    err_val, _ = static_error(dnpu, make, queries, total, overhead, base.fs, v_controls, v_inputs, v_exact)
                    if err_val is not None:
                        sweep.append((err_val, k))
                        figures[f"{name}_val_rel_error_T{w:g}_K{k}{label}"] = err_val
                if not sweep:
                    results[name] = (None, "-", None)
                    continue
                k = min(sweep)[1]
                make, queries = family(k)
                err, secs = static_error(dnpu, make, queries, total, overhead, base.fs, controls, inputs, exact)
                results[name] = (err, k, secs)
                figures[f"{name}_best_K_T{w:g}{label}"] = k
            for name, (err, k, secs) in results.items():
                if err is None:
                    continue
                figures[f"{name}_rel_error_T{w:g}{label}"] = err
                figures[f"{name}_over_hge_T{w:g}{label}"] = err / hge_err
                rows.append([f"{w:g}", name + (" (+ calibration s)" if charged else ""), k, secs, err, float("nan"),
                             err / hge_err, "with cal." if charged else "no"])
                if not charged:
                    curves[name][0].append(secs)
                    curves[name][1].append(err)
            valid = [r[0] for r in results.values() if r[0] is not None]
            best[label] = min(valid) / hge_err if valid else float("nan")
        best_ratio, best_ratio_cal = best[""], best["_with_calibration"]
        figures[f"error_ratio_best_static_to_hge_T{w:g}"] = best_ratio
        figures[f"error_ratio_best_static_to_hge_with_calibration_T{w:g}"] = best_ratio_cal
    figures["error_ratio_best_static_to_hge"] = best_ratio  # at the largest budget
    figures["error_ratio_best_static_to_hge_with_calibration"] = best_ratio_cal
    figures["hge_calibration_seconds"] = calibration_s
    figures["settings"] = n
    figures["validation_settings"] = n_val
    figures["seconds"] = time.time() - t_start
    print(f"## Equal device time on {dnpu.name}: gradient of the output current w.r.t. 5 controls "
          f"({n} test settings, K chosen on {n_val} validation settings)\n")
    print(markdown_table(rows, ["HGE window (s)", "method", "K (chosen)", "device s / gradient", "median rel. error",
                                "median cosine", "error / HGE error", "HGE calibration charged"]))
    print(f"\nbest static / HGE at the largest budget: {best_ratio:.3g} (calibration amortised), "
          f"{best_ratio_cal:.3g} (HGE's {calibration_s:.2f} s calibration charged to one gradient)")
    _plot(args, dnpu.name, curves)
    write_json(args.out, figures)
    return figures


def _plot(args, name, curves) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (secs, errs) in curves.items():
        if secs:
            ax.loglog(secs, errs, "o-", label=label + ("" if label in ("hge", "fd") else " (best K)"))
    ax.set_xlabel("device seconds per gradient")
    ax.set_ylabel("median relative error")
    ax.legend()
    ax.set_title(f"equal device time ({name})")
    save_plot(args, fig, "hge_equal_time", name)


if __name__ == "__main__":
    main()
