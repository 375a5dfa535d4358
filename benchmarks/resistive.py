"""Aeqprop on a linear resistive network (a second, physically different device) vs backprop.

Teacher–student regression: a random :class:`~physgrad.systems.ResistiveNetwork` (the teacher)
maps input voltages to output voltages; a student circuit of the same topology, started from
other conductances, learns that map from samples. Aeqprop (physical update, exact joint
relaxation of voltages and conductances against frozen knobs), Aeqprop in its first-order form,
EqProp and backprop (implicit differentiation) all take SGD steps of the same size ε(β₂ − β₁).

    python -m benchmarks.resistive [--quick] [--out F.json]
"""

from __future__ import annotations

import time

import torch

from benchmarks._common import markdown_table, parse_args, plot_path, save_figure, write_json
from physgrad.methods import Aeqprop, Backprop, EqProp
from physgrad.models import EnergyModel
from physgrad.systems import ResistiveNetwork


def extra_args(p) -> None:
    p.add_argument("--inputs", type=int, default=4)
    p.add_argument("--layers", type=int, nargs="+", default=[8, 2])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--beta", type=float, default=0.2)
    p.add_argument("--epsilon", type=float, default=0.02, help="spring softness (exact joint relaxation)")
    p.add_argument("--lr", type=float, default=0.2, help="learning rate ε(β₂ − β₁) of every method")


def main(argv=None) -> dict:
    args = parse_args(__doc__.splitlines()[0], extra_args, argv)
    if not args.threads:
        torch.set_num_threads(1)
    epochs = args.epochs or (10 if args.quick else 60)
    g = torch.Generator().manual_seed(0)
    teacher = ResistiveNetwork(args.inputs, args.layers, seed=100)
    x_train = torch.rand(512, args.inputs, generator=g)
    x_test = torch.rand(512, args.inputs, generator=g)
    with torch.no_grad():
        y_train = teacher.measure(teacher.initial_parameters(), x_train)[0]
        y_test = teacher.measure(teacher.initial_parameters(), x_test)[0]
    beta = args.beta
    eps_physical = args.lr / beta
    methods = {
        "aeqprop_exact": Aeqprop(beta, "centered", epsilon=eps_physical, relaxation="exact"),
        "aeqprop_first_order": Aeqprop(beta, "centered", epsilon=eps_physical, relaxation="first-order"),
        "eqprop": EqProp(beta, "centered"),
        "backprop": Backprop(),
    }
    rows, curves = [], {}
    for name, method in methods.items():
        model = EnergyModel(ResistiveNetwork(args.inputs, args.layers, seed=7, tolerance=1e-7, max_sweeps=500))
        opt = torch.optim.SGD(model.parameters(), lr=args.lr)
        with torch.no_grad():
            curve = [float(model.loss(model(x_test), y_test))]
        order = torch.Generator().manual_seed(1)
        start = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(x_train), generator=order)
            for i in range(0, len(x_train), 32):
                idx = perm[i : i + 32]
                if name.startswith("aeqprop"):
                    method.step(model, model.loss, x_train[idx], y_train[idx])
                else:
                    opt.zero_grad()
                    method.backward(model, model.loss, x_train[idx], y_train[idx])
                    opt.step()
                    model.clamp_()
            with torch.no_grad():
                curve.append(float(model.loss(model(x_test), y_test)))
        curves[name] = curve
        rows.append([name, curve[0], curve[-1], curve[-1] / curve[0], model.device.sweeps, time.perf_counter() - start])
    headers = ["method", "initial_test_loss", "final_test_loss", "ratio", "sweeps", "wall_s"]
    print(f"Teacher–student regression, circuit {args.inputs}-{'-'.join(map(str, args.layers))}, {epochs} epochs\n")
    print(markdown_table(rows, headers))

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, curve in curves.items():
        ax.semilogy(range(len(curve)), curve, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test loss ½‖v_out − y‖²")
    ax.set_title("Resistive network, teacher–student")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, plot_path(args, "resistive"))
    figures = {f"{r[0]}_final_test_loss": r[2] for r in rows}
    figures.update({f"{r[0]}_loss_ratio": r[3] for r in rows})
    figures["epochs"] = epochs
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
