"""Attack suite (issue 12): every attack class against the device, the server, runs and inputs.

Loopback only (127.0.0.1), bounded in count and time, stops itself. Each class is tried many
times and the outcome counted:

* ``out_of_range_commands`` — commands that reached a device outside its safe range, its input
  limits or its ramp limit: random mutated commands (out of range, NaN/inf, ramp jumps, ±50 V DNPU
  inputs) sent straight to an in-process server, ramp bypass attempts through every wrapper, a
  ramp limit the driver cannot honour (floor: 0);
* ``silent_bitflip_loads`` — single-bit flips of a real run's checkpoint that loaded (floor: 0);
* ``unnamed_errors`` — hostile configs, config files, checkpoints (a malicious pickle included),
  command lines and unreachable servers that ended in anything but a named physgrad error or a
  usage message (floor: 0);
* ``mislabelled_resumes`` — resumes into a folder under another config and fewer epochs than a
  finished run (any that trained or reported without refusing), and two configs of one ``run``
  with the same name (counted unless each trained into its own folder under its own config)
  (floor: 0);
* ``flood_memory_ratio`` — peak RSS of a served device (its own process) during an
  unauthenticated flood (no credentials, a wrong token, raw TCP garbage; 32 MiB messages) ÷ its
  idle RSS (floor: < 2); ``authenticated_flood_memory_ratio`` — the same for a token holder
  flooding max-size requests (bounded by the per-connection queue; reported, no floor);
* ``new_client_wait_s`` — time for a new client to connect and get one measurement while
  1010 (quick: 300) idle connections (raw TCP that never speaks, and ZeroMQ peers without
  credentials) are held open (floor: < 1 s).

    python -m benchmarks.attack_suite [--quick] --out F.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import zmq

from physgrad.errors import PhysgradError
from physgrad.systems import RandomReservoir
from physgrad.systems.base import ParameterSpec, PhysicalSystem
from physgrad.systems.devices.dnpu import DNPU
from physgrad.systems.remote.client import RemoteSystem
from physgrad.systems.remote.gate import plain_socket
from physgrad.systems.remote.protocol import decode, encode
from physgrad.systems.remote.server import DeviceServer
from physgrad.systems.wrappers.base import CommandAudit
from physgrad.systems.wrappers.faults import FaultInjector
from physgrad.systems.wrappers.resilient import Resilient

TOKEN = "attack-suite-" + secrets.token_urlsafe(16)
SMALL = {"train_samples": 64, "test_samples": 32, "epochs": 1, "num_pairs": 2, "reservoir_size": 32, "reservoir_inputs": 8}


# ---------------------------------------------------------------------------------- the device
class Knob(PhysicalSystem):
    """A fragile device: 0.05 V per step, it records every setting it was given (measure and ramps)."""

    def __init__(self) -> None:
        super().__init__((2,), (1,), [ParameterSpec("v", (3,), -2.0, 2.0, max_step=0.05)], input_range=(-1.0, 1.0))
        self.applied: list[torch.Tensor] = []

    def apply_settings(self, settings) -> None:
        self.applied += list(settings["v"].reshape(-1, 3).detach().clone())

    def response(self, params, inputs):
        self.applied += list(params["v"].reshape(-1, 3).detach().clone())
        return params["v"].sum(-1, keepdim=True).unsqueeze(1) + inputs.sum(-1, keepdim=True)


class NoRampHook(PhysicalSystem):
    def __init__(self) -> None:
        super().__init__((2,), (1,), [ParameterSpec("v", (3,), -2.0, 2.0, max_step=0.05)])

    def response(self, params, inputs):
        return inputs.sum(-1, keepdim=True)


def _ramp_violations(applied: list[torch.Tensor], limit: float) -> int:
    previous, bad = torch.zeros(3), 0
    for s in applied:
        if float((s - previous).abs().max()) > limit * (1 + 1e-5) or float(s.abs().max()) > 2.0:
            bad += 1
        previous = s
    return bad


def attack_commands(n: int, seed: int = 0) -> tuple[int, int]:
    """``(attacks, out_of_range_commands_that_reached_a_device)``."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    attacks, reached = 0, 0
    # 1. mutated commands straight to a server guarding a reservoir and a DNPU
    for device in (CommandAudit(RandomReservoir(4, 6, seed=0)), CommandAudit(DNPU.synthetic(0))):
        with DeviceServer(device, TOKEN, "tcp://127.0.0.1:*") as server:
            sock = plain_socket(zmq.Context.instance(), server.address, TOKEN)
            try:
                specs = device.parameter_specs
                low_in, high_in = device.input_bounds() if device.input_bounds() is not None else (None, None)
                for i in range(n):
                    k = rng.choice([1, 2, 5])
                    arrays = {}
                    for name, spec in specs.items():
                        lo, hi = spec.bounds()
                        arrays[f"param.{name}"] = lo + (hi - lo) * torch.rand(k, *spec.shape, generator=g)
                    x = torch.rand(3, *device.input_shape, generator=g)
                    if low_in is not None:
                        x = low_in + (high_in - low_in) * x
                    kind = rng.choice(["param", "nan", "inf", "inputs", "inputs50", "shape"])
                    name = rng.choice(list(specs))
                    a = arrays[f"param.{name}"]
                    if kind == "param":
                        a.view(-1)[rng.randrange(a.numel())] += rng.choice([-1, 1]) * (1e-6 + 10 * rng.random())
                    elif kind == "nan":
                        a.view(-1)[rng.randrange(a.numel())] = float("nan")
                    elif kind == "inf":
                        a.view(-1)[rng.randrange(a.numel())] = float("inf")
                    elif kind == "inputs":
                        x.view(-1)[rng.randrange(x.numel())] += rng.choice([-1, 1]) * (1e-6 + 5 * rng.random())
                    elif kind == "inputs50":
                        x = torch.full_like(x, rng.choice([-50.0, 50.0]))
                    else:
                        arrays[f"param.{name}"] = a.reshape(-1)[:-1] if a.numel() > 1 else torch.zeros(k, 2, 2)
                    sock.send(encode({"id": i + 1, "op": "measure", "token": TOKEN}, {**arrays, "inputs": x}))
                    if sock.poll(10_000):
                        decode(sock.recv())
                    attacks += 1
            finally:
                sock.close()
        reached += device.violations
    # 2. ramp bypass attempts: through every wrapper, over the server, with raw ramp commands
    for wrap in (lambda d: d, lambda d: FaultInjector(d, seed=1), lambda d: Resilient(d), lambda d: CommandAudit(d),
                 lambda d: Resilient(FaultInjector(CommandAudit(d), seed=1))):
        knob = Knob()
        dev = wrap(knob)
        for _ in range(max(5, n // 20)):
            target = {"v": (torch.rand(1, 3, generator=g) * 4 - 2) * 0.999}
            attacks += 1
            with contextlib.suppress(PhysgradError):
                dev.measure(target, torch.zeros(1, 2))
            attacks += 1
            with contextlib.suppress(PhysgradError):
                dev.ramp({"v": target["v"]})  # one big jump as a "ramp"
        reached += _ramp_violations(knob.applied, 0.05)
    knob = Knob()
    with DeviceServer(FaultInjector(knob, seed=2), TOKEN, "tcp://127.0.0.1:*") as server:
        sock = plain_socket(zmq.Context.instance(), server.address, TOKEN)
        try:
            for i in range(max(5, n // 20)):
                jump = {"param.v": (torch.rand(rng.choice([1, 50]), 3, generator=g) * 4 - 2) * 0.999}
                sock.send(encode({"id": i + 1, "op": rng.choice(["ramp", "measure"]), "token": TOKEN},
                                 {**jump, **({"inputs": torch.zeros(1, 2)} if i % 2 else {})}))
                if sock.poll(10_000):
                    decode(sock.recv())
                attacks += 1
        finally:
            sock.close()
        with RemoteSystem(server.address, TOKEN) as remote:
            for _ in range(5):
                attacks += 1
                remote.measure({"v": (torch.rand(2, 3, generator=g) * 4 - 2) * 0.999}, torch.zeros(1, 2))
    reached += _ramp_violations(knob.applied, 0.05)
    attacks += 1
    try:  # a ramp limit the driver cannot honour
        NoRampHook()
        reached += 1
    except PhysgradError:
        pass
    attacks += 1
    try:
        DeviceServer(RandomReservoir(4, 4), TOKEN, "tcp://127.0.0.1:*", max_step=0.01).stop()
        reached += 1
    except PhysgradError:
        pass
    return attacks, reached


# ---------------------------------------------------------------------------------- runs
def _train(cfg: dict, out: Path, resume: bool = True) -> list[dict]:
    from physgrad.experiments.config import TrainConfig, run

    return run(TrainConfig.from_dict(cfg), out, progress=False, resume=resume)


def attack_bitflips(n: int, work: Path, seed: int = 0) -> tuple[int, int]:
    from physgrad.training import load_checkpoint

    run_dir = work / "bitflip"
    _train(SMALL, run_dir)
    path = run_dir / "checkpoint.pt"
    raw = path.read_bytes()
    rng = random.Random(seed)
    silent = 0
    for _ in range(n):
        flipped = bytearray(raw)
        bit = rng.randrange(len(raw) * 8)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        try:
            load_checkpoint(path)
            silent += 1
        except PhysgradError:
            pass
    path.write_bytes(raw)
    return n, silent


def attack_resumes(work: Path) -> tuple[int, int]:
    from physgrad.cli import main as cli
    from physgrad.errors import PhysgradError as Named

    folder = work / "resume"
    _train({**SMALL, "lr": 0.003, "epochs": 2}, folder)
    attempts = [{**SMALL, "lr": 0.5, "epochs": 2}, {**SMALL, "lr": 0.003, "method": "spsa", "epochs": 2},
                {**SMALL, "lr": 0.003, "num_pairs": 3, "epochs": 2}, {**SMALL, "lr": 0.003, "scope": "global", "epochs": 2},
                {**SMALL, "lr": 0.003, "epochs": 1}, {**SMALL, "lr": 0.003, "noise": 0.1, "epochs": 2}]
    mislabelled = 0
    for cfg in attempts:
        try:
            _train(cfg, folder)
            mislabelled += 1
        except Named:
            pass
    # two configs of one `physgrad run` with the same file name
    (work / "a").mkdir(exist_ok=True)
    (work / "b").mkdir(exist_ok=True)
    (work / "a" / "x.json").write_text(json.dumps({**SMALL, "lr": 0.003}))
    (work / "b" / "x.json").write_text(json.dumps({**SMALL, "lr": 0.5}))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = cli(["run", str(work / "a" / "x.json"), str(work / "b" / "x.json"), "--out", str(work / "runs")])
    if rc == 0:  # allowed only when each config trained into its own folder, under its own config
        runs = [d for d in (work / "runs").iterdir() if (d / "config.json").exists()]
        rates = sorted(json.loads((d / "config.json").read_text())["lr"] for d in runs)
        mislabelled += rates != [0.003, 0.5]
    return len(attempts) + 1, mislabelled


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo PWNED > /tmp/physgrad-attack-pwned",))


def attack_inputs(work: Path) -> tuple[int, int, list[str]]:
    """Hostile inputs: anything but a named error (or a usage message, exit 2) counts as unnamed."""
    from physgrad.cli import main as cli
    from physgrad.experiments.config import TrainConfig
    from physgrad.training.checkpoint import HEAD, TAIL, save_checkpoint
    import hashlib

    cases: list[tuple[str, object]] = []
    for bad in ({"reservoir_size": 1e12}, {"reservoir_size": 10**12}, {"seed": 2**64}, {"train_samples": -5},
                {"lr": -1}, {"epochs": "many"}, {"method": "magic"}, {"delta": float("nan")}, {"unknown": 1},
                {"batch_size": 10**9}, {"noise": -1}, [], "config", {"dropout": 1.5}, {"num_pairs": 10**9}):
        cases.append((f"config {str(bad)[:40]}", lambda bad=bad: TrainConfig.from_dict(bad)))
    deep = work / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    notjson = work / "bad.json"
    notjson.write_bytes(b"\xff\xfe{not json")
    for path in (deep, notjson, work, work / "missing.json"):
        cases.append((f"config file {path.name}", lambda p=path: TrainConfig.from_file(p)))
    run_dir = work / "hostile"
    _train(SMALL, run_dir)
    ck = run_dir / "checkpoint.pt"
    good = ck.read_bytes()

    def sealed(body: bytes) -> bytes:  # an attacker can compute the digest (it is not a signature)
        return body + HEAD + hashlib.sha256(body).digest() + TAIL

    evil = io.BytesIO()
    pickle.dump({"format": 2, "x": _Evil()}, evil)
    tampered = []
    for change in ({"model": "not a state dict"}, {"step": "abc"}, {"order": torch.zeros(3)}, {"systems": [1, 2, 3]},
                   {"optimizer": {}}, {"metrics_offset": 3 * 10**8}, {"epoch": 99, "step": -5}):
        from physgrad.training import load_checkpoint

        ck.write_bytes(good)
        state = {k: v for k, v in load_checkpoint(ck).items() if k != "format"}
        state.update(change)
        tampered.append((str(change)[:30], state))
    files = {"garbage": b"garbage", "empty": b"", "truncated": good[: len(good) // 2], "evil pickle": sealed(evil.getvalue()),
             "zip bomb name": sealed(b"PK\x03\x04" + os.urandom(64))}
    for label, content in files.items():
        def resume(content=content):
            ck.write_bytes(content)
            _train(SMALL, run_dir)
        cases.append((f"checkpoint {label}", resume))
    for label, state in tampered:
        def resume_tampered(state=state):
            save_checkpoint(ck, state)
            _train(SMALL, run_dir)
        cases.append((f"checkpoint {label}", resume_tampered))
    loose = work / "token-loose"
    loose.write_text(secrets.token_urlsafe(32))
    loose.chmod(0o644)
    weak = work / "token-weak"
    weak.write_text("a" * 40)
    weak.chmod(0o600)
    for argv in (["report", str(run_dir), "--out", "/proc/forbidden"], ["train", "--lr", "-1", "--out", str(work / "x")],
                 ["train", "--dataset", "mnist", "--data-root", str(work / "none"), "--out", str(work / "m")],
                 ["train", "--out", "/proc/forbidden/x", "--epochs", "1"], ["run", str(deep), "--out", str(work / "r")],
                 ["run", str(work / "missing.json"), "--out", str(work / "r")], ["train", "--epochs", "x", "--out", "y"],
                 ["serve", "--token-file", str(loose), "--address", "tcp://127.0.0.1:*", "--duration", "0.1"],
                 ["serve", "--token-file", str(weak), "--address", "tcp://127.0.0.1:*", "--duration", "0.1"],
                 ["serve", "--address", "tcp://0.0.0.0:5555", "--token-file", str(work / "token-new"), "--duration", "0.1"],
                 ["report", str(work / "nothing-here"), "--out", str(work / "rep")]):
        def command(argv=argv):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    rc = cli(argv)
                except SystemExit as e:  # argparse's usage message
                    rc = e.code
            text = err.getvalue()
            if rc not in (0, 2) or "Traceback" in text or "weights_only" in text:
                raise RuntimeError(f"exit {rc}: {text[-200:]}")
        cases.append(("cli " + " ".join(argv[:2]), command))
    cases.append(("unreachable server", lambda: RemoteSystem("tcp://127.0.0.1:9", TOKEN, timeout=0.2, retries=1, backoff=0.0)))
    unnamed, names = 0, []
    for label, case in cases:
        try:
            case()
        except PhysgradError:
            continue
        except Exception as e:  # noqa: BLE001 - exactly what this attack counts
            unnamed += 1
            names.append(f"{label}: {type(e).__name__}: {str(e)[:120]}")
            continue
        if label.startswith(("config", "checkpoint", "unreachable")):  # these must fail
            unnamed += 1
            names.append(f"{label}: accepted")
    if os.path.exists("/tmp/physgrad-attack-pwned"):
        unnamed += 1000
        names.append("the malicious pickle RAN")
    return len(cases), unnamed, names


# ---------------------------------------------------------------------------------- server process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.halt = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, _rss_kib(self.pid))
            time.sleep(0.01)


@contextlib.contextmanager
def _served_process(work: Path):
    port = _free_port()
    token_file = work / "server-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                                                 os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "physgrad.systems.remote.server", "--device", "reservoir",
                             "--address", f"tcp://127.0.0.1:{port}", "--token-file", str(token_file), "--duration", "600"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"tcp://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with RemoteSystem(address, TOKEN, timeout=2.0, retries=0) as remote:
                    remote.measure(remote.initial_parameters(), torch.zeros(4, 32))
                break
            except PhysgradError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the device server did not start")
                time.sleep(0.2)
        yield proc, address, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def attack_flood(work: Path, connections: int, messages: int, seconds: float) -> dict:
    ctx = zmq.Context()
    figures = {}
    with _served_process(work) as (proc, address, port):
        time.sleep(0.5)
        idle = _rss_kib(proc.pid)
        sampler = _Sampler(proc.pid)
        sampler.start()
        blob = b"\x00" * (32 * 2**20)
        socks, raws = [], []
        attacks = 0
        for i in range(connections):
            for token in (None, "wrong-" + secrets.token_urlsafe(24)):
                s = plain_socket(ctx, address, token)
                s.setsockopt(zmq.SNDHWM, messages + 1)
                socks.append(s)
                for _ in range(messages):
                    with contextlib.suppress(zmq.Again):
                        s.send(zmq.Frame(blob), zmq.NOBLOCK, copy=False)
                        attacks += 1
            r = socket.create_connection(("127.0.0.1", port))
            r.setblocking(False)
            raws.append(r)
        started = time.monotonic()
        while time.monotonic() - started < seconds:  # raw TCP garbage, as fast as the server takes it
            for r in raws:
                with contextlib.suppress(BlockingIOError, ConnectionError, OSError):
                    r.send(blob[: 2**20])
                    attacks += 1
            time.sleep(0.01)
        with RemoteSystem(address, TOKEN, timeout=10.0) as remote:  # still serving?
            remote.measure(remote.initial_parameters(), torch.zeros(4, 32))
        for s in socks:
            s.close(linger=0)
        for r in raws:
            r.close()
        sampler.halt.set()
        sampler.join()
        figures["flood_memory_ratio"] = sampler.peak / idle
        figures["idle_rss_mib"] = idle / 1024
        figures["flood_peak_rss_mib"] = sampler.peak / 1024
        # a token holder floods max-size requests: bounded by the per-connection queue
        time.sleep(0.5)
        base = _rss_kib(proc.pid)
        sampler = _Sampler(proc.pid)
        sampler.start()
        big = encode({"id": 1, "op": "ping", "token": TOKEN}, {"x": torch.zeros(4 * 2**20 - 64)})  # ~16 MiB, refused
        heavy = []
        for _ in range(connections):
            s = plain_socket(ctx, address, TOKEN)
            s.setsockopt(zmq.SNDHWM, messages + 1)
            heavy.append(s)
            for _ in range(messages):
                with contextlib.suppress(zmq.Again):
                    s.send(big, zmq.NOBLOCK, copy=False)
                    attacks += 1
        time.sleep(seconds)
        for s in heavy:
            s.close(linger=0)
        sampler.halt.set()
        sampler.join()
        figures["authenticated_flood_memory_ratio"] = sampler.peak / idle
        figures["authenticated_flood_base_ratio"] = base / idle
    ctx.term()
    figures["flood_attacks"] = attacks
    return figures


def attack_exhaustion(work: Path, idle_connections: int) -> dict:
    ctx = zmq.Context()
    with _served_process(work) as (proc, address, port):
        raws, socks = [], []
        half = idle_connections // 2
        for i in range(idle_connections - half):
            with contextlib.suppress(OSError):
                r = socket.create_connection(("127.0.0.1", port), timeout=5)
                if i % 2:
                    r.send(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f")  # half a ZMTP greeting, then silence
                raws.append(r)
        for _ in range(half):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RECONNECT_IVL, 10_000)  # idle: do not hammer the server with reconnects
            s.connect(address)
            socks.append(s)
        time.sleep(1.0)
        started = time.monotonic()
        with RemoteSystem(address, TOKEN, timeout=30.0) as remote:
            remote.measure(remote.initial_parameters(), torch.zeros(4, 32))
        wait = time.monotonic() - started
        for r in raws:
            r.close()
        for s in socks:
            s.close(linger=0)
    ctx.term()
    return {"new_client_wait_s": wait, "idle_connections": len(raws) + len(socks)}


# ---------------------------------------------------------------------------------- main
def run_suite(quick: bool) -> dict:
    torch.set_num_threads(1)
    started = time.monotonic()
    counts = dict(commands=120 if quick else 1000, bitflips=150 if quick else 1000, connections=4,
                  messages=8 if quick else 30, seconds=2.0 if quick else 5.0, idle=300 if quick else 1010)
    with tempfile.TemporaryDirectory(prefix="physgrad-attack-") as tmp:
        work = Path(tmp)
        a_cmd, out_of_range = attack_commands(counts["commands"])
        a_bit, silent = attack_bitflips(counts["bitflips"], work)
        a_res, mislabelled = attack_resumes(work)
        a_in, unnamed, which = attack_inputs(work)
        flood = attack_flood(work, counts["connections"], counts["messages"], counts["seconds"])
        exhaustion = attack_exhaustion(work, counts["idle"])
    figures = {
        "out_of_range_commands": out_of_range,
        "silent_bitflip_loads": silent,
        "unnamed_errors": unnamed,
        "mislabelled_resumes": mislabelled,
        "flood_memory_ratio": round(flood["flood_memory_ratio"], 3),
        "new_client_wait_s": round(exhaustion["new_client_wait_s"], 3),
        "attacks": a_cmd + a_bit + a_res + a_in + flood["flood_attacks"] + exhaustion["idle_connections"],
        "authenticated_flood_memory_ratio": round(flood["authenticated_flood_memory_ratio"], 3),
        "idle_rss_mib": round(flood["idle_rss_mib"], 1),
        "flood_peak_rss_mib": round(flood["flood_peak_rss_mib"], 1),
        "idle_connections": exhaustion["idle_connections"],
        "attacks_by_class": {"commands": a_cmd, "bitflips": a_bit, "resumes": a_res, "hostile_inputs": a_in,
                             "flood_messages": flood["flood_attacks"], "idle_connections": exhaustion["idle_connections"]},
        "unnamed_error_cases": which,
        "quick": quick,
        "seconds": round(time.monotonic() - started, 1),
    }
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attack_suite", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every attack class at smaller counts (< 2 min)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as one JSON object")
    args = parser.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the malicious pickle's protocol
    logging.disable(logging.WARNING)  # the attacks provoke thousands of (correct) warnings
    try:
        figures = run_suite(args.quick)
    finally:
        logging.disable(logging.NOTSET)
    print("| attack class | figure | floor |\n|---|---|---|")
    floors = {"out_of_range_commands": "0", "silent_bitflip_loads": "0", "unnamed_errors": "0", "mislabelled_resumes": "0",
              "flood_memory_ratio": "< 2", "new_client_wait_s": "< 1 s", "authenticated_flood_memory_ratio": "(reported)"}
    for key, floor in floors.items():
        print(f"| {key} | {figures[key]} | {floor} |")
    print(f"\n{figures['attacks']} attacks in {figures['seconds']} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return figures


if __name__ == "__main__":
    main()
