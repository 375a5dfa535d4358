"""Is the auto-oscillation ring a working reservoir? Ring vs an echo-state network of equal size.

One run, both reservoirs, the same inputs and read-out (ridge regression on the measured states):

* NARMA10 (NRMSE on held-out steps; the delay-reservoir literature reaches ≈ 0.1–0.2 with 400
  virtual nodes, Appeltant et al. 2011), floor ``ring_narma10_nrmse <= 0.25`` at 400 nodes;
* short-term memory capacity (Jaeger 2002), delays 1..N/2;
* sequence classification: digits read as 8 rows, the states of all 8 round trips read out by a
  ridge classifier (no training inside the reservoir);
* the node-spacing θ / loop-delay desync sweep behind the ring's defaults;
* the ring-hybrid dense net (``ReservoirNet``: digital encoder → ring → digital read-out) trained by
  backprop (oracle), PGT-global and PGT-local: test accuracy, device queries, wall time.

Each reservoir's two knobs (ring: loop gain and input scale; ESN: spectral radius and input scale)
are picked from the same 3 × 4 grid on a validation stretch that the test stretch never sees;
all grid points are evaluated as probes of one vectorised ``measure`` call.

Run ``python -m benchmarks.ring_reservoir [--quick] [--out F.json]``.
"""

from __future__ import annotations

import itertools

import torch

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json
from benchmarks.reservoir_transformer import Settings, compare, plot_curves, summarise
from physgrad.data import load_dataset
from physgrad.data.sequences import memory_capacity, memory_inputs, narma10, nrmse, ridge_fit, ridge_predict, row_sequences
from physgrad.models import ReservoirNet
from physgrad.systems import AutoOscillationRing, EchoStateNetwork, PhysicalSystem

GAINS = (0.8, 0.9, 0.95)  # ring loop gain g / ESN spectral radius ρ
INPUT_SCALES = (0.1, 0.25, 0.5, 1.0)
RIDGES = (1e-8, 1e-6, 1e-4)


def grid_settings(system: PhysicalSystem, gain_name: str) -> tuple[dict[str, torch.Tensor], list[tuple[float, float]]]:
    """Every (gain, input scale) pair of the grid as one batch of probes, other knobs at their defaults."""
    pairs = list(itertools.product(GAINS, INPUT_SCALES))
    base = system.initial_parameters()
    params = {n: v.expand(len(pairs), *v.shape).clone() for n, v in base.items()}
    params[gain_name] = torch.tensor([[g] for g, _ in pairs])
    params["input_scale"] = torch.tensor([[s] for _, s in pairs])
    return params, pairs


def states_for(system: PhysicalSystem, gain_name: str, u: torch.Tensor):
    params, pairs = grid_settings(system, gain_name)
    return system.measure(params, u.float().reshape(1, -1, 1))[:, 0], pairs  # [P, T, N]


def narma_scores(states: torch.Tensor, y: torch.Tensor, washout: int, train: int, val: int) -> tuple[float, float, float]:
    """(validation NRMSE, test NRMSE, ridge) of the best ridge on one state sequence."""
    fit, v, test = slice(washout, washout + train), slice(washout + train, washout + train + val), slice(washout + train + val, None)
    best = None
    for ridge in RIDGES:
        w = ridge_fit(states[fit], y[fit], ridge)
        score = nrmse(ridge_predict(states[v], w), y[v])
        if best is None or score < best[0]:
            best = (score, nrmse(ridge_predict(states[test], w), y[test]), ridge)
    return best


def narma_benchmark(system, gain_name, u, y, washout, train, val):
    states, pairs = states_for(system, gain_name, u)
    scored = [narma_scores(states[i], y, washout, train, val) + pairs[i] for i in range(len(pairs))]
    return min(scored)  # (val, test, ridge, gain, input_scale)


def memory_benchmark(system, gain_name, u, washout, train, val, max_delay):
    states, pairs = states_for(system, gain_name, u)
    best = None
    for i, pair in enumerate(pairs):
        val_mc, _ = memory_capacity(states[i, : washout + train + val], u[: washout + train + val],
                                    max_delay=max_delay, washout=washout, train=train)
        if best is None or val_mc > best[0]:
            best = (val_mc, i, pair)
    test_mc, r2 = memory_capacity(states[best[1]], u, max_delay=max_delay, washout=washout, train=train + val)
    return test_mc, r2, best[2]


def classification_benchmark(system: PhysicalSystem, data, ridge: float = 1e-2) -> float:
    """Ridge classifier on the states of every round trip (the reservoir itself is not trained)."""
    p = system.initial_parameters()
    features = [system.measure(p, x)[0].flatten(1) for x in (data.x_train, data.x_test)]
    mean, std = features[0].mean(0), features[0].std(0) + 1e-6
    w = ridge_fit((features[0] - mean) / std, torch.nn.functional.one_hot(data.y_train, data.num_classes).double(), ridge * len(data.y_train))
    pred = ridge_predict((features[1] - mean) / std, w).argmax(1)
    return float((pred == data.y_test).float().mean())


def hybrid_builder(nodes: int, ring_inputs: int):
    def build(seed: int):
        ring = AutoOscillationRing(ring_inputs, nodes, mode="static", seed=1000 + seed)
        return ReservoirNet(64, ring, 10, seed=seed)

    return build


def main(argv=None) -> dict:
    def extra(p):
        p.add_argument("--nodes", type=int, default=None)
        p.add_argument("--seeds", type=int, default=3)

    args = parse_args("Auto-oscillation ring vs echo-state network; ring-hybrid dense net", extra, argv)
    if args.threads is None:
        torch.set_num_threads(1)
    n = args.nodes or (100 if args.quick else 400)
    washout, train, val, test = (100, 1000, 300, 500) if args.quick else (200, 5000, 1000, 2000)
    length = washout + train + val + test
    figures: dict = {"nodes": n, "narma_train_steps": train}

    # --- NARMA10 ---------------------------------------------------------------------------
    u, y = narma10(length, seed=0)
    ring = AutoOscillationRing(1, n, mode="sequence", seq_len=length, seed=0)
    esn = EchoStateNetwork(1, n, seq_len=length, seed=0)
    ring_n = narma_benchmark(ring, "feedback", u, y, washout, train, val)
    esn_n = narma_benchmark(esn, "spectral_radius", u, y, washout, train, val)
    figures.update({
        "ring_narma10_nrmse": ring_n[1], "esn_narma10_nrmse": esn_n[1],
        "ring_narma10_feedback": ring_n[3], "ring_narma10_input_scale": ring_n[4],
        "esn_narma10_spectral_radius": esn_n[3], "esn_narma10_input_scale": esn_n[4],
    })
    # node spacing θ at the NARMA-selected knobs (why the default is θ = 2)
    # and the loop-delay desync s (why the default is s = 1)
    theta_rows = []
    for theta, desync in ((0.2, 1), (0.5, 1), (1.0, 1), (2.0, 1), (0.2, 0), (2.0, 0)):
        r = AutoOscillationRing(1, n, mode="sequence", seq_len=length, seed=0, theta=theta, desync=desync,
                                feedback=ring_n[3], input_scale=ring_n[4])
        states = r.measure(r.initial_parameters(), u.float().reshape(1, -1, 1))[0, 0]
        score = narma_scores(states, y, washout, train, val)[1]
        figures[f"ring_narma10_nrmse_theta_{theta:g}_desync_{desync}"] = score
        theta_rows.append([theta, desync, score])

    # --- memory capacity ---------------------------------------------------------------------
    mu = memory_inputs(length, seed=1)
    max_delay = min(n // 2, washout)
    ring_mc = memory_benchmark(AutoOscillationRing(1, n, mode="sequence", seq_len=length, seed=0), "feedback",
                               mu, washout, train, val, max_delay)
    esn_mc = memory_benchmark(EchoStateNetwork(1, n, seq_len=length, seed=0), "spectral_radius",
                              mu, washout, train, val, max_delay)
    figures.update({"ring_memory_capacity": ring_mc[0], "esn_memory_capacity": esn_mc[0], "memory_max_delay": max_delay})

    # --- sequence classification -------------------------------------------------------------
    rows_data = row_sequences("digits")
    if args.quick:
        rows_data = rows_data.subset(train=500, test=200, seed=0)
    t, d = rows_data.image_shape
    figures["ring_digits_rows_accuracy"] = classification_benchmark(
        AutoOscillationRing(d, n, mode="sequence", seq_len=t, seed=0), rows_data)
    figures["esn_digits_rows_accuracy"] = classification_benchmark(EchoStateNetwork(d, n, seq_len=t, seed=0), rows_data)

    table = [
        ["NARMA10 NRMSE (test)", figures["ring_narma10_nrmse"], figures["esn_narma10_nrmse"],
         f"g={ring_n[3]}, γ={ring_n[4]} / ρ={esn_n[3]}, γ={esn_n[4]}"],
        [f"memory capacity (delays 1..{max_delay})", ring_mc[0], esn_mc[0],
         f"g={ring_mc[2][0]}, γ={ring_mc[2][1]} / ρ={esn_mc[2][0]}, γ={esn_mc[2][1]}"],
        ["digits by rows, ridge read-out accuracy", figures["ring_digits_rows_accuracy"],
         figures["esn_digits_rows_accuracy"], "defaults"],
    ]
    print(f"## Reservoir quality, {n} virtual nodes / ESN units\n")
    print(markdown_table(table, ["task", "ring", "ESN", "selected knobs (ring / ESN)"]))
    print("\n## Ring NARMA10 NRMSE vs node spacing θ and loop-delay desync s\n")
    print(markdown_table(theta_rows, ["θ", "desync s", "NARMA10 NRMSE"]))

    # --- ring-hybrid dense net ---------------------------------------------------------------
    data = load_dataset("digits")
    if args.quick:
        data = data.subset(train=400, test=200, seed=0)
    epochs = 2 if args.quick else 20
    seeds = list(range(1 if args.quick else args.seeds))
    hybrid = compare(hybrid_builder(nodes=100, ring_inputs=16), data, epochs=epochs, seeds=seeds, settings=Settings())
    hybrid_figures, hybrid_rows = summarise(hybrid, prefix="hybrid_")
    figures.update(hybrid_figures)
    figures.update({"hybrid_epochs": epochs, "hybrid_seeds": len(seeds)})
    print(f"\n## Ring-hybrid dense net on digits ({epochs} epochs)\n")
    print(markdown_table(hybrid_rows, ["method", "test accuracy [%] (mean ± sd)", "device queries", "wall time [s]", "seeds"]))

    paths = [plot_memory(ring_mc[1], esn_mc[1], plot_path(args, "ring")),
             plot_curves(hybrid, plot_path(args, "ring_hybrid"), "ring-hybrid dense net, digits")]
    print("\nplots: " + ", ".join(str(p) for p in paths))
    write_json(args.out, figures)
    return figures


def plot_memory(ring_r2: torch.Tensor, esn_r2: torch.Tensor, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    k = torch.arange(1, len(ring_r2) + 1)
    ax.plot(k, ring_r2, label=f"ring, MC = {float(ring_r2.sum()):.1f}")
    ax.plot(k, esn_r2, label=f"ESN, MC = {float(esn_r2.sum()):.1f}")
    ax.set_xlabel("delay k [round trips / steps]")
    ax.set_ylabel("r² of recalling u(t − k)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("short-term memory function")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
