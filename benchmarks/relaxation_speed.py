"""How fast does the Hopfield device relax a batch, against a straightforward implementation?

The straightforward version follows the reference code's algorithm (github.com/bscellier/
agnostic-equilibrium-propagation, ``Network.homeostatic_relaxation``): every sweep visits the
layers in order and recomputes each layer's whole drive from all its interactions — including
the input term ``x W_1`` — then clips. :class:`physgrad.systems.HopfieldNetwork` computes the
input drive once per relaxation (the input is clamped and θ held), updates layers of equal
parity together and fuses the clip in place. Both stop on the same criterion (no unit moved by
more than the tolerance in a sweep) from the same start, so they reach the same fixed point:
``max_state_difference`` checks it.

Timing (benchmarks/_timing.py): the two run interleaved in one process (ours, plain, ours, plain,
...), ≥ 20 rounds after a warm-up, one torch thread unless ``--threads``; reported: each one's median
and minimum, the speedup as the median of the per-round ratios (and the ratio of the minima), the
1-minute load average before and after, and ``flop_ratio`` — the ratio of the two algorithms'
multiply-adds (matmuls only, counted from the sizes and the sweeps each took), which bounds what an
honest speed-up from skipping work can be.

    python -m benchmarks.relaxation_speed [--quick] [--out F.json]
"""

from __future__ import annotations

import torch

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json
from benchmarks._timing import MIN_ROUNDS, interleaved, ratio
from physgrad.data import load_dataset
from physgrad.systems import HopfieldNetwork


def straightforward_relaxation(
    weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor, bounds: list[tuple[float, float]],
    tolerance: float, max_sweeps: int,
) -> tuple[list[torch.Tensor], int]:
    """Layer-by-layer exact minimisation, every drive recomputed every sweep (the plain algorithm)."""
    n = len(weights)
    s = [torch.zeros(x.shape[0], w.shape[1]).clamp(*bd) for w, bd in zip(weights, bounds)]
    for sweep in range(1, max_sweeps + 1):
        change = 0.0
        for k in range(n):
            below = x if k == 0 else s[k - 1]
            drive = biases[k] + below @ weights[k]
            if k + 1 < n:
                drive = drive + s[k + 1] @ weights[k + 1].T
            new = torch.clamp(drive, *bounds[k])
            change = max(change, float((new - s[k]).abs().max()))
            s[k] = new
        if change <= tolerance:
            return s, sweep
    return s, max_sweeps


def matmul_flops(sizes: list[int], batch: int, sweeps: int, input_drive_once: bool) -> int:
    """Multiply-adds of the matmuls of one relaxation (every sweep: each layer's drive from below and above)."""
    per_sweep = 0
    for k in range(1, len(sizes)):
        if k > 1 or not input_drive_once:
            per_sweep += batch * sizes[k - 1] * sizes[k]  # from below
        if k + 1 < len(sizes):
            per_sweep += batch * sizes[k + 1] * sizes[k]  # from above
    once = batch * sizes[0] * sizes[1] if input_drive_once else 0
    return once + sweeps * per_sweep


def compare(sizes: list[int], x: torch.Tensor, tolerance: float, repeats: int, seed: int) -> dict:
    gains = [0.8] * (len(sizes) - 2) + [1.2]
    device = HopfieldNetwork(sizes, gains=gains, tolerance=tolerance, max_sweeps=1000, seed=seed)
    params = {n: v.unsqueeze(0) for n, v in device.initial_parameters().items()}
    # trained networks couple layers more strongly than a fresh one: use biases that make units active
    g = torch.Generator().manual_seed(seed + 1)
    for k in range(1, len(sizes)):
        params[f"b{k}"] = 0.1 * torch.rand(1, sizes[k], generator=g)
    weights = [params[f"W{k}"][0] for k in range(1, len(sizes))]
    biases = [params[f"b{k}"][0] for k in range(1, len(sizes))]
    inputs = x.unsqueeze(0)

    def ours():
        device._drive_cache = None  # count the input drive in every relaxation
        return device.relax_states(params, inputs, 0.0, None, device.rest_states(params, inputs))

    def plain():
        return straightforward_relaxation(weights, biases, x, device.state_bounds(), tolerance, 1000)

    (s_ours, report), (s_plain, plain_sweeps) = ours(), plain()
    diff = max(float((a[0] - b).abs().max()) for a, b in zip(s_ours, s_plain))
    timing = interleaved({"ours": ours, "plain": plain}, repeats)
    speedup, speedup_min = ratio(timing, "plain", "ours")
    b = x.shape[0]
    flop_ratio = matmul_flops(sizes, b, plain_sweeps, False) / matmul_flops(sizes, b, report.sweeps, True)
    return {
        "net": "-".join(map(str, sizes)),
        "ours_ms": 1e3 * timing["median"]["ours"],
        "ours_min_ms": 1e3 * timing["min"]["ours"],
        "plain_ms": 1e3 * timing["median"]["plain"],
        "plain_min_ms": 1e3 * timing["min"]["plain"],
        "speedup": speedup,
        "speedup_min": speedup_min,
        "flop_ratio": flop_ratio,
        "ours_sweeps": report.sweeps,
        "plain_sweeps": plain_sweeps,
        "max_state_difference": diff,
        "load_before": timing["load_before"],
        "load_after": timing["load_after"],
        "threads": timing["threads"],
        "clock": timing["clock"],
    }


def _extra(parser) -> None:
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 30, quick 20)")


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], _extra, argv)
    if not args.threads:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        data = load_dataset("fashion-mnist", download=False)
        x_all, source = data.x_test, "fashion-mnist"
    except Exception:  # no IDX files: digits upsampled would change the sizes; use uniform pixels
        x_all, source = torch.rand(1000, 784, generator=torch.Generator().manual_seed(0)), "uniform"
    x = x_all[: args.batch].contiguous()
    repeats = args.repeats or (MIN_ROUNDS if args.quick else 30)
    nets = [[784, 512, 10]] if args.quick else [[784, 512, 10], [784, 512, 512, 10]]
    rows = [compare(sizes, x, 1e-5, repeats, seed=0) for sizes in nets]
    headers = [h for h in rows[0] if h not in ("load_before", "load_after", "threads", "clock")]
    print(f"Relaxation of one batch of {args.batch} {source} images, tolerance 1e-5, {repeats} interleaved rounds, "
          f"torch threads {rows[0]['threads']}, clock {rows[0]['clock']}, load average {rows[0]['load_before']:.2f} before / "
          f"{rows[-1]['load_after']:.2f} after (times: median, and min; speedup: median of per-round ratios)\n")
    print(markdown_table([[r[h] for h in headers] for r in rows], headers))

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    labels = [r["net"] for r in rows]
    pos = range(len(rows))
    ax.bar([p - 0.2 for p in pos], [r["plain_ms"] for r in rows], 0.4, label="straightforward")
    ax.bar([p + 0.2 for p in pos], [r["ours_ms"] for r in rows], 0.4, label="HopfieldNetwork")
    ax.set_xticks(list(pos), labels)
    ax.set_ylabel("ms per batch relaxation")
    ax.legend()
    ax.set_title("Free relaxation time per batch (CPU)")
    save_figure(fig, plot_path(args, "relaxation_speed"))
    figures = {
        "speedup": rows[0]["speedup"],
        "speedup_min": rows[0]["speedup_min"],
        "flop_ratio": rows[0]["flop_ratio"],
        "ours_min_ms_per_batch": rows[0]["ours_min_ms"],
        "plain_min_ms_per_batch": rows[0]["plain_min_ms"],
        "threads": rows[0]["threads"],
        "clock": rows[0]["clock"],
        "repeats": repeats,
        "load_average_before": rows[0]["load_before"],
        "load_average_after": rows[-1]["load_after"],
        "max_state_difference": max(r["max_state_difference"] for r in rows),
        "ours_ms_per_batch": rows[0]["ours_ms"],
        "plain_ms_per_batch": rows[0]["plain_ms"],
        "sweeps": rows[0]["ours_sweeps"],
        "batch_size": args.batch,
    }
    if len(rows) > 1:
        figures["deep_speedup"] = rows[1]["speedup"]
        figures["deep_flop_ratio"] = rows[1]["flop_ratio"]
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
