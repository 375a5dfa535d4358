"""Protocol fuzzing: random and mutated messages against a live device server (issue 6).

A :class:`~physgrad.systems.remote.server.DeviceServer` serves an audited device
(:class:`~physgrad.systems.wrappers.base.CommandAudit` with the same ramp limits as the server) on a
loopback TCP port, in a thread of this process. A client sends ``--messages`` messages, one at a
time, each waiting for its answer. Every message is one of:

* ``random`` — random bytes (sometimes starting with the right magic bytes and version);
* ``bitflip`` — a valid request with 1–8 random bytes overwritten, or truncated, or extended;
* ``header`` — a valid request whose JSON header is mutated (op, id, token, shapes, dtypes,
  array names, extra keys, a wrong protocol version);
* ``values`` — a well-formed measure/ramp request whose *values* are hostile (NaN, ±inf, just
  outside a bound, far outside, a ramp-violating jump, wrong probe counts);
* ``valid`` — a valid request (describe, state, ping, measure, ramp; values on and inside the
  bounds), with the right token (so some commands really reach the device).

Reported: ``messages``, how many got no answer (must be 0), ``server_alive`` (the server thread
is running and answers a ping, a describe and a valid measure afterwards) and
``invalid_commands_passed`` — commands the audit saw reaching the device with an out-of-range,
non-finite, wrongly shaped or ramp-violating setting or input (must be 0).

    python -m benchmarks.protocol_fuzz [--quick] [--out FILE.json] [--messages N]
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter

import matplotlib.pyplot as plt
import torch
import zmq

from physgrad.systems import RandomReservoir
from physgrad.systems.remote.protocol import MAGIC, PREFIX, decode, encode
from physgrad.systems.remote.gate import plain_socket
from physgrad.systems.remote.server import DeviceServer
from physgrad.systems.wrappers.base import CommandAudit


class RampableReservoir(RandomReservoir):
    """The fuzzed device: a reservoir whose driver can apply ramp waypoints (so ramp limits can be honoured)."""

    def apply_settings(self, settings) -> None:
        pass

from ._common import markdown_table, parse_args, plot_path, save_figure, write_json

TOKEN = "fuzz-token-0123456789abcdef"
KINDS = ("random", "bitflip", "header", "values", "valid")
MAX_STEP = {"bias": 0.5}
INPUTS, NODES = 6, 8


class Fuzzer:
    """Generates messages for a device with ``gain [1] in [0, 4]``, ``bias [8] in [-2, 2]``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.g = torch.Generator().manual_seed(seed)
        self.next_id = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _settings(self, k: int) -> dict[str, torch.Tensor]:
        """Valid settings: inside or on the bounds, small steps (the ramp limit holds from anywhere near 0)."""
        r = self.rng.random()
        gain = torch.full((k, 1), self.rng.choice([0.0, 4.0, 1.0])) if r < 0.3 else torch.rand(k, 1, generator=self.g) * 4
        bias = (torch.rand(k, NODES, generator=self.g) - 0.5) * 0.4  # within ±0.2 of 0: steps <= 0.4 < 0.5
        return {"param.gain": gain, "param.bias": bias}

    def valid(self) -> bytes:
        op = self.rng.choice(["measure", "measure", "measure", "ramp", "describe", "state", "ping"])
        head = {"id": self._id(), "op": op, "token": TOKEN}
        if op in ("describe", "state", "ping"):
            return encode(head)
        k = self.rng.randint(1, 8)
        arrays = self._settings(k)
        if op == "measure":
            b = self.rng.randint(1, 4)
            arrays["inputs"] = torch.rand(b, INPUTS, generator=self.g) if self.rng.random() < 0.5 else torch.rand(k, b, INPUTS, generator=self.g)
        return encode(head, arrays)

    def random_bytes(self) -> bytes:
        n = self.rng.randint(0, 400)
        data = bytes(self.rng.getrandbits(8) for _ in range(n))
        if self.rng.random() < 0.5:
            data = PREFIX.pack(MAGIC, self.rng.choice([1, 1, 2, 0, 65535]), self.rng.randint(0, 500)) + data
        return data

    def bitflip(self) -> bytes:
        msg = bytearray(self.valid())
        r = self.rng.random()
        if r < 0.6:
            for _ in range(self.rng.randint(1, 8)):
                msg[self.rng.randrange(len(msg))] = self.rng.getrandbits(8)
        elif r < 0.8:
            del msg[self.rng.randrange(len(msg)):]
        else:
            msg += bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 64)))
        return bytes(msg)

    def header(self) -> bytes:
        msg = self.valid()
        _, _, length = PREFIX.unpack_from(msg)
        head = json.loads(msg[PREFIX.size : PREFIX.size + length])
        payload = msg[PREFIX.size + length :]
        choice = self.rng.randrange(12)
        version = 1
        if choice == 0:
            head["op"] = self.rng.choice(["measure", "ramp", "shutdown", "", None, 5, ["measure"]])
        elif choice == 1:
            head["id"] = self.rng.choice([-1, 2**60, "1", None, 1.5, True, [1]])
        elif choice == 2:
            head["token"] = self.rng.choice([None, "", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), 12345, [TOKEN]])
        elif choice == 3:
            head.pop("token", None)
        elif choice == 4 and head["arrays"]:
            a = self.rng.choice(head["arrays"])
            a["shape"] = self.rng.choice([[], [0], [-1], [10**9], [1, 1, 1, 1, 1, 1, 1, 1, 1], ["2"], [2**31]])
        elif choice == 5 and head["arrays"]:
            self.rng.choice(head["arrays"])["dtype"] = self.rng.choice(["float16", "int64", "<f4", "object", None])
        elif choice == 6 and head["arrays"]:
            self.rng.choice(head["arrays"])["name"] = self.rng.choice(["param.gain", "inputs", "param.x", "", "a" * 500])
        elif choice == 7:
            head[self.rng.choice(["extra", "arrays_", "v"])] = 1
        elif choice == 8:
            version = self.rng.choice([0, 2, 999])
        elif choice == 9:
            head["arrays"] = self.rng.choice([None, "x", [1, 2], [{}]])
        elif choice == 10 and head["arrays"]:  # swap two arrays' order: the payload no longer matches
            self.rng.shuffle(head["arrays"])
        else:
            head = self.rng.choice([[], "x", 1, None])
        text = json.dumps(head).encode()
        return PREFIX.pack(MAGIC, version, len(text)) + text + payload

    def values(self) -> bytes:
        op = self.rng.choice(["measure", "measure", "ramp"])
        k = self.rng.randint(1, 6)
        arrays = self._settings(k)
        name = self.rng.choice(["param.gain", "param.bias", "inputs"] if op == "measure" else ["param.gain", "param.bias"])
        if name == "inputs":
            arrays["inputs"] = torch.rand(self.rng.randint(1, 3), INPUTS, generator=self.g)
        elif op == "measure":
            arrays["inputs"] = torch.rand(2, INPUTS, generator=self.g)
        t = arrays[name]
        i = tuple(self.rng.randrange(s) for s in t.shape)
        bound = 4.0 if name == "param.gain" else 2.0
        choice = self.rng.randrange(8)
        if choice == 0:
            t[i] = float("nan")
        elif choice == 1:
            t[i] = self.rng.choice([float("inf"), -float("inf")])
        elif choice == 2 and name != "inputs":  # just outside a bound (in float32)
            t[i] = torch.nextafter(torch.tensor(bound), torch.tensor(10.0)) if self.rng.random() < 0.5 else \
                torch.nextafter(torch.tensor(0.0 if name == "param.gain" else -2.0), torch.tensor(-10.0))
        elif choice == 3:
            t[i] = self.rng.choice([1e30, -1e30, 1e6, -5.0])
        elif choice == 4 and name == "param.bias":  # a ramp-violating jump, inside the range
            t[i] = self.rng.choice([1.5, -1.5, 2.0])
        elif choice == 5:  # wrong probe counts
            arrays[name] = t[:0] if self.rng.random() < 0.5 else torch.cat([t, t])
        elif choice == 6:  # float64 values that round into or out of range in float32
            arrays[name] = t.double()
            arrays[name][i] = bound + 1e-12 if self.rng.random() < 0.5 else bound + 1e-6
        else:
            del arrays[name]
        return encode({"id": self._id(), "op": op, "token": TOKEN}, arrays)

    def message(self) -> tuple[str, bytes]:
        kind = self.rng.choices(KINDS, weights=(2, 2, 2, 3, 1))[0]
        return kind, {"random": self.random_bytes, "bitflip": self.bitflip, "header": self.header,
                      "values": self.values, "valid": self.valid}[kind]()


def _ask(sock: zmq.Socket, message: bytes, timeout_ms: int = 10_000) -> dict | None:
    sock.send(message)
    if not sock.poll(timeout_ms):
        return None
    head, _ = decode(sock.recv())
    return head


def fuzz(messages: int, seed: int = 0) -> tuple[dict, Counter]:
    torch.manual_seed(seed)
    device = CommandAudit(RampableReservoir(INPUTS, NODES, seed=seed), max_step=MAX_STEP)
    server = DeviceServer(device, TOKEN, "tcp://127.0.0.1:*", max_step=MAX_STEP).start()
    ctx = zmq.Context()
    sock = plain_socket(ctx, server.address, TOKEN)  # authenticated at the handshake; the fuzzing is in the messages
    fuzzer = Fuzzer(seed)
    outcomes: Counter = Counter()
    unanswered = 0
    started = time.perf_counter()
    try:
        for _ in range(messages):
            kind, message = fuzzer.message()
            head = _ask(sock, message)
            if head is None:
                unanswered += 1
                sock.close()
                sock = plain_socket(ctx, server.address, TOKEN)
                outcomes[(kind, "no answer")] += 1
                continue
            outcomes[(kind, "ok" if head.get("ok") else str(head.get("error")))] += 1
        seconds = time.perf_counter() - started
        alive = server._thread is not None and server._thread.is_alive()
        checks = [encode({"id": 1, "op": "ping", "token": TOKEN}), encode({"id": 2, "op": "describe", "token": TOKEN}),
                  encode({"id": 3, "op": "measure", "token": TOKEN}, {**fuzzer._settings(2), "inputs": torch.rand(3, INPUTS)})]
        for c in checks:
            head = _ask(sock, c)
            alive = alive and head is not None and head.get("ok") is True
    finally:
        sock.close()
        ctx.term()
        server.stop()
    figures = {
        "messages": messages,
        "unanswered": unanswered,
        "server_alive": bool(alive),
        "invalid_commands_passed": device.violations,
        "device_commands": device.commands,
        "accepted": sum(v for (k, o), v in outcomes.items() if o == "ok"),
        "messages_per_s": messages / seconds,
    }
    return figures, outcomes


def main(argv: list[str] | None = None) -> dict:
    logging.getLogger("physgrad.systems.remote.server").setLevel(logging.ERROR)  # a refusal per message is expected here
    args = parse_args(__doc__.splitlines()[0], extra=lambda p: p.add_argument("--messages", type=int, default=None), argv=argv)
    torch.set_num_threads(args.threads or 1)  # several threads on a shared 2-core box only contend
    n = args.messages or (5_000 if args.quick else 100_000)
    figures, outcomes = fuzz(n)
    answers = sorted({o for _, o in outcomes})
    rows = [[kind] + [outcomes.get((kind, o), 0) for o in answers] for kind in KINDS]
    print(markdown_table(rows, ["message kind"] + answers))
    print()
    print(markdown_table([[k, v] for k, v in figures.items()], ["figure", "value"]))
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = [0] * len(KINDS)
    for o in answers:
        counts = [outcomes.get((kind, o), 0) for kind in KINDS]
        ax.bar(KINDS, counts, bottom=bottom, label=o)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_ylabel("messages")
    ax.set_title(f"{n:,} fuzzed messages: server alive = {figures['server_alive']}, "
                 f"invalid commands passed = {figures['invalid_commands_passed']}")
    ax.legend(fontsize=8)
    save_figure(fig, plot_path(args, "protocol_fuzz"))
    write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()
